"""One GRCA step in one process (`rl.algorithms.grca.step`, no Ray): the tiny policy, taught its two targets by SFT
through the same algorithm protocol, samples its own rollouts, the rewards are scored in process, and the routed
advantages reach the update."""

from __future__ import annotations

import torch

from rl.algorithms import algorithm
from rl.algorithms.grca import step
from rl.algorithms.update import make_learner
from rl.config_loading import load_config
from rl.runtime.local import InProcessSource
from tests.conftest import TINY_BATCH as BATCH
from tests.conftest import TINY_DATA as DATA


def test_one_grca_step_routes_each_fields_reward_to_its_tokens_and_updates_the_policy(taught_policy):
    cfg = load_config(
        "grca.yaml",
        [*DATA, *BATCH, "rollout.group_size=4", "rollout.max_new_tokens=100", "rollout.temperature=1.0",
         "learner.lr=1e-4", "learner.recompute_old_logprobs=true"],
    )  # fmt: skip
    source, learner = InProcessSource(cfg, taught_policy), make_learner(taught_policy, cfg)
    before = {k: v.clone() for k, v in taught_policy.trainable_state_dict().items()}
    first = step(0, source, learner, cfg)
    assert 0 < first["reward/bbox3d"] < 1  # some samples have the taught box, some not
    assert first["advantage/frac_nonzero"] > 0 and first["learner/grad_norm"] > 0 and "loss/total" in first
    # routed credit: no other field's reward reaches a geometric field's tokens (GRCA §3.6), measured on every field
    # that the samples wrote
    measured = {k: v for k, v in first.items() if k.startswith("credit/other_fields_var/")}
    assert measured and all(v == 0.0 for v in measured.values())
    assert any(not torch.equal(before[k], v) for k, v in taught_policy.trainable_state_dict().items())
    # the next step samples with the updated weights (one process: nothing to sync), so the rollout's log-probs are
    # the learner's own: the recomputed ones agree to float32 round-off
    second = step(1, source, learner, cfg)
    assert second["mismatch/log_ratio_abs_max"] < 1e-4


def test_grpo_is_the_same_step_with_broadcast_advantages(taught_policy):
    cfg = load_config(
        "grpo.yaml", [*DATA, *BATCH, "rollout.group_size=4", "rollout.max_new_tokens=100", "rollout.temperature=1.0"]
    )
    grpo = algorithm("grpo")
    batch, metrics = grpo.batch(0, InProcessSource(cfg, taught_policy), cfg)
    rows = batch.advantages * batch.response_mask
    per_row = [set(row[mask.bool()].tolist()) for row, mask in zip(rows, batch.response_mask)]
    assert all(len(values) == 1 for values in per_row)  # one advantage on every token of a response
    assert metrics["advantage/frac_nonzero"] > 0
