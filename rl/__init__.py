"""The RL algorithms and loop: advantages and losses as pure tensor functions, the Ray Train learner, the driver that
runs rollout -> reward -> learn -> sync, the PiSA data engine that loops annotate -> cross-check -> retrain over it,
and the entry scripts and `pointrl` command.

Everything else in pointrl feeds this package; nothing imports it back.
"""
