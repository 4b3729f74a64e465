"""Work bounds of the reward service: characters per text (a longer text is scored unread, as invalid) and per
request, concurrent scoring, and deadlines for a request's headers and body. In process the bound on a request is a
`RequestError`; over HTTP 413 / 408 (and a closed connection) on a real server on loopback."""

import json
import socket
import threading
import time
from importlib import resources

import httpx
import pytest

from rewards import RequestError, score_batch
from rewards.request import MAX_REQUEST_CHARS, MAX_TEXT_CHARS, RequestTooLarge
from serve.server import server_process
from tests.test_rewards_request import sample

EXAMPLE = json.loads(resources.files("serve").joinpath("example_request.json").read_text())
BODY_TIMEOUT_S = 1.0


def keypoint_text(chars: int) -> str:
    """A model text of about `chars` characters that is almost all keypoints: the costliest text per character."""
    points = ",".join(["[1,2]"] * max(1, (chars - 120) // 6))
    return (
        '{"answer": "chair", "description": "d", "bbox2d": [1,2,3,4], "bbox3d": [1,2,3,4,5,6], '
        f'"kpts2d": [{points}], "kpts3d": [[1,2,3]]}}'
    )


def vm_kib(pid: int, key: str) -> int:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


@pytest.fixture(scope="module")
def server():
    with server_process(extra_args=("--body-timeout-s", str(BODY_TIMEOUT_S), "--max-concurrent", "2")) as started:
        yield started


def test_a_text_at_the_limit_scores_and_one_past_it_scores_unread_as_invalid():
    text = keypoint_text(MAX_TEXT_CHARS)
    text += " " * (MAX_TEXT_CHARS - len(text))
    (result,) = score_batch([sample(text=text)])
    assert result["rewards"]["kpts3d"] == 0.0 and result["spans"]["kpts2d"] is not None
    first, second = score_batch([sample(), sample(text=text + " ")])
    assert first == score_batch([sample()])[0]
    assert set(second["rewards"].values()) == {0.0} and set(second["spans"].values()) == {None}
    assert second["errors"] == [
        f"no JSON object: the text's {MAX_TEXT_CHARS + 1} characters exceed the limit of {MAX_TEXT_CHARS} per text "
        "(not read)"
    ]


def test_total_text_over_the_request_budget_is_request_too_large():
    count = MAX_REQUEST_CHARS // MAX_TEXT_CHARS + 1
    with pytest.raises(RequestTooLarge) as info:
        score_batch([sample(text="x" * MAX_TEXT_CHARS)] * count)
    assert isinstance(info.value, RequestError)
    assert "samples[*].text" in str(info.value) and str(MAX_REQUEST_CHARS) in str(info.value)


def test_over_http_a_long_text_scores_invalid_beside_the_others_and_a_big_batch_of_text_is_413(server):
    """One sample of 65,537 characters in a batch of three: that sample scores as an answer with no JSON object (the
    reason names the limit), the other two as they score alone; the bounds on the whole request stay 413s."""
    url, _ = server
    good, other = EXAMPLE["samples"][:2]
    long_text = keypoint_text(MAX_TEXT_CHARS + 1)
    long_text += " " * (MAX_TEXT_CHARS + 1 - len(long_text))
    assert len(long_text) == MAX_TEXT_CHARS + 1
    batch = {"samples": [good, {**good, "text": long_text}, other]}
    response = httpx.post(f"{url}/v1/rewards", json=batch, timeout=60)
    assert response.status_code == 200, response.text
    first, unread, third = response.json()["results"]
    assert [first, third] == score_batch([good, other])
    assert set(unread["rewards"].values()) == {0.0} and set(unread["spans"].values()) == {None}
    (why,) = unread["errors"]
    assert str(MAX_TEXT_CHARS + 1) in why and f"limit of {MAX_TEXT_CHARS} per text" in why
    count = MAX_REQUEST_CHARS // MAX_TEXT_CHARS + 1
    many = {"samples": [{**good, "text": "x" * MAX_TEXT_CHARS}] * count}
    response = httpx.post(f"{url}/v1/rewards", json=many, timeout=60)
    assert response.status_code == 413 and str(MAX_REQUEST_CHARS) in response.json()["detail"]
    limit = httpx.get(f"{url}/health").json()["max_body_bytes"]
    too_big = {"samples": [{**good, "text": "x" * limit}]}
    response = httpx.post(f"{url}/v1/rewards", json=too_big, timeout=60)
    assert response.status_code == 413 and f"limit of {limit} bytes" in response.json()["detail"]


def test_limits_are_in_the_openapi_schema_and_health(server):
    url, _ = server
    schemas = httpx.get(f"{url}/openapi.json").json()["components"]["schemas"]
    assert str(MAX_TEXT_CHARS) in schemas["SampleSpec"]["properties"]["text"]["description"]
    assert str(MAX_REQUEST_CHARS) in schemas["RewardRequest"]["properties"]["samples"]["description"]
    health = httpx.get(f"{url}/health").json()
    assert health["max_text_chars"] == MAX_TEXT_CHARS and health["max_request_chars"] == MAX_REQUEST_CHARS
    assert health["max_concurrent"] == 2 and health["body_timeout_s"] == BODY_TIMEOUT_S


def test_sixteen_concurrent_5_mib_keypoint_bodies_keep_the_server_small(server):
    """The issue measured a 2.2 GiB peak: each body was parsed into millions of Python objects at once. A 5 MiB text
    is now not read at all: each sample scores as invalid."""
    url, pid = server
    body = json.dumps({"samples": [{**EXAMPLE["samples"][0], "text": keypoint_text(5 * 2**20)}]}).encode()
    start = vm_kib(pid, "VmRSS")
    statuses = []

    def post():
        response = httpx.post(f"{url}/v1/rewards", content=body, timeout=60)
        statuses.append((response.status_code, response.json()["results"][0]["rewards"]["format"]))

    threads = [threading.Thread(target=post) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert statuses == [(200, 0.0)] * 16
    assert (vm_kib(pid, "VmHWM") - start) / 1024 < 300, "peak RSS grew by more than 300 MiB"


def _stalled_upload(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall(
        b"POST /v1/rewards HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
        b"Content-Length: 100000\r\n\r\n" + b'{"samples": ['
    )
    return sock


def _read_until_closed(sock: socket.socket, timeout_s: float) -> bytes | None:
    """All the server sends until it closes the connection, or None if it is still open after `timeout_s`."""
    sock.settimeout(timeout_s)
    received = b""
    try:
        while chunk := sock.recv(65536):
            received += chunk
    except TimeoutError:
        return None
    except ConnectionResetError:
        pass
    return received


def test_stalled_uploads_are_answered_408_and_dropped(server):
    url, _ = server
    port = int(url.rsplit(":", 1)[1])
    started = time.monotonic()
    sockets = [_stalled_upload(port) for _ in range(40)]
    try:
        replies = [_read_until_closed(sock, BODY_TIMEOUT_S + 5) for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()
    elapsed = time.monotonic() - started
    assert all(reply is not None for reply in replies), f"{replies.count(None)} of 40 stalled uploads still held"
    assert all(reply.startswith(b"HTTP/1.1 408") for reply in replies), replies[0][:200]
    assert b"request body" in replies[0] and elapsed < BODY_TIMEOUT_S + 5
    assert httpx.post(f"{url}/v1/rewards", json=EXAMPLE).status_code == 200  # the service itself is unaffected


def test_stalled_headers_and_silent_connections_are_dropped(server):
    url, _ = server
    port = int(url.rsplit(":", 1)[1])
    sockets = [socket.create_connection(("127.0.0.1", port)) for _ in range(20)]
    try:
        for sock in sockets[:10]:
            sock.sendall(b"POST /v1/rewards HTTP/1.1\r\nHost: test\r\n")  # and never the blank line
        replies = [_read_until_closed(sock, BODY_TIMEOUT_S + 5) for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()
    assert replies == [b""] * 20, f"{replies.count(None)} of 20 connections still held"


def test_answers_slower_than_the_deadline_are_not_cut(server):
    """The deadlines bound reading a request, not answering it: six requests at the text budget, two scored at a time,
    wait longer than the deadline for their answers."""
    url, _ = server
    text = keypoint_text(MAX_TEXT_CHARS - 100)
    body = json.dumps({"samples": [{**EXAMPLE["samples"][0], "text": text}] * (MAX_REQUEST_CHARS // len(text))})
    statuses, started = [], time.monotonic()

    def post():
        statuses.append(httpx.post(f"{url}/v1/rewards", content=body.encode(), timeout=60).status_code)

    threads = [threading.Thread(target=post) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert statuses == [200] * 6, f"answered in {time.monotonic() - started:.1f} s: {statuses}"


def test_a_slow_but_steady_upload_within_the_deadline_is_scored(server):
    url, _ = server
    body = json.dumps(EXAMPLE).encode()

    def dribble():
        for i in range(0, len(body), len(body) // 4 + 1):
            yield body[i : i + len(body) // 4 + 1]
            time.sleep(BODY_TIMEOUT_S / 10)

    response = httpx.post(f"{url}/v1/rewards", content=dribble(), headers={"content-type": "application/json"})
    assert response.status_code == 200 and len(response.json()["results"]) == len(EXAMPLE["samples"])
