"""The reward function a training run builds for `reward.mode=serve`, on a real local Ray cluster."""

import json
from importlib import resources

import pytest

ray = pytest.importorskip("ray")
from ray import serve  # noqa: E402

from rewards import score_batch  # noqa: E402
from rl.runtime.reward_client import serve_rewards  # noqa: E402
from serve.ray_app import APP_NAME  # noqa: E402

EXAMPLE = json.loads(resources.files("serve").joinpath("example_request.json").read_text())


def test_training_deploys_the_reward_service_with_its_handle_alone_and_no_http_proxy():
    ray.init(num_cpus=2, include_dashboard=False)
    try:
        score = serve_rewards(timeout_s=30, replicas=1, cpus_per_replica=0.25)
        assert score(EXAMPLE["samples"], EXAMPLE["quant"]) == score_batch(EXAMPLE["samples"], EXAMPLE["quant"])
        status = serve.status()
        # a proxy would poll its routes beside the rollout and the learner on every node, for no caller
        assert status.proxies == {}
        assert list(status.applications[APP_NAME].deployments) == ["RewardService"]
    finally:
        serve.shutdown()
        ray.shutdown()
