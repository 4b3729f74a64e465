"""The reward service under uvicorn, started for real on a free loopback port and hit with real requests."""

import json
from importlib import resources

import httpx
import pytest

from rewards import score_batch
from serve.server import running_server

EXAMPLE = json.loads(resources.files("serve").joinpath("example_request.json").read_text())
TOKEN = "s3cret-token"


@pytest.fixture(scope="module")
def url():
    with running_server(extra_args=("--max-body-mb", "0.05", "--max-samples", "8")) as base:
        yield base


@pytest.fixture(scope="module")
def guarded_url():
    with running_server(extra_args=("--token", TOKEN)) as base:
        yield base


def test_health_reports_limits(url):
    body = httpx.get(f"{url}/health").json()
    assert body["status"] == "ok" and body["max_samples"] == 8 and body["auth"] is False
    assert body["rewards"] == ["format", "answer", "bbox2d", "bbox3d", "kpts2d", "kpts3d", "rpc"]


def test_http_results_equal_the_in_process_results(url):
    response = httpx.post(f"{url}/v1/rewards", json=EXAMPLE)
    assert response.status_code == 200
    assert response.json()["results"] == score_batch(EXAMPLE["samples"], EXAMPLE["quant"])


def test_defects_in_model_text_are_zero_rewards_not_http_errors(url):
    samples = [{**EXAMPLE["samples"][0], "text": text} for text in ["", "{", '{"answer": "chair"', "```json\n{}\n```"]]
    response = httpx.post(f"{url}/v1/rewards", json={"samples": samples})
    assert response.status_code == 200
    results = response.json()["results"]
    assert [r["rewards"]["format"] for r in results] == [0.0] * 4
    assert all(r["errors"] for r in results)


@pytest.mark.parametrize(
    "body, status, names",
    [
        ({"samples": [{"text": "{}", "target": EXAMPLE["samples"][0]["target"]}]}, 422, "samples[0]"),
        (
            {"samples": [{**EXAMPLE["samples"][0], "camera": {**EXAMPLE["samples"][0]["camera"], "K": [[1, 0, 0]]}}]},
            422,
            "samples[0].camera.K",
        ),
        ({"samples": [EXAMPLE["samples"][0]], "quant": {"bins": 1}}, 422, "quant.bins"),
        ({"samples": [EXAMPLE["samples"][0]] * 9}, 413, "samples: 9 samples exceed the limit of 8"),
        ({"sample": []}, 422, "request"),
    ],
)
def test_request_defects_are_4xx_naming_the_field(url, body, status, names):
    response = httpx.post(f"{url}/v1/rewards", json=body)
    assert response.status_code == status
    assert names in response.json()["detail"]


def test_non_json_and_non_finite_bodies_are_422(url):
    body = json.dumps({"samples": [EXAMPLE["samples"][0]]})
    for broken in (b"{not json", body.replace('"bbox3d": [-0.45', '"bbox3d": [NaN', 1).encode()):
        response = httpx.post(f"{url}/v1/rewards", content=broken)
        assert response.status_code == 422 and "malformed" in response.json()["detail"]
    infinite = body.replace('"bbox3d": [-0.45', '"bbox3d": [1e999', 1).encode()
    response = httpx.post(f"{url}/v1/rewards", content=infinite)
    assert response.status_code == 422 and response.json()["detail"].startswith("samples[0].target.bbox3d")


def test_oversized_body_is_413_with_and_without_content_length(url):
    big = json.dumps({"samples": [{**EXAMPLE["samples"][0], "text": "x" * 60_000}]}).encode()
    response = httpx.post(f"{url}/v1/rewards", content=big)
    assert response.status_code == 413 and "limit" in response.json()["detail"]
    chunked = httpx.post(f"{url}/v1/rewards", content=iter([big[:30_000], big[30_000:]]))  # no Content-Length
    assert chunked.status_code == 413


def test_bearer_token_guards_the_scoring_route(guarded_url):
    assert httpx.get(f"{guarded_url}/health").status_code == 200
    assert httpx.post(f"{guarded_url}/v1/rewards", json=EXAMPLE).status_code == 401
    wrong = httpx.post(f"{guarded_url}/v1/rewards", json=EXAMPLE, headers={"authorization": "Bearer nope"})
    assert wrong.status_code == 401
    right = httpx.post(f"{guarded_url}/v1/rewards", json=EXAMPLE, headers={"authorization": f"Bearer {TOKEN}"})
    assert right.status_code == 200 and len(right.json()["results"]) == len(EXAMPLE["samples"])


def test_openapi_docs_and_debug_view(url):
    schema = httpx.get(f"{url}/openapi.json").json()
    assert {"RewardRequest", "SampleSpec", "CameraSpec", "RewardResponse"} <= set(schema["components"]["schemas"])
    assert "/v1/rewards" in schema["paths"]
    assert httpx.get(f"{url}/docs").status_code == 200
    page = httpx.get(f"{url}/").text
    assert "debug view" in page and "v1/rewards" in page
    assert httpx.get(f"{url}/example").json() == EXAMPLE


def test_huge_keypoint_count_is_422_naming_the_field(url):
    target = {**EXAMPLE["samples"][0]["target"], "num_kpts2d": 2**63}
    response = httpx.post(f"{url}/v1/rewards", json={"samples": [{**EXAMPLE["samples"][0], "target": target}]})
    assert response.status_code == 422
    assert response.json()["detail"].startswith("samples[0].target.num_kpts2d")


def test_lone_surrogate_in_text_is_scored_like_in_process(url):
    sample = EXAMPLE["samples"][0]
    body = json.dumps({"samples": [{**sample, "text": "\ud800" + sample["text"]}]})  # ensure_ascii: a raw \ud800 escape
    assert "\\ud800" in body
    response = httpx.post(f"{url}/v1/rewards", content=body.encode(), headers={"content-type": "application/json"})
    assert response.status_code == 200, response.text
    assert response.json()["results"] == score_batch([{**sample, "text": "\ud800" + sample["text"]}])


def test_openapi_states_the_bins_constraint(url):
    bins = httpx.get(f"{url}/openapi.json").json()["components"]["schemas"]["QuantSpec"]["properties"]["bins"]
    assert bins["minimum"] == 0 and bins["not"] == {"const": 1} and ">= 2" in bins["description"]


def test_non_json_content_type_is_415(url):
    body = json.dumps(EXAMPLE).encode()
    for ctype in ("text/plain", "application/x-www-form-urlencoded"):
        response = httpx.post(f"{url}/v1/rewards", content=body, headers={"content-type": ctype})
        assert response.status_code == 415 and "content-type" in response.json()["detail"]
    ok = httpx.post(f"{url}/v1/rewards", content=body, headers={"content-type": "application/json; charset=utf-8"})
    assert ok.status_code == 200
