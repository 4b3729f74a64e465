"""The reward service as a Ray Serve deployment on a real local Ray cluster: through a handle, from an actor, over HTTP."""

import json
from importlib import resources

import httpx
import pytest

ray = pytest.importorskip("ray")
from ray import serve  # noqa: E402

from rewards import RequestError, score_batch  # noqa: E402
from serve.ray_app import deploy_rewards, reward_handle  # noqa: E402
from serve.server import free_port  # noqa: E402

EXAMPLE = json.loads(resources.files("serve").joinpath("example_request.json").read_text())


@pytest.fixture(scope="module")
def deployment():
    ray.init(num_cpus=2, include_dashboard=False, ignore_reinit_error=True)
    port = free_port()
    handle = deploy_rewards(port=port, max_replicas=2, num_cpus=0.25)
    yield handle, f"http://127.0.0.1:{port}"
    serve.shutdown()
    ray.shutdown()


def test_handle_results_equal_the_in_process_results(deployment):
    handle, _ = deployment
    expected = score_batch(EXAMPLE["samples"], EXAMPLE["quant"])
    assert handle.score.remote(EXAMPLE["samples"], EXAMPLE["quant"]).result() == expected


def test_other_actors_call_the_service_through_its_handle(deployment):
    @ray.remote(num_cpus=0.1)
    class Caller:
        def format_rewards(self, samples):
            return [r["rewards"]["format"] for r in reward_handle().score.remote(samples).result()]

    caller = Caller.remote()
    assert ray.get(caller.format_rewards.remote(EXAMPLE["samples"])) == [1.0, 1.0, 0.0, 1.0]


def test_http_through_the_serve_proxy(deployment):
    _, url = deployment
    response = httpx.post(f"{url}/v1/rewards", json=EXAMPLE, timeout=30)
    assert response.status_code == 200
    assert response.json()["results"] == score_batch(EXAMPLE["samples"], EXAMPLE["quant"])
    assert httpx.post(f"{url}/v1/rewards", json={"samples": [{"text": 1}]}, timeout=30).status_code == 422


def test_request_defects_through_the_handle_raise_a_named_error(deployment):
    handle, _ = deployment
    with pytest.raises(RequestError, match=r"samples\[0\]: Object missing required field `camera`"):
        handle.score.remote([{"text": "{}", "target": EXAMPLE["samples"][0]["target"]}]).result()
