"""Post-training a Point-VLM: everything else in pointrl feeds this package, and nothing imports it back.

- `rl.algorithms`: one file per algorithm (GRCA, GRPO, SPA, DPO, SFT), each read top to bottom, over the pure tensor
  functions they share (advantages, losses, token spans). No Ray.
- `rl.runtime`: the Ray side around them: the controller, the Ray Train learner, placement, sharding, weight
  publication, metrics, the driver that chains a run's stages.
- `rl.cli`: the `pointrl` command. `rl.eval`: evaluation and its pictures. `rl.pisa`: the PiSA data engine.
- `rl/config.py`: the one typed configuration tree (its sections in `rl/config_sections.py` and
  `rl/config_objectives.py`); `rl/train_*.py`: the entry scripts, one per algorithm.
"""
