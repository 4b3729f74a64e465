"""Rollout workers on a real local Ray cluster: two actors with half a CPU each share the prompts, receive versioned
weights through the object store, tag their batches with the version that produced them and refuse stale weights."""

import importlib.util
from dataclasses import replace

import pytest
import torch

ray = pytest.importorskip("ray")

from data3d import generate_sample  # noqa: E402
from policies import PointVLM, build_tiny_policy  # noqa: E402
from rollout import (  # noqa: E402
    RolloutWorker,
    SamplingConfig,
    generate_on_workers,
    make_rollout_workers,
    policy_inputs,
    split_evenly,
)

SAMPLING = SamplingConfig(n=3, max_new_tokens=16, seed=11)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    policy_dir = tmp_path_factory.mktemp("rollout") / "policy"
    build_tiny_policy(out_dir=policy_dir, seed=0)
    ray.init(num_cpus=2, include_dashboard=False, ignore_reinit_error=True)
    workers = make_rollout_workers(2, policy_dir, cpus_per_worker=0.5, torch_threads=1)
    yield policy_dir, workers
    ray.shutdown()


@pytest.fixture(scope="module")
def samples():
    return [generate_sample(0, i, num_points=256, image_size=32) for i in range(5)]


def perturbed(state, seed):
    """The state with noise on the point projector (what a learner step would change)."""
    generator = torch.Generator().manual_seed(seed)
    return {
        k: v + 0.05 * torch.randn(v.shape, generator=generator) if k.startswith("point_proj") else v
        for k, v in state.items()
    }


def versions(workers):
    return ray.get([w.version.remote() for w in workers])


def test_workers_share_two_cpus_and_generate_their_shards_in_order(cluster, samples):
    _, workers = cluster
    assert ray.available_resources().get("CPU") == pytest.approx(1.0)  # 2 x 0.5 CPU held, room for more
    batch = generate_on_workers(workers, samples, SAMPLING)
    assert batch.uids == [s.uid for s in samples] and batch.response_ids.shape[0] == 5 * SAMPLING.n
    assert batch.version == versions(workers)[0] and len(batch.texts) == 15
    # each shard is what its worker samples on its own with the shard's seed (seed + first prompt * n), so the
    # gather kept the order
    shards = split_evenly(samples, 2)
    firsts = [0, len(shards[0])]
    own = ray.get(
        [
            w.generate.remote(s, replace(SAMPLING, seed=SAMPLING.seed + first * SAMPLING.n), None, True)
            for first, w, s in zip(firsts, workers, shards)
        ]
    )
    assert batch.texts == own[0].texts + own[1].texts
    rows, width = own[0].response_ids.shape
    assert torch.equal(batch.response_ids[:rows, :width], own[0].response_ids)
    assert torch.equal(batch.logprobs[rows:, : own[1].logprobs.shape[1]], own[1].logprobs)


def test_weight_sync_bumps_the_version_and_changes_the_rollout_policy(cluster, samples):
    policy_dir, workers = cluster
    learner = PointVLM.from_pretrained(policy_dir).eval()
    current = max(versions(workers))
    fixed = learner.tokenize_responses(['{"answer": "chair", "bbox3d": [1, 2, 3, 4, 5, 6]}'] * 2)
    before = ray.get(workers[0].logprobs.remote(samples[:2], *fixed))

    state = perturbed(learner.trainable_state_dict(), seed=current)
    learner.load_trainable_state_dict(state)
    state_ref = ray.put(state)
    assert ray.get([w.load_weights.remote(current + 1, state_ref) for w in workers]) == [current + 1] * 2
    assert versions(workers) == [current + 1] * 2

    after = ray.get(workers[0].logprobs.remote(samples[:2], *fixed))
    assert not torch.allclose(before, after, atol=1e-3)

    batch = generate_on_workers(workers, samples, SAMPLING)
    assert batch.version == current + 1


def test_rollout_logprobs_equal_the_learners_right_after_a_sync(cluster, samples):
    policy_dir, workers = cluster
    learner = PointVLM.from_pretrained(policy_dir).eval()
    current = max(versions(workers))
    state = perturbed(learner.trainable_state_dict(), seed=100 + current)
    learner.load_trainable_state_dict(state)
    ray.get([w.load_weights.remote(current + 1, ray.put(state)) for w in workers])

    batch = generate_on_workers(workers, samples, SAMPLING)
    with torch.no_grad():
        relearned = learner.logprobs(
            policy_inputs(learner, samples).repeat_interleave(SAMPLING.n), batch.response_ids, batch.response_mask
        )
    assert batch.version == current + 1
    assert torch.allclose(batch.logprobs, relearned, atol=1e-4)  # float32 CPU: batched vs. cached decoding


def test_stale_weights_are_refused_and_mixed_versions_cannot_be_gathered(cluster, samples):
    policy_dir, workers = cluster
    current = max(versions(workers))
    state = PointVLM.from_pretrained(policy_dir).trainable_state_dict()
    with pytest.raises(ValueError, match=f"refusing weights of version {current - 1}"):
        ray.get(workers[0].load_weights.remote(current - 1, state))
    assert versions(workers) == [current, current]

    ray.get(workers[0].load_weights.remote(current + 1, state))
    with pytest.raises(ValueError, match=rf"disagree on version: \[{current + 1}, {current}\]"):
        generate_on_workers(workers, samples, SAMPLING)
    ray.get(workers[1].load_weights.remote(current + 1, state))
    assert generate_on_workers(workers, samples[:2], SAMPLING).version == current + 1


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vllm is installed here")
def test_a_vllm_worker_without_vllm_fails_at_creation_with_the_install_hint(cluster):
    policy_dir, _ = cluster
    with pytest.raises(Exception, match=r"pip install 'pointrl\[gpu\]'"):
        make_rollout_workers(1, policy_dir, backend="vllm")


def test_a_worker_built_in_the_learners_llm_mode_takes_its_lora_weights(cluster, samples):
    policy_dir, _ = cluster
    threads = torch.get_num_threads()
    try:
        worker = RolloutWorker(str(policy_dir), policy_overrides={"llm_mode": "lora", "lora_r": 4})
    finally:
        torch.set_num_threads(threads)  # the worker caps threads for its actor process, not for this test process
    learner = PointVLM.from_pretrained(policy_dir, llm_mode="lora", lora_r=4)
    assert set(worker.policy.trainable_state_dict()) == set(learner.trainable_state_dict())
    assert any("lora_B" in k for k in learner.trainable_state_dict())
    state = {k: v + 0.05 if "lora_B" in k else v for k, v in learner.trainable_state_dict().items()}
    fixed = learner.tokenize_responses(['{"answer": "mug"}'])
    before = worker.logprobs(samples[:1], *fixed)
    assert worker.load_weights(1, state) == 1 and worker.version() == 1
    assert not torch.allclose(before, worker.logprobs(samples[:1], *fixed), atol=1e-3)


def test_a_worker_busy_generating_answers_a_ping(cluster, samples):
    """The fleet pings the workers left after one died; a survivor in the middle of a long generate must answer
    within rollout.answer_wait_s, not after its generate (at 0.5B a generate takes minutes)."""
    _, workers = cluster
    long = replace(SAMPLING, max_new_tokens=1000, min_new_tokens=1000)  # seconds of decoding, whatever the CPU
    busy = workers[0].generate.remote(samples, long, None, True)
    ping = workers[0].ping.remote()  # sent after the generate: in one queue it would run after it
    ready, _ = ray.wait([ping, busy], num_returns=1, timeout=120)
    assert ready == [ping]  # the ping answered while the generate still ran
    assert ray.get(busy).response_ids.shape[1] == 1000


def test_a_stage_without_rollout_workers_has_an_empty_fleet_that_runs_calls_on_none():
    from rl.runtime.fleet import Fleet

    assert Fleet([], answer_wait_s=5).run("weight sync", len) == 0  # SFT and DPO publish to no worker


def test_a_fleet_goes_on_without_a_worker_gone_for_good_and_stops_in_one_line_with_none(cluster, samples):
    from rl.runtime.fleet import Fleet, NoRolloutWorkers

    policy_dir, _ = cluster
    fleet = Fleet(make_rollout_workers(2, policy_dir, cpus_per_worker=0.25, max_restarts=0), answer_wait_s=5)
    whole = fleet.run("rollout", lambda workers: generate_on_workers(workers, samples, SAMPLING))
    ray.kill(fleet.workers[0], no_restart=True)
    # the call fails on the dead worker and is redone, every prompt on the other
    alone = fleet.run("rollout", lambda workers: generate_on_workers(workers, samples, SAMPLING))
    assert fleet.live == [1] and fleet.failures == 1 and not fleet.returning  # dead for good: not waited for
    assert alone.uids == whole.uids and len(alone.texts) == len(whole.texts) == 5 * SAMPLING.n
    ray.kill(fleet.workers[1], no_restart=True)
    with pytest.raises(NoRolloutWorkers, match="no rollout worker answered within rollout.answer_wait_s=5 s"):
        fleet.run("rollout", lambda workers: generate_on_workers(workers, samples, SAMPLING))
    # asked again (the other learner rank's call): the same one line, not a split of the prompts over no worker
    with pytest.raises(NoRolloutWorkers, match="no rollout worker answered"):
        fleet.run("rollout", lambda workers: generate_on_workers(workers, samples, SAMPLING))
