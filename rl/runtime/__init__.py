"""The Ray side of a run, around the algorithms: the driver (rl.runtime.driver) chains a run's stages; in each, one
controller actor builds every step's batch through the algorithm (prompts -> rollouts -> rewards -> `batch`), the
Ray Train learner ranks run its `update` on their shards and publish the new weights, which the controller relays to
the rollout workers. Placement, sharding, the reward client and metrics live here too; nothing here branches on
which algorithm runs.
"""
