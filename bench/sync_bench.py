"""Weight sync of a ~100M-parameter policy to 2 rollout workers, beside the raw object store moving the same bytes.

The sync is the real path: the learner's `WeightSync.put`, a real Controller relaying the refs, each of 2
RolloutWorkers fetching them and installing them in its policy. The peer, measured in the same run and interleaved
with it, is `ray.put` of one blob of the same bytes and `ray.get` of it in the same 2 workers. The ratio is what the
sync costs over the store itself (goal <= 1.5x); the LoRA-only sync of the same policy follows.
  python bench/sync_bench.py [--hidden 768] [--layers 12] [--repeats 5] [--bucket-mb 0] [--lora-r 16]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import ray
import torch

from policies import PointVLM
from policies.tiny import build_tiny_policy
from rl.config import policy_overrides
from rl.config_loading import config_to_dict, load_config
from rl.runtime.controller import Controller
from rollout.weight_sync import WeightSync


def _get_blob(worker, wrapped: list) -> int:
    # runs in a rollout worker (Ray's __ray_call__): the peer's fetch of the one blob
    return ray.get(wrapped[0]).nbytes


def start(policy_dir: Path, run_dir: Path, extra: list[str]):
    cfg = load_config(
        "grca.yaml",
        ["reward.mode=local", "rollout.num_workers=2", "rollout.cpus_per_worker=0.5", f"run.dir={run_dir}", *extra],
    )
    controller = Controller.remote(config_to_dict(cfg), str(policy_dir), str(run_dir))
    workers = ray.get(controller.__ray_call__.remote(lambda c: c.fleet.workers))
    learner = PointVLM.from_pretrained(policy_dir, **policy_overrides(cfg))
    return cfg, controller, workers, learner.trainable_state_dict()


def time_sync(controller, sync: WeightSync, state: dict, version: int) -> tuple[float, float]:
    """Seconds of the whole sync and of its put alone."""
    began = time.perf_counter()
    published = sync.put(state)
    put = time.perf_counter() - began
    ray.get(controller.publish.remote(version, published))
    return time.perf_counter() - began, put


def time_store(workers, nbytes: int) -> float:
    blob = np.ones(nbytes, dtype=np.uint8)
    began = time.perf_counter()
    ref = ray.put(blob)
    assert ray.get([w.__ray_call__.remote(_get_blob, [ref]) for w in workers]) == [nbytes] * len(workers)
    return time.perf_counter() - began


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, default=768)
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--bucket-mb", type=float, default=0.0)
    parser.add_argument("--lora-r", type=int, default=16)
    args = parser.parse_args()
    torch.set_num_threads(1)

    with tempfile.TemporaryDirectory() as tmp:
        policy_dir, tmp = Path(tmp) / "policy", Path(tmp)
        params = sum(
            p.numel()
            for p in build_tiny_policy(out_dir=policy_dir, hidden_size=args.hidden, num_layers=args.layers).parameters()
        )
        ray.init(num_cpus=2, include_dashboard=False, namespace="pointrl", log_to_driver=False)
        _, controller, workers, state = start(policy_dir, tmp / "full", [f"sync.bucket_mb={args.bucket_mb}"])
        sync = WeightSync("ray", args.bucket_mb)
        nbytes = sum(t.nbytes for t in state.values())
        time_sync(controller, sync, state, 1)  # warm-up: connections, the first mapping of the store's pages
        time_store(workers, nbytes)
        syncs, puts, stores = [], [], []
        for version in range(2, 2 + args.repeats):  # interleaved, so that both see the same machine load
            total, put = time_sync(controller, sync, state, version)
            syncs.append(total)
            puts.append(put)
            stores.append(time_store(workers, nbytes))
        ray.kill(controller)
        del state

        cfg, controller, workers, lora = start(
            policy_dir, tmp / "lora", ["policy.llm_mode=lora", f"policy.lora_r={args.lora_r}"]
        )
        lora_bytes = sum(t.nbytes for t in lora.values())
        time_sync(controller, sync, lora, 1)
        lora_syncs = [time_sync(controller, sync, lora, v)[0] for v in range(2, 2 + args.repeats)]
        ray.kill(controller)
        ray.shutdown()

    sync_s, store_s, put_s, lora_s = map(statistics.median, (syncs, stores, puts, lora_syncs))
    ratio = statistics.median(s / b for s, b in zip(syncs, stores))  # per pair: the machine is shared and noisy
    buckets = f"buckets of {args.bucket_mb:g} MiB" if args.bucket_mb else "one object"
    print(
        f"weight sync, policy of {params / 1e6:.1f}M parameters (hidden {args.hidden}, {args.layers} layers), "
        f"2 rollout workers, local Ray on 2 CPUs, median of {args.repeats}"
    )
    print(
        f"  full sync       {nbytes / 2**20:8.1f} MiB  {sync_s:6.3f} s   (put {put_s:.3f} s, {buckets}; "
        f"workers fetch + install {sync_s - put_s:.3f} s)"
    )
    print(f"  object store    {nbytes / 2**20:8.1f} MiB  {store_s:6.3f} s   (ray.put of one blob + 2 workers ray.get)")
    print(
        f"  LoRA-only sync  {lora_bytes / 2**20:8.1f} MiB  {lora_s:6.3f} s   (r={cfg.policy.lora_r}: adapters + "
        f"vision, {len(lora)} tensors)"
    )
    print(
        f"  ratio           full sync / object store = {ratio:.2f}x (median of paired runs; goal <= 1.5x); "
        f"LoRA-only is {sync_s / lora_s:.1f}x faster than the full sync"
    )


if __name__ == "__main__":
    main()
