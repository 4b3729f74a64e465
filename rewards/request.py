"""The reward request: typed msgspec structs (one schema for Python callers, HTTP bodies and the OpenAPI docs).

Validation turns a request into arrays stacked over the batch, or raises `RequestError` naming the offending field.
Unknown keys are rejected so that a typo (`num_kpt2d`) is an error rather than a silently ignored option.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import lru_cache
from itertools import chain
from typing import Annotated

import msgspec
import numpy as np

from rewards.schema import BINS_RULE, DEFAULT_BINS, DEFAULT_BOUNDS3D, MAX_TEXT_CHARS, Quant, too_long

Row3 = tuple[float, float, float]
Matrix3 = tuple[Row3, Row3, Row3]
Box2D = tuple[float, float, float, float]
Box3D = tuple[float, float, float, float, float, float]
PositiveSize = Annotated[float, msgspec.Meta(gt=0)]
# A documented ceiling keeps a count inside int64 (the batch arrays), so a huge one is a 422, never an OverflowError.
MAX_KEYPOINTS = 1_000_000
KeypointCount = Annotated[int, msgspec.Meta(ge=1, le=MAX_KEYPOINTS)]
# Quant.__post_init__ is the one check of bins; the schema states the same rule (JSON Schema can say "not 1").
Bins = Annotated[
    int, msgspec.Meta(ge=0, description=f"quantization bins: {BINS_RULE}", extra_json_schema={"not": {"const": 1}})
]
# The texts one request has read together are bounded (4 Mi characters: 4096 samples of 1 KiB; ~145 MiB of parse
# objects at worst): over it, a RequestTooLarge (HTTP 413). One text over `MAX_TEXT_CHARS` is not a request error and
# is not read: it scores as an answer with no JSON object (`rewards.schema.too_long`).
MAX_REQUEST_CHARS = 4 * 1024 * 1024
Text = Annotated[
    str,
    msgspec.Meta(
        description=f"the model's output; one over {MAX_TEXT_CHARS} characters is not read and scores zero, with "
        "the reason in `errors`"
    ),
]


# gc=False: request structs never form cycles, and untracked objects keep a big batch from slowing every GC pass.


class RequestError(ValueError):
    """A defect in the request itself (not in the model's text); the message names the field."""


class RequestTooLarge(RequestError):
    """A request over a per-request cost limit (HTTP 413): valid, but to be split into smaller batches."""


class CameraSpec(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    K: Matrix3
    R: Matrix3
    t: Row3
    width: PositiveSize
    height: PositiveSize


class TargetSpec(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    answer: str | Annotated[list[str], msgspec.Meta(min_length=1)]
    bbox2d: Box2D
    bbox3d: Box3D
    num_kpts2d: KeypointCount | None = None
    num_kpts3d: KeypointCount | None = None


class SampleSpec(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    text: Text
    target: TargetSpec
    camera: CameraSpec


class QuantSpec(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    bins: Bins = DEFAULT_BINS
    bounds3d: tuple[Row3, Row3] = DEFAULT_BOUNDS3D


class RewardRequest(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    samples: Annotated[
        list[SampleSpec],
        msgspec.Meta(description=f"the outputs to score; their texts together at most {MAX_REQUEST_CHARS} characters"),
    ]
    quant: QuantSpec | None = None
    geometry: Annotated[
        bool,
        msgspec.Meta(
            description="also return, per result, what a picture of the sample shows, in pixels (the debug view's "
            "drawing); the result has no `geometry` key otherwise"
        ),
    ] = False


class RewardSpans(msgspec.Struct):
    answer: tuple[int, int] | None
    description: tuple[int, int] | None
    bbox2d: tuple[int, int] | None
    bbox3d: tuple[int, int] | None
    kpts2d: tuple[int, int] | None
    kpts3d: tuple[int, int] | None


class RewardValues(msgspec.Struct):
    format: float
    answer: float
    bbox2d: float
    bbox3d: float
    kpts2d: float
    kpts3d: float
    rpc: float


Pixel = tuple[float, float]
ProjectedBox = Annotated[
    list[Pixel | None],
    msgspec.Meta(
        description="the 8 corners of the 3D box projected through the camera, in `rewards.camera.box3d_corners` "
        "order; null for a corner at depth <= 1e-6 (behind the camera)"
    ),
]


class TargetGeometry(msgspec.Struct):
    bbox2d: Box2D
    bbox3d: ProjectedBox


class PredictedGeometry(msgspec.Struct):
    """The answer's fields de-quantized as they are scored; null where a field is not well-formed or out of range."""

    bbox2d: Box2D | None
    bbox3d: ProjectedBox | None
    kpts2d: list[Pixel] | None


class SampleGeometry(msgspec.Struct):
    width: float
    height: float
    box3d_edges: Annotated[
        list[tuple[int, int]], msgspec.Meta(description="the 12 edges of a 3D box, as pairs of corner indices")
    ]
    target: TargetGeometry
    predicted: PredictedGeometry


class RewardResult(msgspec.Struct, omit_defaults=True):
    rewards: RewardValues
    spans: RewardSpans
    errors: list[str]
    geometry: Annotated[
        SampleGeometry | None, msgspec.Meta(description='only when the request says `"geometry": true`')
    ] = None


class RewardResponse(msgspec.Struct):
    results: list[RewardResult]


@dataclass
class Batch:
    """A validated request as arrays stacked over its B samples."""

    texts: list[str]
    answers: list[frozenset[str]]  # normalized accepted answers
    bbox2d: np.ndarray  # (B, 4)
    bbox3d: np.ndarray  # (B, 6)
    num_kpts2d: np.ndarray  # (B,) int, 0 when not given
    num_kpts3d: np.ndarray  # (B,)
    K: np.ndarray  # (B, 3, 3)
    R: np.ndarray  # (B, 3, 3)
    t: np.ndarray  # (B, 3)
    size: np.ndarray  # (B, 2) width, height
    quant: Quant


_MSGSPEC_PATH = re.compile(r"^(?P<what>.*) - at `\$(?P<path>[^`]*)`$")


def _named(exc: msgspec.ValidationError | msgspec.DecodeError) -> RequestError:
    """msgspec says "Expected ... - at `$.samples[0].target`"; we lead with the field: "samples[0].target: Expected ..."."""
    match = _MSGSPEC_PATH.match(str(exc))
    if not match:
        return RequestError(f"request: {exc}")
    return RequestError(f"{match['path'].lstrip('.') or 'request'}: {match['what']}")


_ANSWER_STRIP = " .,;:!?\"'()[]"


_CACHED_CHARS = 256  # answers are short; caching long ones let unique 1 MiB answers grow the server without bound


def _normalize(answer: str) -> str:
    return " ".join(answer.lower().split()).strip(_ANSWER_STRIP)


# A GRPO group repeats its target G times and policies repeat their answers; short strings bound the cache's memory.
_normalize_short = lru_cache(maxsize=8192)(_normalize)


def normalize_answer(answer: str) -> str:
    """Lowercase, collapse whitespace runs, strip surrounding whitespace and .,;:!?"'()[] (the answer contract)."""
    return _normalize_short(answer) if len(answer) <= _CACHED_CHARS else _normalize(answer)


_SURROGATE = re.compile("[\ud800-\udfff]")


def clean_text(text: str) -> str:
    """A lone surrogate (valid JSON, not valid Unicode) becomes U+FFFD: one code point for one, so spans keep their
    offsets, and the text scores like any other instead of failing to encode. ASCII text skips the scan."""
    return text if text.isascii() else _SURROGATE.sub("\ufffd", text)


def _first_bad_row(name: str, values: np.ndarray, bad: np.ndarray) -> None:
    rows = np.flatnonzero(bad.any(axis=tuple(range(1, bad.ndim))))
    if len(rows):
        raise RequestError(f"samples[{rows[0]}].{name}: values must be finite numbers, got {values[rows[0]].tolist()}")


def _stack(rows: list, shape: tuple[int, ...]) -> np.ndarray:
    """Nested tuples of numbers (as msgspec decodes them) -> one float64 array, without numpy's slow shape inference."""
    flat = rows
    for _ in shape:
        flat = chain.from_iterable(flat)
    return np.fromiter(flat, np.float64, len(rows) * int(np.prod(shape))).reshape(len(rows), *shape)


def _quant(spec: QuantSpec | None) -> Quant:
    spec = spec or QuantSpec()
    try:
        return Quant(bins=spec.bins, bounds3d=spec.bounds3d)
    except ValueError as exc:
        raise RequestError(str(exc)) from None


def check_cost(request: RewardRequest) -> None:
    """Refuse a request whose texts to be read together exceed MAX_REQUEST_CHARS (a text over MAX_TEXT_CHARS is not
    read, so it costs nothing here: that sample scores as invalid)."""
    total = sum(len(sample.text) for sample in request.samples if not too_long(sample.text))
    if total > MAX_REQUEST_CHARS:
        raise RequestTooLarge(
            f"samples[*].text: {total} characters of text exceed the limit of {MAX_REQUEST_CHARS} "
            f"per request; split the batch"
        )


def to_batch(request: RewardRequest) -> Batch:
    """Stack a decoded request into arrays, checking what the types cannot (finiteness, the form of K, the cost)."""
    check_cost(request)
    quant = _quant(request.quant)
    samples = request.samples
    batch = Batch(
        texts=[clean_text(s.text) for s in samples],
        answers=[
            frozenset(map(normalize_answer, [s.target.answer] if isinstance(s.target.answer, str) else s.target.answer))
            for s in samples
        ],
        bbox2d=_stack([s.target.bbox2d for s in samples], (4,)),
        bbox3d=_stack([s.target.bbox3d for s in samples], (6,)),
        num_kpts2d=np.array([s.target.num_kpts2d or 0 for s in samples], dtype=np.int64),
        num_kpts3d=np.array([s.target.num_kpts3d or 0 for s in samples], dtype=np.int64),
        K=_stack([s.camera.K for s in samples], (3, 3)),
        R=_stack([s.camera.R for s in samples], (3, 3)),
        t=_stack([s.camera.t for s in samples], (3,)),
        size=_stack([(s.camera.width, s.camera.height) for s in samples], (2,)),
        quant=quant,
    )
    for name in ("bbox2d", "bbox3d"):
        values = getattr(batch, name)
        _first_bad_row(f"target.{name}", values, ~np.isfinite(values))
    for name in ("K", "R", "t"):
        values = getattr(batch, name)
        _first_bad_row(f"camera.{name}", values, ~np.isfinite(values))
    _first_bad_row("camera.width/height", batch.size, ~np.isfinite(batch.size))
    # The last row [0, 0, 1] makes the projective divisor equal the camera depth z_c that the rpc contract tests.
    bad_k = np.flatnonzero((batch.K[:, 2] != (0.0, 0.0, 1.0)).any(axis=1))
    if len(bad_k):
        raise RequestError(
            f"samples[{bad_k[0]}].camera.K: the last row must be [0, 0, 1], got {batch.K[bad_k[0]].tolist()}"
        )
    return batch


# `"\ud800"` is valid JSON (RFC 8259's grammar) but msgspec refuses a lone surrogate escape ("truncated").
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")  # json.loads would take NaN/Infinity, which msgspec calls malformed


def _decode_with_surrogates(body: bytes) -> RewardRequest:
    """The rare slow path: the stdlib decoder keeps lone surrogates as code points (cleaned in `to_batch`), then the
    same typed conversion (and field-named errors) as the fast path."""
    obj = json.loads(body, parse_constant=_reject_constant)
    try:
        return msgspec.convert(obj, type=RewardRequest)
    except msgspec.ValidationError as exc:
        raise _named(exc) from None


def decode_request(body: bytes) -> RewardRequest:
    """An HTTP body -> RewardRequest, or RequestError naming the field."""
    try:
        return msgspec.json.decode(body, type=RewardRequest)
    except msgspec.ValidationError as exc:
        raise _named(exc) from None
    except msgspec.DecodeError as exc:
        if _SURROGATE_ESCAPE.search(body):
            try:
                return _decode_with_surrogates(body)
            except RequestError:
                raise
            except (ValueError, RecursionError):  # not JSON after all, or nested past the stdlib decoder's depth
                pass
        raise _named(exc) from None


def convert_request(samples: list[dict], quant: dict | None) -> RewardRequest:
    """Python objects -> RewardRequest, or RequestError naming the field (same messages as over HTTP)."""
    if not isinstance(samples, list):
        raise RequestError(f"samples: expected a list of sample objects, got {type(samples).__name__}")
    try:
        return msgspec.convert({"samples": samples, "quant": quant}, type=RewardRequest)
    except msgspec.ValidationError as exc:
        raise _named(exc) from None
