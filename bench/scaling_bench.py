"""How a step's cost grows (`make bench-scaling`): the same GRCA step at several policy sizes, group sizes G and
response lengths, each phase timed, and the peak memory of the whole cluster.

    python bench/scaling_bench.py [--sizes tiny,mid] [--groups 4,8,16] [--lengths 32,96] [--out runs/bench-scaling]

Each point is a 2-step run on one local Ray node (one rollout worker on the HF backend, one learner rank, bfloat16
with float32 masters, 4 prompts x G, every response forced to the length: `rollout.min_new_tokens`); step 2's phases
are reported (step 1 pays the first sync's and the kernels' warm-up). The sizes are scale_bench.py's (`tiny`: the
demo's, `mid`: SmolLM2-135M's LLM, `0.5b`: Qwen2.5-0.5B's, both over Point-BERT's encoder), random-initialized.
Written: `<out>/scaling.json` (one record per point) and a line per point on stdout.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from scale_bench import SIZES, MemorySampler, build_policy, phases_of  # noqa: E402 - bench/ is sys.path[0]


def measure(size: str, group: int, length: int, policy: Path, points: int, run_dir: Path) -> dict:
    """One point: a 2-step GRCA run; step 2's phases and the cluster's peak PSS during the run."""
    from rl.config_loading import load_config
    from rl.runtime.driver import run_stage

    cfg = load_config(
        "grca.yaml",
        [
            f"run.dir={run_dir}", "run.steps=2", "checkpoint.every=10", "eval.every=0", "data.eval_size=2",
            f"data.num_points={points}", "data.use_images=false", "data.train_size=16",
            "policy.dtype=bfloat16", "learner.num_workers=1", "learner.cpus_per_worker=1", "learner.micro_batch_size=8",
            "rollout.num_workers=1", "rollout.cpus_per_worker=1", "reward.mode=local",
            f"rollout.group_size={group}", "rollout.prompts_per_step=4",
            f"rollout.max_new_tokens={length}", f"rollout.min_new_tokens={length}",
        ],
    )  # fmt: skip
    memory = MemorySampler(every_s=1.0)
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
        "peak_pss_gib": memory.total,
    }


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="tiny,mid", help=f"comma-separated, of {', '.join(SIZES)}")
    parser.add_argument("--groups", default="4,8,16")
    parser.add_argument("--lengths", default="32,96", help="new tokens per response")
    parser.add_argument("--out", type=Path, default=Path("runs/bench-scaling"))
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
    ray.init(num_cpus=4, include_dashboard=False, namespace="pointrl")
    for size in sizes:
        params, points = build_policy(size, args.out / size / "init")
        for group in groups:
            for length in lengths:
                if (size, group, length) in done:
                    continue
                record = measure(size, group, length, args.out / size / "init", points, args.out / size / f"g{group}-n{length}")  # fmt: skip
                records.append(record | {"params": params})
                path.write_text(json.dumps(records, indent=1))
                phases = " ".join(f"{k} {v:.1f}" for k, v in record["phases_s"].items())
                print(f"{size} G {group} n {length}: step {record['step_s']:.1f} s ({phases}), "
                      f"peak {record['peak_pss_gib']:.1f} GiB", flush=True)  # fmt: skip
    ray.shutdown()
    print(f"wrote {path} ({len(records)} points)")


if __name__ == "__main__":
    main(sys.argv[1:])
