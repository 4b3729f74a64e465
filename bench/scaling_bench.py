"""How a step's cost grows (`make bench-scaling`): the same GRCA step at several policy sizes, group sizes G and
response lengths, each phase timed, and the peak memory of the whole cluster.

    python bench/scaling_bench.py [--sizes tiny,mid] [--groups 4,8,16] [--lengths 32,96] [--out runs/bench-scaling]

Each point is a 2-step run on one local Ray node: one rollout worker on the HF backend and one learner rank, each
with two threads (rollout and learning take turns in a step), float32 masters computing in bfloat16 where the CPU
multiplies it natively and else in float32, 4 prompts x G, and every response forced to the length
(`rollout.min_new_tokens`). Step 2's phases are reported: step 1 pays the first sync's and the kernels' warm-up.
The sizes are scale_bench.py's (`tiny`: the demo's, `mid`: SmolLM2-135M's LLM, `0.5b`: Qwen2.5-0.5B's, both over
Point-BERT's encoder), random-initialized.
Written: `<out>/scaling.json` (one record per point), `<out>/model.json` (each phase's fitted fixed seconds and work
rate, `fit`), the plot (`--plot`, docs/scaling.png) and the table on stdout.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# bench/ is sys.path[0] when this script runs
from scale_bench import SIZES, MemorySampler, build_policy, native_dtype, phases_of  # noqa: E402


def measure(size: str, group: int, length: int, policy: Path, points: int, run_dir: Path) -> dict:
    """One point: a 2-step GRCA run; step 2's phases and the cluster's peak PSS during the run."""
    from rl.config import recomputes_old_logprobs
    from rl.config_loading import load_config
    from rl.runtime.driver import run_stage

    cfg = load_config(
        "grca.yaml",
        [
            f"run.dir={run_dir}", "run.steps=2", "checkpoint.every=10", "eval.every=0", "data.eval_size=2",
            f"data.num_points={points}", "data.use_images=false", "data.train_size=16",
            f"policy.dtype={native_dtype()[0]}", "learner.strategy=fsdp2", "learner.num_workers=1",
            "learner.cpus_per_worker=2",
            "learner.micro_batch_size=4", "learner.logprob_chunk=32",  # 0.5B's logits over 151,936 tokens are GiBs
            "rollout.num_workers=1", "rollout.cpus_per_worker=2", "reward.mode=local",
            f"rollout.group_size={group}", "rollout.prompts_per_step=4",
            f"rollout.max_new_tokens={length}", f"rollout.min_new_tokens={length}",
        ],
    )  # fmt: skip
    memory = MemorySampler(every_s=5.0)
    began = time.perf_counter()
    run_stage(cfg, policy, run_dir)
    memory.stop.set()
    memory.join()
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {
        "size": size,
        "group": group,
        "length": length,
        "sequences": 4 * group,
        "run_s": time.perf_counter() - began,
        "step_s": rows[-1]["time/step"],
        "phases_s": phases_of(rows[-1]),
        "sync_mib": rows[-1]["sync/mib"],
        "recomputes_old_logprobs": recomputes_old_logprobs(cfg),
        "peak_pss_gib": memory.total,
    }


def prompt_tokens(policy_dir: Path, points: int) -> int:
    """The prompt's length in tokens (chat template, point block, instruction) for a generated object."""
    from data3d.benchmark import generate_sample
    from data3d.serialize import prompt_text
    from policies import PointVLM

    policy = PointVLM.from_pretrained(policy_dir)
    text = policy.prompt_text(prompt_text(generate_sample(0, 0, num_points=points, image_size=32, num_kpts=4)))
    return len(policy.tokenizer(text, add_special_tokens=False)["input_ids"])


def fit(records: list[dict]) -> dict[str, dict[str, float]]:
    """Per phase, seconds = fixed + work / rate over every point: rollout work is generated tokens x parameters (a
    decode step reads every weight), learn work the forward and backward FLOPs (6 x parameters x tokens, plus 2 x
    for the old log-probs' forward where the learner recomputes them); least squares, rate in work per second."""
    import numpy as np

    work = {
        "rollout": [r["sequences"] * r["length"] * r["params"] for r in records],
        "learn": [
            (8 if r["recomputes_old_logprobs"] else 6)
            * r["params"]
            * r["sequences"]
            * (r["prompt_tokens"] + r["length"])
            for r in records
        ],
    }
    model = {}
    for phase, x in work.items():
        y = np.array([r["phases_s"][phase] for r in records])
        design = np.stack([np.ones(len(x)), np.array(x, dtype=float)], axis=1)
        (fixed, per_work), *_ = np.linalg.lstsq(design, y, rcond=None)
        predicted = design @ np.array([fixed, per_work])
        model[phase] = {
            "fixed_s": float(fixed),
            "rate": float(1 / per_work),
            "max_rel_error": float(np.max(np.abs(predicted - y) / y)),
        }
    return model


def plot(records: list[dict], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # a file, no display
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    for size in dict.fromkeys(r["size"] for r in records):
        mine = sorted((r for r in records if r["size"] == size), key=lambda r: r["sequences"] * r["length"])
        tokens = [r["sequences"] * r["length"] for r in mine]
        label = f"{size} ({mine[0]['params'] / 1e6:.0f}M)"
        axes[0].plot(tokens, [r["phases_s"]["rollout"] for r in mine], "o-", label=label)
        axes[1].plot(tokens, [r["phases_s"]["learn"] for r in mine], "o-", label=label)
        axes[2].plot(tokens, [r["peak_pss_gib"] for r in mine], "o-", label=label)
    titles = ("rollout (s)", "learn (s)", "peak PSS of the cluster (GiB)")
    for axis, title in zip(axes, titles):
        axis.set(xscale="log", xlabel="generated tokens per step (4 prompts x G x length)", title=title)
    axes[0].set_yscale("log")
    axes[1].set_yscale("log")
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(out, dpi=110)


def table(records: list[dict]) -> str:
    lines = [
        "| size | params | G | length | step s | rollout s | learn s | sync s | other s | peak PSS GiB |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in records:
        p = r["phases_s"]
        lines.append(
            f"| {r['size']} | {r['params'] / 1e6:.0f}M | {r['group']} | {r['length']} | {r['step_s']:.1f} | "
            f"{p['rollout']:.1f} | {p['learn']:.1f} | {p['sync']:.2f} | {p['other'] + p['reward'] + p['trace']:.1f} | "
            f"{r['peak_pss_gib']:.1f} |"
        )
    return "\n".join(lines)


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="tiny,mid", help=f"comma-separated, of {', '.join(SIZES)}")
    parser.add_argument("--groups", default="4,8,16")
    parser.add_argument("--lengths", default="32,96", help="new tokens per response")
    parser.add_argument("--out", type=Path, default=Path("runs/bench-scaling"))
    parser.add_argument("--plot", type=Path, default=Path("docs/scaling.png"))
    args = parser.parse_args(argv)
    sizes = args.sizes.split(",")
    if unknown := [s for s in sizes if s not in SIZES]:
        parser.error(f"--sizes: unknown {', '.join(unknown)} (choose from {', '.join(SIZES)})")
    groups, lengths = [int(g) for g in args.groups.split(",")], [int(n) for n in args.lengths.split(",")]
    import ray

    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "scaling.json"
    records = json.loads(path.read_text()) if path.is_file() else []  # a rerun measures only the missing points
    done = {(r["size"], r["group"], r["length"]) for r in records}
    ray.init(
        num_cpus=6, include_dashboard=False, namespace="pointrl"
    )  # 2 + 2 for the workers, the rest for the controllers
    for size in sizes:
        params, points = build_policy(size, args.out / size / "init")
        prompt = prompt_tokens(args.out / size / "init", points)
        for group in groups:
            for length in lengths:
                if (size, group, length) in done:
                    continue
                record = measure(size, group, length, args.out / size / "init", points, args.out / size / f"g{group}-n{length}")  # fmt: skip
                records.append(record | {"params": params, "prompt_tokens": prompt})
                path.write_text(json.dumps(records, indent=1))
                phases = " ".join(f"{k} {v:.1f}" for k, v in record["phases_s"].items())
                print(f"{size} G {group} n {length}: step {record['step_s']:.1f} s ({phases}), "
                      f"peak {record['peak_pss_gib']:.1f} GiB", flush=True)  # fmt: skip
    ray.shutdown()
    model = fit(records)
    (args.out / "model.json").write_text(json.dumps(model, indent=1))
    plot(records, args.plot)
    print(table(records))
    for phase, m in model.items():
        print(f"{phase}: {m['fixed_s']:.2f} s + work / {m['rate']:.3g} per s (largest error {m['max_rel_error']:.0%})")
    print(f"wrote {path} ({len(records)} points), {args.out / 'model.json'} and {args.plot}")


if __name__ == "__main__":
    main(sys.argv[1:])
