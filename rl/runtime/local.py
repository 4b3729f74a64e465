"""A run's step in one process, without Ray: the `BatchSource` that `rl.algorithms.grca.step` and the tests use.

The policy samples its own rollouts (the HF engine over the learner's own weights, so every rollout comes from the
current version and no weights need syncing) and the rewards are scored in this process by `rewards.score_batch`.
"""

from __future__ import annotations

import time
from pathlib import Path

from data3d import Sample
from policies import PointVLM
from rl.algorithms.batch import rollout_sampling, score_rollouts
from rl.config import Config, run_quant
from rl.runtime.data import training_prompts
from rl.runtime.reward_client import local_rewards
from rollout.batching import policy_inputs
from rollout.engine import RolloutBatch
from rollout.hf_engine import HFEngine


class InProcessSource:
    """Step k's prompts from the run's training set, rollouts sampled by `policy` itself, rewards scored here.

    `rollout_policy`: sample with this copy of `policy` instead, which takes `policy`'s trainable weights before each
    rollout; a copy whose LLM is in another dtype plays an engine whose arithmetic differs from the learner's (a
    bfloat16 engine beside a float32 learner: the mismatch that rollout.correction corrects)."""

    def __init__(self, cfg: Config, policy: PointVLM, rollout_policy: PointVLM | None = None):
        self.cfg, self.policy, self.rollout_policy = cfg, policy, rollout_policy
        self.data = training_prompts(cfg)
        self.quant, self.tokenizer = run_quant(cfg), policy.tokenizer
        self.engine, self.reward_fn = HFEngine(rollout_policy or policy), local_rewards()

    @property
    def version(self) -> int:
        return self.engine.version

    def prompts(self, step: int) -> list[Sample]:
        return self.data.take(step, self.cfg.rollout.prompts_per_step)

    def sample(self, uid: str) -> Sample:
        return self.data.by_uid(uid)

    def rollout(self, step: int) -> RolloutBatch:
        samples = self.prompts(step)
        if self.rollout_policy is not None:
            self.rollout_policy.load_trainable_state_dict(self.policy.trainable_state_dict())
        inputs = policy_inputs(self.policy.eval(), samples, self.quant, self.cfg.data.use_images)
        return self.engine.generate(inputs, [s.uid for s in samples], rollout_sampling(self.cfg, step)).cpu()

    def score(self, rollout: RolloutBatch, samples: list[Sample]) -> list[dict | None]:
        return score_rollouts(rollout, samples, self.reward_fn, self.quant)


def traced_steps(cfg: Config, policy: PointVLM, run_dir: Path, steps: range, learner=None) -> list[dict]:
    """Training steps of cfg.algo.name in this process, each traced to `run_dir/traces/` as the controller traces
    (the tests' and bench/trace_bench.py's run); the run directory gets the config and the policy the traces need.
    Returns each step's metrics, with `time/step` (the step) and `time/trace` (its trace) apart."""
    from rl.algorithms import algorithm
    from rl.algorithms.update import learn_step, make_learner
    from rl.config_loading import save_config
    from rl.runtime.traces import learner_logprobs_of, note_policy, write_training_step

    run_dir = Path(run_dir)
    save_config(cfg, run_dir / "config.yaml")
    policy.save_pretrained(run_dir / "init_policy")
    note_policy(run_dir, run_dir / "init_policy")
    algo, source = algorithm(cfg.algo.name), InProcessSource(cfg, policy)
    learner = learner or make_learner(policy, cfg)
    measured = []
    for step in steps:
        began = time.perf_counter()
        batch, metrics = algo.batch(step, source, cfg)
        metrics.update(learn_step(learner, algo, batch, cfg))
        stepped = time.perf_counter()
        learned = learner_logprobs_of(batch, cfg.trace.samples_per_step)
        indices = [source.data.index(sample.uid) for sample in batch.samples]
        rows = len(batch.response_texts)  # one process: rank 0's shard is the whole batch
        write_training_step(run_dir, cfg, step, batch, batch.scores, indices, source.tokenizer, rows, learned)
        measured.append({**metrics, "time/step": stepped - began, "time/trace": time.perf_counter() - stepped})
    return measured
