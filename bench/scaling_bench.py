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

from bench.scale_bench import SIZES, MemorySampler, build_policy, native_dtype, phases_of  # noqa: E402


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
            "learner.cpus_per_worker=2", "learner.micro_batch_size=4",
            "learner.logprob_chunk=32",  # 0.5B's logits over 151,936 tokens are GiBs
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


def policy_shape(policy_dir: Path, points: int) -> dict[str, int]:
    """The prompt's length in tokens (chat template, point block, instruction) for a generated object, and the
    embedding's parameters (vocabulary x hidden: a lookup at the input, a matmul only where logits are taken)."""
    from data3d.benchmark import generate_sample
    from data3d.serialize import prompt_text
    from policies import PointVLM

    policy = PointVLM.from_pretrained(policy_dir)
    text = policy.prompt_text(prompt_text(generate_sample(0, 0, num_points=points, image_size=32, num_kpts=4)))
    return {
        "prompt_tokens": len(policy.tokenizer(text, add_special_tokens=False)["input_ids"]),
        "embedding_params": policy.llm.get_input_embeddings().weight.numel(),
    }


FITTED_FROM = 100e6  # the tiny policy's steps are Python and kernel-launch overhead: no rate of work describes them


def learn_flops(r: dict) -> float:
    """A point's learner FLOPs: 6 x dense parameters (all but the embedding) x tokens, forward and backward; 8 x
    where the learner also recomputes the old log-probs (a forward)."""
    passes = 8 if r["recomputes_old_logprobs"] else 6
    return passes * (r["params"] - r["embedding_params"]) * r["sequences"] * (r["prompt_tokens"] + r["length"])


def fit(records: list[dict]) -> dict[str, dict[str, float]]:
    """Each phase's seconds as fixed + work over rates, least squares over the points of >= 100M parameters.
    learn: `learn_flops` at one rate. rollout: the prompt's prefill once per prompt (its KV cache is shared by the G
    samples, policies/generation.py) at the learner's rate, then per decode step a cost per parameter (reading the
    weights) plus, per sequence, 2 x parameters FLOPs at a rate of its own."""
    import numpy as np

    fitted = [r for r in records if r["params"] >= FITTED_FROM]
    dense = np.array([r["params"] - r["embedding_params"] for r in fitted], dtype=float)
    params = np.array([r["params"] for r in fitted], dtype=float)
    sequences, length = (np.array([r[k] for r in fitted], dtype=float) for k in ("sequences", "length"))
    prompt = np.array([r["prompt_tokens"] for r in fitted], dtype=float)

    def solve(columns: list, seconds) -> tuple[np.ndarray, np.ndarray]:  # the coefficients and the fitted seconds
        design = np.stack([np.ones(len(seconds)), *columns], axis=1)
        coefficients, *_ = np.linalg.lstsq(design, seconds, rcond=None)
        return coefficients, design @ coefficients

    def largest_error(predicted, phase: str) -> float:
        measured = np.array([r["phases_s"][phase] for r in fitted])
        return float(np.max(np.abs(predicted - measured) / measured))

    learn_s = np.array([r["phases_s"]["learn"] for r in fitted])
    (learn_fixed, per_flop), learn_fitted = solve([np.array([learn_flops(r) for r in fitted])], learn_s)
    prefill_s = 2 * dense * (sequences / np.array([r["group"] for r in fitted])) * prompt * per_flop
    decode_s = np.array([r["phases_s"]["rollout"] for r in fitted]) - prefill_s
    (rollout_fixed, per_step, per_token), decode_fitted = solve(
        [length * params, length * sequences * params], decode_s
    )
    return {
        "fitted_points": len(fitted),
        "learn": {
            "fixed_s": float(learn_fixed),
            "flops_per_s": float(1 / per_flop),
            "max_rel_error": largest_error(learn_fitted, "learn"),
        },
        "rollout": {
            "fixed_s": float(rollout_fixed),
            "prefill_flops_per_s": float(1 / per_flop),
            "step_s_per_billion_params": float(per_step * 1e9),  # each decode step reads every weight
            "decode_flops_per_s": float(2 / per_token),
            "max_rel_error": largest_error(prefill_s + decode_fitted, "rollout"),
        },
    }


def plot(records: list[dict], model: dict, out: Path) -> None:
    """Rollout seconds against generated tokens, learn seconds against learn FLOPs with the line fitted over the
    points of >= 100M parameters, and peak memory against parameters; one colour per size, circles for the shorter
    responses."""
    import matplotlib
    import numpy as np

    matplotlib.use("Agg")  # a file, no display
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    lengths = sorted({r["length"] for r in records})
    for size in dict.fromkeys(r["size"] for r in records):
        mine = [r for r in records if r["size"] == size]
        colour = axes[0].plot([], [])[0].get_color()
        for r in mine:
            style = dict(color=colour, marker="o" if r["length"] == lengths[0] else "s", linestyle="")
            axes[0].plot(r["sequences"] * r["length"], r["phases_s"]["rollout"], **style)
            axes[1].plot(learn_flops(r), r["phases_s"]["learn"], **style)
            axes[2].plot(r["params"] / 1e6, r["peak_pss_gib"], **style)
        axes[0].plot([], [], color=colour, marker="o", linestyle="", label=f"{size} ({mine[0]['params'] / 1e6:.1f}M)")
    fitted = [learn_flops(r) for r in records if r["params"] >= FITTED_FROM]
    flops = np.geomspace(min(fitted), max(fitted))
    learn = model["learn"]
    axes[1].plot(flops, learn["fixed_s"] + flops / learn["flops_per_s"], "k--", linewidth=0.8,
                 label=f"fit: {learn['fixed_s']:.1f} s + FLOPs / {learn['flops_per_s'] / 1e9:.0f} GFLOP/s")  # fmt: skip
    titles = (
        ("rollout (s)", "generated tokens per step (4 prompts x G x length)"),
        ("learn (s)", "learn FLOPs (8 x dense parameters x tokens)"),
        ("peak PSS of the node (GiB)", "parameters (M)"),
    )
    for axis, (title, xlabel) in zip(axes, titles):
        axis.set(xscale="log", yscale="log" if axis is not axes[2] else "linear", title=title, xlabel=xlabel)
        axis.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())  # no overlapping labels between decades
    axes[0].legend(title=f"circles: {lengths[0]} tokens; squares: longer", fontsize=8, title_fontsize=8)
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)


def table(records: list[dict]) -> str:
    lines = [
        "| size | params | G | length | step s | rollout s | learn s | learn GFLOP/s | sync s | other s | peak PSS GiB |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in records:
        p = r["phases_s"]
        lines.append(
            f"| {r['size']} | {r['params'] / 1e6:.1f}M | {r['group']} | {r['length']} | {r['step_s']:.1f} | "
            f"{p['rollout']:.1f} | {p['learn']:.1f} | {learn_flops(r) / p['learn'] / 1e9:.0f} | {p['sync']:.2f} | "
            f"{p['other'] + p['reward'] + p['trace']:.1f} | {r['peak_pss_gib']:.1f} |"
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
    # 2 CPUs each for the rollout worker and the learner rank, the rest for the controllers
    ray.init(num_cpus=6, include_dashboard=False, namespace="pointrl")
    for size in sizes:
        params, points = build_policy(size, args.out / size / "init")
        shape = {"params": params} | policy_shape(args.out / size / "init", points)
        records = [r | shape if r["size"] == size else r for r in records]
        for group in groups:
            for length in lengths:
                if (size, group, length) in done:
                    continue
                record = measure(size, group, length, args.out / size / "init", points, args.out / size / f"g{group}-n{length}")  # fmt: skip
                records.append(record | shape)
                path.write_text(json.dumps(records, indent=1))
                phases = " ".join(f"{k} {v:.1f}" for k, v in record["phases_s"].items())
                print(f"{size} G {group} n {length}: step {record['step_s']:.1f} s ({phases}), "
                      f"peak {record['peak_pss_gib']:.1f} GiB", flush=True)  # fmt: skip
    ray.shutdown()
    path.write_text(json.dumps(records, indent=1))  # with the shapes of points measured before they were recorded
    model = fit(records)
    (args.out / "model.json").write_text(json.dumps(model, indent=1))
    plot(records, model, args.plot)
    print(table(records))
    learn, rollout = model["learn"], model["rollout"]
    print(f"fitted on the {model['fitted_points']} points of >= 100M parameters:")
    print(f"  learn: {learn['fixed_s']:.1f} s + FLOPs at {learn['flops_per_s'] / 1e9:.0f} GFLOP/s "
          f"(largest error {learn['max_rel_error']:.0%})")  # fmt: skip
    print(f"  rollout: {rollout['fixed_s']:.1f} s + prefill at the learner's rate + per decode step "
          f"{rollout['step_s_per_billion_params']:.2f} s per billion parameters + 2 x parameters FLOPs per sequence "
          f"at {rollout['decode_flops_per_s'] / 1e9:.0f} GFLOP/s (largest error {rollout['max_rel_error']:.0%})")  # fmt: skip
    print(f"wrote {path} ({len(records)} points), {args.out / 'model.json'} and {args.plot}")


if __name__ == "__main__":
    main(sys.argv[1:])
