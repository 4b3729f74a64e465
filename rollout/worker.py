"""Rollout workers: Ray actors that each hold a PointVLM loaded from a policy directory and an engine over it.

Workers take fractional CPUs (several share a 2-CPU machine), fetch the versioned trainable weights that the
learner put into the Ray object store themselves (rollout/weight_sync.py), and tag every batch with the version that
produced it. The driver shards prompts over them with `generate_on_workers`.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import ray
import torch

from data3d import Sample
from policies import PointVLM
from policies.roles import move_to, process_device
from rollout.batching import policy_inputs
from rollout.engine import RolloutBatch, RolloutEngine, SamplingConfig, concat_batches, split_evenly
from rollout.hf_engine import HFEngine
from rollout.weight_sync import Published, load_published

BACKENDS = ("hf", "vllm")


class StaleWeights(RuntimeError):
    """A worker asked to sample with a version it does not hold: Ray restarted it (from the initial policy) since
    the last weight sync."""


def make_engine(backend: str, policy: PointVLM, policy_dir: str | Path, version: int = 0, **options) -> RolloutEngine:
    """The `backend` engine over `policy` (loaded from `policy_dir`); `options` go to the vLLM engine only: the
    fields of `rl.config.VllmConfig` (`dataclasses.asdict(cfg.rollout.vllm)`), an unknown one refused by name."""
    if backend == "hf":
        if options:
            raise ValueError(f"the hf rollout backend takes no engine options, got {sorted(options)}")
        return HFEngine(policy, version)
    if backend == "vllm":
        from rollout.vllm_engine import VLLMEngine

        return VLLMEngine(policy_dir, policy=policy, version=version, **options)
    raise ValueError(f"unknown rollout backend {backend!r}: choose one of {BACKENDS}")


class RolloutWorker:
    """One policy copy and its engine. Use it as a Ray actor through `make_rollout_workers`; `policy_dir` must be
    readable where the actor runs. `policy_overrides` replace saved config fields (`PointVLM.from_pretrained`),
    e.g. the learner's llm_mode, so that the published trainable tensors fit. `torch_threads` caps torch's
    intra-op threads so that actors sharing CPUs do not oversubscribe them. The policy's modules (the whole policy
    with `hf`; the encoders, projectors and embedding table that build vLLM's prompt embeddings with `vllm`) live
    on the GPU Ray assigned to this actor, else on the CPU (`policies.roles.process_device`; `device` overrides)."""

    def __init__(
        self,
        policy_dir: str,
        backend: str = "hf",
        torch_threads: int = 1,
        version: int = 0,
        policy_overrides: dict | None = None,
        engine_options: dict | None = None,
        device: str | None = None,
    ):
        torch.set_num_threads(torch_threads)
        self.device = process_device("rollout", device)
        self.policy = PointVLM.from_pretrained(policy_dir, **(policy_overrides or {})).eval()
        self.backend = backend
        self.engine = make_engine(backend, self.policy, policy_dir, version, **(engine_options or {}))
        move_to(self.policy, self.device)  # after vLLM has taken its memory and freed the torch decoder

    @ray.method(concurrency_group="ping")
    def ping(self) -> str:
        """The id of the node this worker runs on (a worker that Ray placed again may be on another). It answers on a
        thread of its own (`make_rollout_workers`' concurrency group), so a worker busy generating for minutes still
        answers a fleet that asks who is alive after another worker died."""
        return ray.get_runtime_context().get_node_id()

    def version(self) -> int:
        return self.engine.version

    def generate(
        self,
        samples: list[Sample],
        sampling: SamplingConfig,
        quant=None,
        use_images: bool = True,
        version: int | None = None,
    ) -> RolloutBatch:
        """`sampling.n` responses per sample (rows sample-major), tagged with this worker's current version; with
        `version`, refused (`StaleWeights`) unless that is the version this worker holds."""
        if version is not None and self.engine.version != version:
            raise StaleWeights(f"rollout worker holds policy version {self.engine.version}, asked for {version}")
        inputs = policy_inputs(self.policy, samples, quant, use_images)
        return self.engine.generate(inputs, [s.uid for s in samples], sampling).cpu()

    def load_weights(self, version: int, weights: Published | dict[str, torch.Tensor], rollback: bool = False) -> int:
        """Install the trainable tensors published as `version`: a `Published` is fetched here, by this worker,
        from the object store (rollout.weight_sync); a version older than the loaded one is refused before any
        fetch, unless `rollback` (a learner restored from a checkpoint). Returns the version now loaded."""
        return load_published(self.engine, version, weights, rollback)

    def logprobs(
        self,
        samples: list[Sample],
        response_ids: torch.Tensor,
        response_mask: torch.Tensor,
        quant=None,
        use_images: bool = True,
    ) -> torch.Tensor:
        """This worker's raw log-probs (R, T) of responses to `samples`, R = len(samples) * G in the order of
        `generate` (the on-policy check compares them with the learner's)."""
        if self.backend == "vllm":
            raise ValueError(
                "RolloutWorker.logprobs: a vllm worker's torch policy holds no decoder (vLLM serves it); score with "
                "the learner's policy, or use the hf backend"
            )
        rows = response_ids.shape[0]
        if rows % len(samples):
            raise ValueError(f"{rows} responses do not split into groups over {len(samples)} samples")
        inputs = policy_inputs(self.policy, samples, quant, use_images).repeat_interleave(rows // len(samples))
        with torch.no_grad():
            return self.policy.logprobs(inputs, response_ids, response_mask).float().cpu()


def make_rollout_workers(
    n: int,
    policy_dir: str | Path,
    cpus_per_worker: float = 0.5,
    backend: str = "hf",
    torch_threads: int = 1,
    version: int = 0,
    gpus_per_worker: float = 0.0,
    policy_overrides: dict | None = None,
    engine_options: dict | None = None,
    placement_group=None,
    max_restarts: int = 0,
    device: str | None = None,
) -> list:
    """n `RolloutWorker` actors on the running Ray cluster, each loaded from `policy_dir` (with `policy_overrides`)
    at `version`; returns once all are up, so that a bad directory or a missing backend fails here rather than at
    the first rollout. With a reserved `placement_group` (rl.runtime.placement), worker i runs in its bundle i. A worker
    whose process dies is restarted by Ray up to `max_restarts` times, from `policy_dir` at `version`: whoever
    holds newer weights must publish them to it again (rl.runtime.controller does). `device`: see `RolloutWorker`."""
    if n < 1:
        raise ValueError(f"make_rollout_workers: need n >= 1 workers, got {n}")
    if backend not in BACKENDS:
        raise ValueError(f"unknown rollout backend {backend!r}: choose one of {BACKENDS}")
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    actor = ray.remote(concurrency_groups={"ping": 1})(RolloutWorker)
    workers = [
        actor.options(
            num_cpus=cpus_per_worker,
            num_gpus=gpus_per_worker,
            max_restarts=max_restarts,
            scheduling_strategy=None
            if placement_group is None
            else PlacementGroupSchedulingStrategy(placement_group, placement_group_bundle_index=i),
        ).remote(str(policy_dir), backend, torch_threads, version, policy_overrides, engine_options, device)
        for i in range(n)
    ]
    ray.get([w.ping.remote() for w in workers])
    return workers


def gather(refs: list) -> RolloutBatch:
    """The batches behind `refs` (in shard order) as one batch; raises if their policy versions differ."""
    return concat_batches(ray.get(list(refs)))


def launch_on_workers(
    workers: list,
    samples: list[Sample],
    sampling: SamplingConfig,
    quant=None,
    use_images: bool = True,
    version: int | None = None,
) -> list:
    """`samples` split evenly over `workers` and started concurrently; returns the refs for `gather`. A seeded
    `sampling` gives a shard whose first prompt is prompt p the seed `seed + p * n`: an engine that seeds prompt j of
    its shard with `seed + j * n` (vLLM) then gives every prompt the same stream whatever the number of workers.
    `version`: every worker must hold it (`RolloutWorker.generate`)."""
    refs, first = [], 0
    for worker, shard in zip(workers, split_evenly(samples, len(workers))):
        if shard:
            seed = None if sampling.seed is None else sampling.seed + first * sampling.n
            refs.append(worker.generate.remote(shard, replace(sampling, seed=seed), quant, use_images, version))
        first += len(shard)
    return refs


def generate_on_workers(*args, **kwargs) -> RolloutBatch:
    """`launch_on_workers(*args, **kwargs)`, then the batches gathered back in order."""
    return gather(launch_on_workers(*args, **kwargs))
