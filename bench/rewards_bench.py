"""Reward throughput and latency: `score_batch` against the plain per-sample oracle, then the HTTP service on loopback.

Prints ratios against the baseline measured in the same process (never an absolute pass/fail):
  python bench/rewards_bench.py [--batch 2048] [--repeats 5] [--no-http]
"""

from __future__ import annotations

import argparse
import json
import math
import random
import statistics
import threading
import time

import httpx
import numpy as np

from rewards import DEFAULT_BOUNDS3D, FIELDS, quantize, score_batch
from rewards.reference import reference_score_batch
from serve.server import running_server

WORDS = "a small wooden chair with four legs and a tall curved back painted red".split()


def _camera(rng: random.Random) -> dict:
    yaw = rng.uniform(-math.pi, math.pi)
    c, s = math.cos(yaw), math.sin(yaw)
    return {
        "K": [[160.0, 0.0, 64.0], [0.0, 160.0, 64.0], [0.0, 0.0, 1.0]],
        "R": [[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]],
        "t": [0.0, 0.0, 4.0],
        "width": 128,
        "height": 128,
    }


def realistic_sample(rng: random.Random, bins: int = 1000) -> dict:
    """What a policy after SFT writes: the canonical JSON with noisy geometry; one in ten outputs is defective."""
    lo3, hi3 = np.array(DEFAULT_BOUNDS3D[0]), np.array(DEFAULT_BOUNDS3D[1])
    half = np.array([rng.uniform(0.2, 0.7) for _ in range(3)])
    box3d = np.concatenate([-half, half])
    box2d = np.array([rng.uniform(10, 40), rng.uniform(10, 40), rng.uniform(80, 120), rng.uniform(80, 120)])
    noisy3d = box3d + np.array([rng.gauss(0, 0.05) for _ in range(6)])
    noisy2d = box2d + np.array([rng.gauss(0, 4) for _ in range(4)])
    kpts3d = np.array([[rng.uniform(-h, h) * 1.1 for h in half] for _ in range(16)])
    kpts2d = np.array([[rng.uniform(box2d[0], box2d[2]), rng.uniform(box2d[1], box2d[3])] for _ in range(16)])
    size = np.array([128.0, 128.0])
    output = {
        "answer": rng.choice(["chair", "table", "B"]),
        "description": " ".join(rng.sample(WORDS, 8)),
        "bbox2d": quantize(noisy2d, 0.0, np.tile(size, 2), bins).tolist(),
        "bbox3d": quantize(noisy3d, np.tile(lo3, 2), np.tile(hi3, 2), bins).tolist(),
        "kpts2d": quantize(kpts2d, 0.0, size, bins).tolist(),
        "kpts3d": quantize(kpts3d, lo3, hi3, bins).tolist(),
    }
    text = json.dumps({name: output[name] for name in FIELDS})
    roll = rng.random()
    if roll < 0.04:
        text = text[: rng.randrange(len(text))]
    elif roll < 0.07:
        text = "```json\n" + text + "\n```"
    elif roll < 0.10:
        text = text.replace('"kpts3d"', '"kpts3d_"')
    target = {
        "answer": ["chair", "a chair"],
        "bbox2d": box2d.tolist(),
        "bbox3d": box3d.tolist(),
        "num_kpts2d": 16,
        "num_kpts3d": 16,
    }
    return {"text": text, "target": target, "camera": _camera(rng)}


def best_seconds(fn, repeats: int, clock=time.perf_counter) -> float:
    times = []
    for _ in range(repeats):
        start = clock()
        fn()
        times.append(clock() - start)
    return min(times)


def best_interleaved(baseline, candidate, repeats: int) -> tuple[float, float]:
    """Best process-CPU seconds of each, run in alternation so that both see the same spells of machine noise."""
    slow, fast = [], []
    for _ in range(repeats):
        slow.append(best_seconds(baseline, 1, time.process_time))
        fast.append(best_seconds(candidate, 1, time.process_time))
    return min(slow), min(fast)


def bench_in_process(batch: int, repeats: int) -> None:
    rng = random.Random(0)
    samples = [realistic_sample(rng) for _ in range(batch)]
    assert _close(score_batch(samples), reference_score_batch(samples)), "score_batch disagrees with the reference"
    # CPU time of this process: both sides are single-threaded, and it keeps other load on the machine out of the ratio.
    slow, fast = best_interleaved(lambda: reference_score_batch(samples), lambda: score_batch(samples), repeats)
    print(f"in-process, {batch} realistic samples (best of {repeats}, process CPU time):")
    print(f"  reference (per-sample pure Python) {slow / batch * 1e6:8.1f} us/sample")
    print(f"  score_batch (vectorized)           {fast / batch * 1e6:8.1f} us/sample   {batch / fast:,.0f} samples/s")
    print(f"  speed-up ratio: {slow / fast:.1f}x  (target >= 5x, goal 20x)")


def _close(a: list[dict], b: list[dict]) -> bool:
    return all(
        x["spans"] == y["spans"] and all(abs(x["rewards"][k] - y["rewards"][k]) < 1e-9 for k in y["rewards"])
        for x, y in zip(a, b)
    )


def bench_http(requests: int, clients: int) -> None:
    rng = random.Random(1)
    body = json.dumps({"samples": [realistic_sample(rng) for _ in range(64)]}).encode()
    with running_server() as url:
        with httpx.Client(base_url=url, timeout=30) as client:
            for _ in range(5):
                client.post(
                    "/v1/rewards", content=body, headers={"content-type": "application/json"}
                ).raise_for_status()
            latencies = []
            for _ in range(requests):
                start = time.perf_counter()
                client.post(
                    "/v1/rewards", content=body, headers={"content-type": "application/json"}
                ).raise_for_status()
                latencies.append(time.perf_counter() - start)
        q = statistics.quantiles(latencies, n=100)
        print(f"HTTP on loopback, 64-sample batches, {requests} sequential requests:")
        print(f"  latency p50 {q[49] * 1e3:.2f} ms   p99 {q[98] * 1e3:.2f} ms")
        print(
            f"  in-process time for the same batch: {best_seconds(lambda: score_batch(json.loads(body)['samples']), 5) * 1e3:.2f} ms"
        )

        done, errors = [], []

        def client_loop(n: int) -> None:
            with httpx.Client(base_url=url, timeout=30) as client:
                for _ in range(n):
                    response = client.post("/v1/rewards", content=body, headers={"content-type": "application/json"})
                    (done if response.status_code == 200 else errors).append(1)

        per_client = max(1, requests // clients)
        threads = [threading.Thread(target=client_loop, args=(per_client,)) for _ in range(clients)]
        start = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.perf_counter() - start
        print(
            f"  throughput with {clients} concurrent clients: {len(done) / elapsed:.1f} requests/s = "
            f"{64 * len(done) / elapsed:,.0f} samples/s ({len(errors)} errors)"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=2048)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--no-http", action="store_true")
    args = parser.parse_args()
    bench_in_process(args.batch, args.repeats)
    if not args.no_http:
        bench_http(args.requests, args.clients)


if __name__ == "__main__":
    main()
