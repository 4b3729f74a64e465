"""The reward service as a FastAPI app: `POST /v1/rewards`, `GET /health`, a visual debug view at `/`, OpenAPI at `/docs`.

Bodies are decoded by msgspec straight into the typed request (no pydantic pass), scored by `rewards.score_request`
in a worker thread (so `/health` answers while a big batch is scored), and bounded: in bytes, samples and characters
of text per request (the work of one request; one text over `MAX_TEXT_CHARS` is not read and scores as invalid), in
requests scored at once (the work of all of them: the issue's 16 concurrent 5 MiB bodies were parsed side by side
into 2.2 GiB), and in the time a body may take to arrive (`serve.deadline`).
"""

from __future__ import annotations

import hmac
from importlib import resources

import anyio
import anyio.to_thread
import msgspec
from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse, Response

from rewards import REWARDS, RequestError, RewardRequest, score_request
from rewards.request import MAX_REQUEST_CHARS, MAX_TEXT_CHARS, RequestTooLarge, RewardResponse, decode_request
from serve.deadline import BodyDeadline
from serve.limits import ServiceLimits, resolve_token

VERSION = "1"


def _check_json(request: Request) -> None:
    # No Content-Type is taken as JSON (plain clients, `httpx content=`); a declared other type is a client mistake
    # (curl -d sends a form), better named than reported as a JSON syntax error.
    declared = request.headers.get("content-type")
    if declared is None:
        return
    media = declared.split(";", 1)[0].strip().lower()
    if media != "application/json" and not media.endswith("+json"):
        raise HTTPException(415, f"content-type: expected application/json, got {declared!r}")


def _openapi_components() -> tuple[dict, dict, dict]:
    (request_schema, response_schema), components = msgspec.json.schema_components(
        [RewardRequest, RewardResponse], ref_template="#/components/schemas/{name}"
    )
    return request_schema, response_schema, components


async def _read_body(request: Request, limit: int) -> bytearray:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise HTTPException(413, f"request body: {declared} bytes exceed the limit of {limit} bytes")
    body = bytearray()  # one growing buffer: a list of chunks joined at the end holds the body twice
    async for chunk in request.stream():
        if len(body) + len(chunk) > limit:
            raise HTTPException(413, f"request body: more than the limit of {limit} bytes")
        body += chunk
    return body


def check_token(request: Request, token: str | None) -> None:
    """A 401 unless the request carries `Authorization: Bearer <token>` (nothing to check without a token)."""
    if not token:
        return
    given = request.headers.get("authorization", "")
    if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
        raise HTTPException(
            401, "authorization: expected 'Authorization: Bearer <token>'", headers={"WWW-Authenticate": "Bearer"}
        )


def _decode(body: bytes | bytearray, limits: ServiceLimits) -> RewardRequest:
    try:
        parsed = decode_request(body)
    except RequestError as exc:
        raise HTTPException(422, str(exc)) from None
    if len(parsed.samples) > limits.max_samples:
        raise HTTPException(
            413, f"samples: {len(parsed.samples)} samples exceed the limit of {limits.max_samples} per request"
        )
    return parsed


def score_json(body: bytes | bytearray, limits: ServiceLimits = ServiceLimits()) -> bytes:
    """Body bytes -> response bytes: decoding, limits and scoring, without the transport (run in a worker thread)."""
    try:
        results = score_request(_decode(body, limits))
    except RequestTooLarge as exc:
        raise HTTPException(413, str(exc)) from None
    except RequestError as exc:
        raise HTTPException(422, str(exc)) from None
    return msgspec.json.encode({"results": results})


def create_app(token: str | None = None, limits: ServiceLimits = ServiceLimits()) -> FastAPI:
    """The reward service. `token` (default: $POINTRL_REWARDS_TOKEN) guards `/v1/rewards` with a bearer token."""
    token = resolve_token(token)
    request_schema, response_schema, components = _openapi_components()
    app = FastAPI(
        title="pointrl reward service",
        version=VERSION,
        description="Field rewards (format, answer, IoU 2D/3D, keypoint containment, reprojection consistency) and "
        "character spans for Point-VLM JSON outputs. Limits per request: "
        f"{limits.max_body_bytes} bytes, {limits.max_samples} samples and {MAX_REQUEST_CHARS} characters of text in "
        f"all (413 above); the body must arrive within {limits.body_timeout_s:g} s (408). A text over {MAX_TEXT_CHARS} "
        "characters is not read: that sample scores zero with the reason, the others as usual.",
    )
    app.add_middleware(BodyDeadline, timeout_s=limits.body_timeout_s)
    # Made on first use, in the process that serves: Ray Serve pickles the app, and a limiter does not pickle.
    scoring: list[anyio.CapacityLimiter] = []

    @app.get("/health")
    def health() -> dict:
        return {
            "status": "ok",
            "version": VERSION,
            "rewards": list(REWARDS),
            "auth": bool(token),
            "max_body_bytes": limits.max_body_bytes,
            "max_samples": limits.max_samples,
            "max_text_chars": MAX_TEXT_CHARS,
            "max_request_chars": MAX_REQUEST_CHARS,
            "max_concurrent": limits.max_concurrent,
            "body_timeout_s": limits.body_timeout_s,
        }

    @app.post(
        "/v1/rewards",
        summary="Score a batch of model outputs",
        openapi_extra={
            "requestBody": {"required": True, "content": {"application/json": {"schema": request_schema}}},
            "responses": {
                "200": {
                    "description": "one result per sample, in request order (with its `geometry` when asked)",
                    "content": {"application/json": {"schema": response_schema}},
                },
                "401": {"description": "missing or wrong bearer token"},
                "408": {"description": "the body did not arrive within the body timeout"},
                "413": {"description": "body, samples or total characters of text over the limits"},
                "415": {"description": "a Content-Type other than application/json"},
                "422": {"description": "a defect in the request, named by field"},
            },
        },
    )
    async def rewards(request: Request) -> Response:
        check_token(request, token)
        _check_json(request)
        body = await _read_body(request, limits.max_body_bytes)
        if not scoring:
            scoring.append(anyio.CapacityLimiter(limits.max_concurrent))
        scored = await anyio.to_thread.run_sync(score_json, body, limits, limiter=scoring[0])
        return Response(scored, media_type="application/json")

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def debug_view() -> str:
        return resources.files("serve").joinpath("debug.html").read_text()

    @app.get("/example", include_in_schema=False)
    def example() -> Response:
        return Response(
            resources.files("serve").joinpath("example_request.json").read_bytes(), media_type="application/json"
        )

    default_openapi = app.openapi

    def openapi() -> dict:
        if not app.openapi_schema:
            schema = default_openapi()
            schema.setdefault("components", {}).setdefault("schemas", {}).update(components)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi
    return app
