"""Benchmark generator throughput on one core: samples/s, the time per stage, and the store measured in the same run.

The peer is reading the same samples back from the on-disk store, so the last line says how many times faster a
stored set streams than generating it on the fly (what the RL demo does without a data directory):
  python bench/data_bench.py [--n 200] [--num-points 1024] [--image-size 128]
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")  # one core: pin BLAS threads before numpy loads

import argparse  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

from data3d.benchmark import generate_sample  # noqa: E402
from data3d.store import BenchmarkDataset, write_dataset  # noqa: E402

STAGES = ("shape", "points", "render", "targets")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num-points", type=int, default=1024)
    parser.add_argument("--image-size", type=int, default=128)
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})

    generate_sample(args.seed, 0, num_points=args.num_points, image_size=args.image_size)  # warm-up: imports, caches
    timings: dict[str, float] = {}
    start = time.perf_counter()
    samples = [
        generate_sample(args.seed, i, num_points=args.num_points, image_size=args.image_size, timings=timings)
        for i in range(args.n)
    ]
    generate_s = time.perf_counter() - start

    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        write_dataset(tmp, {"train": samples}, config={"bench": True})
        write_s = time.perf_counter() - start
        start = time.perf_counter()
        count = sum(1 for _ in BenchmarkDataset(tmp, "train"))
        read_s = time.perf_counter() - start
    assert count == args.n

    print(f"data3d generator, one core, {args.n} samples, {args.num_points} points, {args.image_size}px images")
    print(f"  generate      {args.n / generate_s:8.1f} samples/s   {1000 * generate_s / args.n:7.2f} ms/sample")
    for stage in STAGES:
        ms = 1000 * timings.get(stage, 0.0) / args.n
        print(f"    {stage:<10} {ms:26.2f} ms/sample  ({100 * timings.get(stage, 0.0) / generate_s:4.1f} %)")
    print(f"  store write   {args.n / write_s:8.1f} samples/s")
    print(f"  store read    {args.n / read_s:8.1f} samples/s   (streaming, shard by shard)")
    print(f"  ratio         reading a stored set is {generate_s / read_s:.1f}x faster than generating it")


if __name__ == "__main__":
    main()
