"""`reward.replicas > 1` on a real local Ray cluster with the real Serve deployment: a step's samples go out as one
contiguous chunk per replica, every replica scores its own, the results come back in order, and a chunk that fails
leaves only its own samples missing."""

import json
from importlib import resources

import pytest

ray = pytest.importorskip("ray")
from ray import serve  # noqa: E402

from rewards import score_batch  # noqa: E402
from rl.runtime.reward_client import serve_rewards  # noqa: E402
from serve.ray_app import APP_NAME  # noqa: E402

EXAMPLE = json.loads(resources.files("serve").joinpath("example_request.json").read_text())
REPLICAS = 2


@pytest.fixture(scope="module")
def rewards(cluster):
    """The reward function a run with reward.mode=serve, reward.replicas=2 builds, and the deployment's handle."""
    score = serve_rewards(timeout_s=60, replicas=REPLICAS, cpus_per_replica=0.25)
    return score, serve.get_app_handle(APP_NAME)


def replica_load(handle) -> dict[str, tuple[int, int]]:
    """Each running replica's (score calls, samples) so far. A `served` call reaches one replica, the router's pick
    among idle ones is random, so ask until every replica has answered."""
    running = serve.status().applications[APP_NAME].deployments["RewardService"].replica_states.get("RUNNING", 0)
    seen: dict[str, tuple[int, int]] = {}
    for _ in range(200):
        report = handle.served.remote().result(timeout_s=30)
        seen[report["replica"]] = (report["calls"], report["samples"])
        if len(seen) == running:
            break
    return seen


def test_a_step_is_scored_by_every_replica_in_chunks_and_comes_back_in_order(rewards):
    score, handle = rewards
    samples = EXAMPLE["samples"] + EXAMPLE["samples"][:1]  # 5 samples: chunks of 3 and 2
    before = replica_load(handle)
    got = score(samples, EXAMPLE["quant"])
    after = replica_load(handle)
    assert got == score_batch(samples, EXAMPLE["quant"])
    assert len(after) == REPLICAS, after  # a fixed count, not autoscaling from one
    spread = sorted(tuple(a - b for a, b in zip(after[r], before.get(r, (0, 0)))) for r in after)
    assert spread == [(1, 2), (1, 3)]  # one request per replica, each a chunk of the step


def test_a_failing_chunk_leaves_only_its_own_samples_missing(rewards):
    score, _ = rewards
    good = EXAMPLE["samples"][:2]
    broken = [EXAMPLE["samples"][2], {"text": "{}", "target": EXAMPLE["samples"][0]["target"]}]  # no camera
    got = score(good + broken, EXAMPLE["quant"])
    assert got == [*score_batch(good, EXAMPLE["quant"]), None, None]
