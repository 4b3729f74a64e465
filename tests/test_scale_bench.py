"""`make bench-scale` at the demo's size (`--size tiny`): the rehearsal's 6-node cluster, its two node kills and its
LoRA run end to end, and a scale.json with the keys the issue's scripts read. Marked slow: `make bench-scale` runs it
at 160M, and the suite's node-kill tests (tests/test_node_faults.py) cover the kills."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_the_rehearsal_at_tiny_size_writes_its_report(tmp_path):
    out = tmp_path / "bench-scale"
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "scale_bench.py"), "--size", "tiny", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-5000:]
    result = json.loads((out / "scale.json").read_text())
    assert result["policy"]["params"] > 0 and result["cluster"]["nodes"] == 6
    learners, rollouts = set(result["cluster"]["learner_nodes"]), set(result["cluster"]["rollout_nodes"])
    assert len(learners) == 2 and len(rollouts) == 3 and not learners & rollouts  # every sync crosses nodes
    assert result["steps"] == [1, 2, 3, 4, 5]
    assert set(result["phases_s"]) == {"rollout", "reward", "learn", "sync", "trace", "other"}
    assert result["sync"]["bytes"] > result["sync"]["lora"]["bytes"] > 0 and result["sync"]["raw_s"] > 0
    assert result["checkpoint"]["gib"] > 0 and result["checkpoint"]["restore_s"] > 0
    memory = result["peak_rss_gib"]
    assert memory["total"] > 1 and abs(sum(kind["gib"] for kind in memory["at_peak"].values()) - memory["total"]) < 1e-6
    kills = result["node_kill"]
    assert kills["rollout"]["survived"] and kills["learner"]["survived"]
    assert 1.0 in kills["rollout"]["workers_per_step"]  # step 2's prompts were redone on the survivor
    assert "| median |" in (out / "scale.md").read_text()


def test_the_scaling_fit_recovers_the_rates_its_points_were_made_from(tmp_path):
    """bench/scaling_bench.py's cost model on points computed from known rates: it finds them again, and leaves the
    tiny policy's overhead-bound points out; its plot and table draw every point."""
    from bench.scaling_bench import fit, learn_flops, plot, table

    flops_per_s, weights_s, decode_flops_per_s = 4e11, 0.03e-9, 7e10  # per second; per decode step and parameter
    records = []
    for size, params, embedding in (("tiny", 1e6, 1e5), ("mid", 160e6, 28e6), ("0.5b", 520e6, 136e6)):
        for group, length in ((4, 32), (8, 32), (16, 32), (4, 96)):
            r = {"size": size, "params": params, "embedding_params": embedding, "group": group, "length": length,
                 "sequences": 4 * group, "prompt_tokens": 648, "recomputes_old_logprobs": True}  # fmt: skip
            prefill = 2 * (params - embedding) * 4 * 648 / flops_per_s
            decode = length * params * (weights_s + r["sequences"] * 2 / decode_flops_per_s)
            learn = 1.5 + learn_flops(r) / flops_per_s
            records.append(
                r | {"phases_s": {"learn": 99.0 if size == "tiny" else learn, "rollout": 3 + prefill + decode}}
            )
    model = fit(records)
    assert model["fitted_points"] == 8
    assert model["learn"]["flops_per_s"] == pytest.approx(flops_per_s) and model["learn"]["fixed_s"] == pytest.approx(
        1.5
    )
    rollout = model["rollout"]
    assert rollout["decode_flops_per_s"] == pytest.approx(decode_flops_per_s) and rollout["fixed_s"] == pytest.approx(3)
    assert rollout["step_s_per_billion_params"] == pytest.approx(0.03)
    assert model["learn"]["max_rel_error"] < 1e-9 and rollout["max_rel_error"] < 1e-9
    for r in records:
        r |= {
            "step_s": 1.0,
            "peak_pss_gib": 2.0,
            "phases_s": r["phases_s"] | dict.fromkeys(("sync", "other", "reward", "trace"), 0),
        }
    plot(records, model, tmp_path / "scaling.png")
    assert (tmp_path / "scaling.png").stat().st_size > 10_000
    assert table(records).count("\n| ") == len(records)
