"""The reward service as a FastAPI app: `POST /v1/rewards`, `GET /health`, a visual debug view at `/`, OpenAPI at `/docs`.

Bodies are decoded by msgspec straight into the typed request (no pydantic pass), scored by `rewards.score_request`
in a worker thread (so `/health` answers while a big batch is scored), and bounded in bytes and samples.
"""

from __future__ import annotations

import hmac
import os
from dataclasses import dataclass
from importlib import resources

import msgspec
from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse, Response
from starlette.concurrency import run_in_threadpool

from rewards import REWARDS, RequestError, RewardRequest, score_request
from rewards.request import RewardResponse, decode_request

TOKEN_ENV = "POINTRL_REWARDS_TOKEN"
VERSION = "1"


@dataclass(frozen=True)
class ServiceLimits:
    """What one request may carry; larger bodies or batches get a 413 naming the limit."""

    max_body_bytes: int = 32 * 1024 * 1024
    max_samples: int = 4096


def resolve_token(token: str | None) -> str | None:
    """`token`, else $POINTRL_REWARDS_TOKEN, else None (no auth). An empty one is a ValueError: it would silently turn
    auth off for an operator who meant to turn it on (an unset variable expanding to '')."""
    source = "--token"
    if token is None:
        token, source = os.environ.get(TOKEN_ENV), f"${TOKEN_ENV}"
    if token is not None and not token.strip():
        raise ValueError(f"{source}: the bearer token is empty; give a non-empty token, or leave it unset for no auth")
    return token


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


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise HTTPException(413, f"request body: {declared} bytes exceed the limit of {limit} bytes")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise HTTPException(413, f"request body: more than the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _check_token(request: Request, token: str | None) -> None:
    if not token:
        return
    given = request.headers.get("authorization", "")
    if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
        raise HTTPException(401, "authorization: expected 'Authorization: Bearer <token>'", headers={"WWW-Authenticate": "Bearer"})


def _decode(body: bytes, limits: ServiceLimits) -> RewardRequest:
    try:
        parsed = decode_request(body)
    except RequestError as exc:
        raise HTTPException(422, str(exc)) from None
    if len(parsed.samples) > limits.max_samples:
        raise HTTPException(413, f"samples: {len(parsed.samples)} samples exceed the limit of {limits.max_samples} per request")
    return parsed


def score_json(body: bytes, limits: ServiceLimits = ServiceLimits()) -> bytes:
    """Body bytes -> response bytes: decoding, limits and scoring, without the transport (run in a worker thread)."""
    try:
        results = score_request(_decode(body, limits))
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
        "character spans for Point-VLM JSON outputs. Limits: "
        f"{limits.max_body_bytes} bytes and {limits.max_samples} samples per request.",
    )

    @app.get("/health")
    def health() -> dict:
        return {"status": "ok", "version": VERSION, "rewards": list(REWARDS), "auth": bool(token),
                "max_body_bytes": limits.max_body_bytes, "max_samples": limits.max_samples}

    @app.post(
        "/v1/rewards",
        summary="Score a batch of model outputs",
        openapi_extra={
            "requestBody": {"required": True, "content": {"application/json": {"schema": request_schema}}},
            "responses": {"200": {"description": "one result per sample, in request order",
                                  "content": {"application/json": {"schema": response_schema}}},
                          "401": {"description": "missing or wrong bearer token"},
                          "413": {"description": "body or batch over the limits"},
                          "415": {"description": "a Content-Type other than application/json"},
                          "422": {"description": "a defect in the request, named by field"}},
        },
    )
    async def rewards(request: Request) -> Response:
        _check_token(request, token)
        _check_json(request)
        body = await _read_body(request, limits.max_body_bytes)
        return Response(await run_in_threadpool(score_json, body, limits), media_type="application/json")

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def debug_view() -> str:
        return resources.files("serve").joinpath("debug.html").read_text()

    @app.get("/example", include_in_schema=False)
    def example() -> Response:
        return Response(resources.files("serve").joinpath("example_request.json").read_bytes(), media_type="application/json")

    default_openapi = app.openapi

    def openapi() -> dict:
        if not app.openapi_schema:
            schema = default_openapi()
            schema.setdefault("components", {}).setdefault("schemas", {}).update(components)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi
    return app
