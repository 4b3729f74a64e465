"""Rollout correction with the real vLLM engine (`make test-vllm`): two GRCA steps on a local Ray cluster whose vLLM
rollouts run in bfloat16 beside a float32 learner, the mismatch that rollout.correction is for."""

import importlib.util

import pytest

from tests.test_vllm_engine import changed, grca_run

pytestmark = [
    pytest.mark.vllm,
    pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vLLM is not installed: run make test-vllm"),
]


def test_two_grca_steps_with_bfloat16_vllm_rollouts_and_icepop_beside_a_float32_learner(tmp_path):
    overrides = ["policy.dtype=float32", "rollout.vllm.dtype=bfloat16", "rollout.correction=icepop"]
    rows, start, end = grca_run(tmp_path, 2, overrides)
    assert [r["step"] for r in rows] == [1, 2]
    for row in rows:
        # bfloat16 sampling against float32 scoring: the learner recomputed (the correction asks for it) and differs
        assert 0 < row["mismatch/log_ratio_abs_max"] < 1
        assert 0 <= row["mismatch/masked_fraction"] < 1 and row["reward/missing"] == 0.0
    assert changed(start, end)
