"""Work bounds of the reward service: characters per text and per request, concurrent scoring, and deadlines for a
request's headers and body. In process the bounds are `RequestError`s; over HTTP 422 / 413 / 408 (and a closed
connection) on a real server on loopback."""

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


def test_a_text_at_the_limit_scores_and_one_past_it_is_a_request_error():
    text = keypoint_text(MAX_TEXT_CHARS)
    text += " " * (MAX_TEXT_CHARS - len(text))
    (result,) = score_batch([sample(text=text)])
    assert result["rewards"]["kpts3d"] == 0.0 and result["spans"]["kpts2d"] is not None
    with pytest.raises(RequestError) as info:
        score_batch([sample(), sample(text=text + " ")])
    assert str(info.value).startswith("samples[1].text:") and str(MAX_TEXT_CHARS) in str(info.value)


def test_total_text_over_the_request_budget_is_request_too_large():
    count = MAX_REQUEST_CHARS // MAX_TEXT_CHARS + 1
    with pytest.raises(RequestTooLarge) as info:
        score_batch([sample(text="x" * MAX_TEXT_CHARS)] * count)
    assert isinstance(info.value, RequestError)
    assert "samples[*].text" in str(info.value) and str(MAX_REQUEST_CHARS) in str(info.value)


def test_over_http_a_long_text_is_422_and_a_big_batch_of_text_is_413(server):
    url, _ = server
    long_text = {"samples": [EXAMPLE["samples"][0], {**EXAMPLE["samples"][0], "text": "x" * (MAX_TEXT_CHARS + 1)}]}
    response = httpx.post(f"{url}/v1/rewards", json=long_text)
    assert response.status_code == 422 and response.json()["detail"].startswith("samples[1].text:")
    assert str(MAX_TEXT_CHARS) in response.json()["detail"]
    count = MAX_REQUEST_CHARS // MAX_TEXT_CHARS + 1
    many = {"samples": [{**EXAMPLE["samples"][0], "text": "x" * MAX_TEXT_CHARS}] * count}
    response = httpx.post(f"{url}/v1/rewards", json=many, timeout=60)
    assert response.status_code == 413 and str(MAX_REQUEST_CHARS) in response.json()["detail"]


def test_limits_are_in_the_openapi_schema_and_health(server):
    url, _ = server
    schemas = httpx.get(f"{url}/openapi.json").json()["components"]["schemas"]
    assert schemas["SampleSpec"]["properties"]["text"]["maxLength"] == MAX_TEXT_CHARS
    assert str(MAX_REQUEST_CHARS) in schemas["RewardRequest"]["properties"]["samples"]["description"]
    health = httpx.get(f"{url}/health").json()
    assert health["max_text_chars"] == MAX_TEXT_CHARS and health["max_request_chars"] == MAX_REQUEST_CHARS
    assert health["max_concurrent"] == 2 and health["body_timeout_s"] == BODY_TIMEOUT_S


def test_sixteen_concurrent_5_mib_keypoint_bodies_keep_the_server_small(server):
    """The issue measured a 2.2 GiB peak: each body was parsed into millions of Python objects at once."""
    url, pid = server
    body = json.dumps({"samples": [{**EXAMPLE["samples"][0], "text": keypoint_text(5 * 2**20)}]}).encode()
    start = vm_kib(pid, "VmRSS")
    statuses = []

    def post():
        statuses.append(httpx.post(f"{url}/v1/rewards", content=body, timeout=60).status_code)

    threads = [threading.Thread(target=post) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert statuses == [422] * 16
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
