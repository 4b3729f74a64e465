"""infra/gpu_training.py on this machine: without CUDA it says so in one line and exits 2; its `--cpu` mode runs the
real training path (rl.runtime.driver.main on a local Ray: HF rollouts, the FSDP2 learner in bfloat16 with float32 masters,
a reference, the evaluation task) and its precision checks pass."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "infra" / "gpu_training.py"


def run_script(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("RAY_ADDRESS", None)  # its own local Ray, whatever cluster the suite runs beside
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
    )


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_without_cuda_it_prints_one_line_and_exits_2(tmp_path):
    proc = run_script(str(tmp_path / "out"))
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.strip().startswith("gpu_training: no CUDA device") and len(proc.stderr.splitlines()) == 1


def test_cpu_mode_runs_three_bf16_grca_steps_that_start_on_policy(tmp_path):
    proc = run_script(str(tmp_path), "--cpu")
    report = json.loads((tmp_path / "gpu_training.json").read_text())
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    run = report["runs"]["grca_hf_fsdp2_bf16"]
    assert run["ok"] and run["steps_logged"] == [1, 2, 3]
    assert abs(run["ratio_mean"] - 1) < 1e-3 and abs(run["approx_kl"]) < 1e-4 and abs(run["reference_kl"]) < 1e-6
    # bfloat16: the KV-cached decode and the learner's full pass differ, which is why the learner recomputes
    assert run["rollout_vs_learner_max_abs"] > 0
    assert report["runs"]["grca_vllm_colocated"]["skipped"] == "GPU only"
    assert any(line.split()[:2] == ["grca_hf_fsdp2_bf16", "ok"] for line in proc.stdout.splitlines())
