"""What tracing costs (rl/runtime/traces.py): the write overhead per step, the disk per 10,000 steps, and how long
`pointrl traces` takes to list 10,000 traced samples.
  python bench/trace_bench.py [--steps 6] [--hidden 128] [--layers 4] [--prompts 8] [--group 4] [--tokens 160]

1. Overhead: GRCA steps in one process (`rl.runtime.local.traced_steps`: rollout, rewards, advantages, update) on
   the demo's policy size and data settings, traced with trace.samples_per_step=8 (the default). Printed: the
   trace's time over the step's own time, both measured in each traced step; and the same steps run untraced from the
   same initial policy and seed, interleaved with the traced ones, as the wall-time ratio traced / untraced.
2. Disk: the mean bytes of a step's file times 10,000.
3. Listing: one traced step's file copied to 1,250 steps (10,000 samples); their listing columns read cold (as the
   viewer does when it starts), then `pointrl traces` serves them on loopback and `GET /api/samples` (every sample,
   no filter) and `GET /api/steps` are timed, first call and again.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

LISTED = 10_000


def overhead(args: argparse.Namespace, root: Path) -> Path:
    import torch

    from policies.tiny import build_tiny_policy
    from rl.config_loading import load_config
    from rl.runtime.local import traced_steps

    torch.set_num_threads(2)
    common = [
        f"rollout.prompts_per_step={args.prompts}",
        f"rollout.group_size={args.group}",
        f"rollout.max_new_tokens={args.tokens}",
        "rollout.temperature=0.5",
        "learner.micro_batch_size=16",
        "policy.train_point_encoder=true",
    ]
    initial = build_tiny_policy(seed=0, hidden_size=args.hidden, num_layers=args.layers)
    traced_cfg = load_config("grca.yaml", [*common, "trace.samples_per_step=8"])
    untraced_cfg = load_config("grca.yaml", [*common, "trace.samples_per_step=0"])
    traced, untraced = [], []
    for step in range(args.steps):  # interleaved: the machine's load drifts over both alike
        for cfg, into, name in ((traced_cfg, traced, "traced"), (untraced_cfg, untraced, "untraced")):
            torch.manual_seed(step)
            began = time.perf_counter()
            (measured,) = traced_steps(cfg, copy.deepcopy(initial), root / name, range(step, step + 1))
            into.append({**measured, "wall": time.perf_counter() - began})
    step_time = sum(m["time/step"] for m in traced)
    trace_time = sum(m["time/trace"] for m in traced)
    print(
        f"overhead: {args.steps} GRCA steps (hidden {args.hidden}, {args.layers} layers, {args.prompts} x {args.group})"
    )
    print(
        f"  trace writes / step time, same steps:   {trace_time / step_time:.4f}  ({trace_time / args.steps * 1e3:.1f} ms "
        f"a step against {step_time / args.steps:.2f} s)"
    )
    ratio = statistics.median(t["wall"] / u["wall"] for t, u in zip(traced, untraced))
    print(f"  traced / untraced wall time, median:    {ratio:.4f}")
    return root / "traced"


def disk(run_dir: Path) -> Path:
    files = sorted((run_dir / "traces").glob("train-*.parquet"))
    mean = statistics.mean(f.stat().st_size for f in files)
    rows = pq.read_metadata(files[0]).num_rows
    print(f"disk: {mean / 1024:.1f} KiB a step ({rows} samples); 10,000 steps: {mean * 10_000 / 2**20:.0f} MiB")
    return files[0]


def listing(one_step: Path, root: Path) -> None:
    import httpx

    from rl.config_loading import save_config
    from rl.runtime.traces import TraceRun, trace_path, write_trace
    from serve.server import running_server

    run_dir = root / "listed"
    save_config(TraceRun(one_step.parents[1]).config(), run_dir / "config.yaml")
    table = pq.read_table(one_step)
    n = table.num_rows
    for step in range(1, LISTED // n + 1):
        ids = pa.array([f"train-{step:06d}-{r:04d}" for r in range(n)])
        copied = table.set_column(0, "sample_id", ids).set_column(2, "step", pa.array([step] * n, pa.int32()))
        write_trace(run_dir, copied)
    assert trace_path(run_dir, "train", LISTED // n).is_file()
    began = time.perf_counter()
    cold = TraceRun(run_dir).summaries().num_rows  # what the viewer reads as it starts
    print(f"listing {cold} samples from {LISTED // n} files, read cold: {time.perf_counter() - began:.2f} s")
    with running_server(module=("rl.cli", "traces", str(run_dir))) as url:
        for attempt in ("first call", "again"):
            began = time.perf_counter()
            samples = httpx.get(f"{url}/api/samples", timeout=60).json()
            listed = time.perf_counter() - began
            began = time.perf_counter()
            steps = httpx.get(f"{url}/api/steps", timeout=60).json()
            stepped = time.perf_counter() - began
            print(
                f"listing {len(samples)} samples, {attempt}: GET /api/samples {listed:.2f} s, "
                f"GET /api/steps ({len(steps)} steps) {stepped:.2f} s"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--group", type=int, default=4)
    parser.add_argument("--tokens", type=int, default=160)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        traced = overhead(args, root)
        listing(disk(traced), root)


if __name__ == "__main__":
    main()
