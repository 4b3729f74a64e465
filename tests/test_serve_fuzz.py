"""Fuzzing the real reward service on loopback: random and adversarial model texts and request bodies.

Every answer is below 500; a request built from valid targets and cameras (whatever its texts) is a 200 whose results
equal `rewards.reference`; the server's memory stays bounded. In the suite the examples are bounded and derandomized
(fast and repeatable); `POINTRL_FUZZ_EXAMPLES=3000` runs a longer search with fresh random examples.
"""

from __future__ import annotations

import json
import os

import httpx
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from rewards.reference import reference_score_batch
from serve.server import server_process
from tests.test_rewards_contract import CAMERA, PREDICTION, TARGET

EXAMPLES = int(os.environ.get("POINTRL_FUZZ_EXAMPLES", "250"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize="POINTRL_FUZZ_EXAMPLES" not in os.environ,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
COUNTS = {"requests": 0, "5xx": 0}
SURROGATE_FREE = str.maketrans({code: "\ufffd" for code in range(0xD800, 0xE000)})

# Pieces of JSON and near-JSON that break parsers: structure, escapes, numbers past every limit, fences, unicode.
TOKENS = [
    "{",
    "}",
    "[",
    "]",
    ":",
    ",",
    " ",
    "\n",
    '"',
    "\\",
    '"answer"',
    '"description"',
    '"bbox2d"',
    '"bbox3d"',
    '"kpts2d"',
    '"kpts3d"',
    '"chair"',
    '"\\u00e9"',
    '"\\ud800"',
    '"\\"}"',
    "0",
    "-0",
    "12",
    "1.5",
    "1e999",
    "-1e999",
    "NaN",
    "Infinity",
    "true",
    "null",
    "9" * 5000,
    "-" + "9" * 400,
    "1" + "0" * 30,
    "[1, 2]",
    "[[1, 2, 3]]",
    "```json",
    "```",
    "\ud800",
    "📦",
    "\x00",
    "\u2028",
]


def canonical_output() -> str:
    return json.dumps(PREDICTION)


@st.composite
def model_texts(draw) -> str:
    kind = draw(st.sampled_from(["tokens", "mutated", "unicode", "valid"]))
    if kind == "tokens":
        return "".join(draw(st.lists(st.sampled_from(TOKENS), max_size=40)))
    if kind == "unicode":  # any code points, lone surrogates included (sent as \\udXXX escapes)
        return draw(st.text(st.characters(codec=None, exclude_categories=()), max_size=200))
    text = canonical_output()
    if kind == "mutated":
        for _ in range(draw(st.integers(1, 4))):
            at = draw(st.integers(0, len(text)))
            cut = draw(st.integers(0, 8))
            text = text[:at] + draw(st.sampled_from(TOKENS + [""])) + text[at + cut :]
    return text


def post(client: httpx.Client, content: bytes, content_type: str = "application/json") -> httpx.Response:
    response = client.post("/v1/rewards", content=content, headers={"content-type": content_type})
    COUNTS["requests"] += 1
    COUNTS["5xx"] += response.status_code >= 500
    return response


def vm_rss_kib(pid: int) -> int:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise KeyError("VmRSS")


@pytest.fixture(scope="module")
def server():
    with server_process(extra_args=("--max-body-mb", "1", "--max-samples", "16")) as (url, pid):
        with httpx.Client(base_url=url, timeout=30) as client:
            for _ in range(20):  # warm up: imports, first allocations and caches, so growth below is the fuzz's own
                post(
                    client,
                    json.dumps(
                        {"samples": [{"text": canonical_output(), "target": TARGET, "camera": CAMERA}]}
                    ).encode(),
                )
            yield client, pid, vm_rss_kib(pid)


@FUZZ
@given(texts=st.lists(model_texts(), min_size=1, max_size=6), bins=st.sampled_from([0, 64, 1000]))
@example(texts=['{"answer": "chair", "bbox2d": [' + "9" * 5000 + ", 0, 1, 1]}"], bins=1000)
@example(texts=["\ud800" + canonical_output(), "[" * 5000, '{"a": ' * 3000], bins=0)
def test_any_model_text_scores_like_the_reference(server, texts, bins):
    client, _, _ = server
    samples = [{"text": text, "target": TARGET, "camera": CAMERA} for text in texts]
    quant = {"bins": bins}
    response = post(client, json.dumps({"samples": samples, "quant": quant}).encode())
    assert response.status_code == 200, response.text
    # The contract reads a lone surrogate as U+FFFD; the reference takes the text as given, so it gets the same.
    expected = reference_score_batch([{**s, "text": s["text"].translate(SURROGATE_FREE)} for s in samples], quant)
    for got, want in zip(response.json()["results"], expected, strict=True):
        assert got["spans"] == want["spans"]
        assert got["rewards"] == pytest.approx(want["rewards"], abs=1e-9), (got["errors"], want["errors"])


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)


@st.composite
def request_bodies(draw) -> tuple[bytes, str]:
    kind = draw(st.sampled_from(["bytes", "json", "mutated", "structural"]))
    if kind == "bytes":
        body = draw(st.binary(max_size=300))
    elif kind == "json":
        body = json.dumps(draw(json_values)).encode()
    elif kind == "structural":  # a valid request with one part replaced by any JSON value
        sample = {"text": canonical_output(), "target": dict(TARGET), "camera": dict(CAMERA)}
        part = draw(
            st.sampled_from(
                [
                    "text",
                    "target",
                    "camera",
                    "target.bbox2d",
                    "camera.K",
                    "camera.width",
                    "target.num_kpts2d",
                    "target.answer",
                    "quant",
                    "extra",
                ]
            )
        )
        value = draw(json_values)
        if "." in part:
            outer, inner = part.split(".")
            sample[outer][inner] = value
        elif part in sample:
            sample[part] = value
        request = {
            "samples": [sample],
            **({"quant": value} if part == "quant" else {}),
            **({"extra": value} if part == "extra" else {}),
        }
        body = json.dumps(request).encode()
    else:  # a valid body with bytes cut, repeated or replaced
        body = json.dumps({"samples": [{"text": canonical_output(), "target": TARGET, "camera": CAMERA}]}).encode()
        for _ in range(draw(st.integers(1, 3))):
            at, cut = draw(st.integers(0, len(body))), draw(st.integers(0, 10))
            splice = draw(st.binary(max_size=6) | st.sampled_from([b"\\ud800", b"1e999", b"NaN", b"[" * 3000]))
            body = body[:at] + splice + body[at + cut :]
    content_type = draw(st.sampled_from(["application/json"] * 4 + ["text/plain", "application/problem+json"]))
    return body, content_type


@FUZZ
@given(body=request_bodies())
@example(body=(b'{"samples": [{"text": "\\ud800"}], "x": ' + b"[" * 50_000 + b"]" * 50_000 + b"}", "application/json"))
@example(body=(b"{" * 50_000, "application/json"))
def test_any_body_is_answered_without_a_server_error(server, body):
    client, _, _ = server
    content, content_type = body
    response = post(client, content, content_type)
    assert response.status_code in (200, 413, 415, 422), (response.status_code, response.text[:300])
    if response.status_code != 200:
        assert response.json()["detail"]


def test_memory_stays_bounded_after_the_fuzz(server):
    client, pid, warm_kib = server
    growth_mib = (vm_rss_kib(pid) - warm_kib) / 1024
    print(f"\nfuzz: {COUNTS['requests']} requests, {COUNTS['5xx']} 5xx, server RSS growth {growth_mib:.1f} MiB")
    assert COUNTS["5xx"] == 0
    assert growth_mib < 32, f"the server grew by {growth_mib:.1f} MiB over {COUNTS['requests']} requests"
