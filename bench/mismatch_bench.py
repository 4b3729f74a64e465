"""The rollout/learner mismatch experiment: rollouts from a bfloat16 engine, a float32 learner, on the CPU, with each
rollout correction (rollout.correction none, tis, icepop, seq_mask) for the same steps from the same start.

    PYTHONPATH=. python bench/mismatch_bench.py [--steps N] [--warmup-steps N] [--out FILE] [key=value ...]

Everything runs in this process, without Ray (`rl.algorithms.grca.step` over `rl.runtime.local.InProcessSource`):
the tiny policy is first taught its training objects by SFT (the warm-up, so that rewards vary within a group), saved,
and every arm starts from that one policy. Each arm's learner holds the float32 policy; its rollouts are sampled by a
copy whose LLM is in bfloat16 (`PointVLM.from_pretrained(..., llm_dtype="bfloat16")`), which takes the learner's
weights before every rollout: the HF engine playing a bfloat16 vLLM engine beside a float32 learner (the vLLM lane's
`tests/test_vllm_correction.py` runs that pairing with vLLM itself). The learner recomputes the old log-probs, so each
step logs the mismatch metrics whatever the correction. Every arm samples with the same seeds, so step 0's rollouts
are the same in every arm and the arms part only through their updates.

It prints and writes (default docs/results/mismatch.md) one table: per correction the mean over the steps of the
per-token log-ratio log pi_learner - log pi_rollout (signed and absolute), its largest absolute value, the fraction
of response tokens truncated (tis) or masked (icepop, seq_mask), and the mean total reward (the scalar of broadcast
GRPO: reward.field_weights and algo.rpc_weight) of the first and last steps. key=value overrides apply to every arm.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from policies import PointVLM  # noqa: E402
from policies.tiny import build_tiny_policy  # noqa: E402
from rl.algorithms import algorithm  # noqa: E402
from rl.algorithms.correction import CORRECTIONS  # noqa: E402
from rl.algorithms.grca import step  # noqa: E402
from rl.algorithms.update import learn_step, make_learner  # noqa: E402
from rl.config import scalar_reward_weights  # noqa: E402
from rl.config_loading import load_config  # noqa: E402
from rl.runtime.local import InProcessSource  # noqa: E402

DATA = ["data.train_size=4", "data.num_points=256", "data.image_size=32", "data.num_kpts=1", "data.use_images=false"]
BATCH = ["rollout.prompts_per_step=4", "rollout.group_size=4", "learner.micro_batch_size=16", "learner.warmup_steps=0"]
RL = ["rollout.max_new_tokens=100", "rollout.temperature=1.0", "learner.lr=1e-4", "learner.recompute_old_logprobs=true"]
EDGE = 5  # steps averaged for "first" and "last" rewards


def warm_up(directory: Path, steps: int, overrides: list[str]) -> Path:
    """The tiny policy taught its training objects by SFT in this process, saved to `directory`."""
    cfg = load_config("sft.yaml", [*DATA, *BATCH, "sft.align_weight=0", "learner.lr=3e-3", *overrides])
    policy, sft = build_tiny_policy(seed=0), algorithm("sft")
    learner, source = make_learner(policy, cfg), InProcessSource(cfg, policy)
    for k in range(steps):
        learn_step(learner, sft, sft.batch(k, source, cfg)[0], cfg)
    policy.save_pretrained(directory)
    return directory


def run_arm(policy_dir: Path, correction: str, steps: int, overrides: list[str]) -> list[dict]:
    """`steps` GRCA steps of a float32 learner on bfloat16 rollouts with `correction`; each step's metrics."""
    cfg = load_config("grca.yaml", [*DATA, *BATCH, *RL, f"rollout.correction={correction}", *overrides])
    torch.manual_seed(cfg.run.seed)
    policy = PointVLM.from_pretrained(policy_dir)
    rollout_policy = PointVLM.from_pretrained(policy_dir, llm_dtype="bfloat16")
    source, learner = InProcessSource(cfg, policy, rollout_policy), make_learner(policy, cfg)
    weights = scalar_reward_weights(cfg)
    rows = []
    for k in range(steps):
        row = step(k, source, learner, cfg)
        row["reward/total"] = sum(w * row[f"reward/{name}"] for name, w in weights.items() if f"reward/{name}" in row)
        rows.append(row)
    return rows


def summary(correction: str, rows: list[dict], seconds: float) -> dict:
    def mean(key: str) -> float:
        values = [r[key] for r in rows if key in r]
        return sum(values) / len(values) if values else float("nan")

    edge = min(EDGE, len(rows))
    fraction = "mismatch/truncated_fraction" if correction == "tis" else "mismatch/masked_fraction"
    return {
        "correction": correction,
        "log_ratio_mean": mean("mismatch/log_ratio_mean"),
        "log_ratio_abs_mean": mean("mismatch/log_ratio_abs_mean"),
        "log_ratio_abs_max": max(r["mismatch/log_ratio_abs_max"] for r in rows),
        "fraction": mean(fraction) if correction != "none" else None,
        "reward_first": sum(r["reward/total"] for r in rows[:edge]) / edge,
        "reward_last": sum(r["reward/total"] for r in rows[-edge:]) / edge,
        "curve": [r["reward/total"] for r in rows],
        "seconds": seconds,
    }


def table(results: list[dict], steps: int) -> str:
    edge = min(EDGE, steps)
    lines = [
        f"| correction | mean log-ratio | mean \\|log-ratio\\| | max \\|log-ratio\\| | truncated / masked | "
        f"reward, first {edge} steps | reward, last {edge} steps | change | seconds |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        fraction = "—" if r["fraction"] is None else f"{r['fraction']:.2%}"
        change = r["reward_last"] - r["reward_first"]
        lines.append(
            f"| {r['correction']} | {r['log_ratio_mean']:+.2e} | {r['log_ratio_abs_mean']:.2e} | "
            f"{r['log_ratio_abs_max']:.3f} | {fraction} | {r['reward_first']:.3f} | {r['reward_last']:.3f} | "
            f"{change:+.3f} | {r['seconds']:.0f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=30, help="GRCA steps per correction")
    parser.add_argument("--warmup-steps", type=int, default=150, help="SFT steps of the shared warm-up")
    parser.add_argument("--policy", help="start every arm from this saved float32 policy instead of the warm-up")
    parser.add_argument("--corrections", nargs="+", default=list(CORRECTIONS), choices=CORRECTIONS)
    parser.add_argument("--out", default="docs/results/mismatch.md")
    parser.add_argument("overrides", nargs="*", help="key=value, applied to every arm")
    args = parser.parse_args()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        policy_dir = Path(args.policy) if args.policy else warm_up(Path(tmp) / "warm", args.warmup_steps, [])
        warm_s = time.perf_counter() - started
        print(f"start policy ready in {warm_s:.0f} s", flush=True)
        results = []
        for correction in args.corrections:
            begun = time.perf_counter()
            rows = run_arm(policy_dir, correction, args.steps, args.overrides)
            results.append(summary(correction, rows, time.perf_counter() - begun))
            print(table(results[-1:], args.steps).splitlines()[-1], flush=True)
    text = table(results, args.steps)
    print(text)
    command = " ".join(["PYTHONPATH=. python bench/mismatch_bench.py", *sys.argv[1:]])
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    curves = "\n".join(f"- {r['correction']}: " + ", ".join(f"{v:.2f}" for v in r["curve"]) for r in results)
    Path(args.out).write_text(
        "# Rollout/learner mismatch: bfloat16 rollouts, float32 learner, each rollout correction\n\n"
        f"`{command}` at commit {commit or '(unknown)'} ({time.perf_counter() - started:.0f} s in all, "
        f"{warm_s:.0f} s of it the warm-up).\n\n"
        f"{text}\n\nThe total reward per step (the scalar of broadcast GRPO), step 0 first:\n\n{curves}\n"
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
