"""Weight sync on a real local Ray cluster: the learner puts the tensors into the object store, a bucket at a time as
they come, a real Controller relays only their refs, and each rollout worker fetches them itself and ends up with the
learner's exact tensors, whole versions only (rollout/weight_sync.py). Under FSDP2 (2 gloo ranks) only rank 0 yields
the gathered tensors (rl/runtime/sharding.py: published_state)."""

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

ray = pytest.importorskip("ray")

from data3d import generate_sample  # noqa: E402
from policies import PointVLM, build_tiny_policy  # noqa: E402
from policies.vlm import VISION_PARTS  # noqa: E402
from rl.config import SYNC_TRANSPORTS, ConfigError, policy_overrides  # noqa: E402
from rl.config_loading import config_to_dict, load_config  # noqa: E402
from rl.runtime.controller import Controller  # noqa: E402
from rl.runtime.sharding import published_state, shard_policy  # noqa: E402
from rollout import make_rollout_workers, policy_inputs  # noqa: E402
from rollout.weight_sync import TRANSPORTS, Published, WeightSync, fetch  # noqa: E402


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A tiny policy, a real Controller (local rewards) with its 2 rollout workers, and the learner's config."""
    root = tmp_path_factory.mktemp("sync")
    build_tiny_policy(out_dir=root / "policy", seed=0)
    cfg = load_config(
        "grca.yaml",
        ["reward.mode=local", "rollout.num_workers=2", "rollout.cpus_per_worker=0.5", f"run.dir={root / 'run'}"],
    )
    ray.init(num_cpus=2, include_dashboard=False, namespace="pointrl")
    controller = Controller.remote(config_to_dict(cfg), str(root / "policy"), str(root / "run"))
    workers = ray.get(controller.__ray_call__.remote(lambda c: c.fleet.workers))
    yield root / "policy", cfg, controller, workers
    ray.kill(controller)
    ray.shutdown()


def noisy(state: dict, seed: int) -> dict:
    """Every tensor changed, as a learner step would (LLM and vision alike)."""
    generator = torch.Generator().manual_seed(seed)
    return {k: v + 0.01 * torch.randn(v.shape, generator=generator) for k, v in state.items()}


def held(worker) -> dict:
    return ray.get(worker.__ray_call__.remote(lambda w: w.engine.policy.trainable_state_dict()))


def versions(workers) -> list[int]:
    return ray.get([w.version.remote() for w in workers])


def assert_workers_hold(workers, state: dict, version: int) -> None:
    assert versions(workers) == [version] * len(workers)
    for worker in workers:
        tensors = held(worker)
        assert list(tensors) == list(state)
        assert all(torch.equal(tensors[k], state[k]) for k in state)  # bitwise


@pytest.mark.parametrize("bucket_mb", [0.0, 0.01])
def test_a_sync_leaves_every_worker_with_the_learners_exact_tensors(setup, bucket_mb):
    policy_dir, cfg, controller, workers = setup
    version = max(versions(workers)) + 1
    state = noisy(PointVLM.from_pretrained(policy_dir, **policy_overrides(cfg)).trainable_state_dict(), version)
    published = WeightSync("ray", bucket_mb).put(state)
    nbytes = sum(t.nbytes for t in state.values())
    assert published.names == tuple(state) and published.nbytes == nbytes
    if bucket_mb:  # 10 KiB buckets: many objects, each within the bound unless one tensor alone exceeds it
        sizes = [sum(e[3].nbytes for e in bucket) for bucket in ray.get(list(published.buckets))]
        assert len(sizes) > 10 and sum(sizes) == nbytes
        assert all(
            size <= 0.01 * 2**20 or len(bucket) == 1 for size, bucket in zip(sizes, ray.get(list(published.buckets)))
        )
    else:
        assert len(published.buckets) == 1
    ray.get(controller.publish.remote(version, published))
    assert_workers_hold(workers, state, version)
    assert ray.get(controller.__ray_call__.remote(lambda c: c.fleet.version)) == version


def _shares_the_store(worker, published) -> bool:
    # runs in a rollout worker: each parameter's memory is the object store's copy of its tensor, which this
    # process maps once (a second get of the bucket returns the same address)
    params = dict(worker.engine.policy.named_parameters())
    entries = [entry for bucket in ray.get(list(published.buckets)) for entry in bucket]
    return all(params[name].data_ptr() == data.ctypes.data for name, _, _, data in entries)


def test_a_worker_takes_the_fetched_tensors_as_its_parameters_without_a_copy(setup):
    policy_dir, cfg, controller, workers = setup
    version = max(versions(workers)) + 1
    state = noisy(PointVLM.from_pretrained(policy_dir, **policy_overrides(cfg)).trainable_state_dict(), version)
    published = WeightSync("ray").put(state)
    ray.get(controller.publish.remote(version, published))
    assert ray.get([w.__ray_call__.remote(_shares_the_store, published) for w in workers]) == [True, True]
    samples = [generate_sample(0, 0, num_points=256, image_size=32, num_kpts=1)]
    learner = PointVLM.from_pretrained(policy_dir, **policy_overrides(cfg))
    learner.load_trainable_state_dict(state)
    inputs = policy_inputs(learner, samples)
    ids, mask = learner.tokenize_responses(['{"answer": "chair"}'])
    with torch.no_grad():
        expected = learner.logprobs(inputs, ids, mask)
    worker_logprobs = ray.get(workers[0].logprobs.remote(samples, ids, mask))
    assert torch.allclose(worker_logprobs, expected, atol=1e-6)  # the shared parameters compute what copies do


def test_the_controller_relays_refs_and_never_takes_tensors(setup):
    policy_dir, cfg, controller, workers = setup
    state = PointVLM.from_pretrained(policy_dir, **policy_overrides(cfg)).trainable_state_dict()
    published = WeightSync(bucket_mb=0.05).put(state)
    # what an argument wrapped like this is inside the controller: the dataclass with its refs, not tensors
    seen = ray.get(
        controller.__ray_call__.remote(
            lambda c, p: (type(p).__name__, {type(b).__name__ for b in p.buckets}), published
        )
    )
    assert seen == ("Published", {"ObjectRef"})
    before = versions(workers)
    with pytest.raises(TypeError, match="relays a Published"):
        ray.get(controller.publish.remote(max(before) + 1, state))  # tensors themselves are refused
    assert versions(workers) == before


def test_a_stale_version_is_refused_before_anything_is_fetched(setup):
    policy_dir, cfg, controller, workers = setup
    version = max(versions(workers)) + 1
    state = noisy(PointVLM.from_pretrained(policy_dir, **policy_overrides(cfg)).trainable_state_dict(), 50 + version)
    ray.get(controller.publish.remote(version, WeightSync().put(state)))
    older = WeightSync().put(noisy(state, 7))
    with pytest.raises(ValueError, match=f"refusing weights of version {version - 1}"):
        ray.get(controller.publish.remote(version - 1, older))
    # a bucket that is not weights at all: the version check comes first, so it is never fetched
    junk = Published(buckets=(ray.put("not a bucket"),), names=(), nbytes=0)
    with pytest.raises(ValueError, match=f"refusing weights of version {version - 1}"):
        ray.get(workers[0].load_weights.remote(version - 1, junk))
    assert_workers_hold(workers, state, version)


def test_lora_sync_sends_adapters_and_vision_and_the_worker_matches_the_merged_policy(setup, tmp_path):
    policy_dir, _, _, _ = setup
    lora = {"llm_mode": "lora", "lora_r": 4}
    (worker,) = make_rollout_workers(1, policy_dir, cpus_per_worker=0.5, policy_overrides=lora)
    learner = PointVLM.from_pretrained(policy_dir, **lora).eval()
    state = {
        k: v + 0.05 if "lora_B" in k or k.startswith("point_proj") else v
        for k, v in learner.trainable_state_dict().items()
    }
    learner.load_trainable_state_dict(state)
    published = WeightSync().put(learner.trainable_state_dict())

    adapters = [n for n in published.names if ".lora_A." in n or ".lora_B." in n]
    vision = [n for n in published.names if n.split(".")[0] in VISION_PARTS]
    assert adapters and vision and sorted(adapters + vision) == sorted(published.names)
    full_bytes = sum(p.numel() * p.element_size() for p in learner.parameters())
    assert published.nbytes == sum(t.nbytes for t in state.values()) < full_bytes / 2

    samples = [generate_sample(0, i, num_points=256, image_size=32) for i in range(2)]
    fixed = learner.tokenize_responses(['{"answer": "chair", "bbox3d": [1, 2, 3, 4, 5, 6]}'] * 2)
    before = ray.get(worker.logprobs.remote(samples, *fixed))
    assert ray.get(worker.load_weights.remote(1, published)) == 1
    after = ray.get(worker.logprobs.remote(samples, *fixed))
    learner.save_pretrained(tmp_path / "merged")  # LoRA merged into plain weights, as vLLM receives them
    merged = PointVLM.from_pretrained(tmp_path / "merged", llm_mode="full").eval()
    with torch.no_grad():
        expected = merged.logprobs(policy_inputs(merged, samples), *fixed).float()
    assert not torch.allclose(before, after, atol=1e-3)
    assert torch.allclose(after, expected, atol=1e-5)
    ray.kill(worker)


def test_unbuilt_transports_are_refused_in_one_line():
    assert SYNC_TRANSPORTS == TRANSPORTS
    with pytest.raises(ConfigError, match=r"sync.transport: expected ray \(nccl and ipc need GPUs.*not built yet"):
        load_config("grca.yaml", ["sync.transport=nccl"])
    with pytest.raises(ValueError, match="sync.transport=ipc needs GPUs .* not built yet"):
        WeightSync("ipc")


def test_a_generator_is_bucketed_as_it_is_read_and_no_bucket_exceeds_the_limit(setup, monkeypatch):
    # 40 tensors of 1-40 KiB and one of 300 KiB, in buckets of at most 100 KiB
    sizes = [1 + i for i in range(20)] + [300] + [21 + i for i in range(20)]
    tensors = [(f"t{i}", torch.full((kib * 256,), float(i))) for i, kib in enumerate(sizes)]
    taken, taken_at_put = [0], []

    def stream():
        for pair in tensors:
            taken[0] += 1
            yield pair

    real_put = ray.put

    def put(value):  # the real ray.put, recording how much of the generator had been read when it ran
        taken_at_put.append(taken[0])
        return real_put(value)

    monkeypatch.setattr(ray, "put", put)
    published = WeightSync(bucket_mb=100 / 1024).put(stream())
    monkeypatch.undo()
    buckets = ray.get(list(published.buckets))
    limit = 100 * 2**10
    sizes_of = [sum(e[3].nbytes for e in bucket) for bucket in buckets]
    assert all(size <= limit or len(bucket) == 1 for size, bucket in zip(sizes_of, buckets))
    assert [len(b) for b in buckets if sum(e[3].nbytes for e in b) > limit] == [1]  # the 300 KiB tensor, alone
    # greedy: a bucket closed only because the next tensor would not fit
    assert all(size + first[0][3].nbytes > limit for size, first in zip(sizes_of, buckets[1:]))
    # lazily: each bucket was put when the tensor that overflowed it had been read, not after the whole stream
    assert taken_at_put == [sum(map(len, buckets[: i + 1])) + 1 for i in range(len(buckets) - 1)] + [len(tensors)]
    assert all(torch.equal(fetched, tensors[i][1]) for i, fetched in enumerate(fetch(published).values()))


def published_on_rank(rank: int, store: str, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    try:
        policy = build_tiny_policy(seed=0)
        shard_policy(policy, torch.device("cpu"), 2)
        tensors = published_state(policy, rank)
        kept = [(name, tensor) for name, tensor in tensors]  # every rank runs all the gathers, in order
        torch.save(dict(kept), f"{out}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_under_fsdp2_only_rank_0_yields_the_gathered_tensors(tmp_path):
    mp.spawn(published_on_rank, args=(str(tmp_path / "store"), str(tmp_path)), nprocs=2, join=True)
    whole = build_tiny_policy(seed=0).trainable_state_dict()
    on_rank0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    assert torch.load(tmp_path / "rank1.pt", weights_only=True) == {}  # rank 1 gathered, kept nothing
    assert list(on_rank0) == list(whole)
    assert all(t.device.type == "cpu" and torch.equal(t, whole[k]) for k, t in on_rank0.items())
