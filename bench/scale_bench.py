"""The rehearsal at real size (`make bench-scale`): a Point-VLM of 160M parameters (`mid`) or with Qwen2.5-0.5B's LLM
dimensions (`0.5b`) through GRCA steps on a Ray cluster of several nodes on this machine, with a rollout node and then
the learner's node killed under it. `mid` is the default: on 2 cores its 5 steps, two kills and LoRA run take about
20 minutes, within the issue's 40; a 0.5B step costs about 2.4 times a mid one (docs/scaling.md).

    python bench/scale_bench.py [--size mid|0.5b|tiny] [--steps 5] [--out runs/bench-scale] [--backend hf|vllm]

The policy is random-initialized (nothing is downloaded): `--size 0.5b` is Qwen2.5-0.5B's LLM (hidden 896, 24 layers,
14 heads, 2 KV heads, MLP 4864, 151,936-token vocabulary, tied embeddings) over Point-BERT's encoder (12 layers, 384
wide, 512 groups of 32 points from 8,192); `mid` is SmolLM2-135M's LLM over the same encoder; `tiny` the demo's.

The cluster (`ray.cluster_utils.Cluster`, one raylet per node): the head holds the driver, the controller and the
reward deployment; two nodes labelled learner (one a spare) and two labelled rollout, one rollout worker on each
(`placement.learner_label`, `rollout_label`, STRICT_SPREAD; `reward_label` keeps the reward replica on the head,
where it cannot take the CPUs the restored learner needs on the spare), so every weight sync crosses from the
learner's node to the rollout nodes. The learner is FSDP2 on 2 ranks with float32 masters, computing in bfloat16
where the CPU multiplies it natively and in float32 where it does not (`native_dtype`; the precision contract of
docs/gpu.md). The rollout workers decode with the HF backend, or with `--backend vllm` with the real vLLM engine
(vLLM's CPU build: run it with the vLLM lane's `.venv-vllm/bin/python`).

Under the run: a rollout node dies while step 2's rollouts run (the step is redone on the survivor; a node added
once step 2 is logged gets the lost worker back), then the learner's node dies once step `steps - 2` is logged
(the spare restores the learner from the checkpoint of the step before). After it, a LoRA run of 1 step on the same
cluster measures the sync of the LoRA-only trainable weights (its learner is DDP on 2 ranks: FSDP2 is built for full
weights).

Measured in the one run: each phase's time per step (from metrics.jsonl), the bytes a sync sends and its time beside
the raw object store moving the same bytes between the same nodes (an actor on a learner node puts them, one on each
rollout node gets them at once, as the workers fetch a version), the checkpoint's save and restore time and size,
and the proportional set size (PSS, so that shared pages count once) of every process of the cluster, sampled every
15 s, at its peak, per process and in total.
Written: `<out>/scale.json` and `<out>/scale.md`.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import sys
import threading
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.local_cluster import NODES, ROLE, Run, kill_node, node_of  # noqa: E402

GIB = 2**30
SIZES = {  # build_tiny_policy's LLM sizes, and whether the point encoder is Point-BERT's
    "tiny": ({}, False),
    "mid": (  # SmolLM2-135M's
        {"hidden_size": 576, "num_layers": 30, "num_attention_heads": 9, "num_key_value_heads": 3,
         "intermediate_size": 1536, "vocab_size": 49152},
        True,
    ),
    "0.5b": (  # Qwen2.5-0.5B's
        {"hidden_size": 896, "num_layers": 24, "num_attention_heads": 14, "num_key_value_heads": 2,
         "intermediate_size": 4864, "vocab_size": 151936},
        True,
    ),
}  # fmt: skip
PHASES = ("rollout", "reward", "learn", "sync", "trace")
BACKENDS = {  # the rollout engine's settings: vLLM's CPU build sized for a worker of one core beside the others
    "hf": (),
    "vllm": ("rollout.backend=vllm", "rollout.vllm.kv_cache_gib=0.5", "rollout.vllm.max_model_len=1024",
             "rollout.vllm.enforce_eager=true"),
}  # fmt: skip


def build_policy(size: str, out: Path) -> tuple[int, int]:
    """The random-init policy of `size`, saved to `out`; (its parameters, its cloud's points)."""
    from policies import PointVLMConfig, build_tiny_policy

    sizes, real_encoder = SIZES[size]
    config = PointVLMConfig(image=None) if real_encoder else None  # its point encoder's defaults are Point-BERT's
    policy = build_tiny_policy(out_dir=out, config=config, **sizes)
    return sum(p.numel() for p in policy.parameters()), 16 * policy.config.point.num_groups


def native_dtype() -> tuple[str, str]:
    """bfloat16 where this CPU multiplies it natively (oneDNN's AVX512-BF16 or AMX path), else float32; and why.
    Without that path torch emulates bfloat16 matmuls, several times slower than float32."""
    import torch

    if torch.ops.mkldnn._is_mkldnn_bf16_supported():
        return "bfloat16", "this CPU multiplies bfloat16 natively (oneDNN)"
    return "float32", "this CPU has no native bfloat16 matmul (no AVX512-BF16 or AMX): torch emulates it, slower"


def pss_gib(pid: int) -> float:
    """A process's proportional set size from /proc/<pid>/smaps_rollup (psutil's memory_full_info reads the whole
    smaps, which costs a core's worth of time on a cluster of 50 processes)."""
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            if line.startswith("Pss:"):
                return int(line.split()[1]) * 1024 / GIB
    return 0.0


class MemorySampler(threading.Thread):
    """Every `every_s`, the PSS of this process and every process under it (the nodes' raylets, GCS, workers):
    the peak of their sum, what held it at that moment by kind of process (`at_peak`: title -> GiB and count), and
    each process's own peak under its title (`ray::RolloutWorker`, `raylet`, ...)."""

    def __init__(self, every_s: float = 15.0):  # reading 50 processes' page tables costs ~0.1 s of a core
        super().__init__(daemon=True)
        self.every_s, self.stop, self.total, self.per_process, self.at_peak = every_s, threading.Event(), 0.0, {}, {}
        self.start()

    def run(self) -> None:
        me = psutil.Process()
        while not self.stop.wait(self.every_s):
            by_title: dict[str, dict] = {}
            for process in [me, *me.children(recursive=True)]:
                try:
                    pss = pss_gib(process.pid)
                    # `ray::RolloutWorker.generate` while it runs a method: one name per process
                    title = (process.cmdline() or [process.name()])[0].split("/")[-1].split(".")[0]
                except (psutil.NoSuchProcess, psutil.AccessDenied, FileNotFoundError, ProcessLookupError):
                    continue
                kind = by_title.setdefault(title, {"gib": 0.0, "processes": 0})
                kind["gib"], kind["processes"] = kind["gib"] + pss, kind["processes"] + 1
                key = f"{title} [{process.pid}]"
                self.per_process[key] = max(self.per_process.get(key, 0.0), pss)
            total = sum(kind["gib"] for kind in by_title.values())
            if total > self.total:
                self.total, self.at_peak = total, dict(sorted(by_title.items(), key=lambda kv: -kv[1]["gib"]))


def raw_transfer(nbytes: int, rollout_nodes: list[str], repeats: int = 3) -> float:
    """The median seconds for an actor on a learner node to put `nbytes` and an actor on each rollout node to get
    them, all at once: the fan-out of a sync, whose workers fetch one published version together."""
    import numpy as np
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    class Holder:
        def put(self, n: int) -> list:
            return [ray.put(np.ones(n, dtype=np.uint8))]

        def get(self, wrapped: list) -> int:
            return ray.get(wrapped[0]).nbytes

    holder = ray.remote(Holder)
    sender = holder.options(num_cpus=0, label_selector={ROLE: "learner"}).remote()
    receivers = [
        holder.options(num_cpus=0, scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False)).remote()
        for node in rollout_nodes
    ]
    times = []
    for _ in range(repeats):
        began = time.perf_counter()
        wrapped = ray.get(sender.put.remote(nbytes))
        assert ray.get([receiver.get.remote(wrapped) for receiver in receivers]) == [nbytes] * len(receivers)
        times.append(time.perf_counter() - began)
    for actor in (sender, *receivers):
        ray.kill(actor)
    return statistics.median(times)


def grca_config(run_dir: Path, steps: int, points: int, dtype: str, *extra: str):
    """The rehearsal's GRCA stage. One CPU per worker: the nodes share this machine's cores, and a worker runs as many
    torch threads as it has CPUs, so two rollout workers of two threads each would fight over the cores. The
    learner's memory savers are on: at 0.5B a micro-batch's float32 logits over 151,936 tokens are GiBs."""
    from rl.config_loading import load_config

    return load_config(
        "grca.yaml",
        [
            f"run.dir={run_dir}", f"run.steps={steps}", "eval.every=0",
            f"data.num_points={points}", "data.use_images=false", "data.train_size=32", "data.eval_size=4",
            f"policy.dtype={dtype}", "learner.strategy=fsdp2", "learner.num_workers=2", "learner.cpus_per_worker=1",
            "learner.micro_batch_size=2", "learner.logprob_chunk=32", "learner.activation_checkpointing=true",
            "rollout.num_workers=2", "rollout.cpus_per_worker=1",
            "rollout.group_size=4", "rollout.prompts_per_step=4", "rollout.max_new_tokens=128",
            "reward.mode=serve", "reward.replicas=1", "reward.cpus_per_replica=0.5", "rollout.answer_wait_s=30",
            f"placement.learner_label={ROLE}=learner", f"placement.rollout_label={ROLE}=rollout",
            f"placement.reward_label={ROLE}=head", "placement.rollout_strategy=STRICT_SPREAD", *extra,
        ],
    )  # fmt: skip


def median(rows: list[dict], key: str) -> float:
    return statistics.median(r.get(key, 0.0) for r in rows)


def phases_of(row: dict) -> dict[str, float]:
    phases = {name: row.get(f"time/{name}", 0.0) for name in PHASES}
    return phases | {"other": max(0.0, row["time/step"] - sum(phases.values()))}


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=tuple(SIZES), default="mid")
    parser.add_argument("--steps", type=int, default=5, help="GRCA steps of the full run (at least 5)")
    parser.add_argument("--out", type=Path, default=Path("runs/bench-scale"))
    parser.add_argument("--store-gib", type=float, default=2.0, help="object store of each worker node")
    parser.add_argument("--backend", choices=tuple(BACKENDS), default="hf", help="the rollout workers' engine")
    args = parser.parse_args(argv)
    if args.steps < 5:
        parser.error("--steps must be at least 5: a rollout node dies in step 2, the learner's after step steps-2")
    if args.backend == "vllm" and importlib.util.find_spec("vllm") is None:
        parser.error("--backend vllm: vLLM is not installed here; run with the vLLM lane's .venv-vllm/bin/python")
    import ray
    from ray.cluster_utils import Cluster

    args.out.mkdir(parents=True, exist_ok=True)
    dtype, why = native_dtype()
    print(f"compute dtype: {dtype} ({why})")
    began = time.perf_counter()
    params, points = build_policy(args.size, args.out / "init")
    print(f"policy: {params / 1e6:.0f}M parameters ({args.size}), built in {time.perf_counter() - began:.0f} s")
    memory = MemorySampler()
    fast = {"health_check_initial_delay_ms": 0, "health_check_period_ms": 1000, "health_check_failure_threshold": 5}
    cluster = Cluster(
        initialize_head=True,
        head_node_args={
            "num_cpus": 2,
            "include_dashboard": False,
            "labels": {ROLE: "head"},
            "object_store_memory": GIB,
            "_system_config": fast,
        },
    )
    store = int(args.store_gib * GIB)

    def add_node(role: str):
        return cluster.add_node(num_cpus=2, labels={ROLE: role}, object_store_memory=store)

    nodes = {name: add_node(role) for name, role in NODES.items()}
    ray.init(address=cluster.address, namespace="pointrl")
    cluster.wait_for_nodes()
    node_ids = {name: node.node_id for name, node in nodes.items()}
    checkpoint_at = args.steps - 3  # on disk once the next step is logged: the learner's node dies then
    run_dir = args.out / "run"
    engine = BACKENDS[args.backend]
    cfg = grca_config(run_dir, args.steps, points, dtype, f"checkpoint.every={checkpoint_at}", *engine)
    run = Run(cfg, args.out / "init", run_dir)

    # a rollout node dies as soon as step 1 is logged (step 2's rollouts are under way), and a new one joins once
    # step 2 is logged
    run.wait_for_steps(1)
    rollout_killed = node_of(nodes, "ray::RolloutWorker")
    kill_node(cluster, nodes, rollout_killed)
    print(f"killed rollout node {rollout_killed} in step 2")
    run.wait_for_steps(2)
    nodes["rollout-c"] = add_node("rollout")
    node_ids["rollout-c"] = nodes["rollout-c"].node_id
    # the learner's node dies after the checkpoint of step `checkpoint_at`
    run.wait_for_steps(checkpoint_at + 1)
    saved = run.rows()[checkpoint_at].get("time/checkpoint")  # the redone step's row will carry the restore instead
    learner_killed = node_of(nodes, "ray::RayTrainWorker")
    kill_node(cluster, nodes, learner_killed)
    print(f"killed learner node {learner_killed} after step {checkpoint_at + 1}")
    rows = run.finish()
    sync_bytes = int(rows[-1]["sync/mib"] * 2**20)
    rollout_nodes = [node.node_id for name, node in nodes.items() if name.startswith("rollout")]
    raw_s = raw_transfer(sync_bytes, rollout_nodes)

    lora_dir = args.out / "lora"
    lora_cfg = grca_config(lora_dir, 1, points, dtype, "policy.llm_mode=lora", "learner.strategy=ddp", *engine)
    lora_run = Run(lora_cfg, args.out / "init", lora_dir)
    lora_rows = lora_run.finish()
    lora_bytes = int(lora_rows[-1]["sync/mib"] * 2**20)
    lora_raw_s = raw_transfer(lora_bytes, rollout_nodes)
    memory.stop.set()
    memory.join()
    ray.shutdown()
    cluster.shutdown()

    checkpoints = sorted(p for p in (run_dir / "learner").glob("checkpoint_*") if p.is_dir())
    restored = [r for r in rows[1:] if "time/learner_start" in r]  # the first row's is the learner's first start
    workers = [r["rollout/workers"] for r in rows]
    result = {
        "policy": {
            "params": params,
            "dtype": f"{dtype} compute, float32 masters (FSDP2)",
            "why": why,
            "size": args.size,
        },
        "rollout_backend": args.backend,
        "cluster": {
            "nodes": 1 + len(NODES) + 1,
            "learner_nodes": [node_ids["learner"], node_ids["spare"]],
            "rollout_nodes": [node_ids[n] for n in ("rollout-a", "rollout-b", "rollout-c")],
        },
        "steps": [r["step"] for r in rows],
        "run_s": run.seconds,
        "step_s_median": median(rows, "time/step"),
        "phases_s": phases_of({f"time/{k}": median(rows, f"time/{k}") for k in (*PHASES, "step")}),
        "per_step": [{"step": r["step"], "workers": r["rollout/workers"], **phases_of(r)} for r in rows],
        "sync": {
            "bytes": sync_bytes,
            "s": median(rows, "time/sync"),
            "raw_s": raw_s,
            "ratio": median(rows, "time/sync") / raw_s,
            "lora": {"bytes": lora_bytes, "s": median(lora_rows, "time/sync"), "raw_s": lora_raw_s},
        },
        "checkpoint": {
            "save_s": saved,
            "restore_s": restored[0]["time/learner_start"] if restored else None,
            "gib": sum(f.stat().st_size for f in checkpoints[-1].rglob("*") if f.is_file()) / GIB if checkpoints else 0,
        },
        "peak_rss_gib": {
            "kind": "PSS",
            "total": memory.total,
            "at_peak": memory.at_peak,
            "per_process": dict(sorted(memory.per_process.items())),
        },
        "node_kill": {
            "rollout": {
                "node": rollout_killed,
                "in_step": 2,
                "workers_per_step": workers,
                "rejoined": workers[-1] == 2.0,
                "survived": [r["step"] for r in rows] == list(range(1, args.steps + 1)),
                "steps": [r["step"] for r in rows],
            },
            "learner": {
                "node": learner_killed,
                "after_step": checkpoint_at + 1,
                "restored_from_step": checkpoint_at,
                "survived": [r["step"] for r in rows] == list(range(1, args.steps + 1)),
                "steps": [r["step"] for r in rows],
            },
        },
    }
    (args.out / "scale.json").write_text(json.dumps(result, indent=1))
    (args.out / "scale.md").write_text(report(result, args.size) + "\n")
    print(report(result, args.size))


def report(result: dict, size: str) -> str:
    sync, checkpoint, kills = result["sync"], result["checkpoint"], result["node_kill"]
    top = sorted(result["peak_rss_gib"]["per_process"].items(), key=lambda kv: -kv[1])[:10]
    return "\n".join(
        [
            f"# bench-scale: {size}, {result['policy']['params'] / 1e6:.0f}M parameters, "
            f"{len(result['steps'])} GRCA steps on {result['cluster']['nodes']} nodes, "
            f"{result['rollout_backend']} rollouts",
            "",
            "| step | workers | " + " | ".join(result["phases_s"]) + " |",
            "|---|---|" + "---|" * len(result["phases_s"]),
            *[
                f"| {s['step']} | {s['workers']:.0f} | "
                + " | ".join(f"{s[name]:.2f}" for name in result["phases_s"])
                + " |"
                for s in result["per_step"]
            ],
            f"| median | | {' | '.join(f'{v:.2f}' for v in result['phases_s'].values())} |",
            "",
            "| what | value |",
            "|---|---|",
            f"| step, median | {result['step_s_median']:.1f} s |",
            f"| sync: bytes / time / raw object store / ratio | {sync['bytes'] / 2**20:.0f} MiB / {sync['s']:.2f} s / "
            f"{sync['raw_s']:.2f} s / {sync['ratio']:.2f}x |",
            f"| LoRA-only sync: bytes / time / raw object store | {sync['lora']['bytes'] / 2**20:.0f} MiB / "
            f"{sync['lora']['s']:.2f} s / {sync['lora']['raw_s']:.2f} s |",
            f"| checkpoint: save / restore / size | {checkpoint['save_s']:.1f} s / {checkpoint['restore_s']:.1f} s / "
            f"{checkpoint['gib']:.2f} GiB |",
            f"| rollout node killed in step 2 | workers per step {kills['rollout']['workers_per_step']}, "
            f"steps {kills['rollout']['steps']} |",
            f"| learner node killed after step {kills['learner']['after_step']} | "
            f"restored from step {kills['learner']['restored_from_step']}, steps {kills['learner']['steps']} |",
            f"| peak PSS, all processes | {result['peak_rss_gib']['total']:.1f} GiB |",
            *[
                f"| at that peak, {title} (x{kind['processes']}) | {kind['gib']:.2f} GiB |"
                for title, kind in result["peak_rss_gib"]["at_peak"].items()
                if kind["gib"] >= 0.05
            ],
            *[f"| peak PSS of one process, {name} | {gib:.2f} GiB |" for name, gib in top],
        ]
    )


if __name__ == "__main__":
    main(sys.argv[1:])
