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
