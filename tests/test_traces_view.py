"""`pointrl traces` on a real server on 127.0.0.1 (the command itself, in a child process) over conftest's two traced
runs (GRCA and broadcast GRPO): the JSON API a script calls, its one-line refusals and its token auth; then headless
Chromium draws the list, a sample page (the cloud in WebGL, the image with its boxes, the shaded answer) and the two
runs side by side, and takes screenshots (set POINTRL_SCREENSHOTS=DIR to keep them, e.g. for docs/)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from rewards.schema import FIELDS, REWARDS
from serve.server import running_server
from tests.chromium import Chromium

ROOT = Path(__file__).resolve().parents[1]


def get(url: str, **kwargs) -> httpx.Response:
    """A GET with room for a loaded machine (httpx waits 5 s by default; a first sample page reads the tokenizer)."""
    return httpx.get(url, timeout=60, **kwargs)


def viewer(*runs: str, extra_args: tuple[str, ...] = ()):
    """`pointrl traces RUNS` in a child process on a free loopback port (yields its base URL once it is healthy)."""
    return running_server(extra_args=extra_args, module=("rl.cli", "traces", *runs))


@pytest.fixture(scope="module")
def url(traced_runs):
    with viewer(str(traced_runs["grca"]), str(traced_runs["grpo"])) as base:
        yield base


def test_steps_and_samples_list_what_was_traced(url, traced_runs):
    runs = get(f"{url}/api/runs").json()
    assert [r["path"] for r in runs] == [str(traced_runs["grca"]), str(traced_runs["grpo"])]
    steps = get(f"{url}/api/steps").json()
    assert [(s["step"], s["kind"], s["samples"]) for s in steps] == [(1, "train", 8), (2, "train", 8)]
    assert set(steps[0]["rewards"]) == set(REWARDS)
    listed = get(f"{url}/api/samples", params={"step": 2}).json()
    assert [s["sample_id"] for s in listed] == [f"train-000002-{k:04d}" for k in range(8)]
    uid = listed[0]["uid"]
    assert {s["uid"] for s in get(f"{url}/api/samples", params={"uid": uid}).json()} == {uid}
    low = get(f"{url}/api/samples", params={"field": "bbox3d", "max": 0.5}).json()
    assert all(s["reward_bbox3d"] <= 0.5 for s in low)
    failed = get(f"{url}/api/samples", params={"failed": "any"}).json()
    assert all(any(s[f"invalid_{f}"] for f in FIELDS) for s in failed)
    assert len(get(f"{url}/api/samples", params={"run": 1}).json()) == 16


def test_a_sample_has_one_advantage_and_log_prob_per_token_and_its_object(url):
    sample = get(f"{url}/api/sample/train-000001-0002").json()
    tokens = sample["tokens"]
    assert tokens and len(sample["advantages"]) == len(tokens) == len(sample["token_fields"])
    assert len(sample["logprobs"]["rollout"]) == len(sample["logprobs"]["learner"]) == len(tokens)
    assert sample["logprobs"]["learner_from"] == "learner"
    assert "".join(tokens) == sample["response"]  # the tokens' character ranges tile the response
    assert set(sample["spans"]) == set(FIELDS) and set(sample["rewards"]) == set(REWARDS)
    for field, span in sample["spans"].items():
        if span is not None:
            owned = "".join(t for t, f in zip(tokens, sample["token_fields"]) if f == field)
            assert sample["response"][span[0] : span[1]] in owned  # a field's tokens write its whole span
    drawn = get(f"{url}/api/object/train-000001-0002").json()
    assert drawn["uid"] == sample["uid"] and len(drawn["points"][0]) == 6
    assert drawn["geometry"]["target"]["bbox2d"] and len(drawn["target3d"]["bbox3d"]) == 6


@pytest.mark.parametrize(
    "path, params, status, detail",
    [
        ("/api/steps", {"run": 5}, 404, "run: 5 is not one of the 2 runs shown (0 to 1)"),
        ("/api/samples", {"step": "two"}, 422, "step: Input should be a valid integer"),
        ("/api/samples", {"field": "color", "min": 0.2}, 422, "field: a reward range needs field, one of"),
        ("/api/samples", {"failed": "color"}, 422, "failed: expected any or one of"),
        ("/api/sample/train-000009-0000", {}, 404, "no train trace of step 9"),
        ("/api/sample/nonsense", {}, 404, "'nonsense' is not a sample id"),
        ("/api/object/train-000001-0099", {}, 404, "step 1 traced 8 train samples"),
    ],
)
def test_bad_input_is_one_line(url, path, params, status, detail):
    response = get(f"{url}{path}", params=params)
    assert response.status_code == status
    assert detail in response.json()["detail"] and "\n" not in response.json()["detail"]


def test_the_token_guards_the_api_and_exposing_the_viewer_needs_one(traced_runs):
    with viewer(str(traced_runs["grca"]), extra_args=("--token", "s3cret")) as base:
        assert get(f"{base}/api/steps").status_code == 401
        assert get(f"{base}/api/steps", headers={"authorization": "Bearer s3cret"}).status_code == 200
        assert get(f"{base}/").status_code == 200  # the pages hold no data; they send ?token= to the API
    refused = subprocess.run(
        [sys.executable, "-m", "rl.cli", "traces", str(traced_runs["grca"]), "--host", "0.0.0.0"],
        env={**{k: v for k, v in os.environ.items() if k != "POINTRL_REWARDS_TOKEN"}, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
    )
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1 and "Traceback" not in refused.stderr


def page_errors(browser: Chromium) -> list:
    return [e for e in browser.events if e.get("method") in ("Runtime.exceptionThrown", "Log.entryAdded")
            and (e["method"] == "Runtime.exceptionThrown" or e["params"]["entry"]["level"] == "error")]  # fmt: skip


def test_the_pages_draw_in_headless_chromium(url, tmp_path):
    binary = shutil.which("chromium")
    if binary is None:
        pytest.skip("headless Chromium is not installed (Debian package `chromium`)")
    shots = Path(os.environ.get("POINTRL_SCREENSHOTS", tmp_path))
    shots.mkdir(parents=True, exist_ok=True)
    browser = Chromium(binary, str(tmp_path / "profile"))
    try:
        browser.open(f"{url}/")
        browser.wait_for("document.body.dataset.listed === '16'")
        listed = browser.evaluate("document.querySelectorAll('#samples tr').length")
        browser.screenshot(shots / "traces_list.png")
        best = max(get(f"{url}/api/samples").json(), key=lambda s: s["reward_bbox3d"])["sample_id"]
        browser.open(f"{url}/sample/{best}")
        browser.wait_for("document.body.dataset.drawn !== undefined", timeout_s=30)
        sample = get(f"{url}/api/sample/{best}").json()
        page = browser.evaluate(
            """({tokens: document.querySelectorAll('#answer .token').length,
                 text: document.getElementById('answer').textContent,
                 drawn: +document.body.dataset.drawn,
                 webgl: !!document.querySelector('#cloud canvas').getContext('webgl2'),
                 boxes: document.querySelectorAll('#picture polygon').length,
                 edges: document.querySelectorAll('#picture line').length,
                 bars: document.querySelectorAll('#logprobs rect.diff').length,
                 compare: document.querySelector('#compare a').getAttribute('href')})"""
        )
        browser.screenshot(shots / "traces_sample.png")
        browser.open(f"{url}{page['compare']}")
        browser.wait_for("document.body.dataset.ready === '2'", timeout_s=30)
        columns = browser.evaluate(
            "Array.from(document.querySelectorAll('.run')).map(r => r.querySelectorAll('.answer').length)"
        )
        browser.screenshot(shots / "traces_compare.png")
        errors = page_errors(browser)
    finally:
        browser.close()
    assert listed == 17 and not errors  # a header and 16 samples
    assert page["tokens"] == len(sample["tokens"]) and page["text"] == sample["response"]
    assert page["webgl"] and page["drawn"] >= 3  # the cloud, the target box and the predicted box (when it parsed)
    assert (
        page["boxes"] == 2 and page["edges"] == 24
    )  # both 2D boxes, both 3D boxes projected (the best parsed) and page["bars"] == len(sample["tokens"])
    assert columns == [4, 4]  # the object's group of 4 at that step, GRCA beside GRPO
    for name in ("traces_list.png", "traces_sample.png", "traces_compare.png"):
        assert (shots / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
