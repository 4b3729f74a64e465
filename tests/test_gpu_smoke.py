"""infra/gpu_smoke.py on this machine: without CUDA it says so in one line and exits 2; its `--cpu` test mode runs
every section with the tiny model (fp32, FSDP2 on gloo) and writes a JSON whose checks pass."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "infra" / "gpu_smoke.py"


def run_smoke(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=240
    )


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_without_cuda_it_prints_one_line_and_exits_2(tmp_path):
    proc = run_smoke(str(tmp_path / "out"))
    assert proc.returncode == 2, proc.stderr
    assert proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gpu_smoke: no CUDA device"), proc.stderr
    assert not (tmp_path / "out").exists()


def test_cpu_mode_writes_a_passing_report(tmp_path):
    proc = run_smoke(str(tmp_path), "--cpu", "--max-new-tokens", "8", "--learner-prompts", "1", "--timed-steps", "1")
    report = json.loads((tmp_path / "gpu_smoke.json").read_text())
    assert proc.returncode == 0, proc.stdout + proc.stderr
    sections = report["sections"]
    assert list(sections) == ["imports", "logprobs_tiny_fp32", "fsdp2", "learner"]
    assert report["ok"] and all(s["ok"] for s in sections.values()), json.dumps(sections, indent=1)
    assert report["environment"]["mode"] == "cpu" and report["environment"]["torch"] == torch.__version__
    assert sections["imports"]["pulled_in"] == []
    lp = sections["logprobs_tiny_fp32"]
    assert lp["rows"] == 2 * 8 and lp["response_tokens"] > 0 and lp["max_abs_delta"] < 1e-3
    fsdp = sections["fsdp2"]
    assert fsdp["backend"] == "gloo" and fsdp["dtensor_params"] > 0
    assert fsdp["param_max_abs_delta"] < fsdp["tolerance"] < fsdp["param_max_abs_step"]
    learner = sections["learner"]
    assert learner["rows"] == 8 and learner["step_s_median"] > 0 and learner["peak_allocated_gib"] is None
    assert "all sections passed" in proc.stdout.splitlines()[-1]
