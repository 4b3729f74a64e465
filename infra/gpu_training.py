"""The training paths themselves on one GPU, in minutes: GRCA runs through `rl.runtime.driver.main` on a local Ray with the
machine's GPU, and one table says what works.

Each run is 3 GRCA steps from a tiny random-init policy (its SFT warm-up skipped), G = 4, with its held-out
evaluation (8 objects) in a Ray task on the GPU:
  grca_hf_fsdp2_bf16    HF rollouts on the GPU beside the FSDP2 learner (colocated: the rollout worker 0.6 of the
                        GPU, the learner the rest), `policy.dtype=bfloat16` (float32 masters); the precision contract's
                        checks on the first step: the ratio 1 within 1e-3, approx_kl 0 within 1e-4, KL to the
                        reference 0 within 1e-6 (the learner recomputes the old log-probs, so the rollout's own
                        distance to them is reported, not checked);
  grca_vllm_colocated   the same with vLLM rollouts that sleep while the learner trains and wake for each weight
                        sync (only where vLLM is installed; otherwise "skipped").
A run passes when it finishes, its 3 steps are logged once each with finite losses, and the checks hold.

    PYTHONPATH=. python infra/gpu_training.py OUTDIR     # one CUDA GPU; OUTDIR/gpu_training.json and the runs
    PYTHONPATH=. python infra/gpu_training.py OUTDIR --cpu   # the same paths on the CPU (tests/test_gpu_training.py)

Exit 0 when every run that applies passed, 1 otherwise; without CUDA (and without --cpu) one line and exit 2.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import sys
import time
import traceback
from pathlib import Path

STEPS = 3
RATIO_TOL, APPROX_KL_TOL, REFERENCE_KL_TOL = 1e-3, 1e-4, 1e-6


def overrides(outdir: Path, name: str, cpu: bool) -> list[str]:
    """The run's config: a tiny policy, 3 GRCA steps in bfloat16 under FSDP2, a KL term so the reference is built."""
    placement = (
        ["learner.use_gpu=false", "rollout.gpus_per_worker=0"]
        if cpu
        else ["learner.use_gpu=true", "placement.mode=colocated", "rollout.gpus_per_worker=0.6"]
    )
    return [
        f"run.dir={outdir / name}",
        f"run.steps={STEPS}",
        f"policy.init={outdir / 'init_policy'}",
        "policy.dtype=bfloat16",
        "learner.strategy=fsdp2",
        "learner.num_workers=1",
        "learner.cpus_per_worker=1",
        "rollout.num_workers=1",
        "rollout.cpus_per_worker=0.5",
        "rollout.group_size=4",
        "rollout.prompts_per_step=2",
        "rollout.max_new_tokens=48",
        "algo.kl_beta=0.01",
        "reward.mode=local",
        "data.train_size=16",
        "data.eval_size=8",
        "data.num_points=256",
        "data.image_size=32",
        "eval.reliance=false",
        "eval.max_new_tokens=48",
        "checkpoint.every=3",
        *placement,
    ]


def run_grca(outdir: Path, name: str, cpu: bool, extra: list[str]) -> dict:
    """One GRCA run through the driver; its first step's precision figures and what every step logged."""
    from rl.runtime.driver import main

    started = time.perf_counter()
    reports = main("grca.yaml", [*overrides(outdir, name, cpu), *extra])
    rows = [json.loads(line) for line in (outdir / name / "metrics.jsonl").read_text().splitlines()]
    first = rows[0]
    result = {
        "steps_logged": [row["step"] for row in rows],
        "ratio_mean": first["loss/ratio_mean"],
        "approx_kl": first["loss/approx_kl"],
        "reference_kl": first["loss/kl"],
        "rollout_vs_learner_max_abs": first.get("mismatch/log_ratio_abs_max"),
        "step_s": [row["time/step"] for row in rows],
        "eval_parse_rate": reports["final"].get("parse_rate"),
        "seconds": time.perf_counter() - started,
    }
    losses_finite = all(math.isfinite(row["loss/total"]) for row in rows)
    result["ok"] = (
        result["steps_logged"] == list(range(1, STEPS + 1))
        and losses_finite
        and abs(result["ratio_mean"] - 1) < RATIO_TOL
        and abs(result["approx_kl"]) < APPROX_KL_TOL
        and abs(result["reference_kl"]) < REFERENCE_KL_TOL
    )
    return result


def runs(cpu: bool) -> list[tuple[str, list[str] | None]]:
    """(name, the overrides that make it) for every run; None: it does not apply here (why, in the table)."""
    has_vllm = importlib.util.find_spec("vllm") is not None
    vllm = ["rollout.backend=vllm", "rollout.vllm.gpu_memory_utilization=0.5", "rollout.vllm.enforce_eager=true"]
    return [("grca_hf_fsdp2_bf16", []), ("grca_vllm_colocated", vllm if has_vllm and not cpu else None)]


def table(results: dict) -> str:
    lines = [f"{'run':22} {'ok':5} {'ratio-1':>9} {'approx_kl':>10} {'ref KL':>9} {'rollout|d|':>10} {'s':>6}"]
    for name, r in results.items():
        if "skipped" in r or "error" in r:
            lines.append(f"{name:22} {'skip' if 'skipped' in r else 'FAIL':5} {r.get('skipped', r.get('error'))}")
            continue
        diff = r["rollout_vs_learner_max_abs"]
        lines.append(
            f"{name:22} {'ok' if r['ok'] else 'FAIL':5} {r['ratio_mean'] - 1:9.2e} {r['approx_kl']:10.2e} "
            f"{r['reference_kl']:9.2e} {diff if diff is None else format(diff, '10.3g'):>10} {r['seconds']:6.0f}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="pointrl's training paths on one GPU; results in OUTDIR")
    parser.add_argument("outdir", type=Path)
    parser.add_argument("--cpu", action="store_true", help="the same runs on the CPU (for the tests)")
    args = parser.parse_args(argv)
    import torch

    if not args.cpu and not torch.cuda.is_available():
        print(f"gpu_training: no CUDA device (torch {torch.__version__}); run this on a GPU machine", file=sys.stderr)
        return 2
    from policies.tiny import build_tiny_policy

    outdir = args.outdir.resolve()
    outdir.mkdir(parents=True, exist_ok=True)
    if not (outdir / "init_policy" / "pointvlm.json").is_file():
        build_tiny_policy(out_dir=outdir / "init_policy")
    device = "cpu" if args.cpu else torch.cuda.get_device_name(0)
    import ray

    # a cluster of its own, whatever other Ray instances run on this machine; logical CPUs, since the stages take turns
    ray.init(address="local", num_cpus=max(4, os.cpu_count() or 1), include_dashboard=False, namespace="pointrl")
    results = {}
    for name, extra in runs(args.cpu):
        if extra is None:
            results[name] = {"ok": True, "skipped": "vLLM is not installed" if not args.cpu else "GPU only"}
        else:
            try:
                results[name] = run_grca(outdir, name, args.cpu, extra)
            except BaseException as error:  # noqa: BLE001 - a failed run (a refused config's SystemExit too) is a row
                trace = traceback.format_exc()
                results[name] = {"ok": False, "error": f"{type(error).__name__}: {error}", "trace": trace}
        (outdir / "gpu_training.json").write_text(json.dumps({"device": device, "runs": results}, indent=2))
    print(f"gpu_training on {device}:\n{table(results)}", flush=True)
    return 0 if all(r["ok"] for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
