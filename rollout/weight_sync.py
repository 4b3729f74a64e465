"""The one seam through which the learner's weights reach the rollout workers, as numbered versions.

Transport `ray` (the only one built): learner rank 0 puts the trainable CPU tensors into the object store itself
(`WeightSync.put`), in buckets of at most `bucket_mb` MiB (`sync.bucket_mb`, 512 by default). It reads them one at a
time from `rl.runtime.sharding.published_state` (under FSDP2 each is gathered whole as it comes, a collective every rank
runs) and puts each bucket as soon as it is full, so rank 0's host holds about one bucket, never the whole model, and
no object nears the object store's or msgpack's limits (a tensor larger than a bucket travels alone). It hands
the controller a `Published`: ObjectRefs wrapped in a dataclass. Ray resolves only ObjectRefs passed as top-level
arguments, so the 0.1-CPU controller relays the refs unread (`relay`) and every worker fetches the buckets itself
(`fetch`), zero-copy from its node's shared memory, and its policy takes those read-only views as its parameters
(no copy: a node holds one copy of a version however many workers read it).

A version is atomic: vision and LLM tensors are one `Published`; a worker fetches every bucket before it installs
anything, and `PointVLM.load_trainable_state_dict` refuses a set of names that is not exactly its trainable one, so
a worker holds all of version v or none of it. With `policy.llm_mode=lora` the trainable tensors are the adapters
plus the vision parts, so only those travel; the HF engine applies the adapters in its forward pass and the vLLM
engine merges them into the base weights before its reload (`rollout.vllm_engine.reload_groups`).

The `nccl` and `ipc` transports (vLLM's weight-transfer API: `init_weight_transfer_engine` / `update_weights`) need
GPUs and are not built; they are refused by name.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import TypeVar

import ray
import torch

from rollout.engine import check_version_order

T = TypeVar("T")
TRANSPORTS = ("ray", "nccl", "ipc")  # rl.config.SYNC_TRANSPORTS names the same (a test checks it)
BUILT = ("ray",)


@dataclass(frozen=True)
class Published:
    """One version's trainable tensors in the object store. `buckets` are ObjectRefs, each of a list of
    (name, dtype, shape, uint8 array); `names` and `nbytes` say what was sent (for metrics and tests)."""

    buckets: tuple
    names: tuple[str, ...]
    nbytes: int


class WeightSync:
    """The learner's side: `put(state)` -> `Published`. A transport that is not built is refused here too, for a
    caller that bypasses the config's check."""

    def __init__(self, transport: str = "ray", bucket_mb: float = 512.0):
        if transport not in TRANSPORTS:
            raise ValueError(f"sync.transport: expected one of {', '.join(TRANSPORTS)}, got {transport!r}")
        if transport not in BUILT:
            raise ValueError(
                f"sync.transport={transport} needs GPUs (vLLM's weight-transfer API) and is not built "
                "yet; use sync.transport=ray"
            )
        if bucket_mb < 0:
            raise ValueError(f"sync.bucket_mb: expected >= 0, got {bucket_mb}")
        self.transport, self.bucket_bytes = transport, int(bucket_mb * 2**20)

    def put(self, tensors: Mapping[str, torch.Tensor] | Iterable[tuple[str, torch.Tensor]]) -> Published:
        """`tensors` (a dict, or (name, tensor) pairs such as `rl.runtime.sharding.published_state`'s generator) into the
        object store, each bucket put as soon as it is full: a generator is read one tensor at a time, so the host
        holds about one bucket, never the model (with bucket_mb=0, the whole version is one object)."""
        pairs = tensors.items() if isinstance(tensors, Mapping) else tensors
        refs, names, nbytes = [], [], 0
        for bucket in bucketed((_encode(name, tensor) for name, tensor in pairs), _entry_bytes, self.bucket_bytes):
            refs.append(ray.put(bucket))
            names.extend(entry[0] for entry in bucket)
            nbytes += sum(map(_entry_bytes, bucket))
        return Published(buckets=tuple(refs), names=tuple(names), nbytes=nbytes)


def bucketed(items: Iterable[T], nbytes: Callable[[T], int], limit: int) -> Iterator[list[T]]:
    """`items` in their order, gathered into lists of at most `limit` bytes (0: one list); an item larger than
    `limit` goes alone. Lazy: a list is yielded as soon as the next item would overflow it, so a consumer that
    sends each list on holds about one `limit`, never all of `items`."""
    current, size = [], 0
    for item in items:
        n = nbytes(item)
        if current and limit and size + n > limit:
            yield current
            current, size = [], 0
        current.append(item)
        size += n
    if current:
        yield current


def _entry_bytes(entry: tuple) -> int:
    return entry[3].nbytes


def _encode(name: str, tensor: torch.Tensor) -> tuple:
    # the bytes as a numpy array: Ray stores numpy buffers out of band and a worker maps them without a copy
    # (a torch tensor would be pickled in band); uint8 also carries bfloat16, which numpy has no type for
    flat = tensor.detach().cpu().contiguous().reshape(-1)
    return name, flat.dtype, tuple(tensor.shape), flat.view(torch.uint8).numpy()


def fetch(published: Published) -> dict[str, torch.Tensor]:
    """The worker's side: every bucket of `published` fetched (all of them, before anything is installed)."""
    state = {}
    with warnings.catch_warnings():
        # the arrays are read-only views of shared memory; loading copies them into the policy's own parameters
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        for bucket in ray.get(list(published.buckets)):
            for name, dtype, shape, data in bucket:
                state[name] = torch.from_numpy(data).view(dtype).reshape(shape)
    if list(state) != list(published.names):
        raise RuntimeError(f"weight sync: fetched {len(state)} tensors, {len(published.names)} were published")
    return state


def load_published(engine, version: int, weights: Published | dict[str, torch.Tensor], rollback: bool = False) -> int:
    """Install `weights` (a `Published`, or tensors already at hand) in `engine` as `version`; an older version is
    refused before anything is fetched, unless `rollback` (a restored learner). Returns the version now loaded."""
    check_version_order(engine.version, version, rollback)
    if isinstance(weights, Published):
        # fetched views of the object store, which nobody writes: the policy takes them as its parameters
        engine.load_weights(fetch(weights), version, rollback, share=True)
    else:
        engine.load_weights(weights, version, rollback)
    return engine.version


def relay(workers: list, version: int, weights: Published, rollback: bool = False) -> None:
    """The controller's side: every worker fetches and installs `weights` as `version` (`rollback`: even if older
    than what it holds); the controller only forwards the refs (a dict of tensors here would mean it deserialized
    them, and re-sent them once per worker)."""
    if not isinstance(weights, Published):
        raise TypeError(
            f"weight sync: the controller relays a Published (object-store refs), got {type(weights).__name__}"
        )
    loaded = ray.get([worker.load_weights.remote(version, weights, rollback) for worker in workers])
    if any(v != version for v in loaded):
        raise RuntimeError(f"weight sync: workers report versions {loaded}, expected {version}")
