"""`score_batch`: the reward contract over a batch, parsing per sample and scoring the geometry in one numpy pass."""

from __future__ import annotations

import contextlib
import gc
from dataclasses import dataclass
from itertools import chain
from operator import attrgetter

import numpy as np

from rewards.camera import BOX_EDGES, MIN_DEPTH, box3d_corners, project
from rewards.geometry import box_iou, is_inverted, keypoint_containment, reprojection_consistency
from rewards.parse import parse_output, read_canonical
from rewards.request import Batch, RewardRequest, convert_request, normalize_answer, to_batch
from rewards.schema import FIELDS, GEOMETRY_FIELDS, REWARDS, Quant, dequantize

_RPC_WHY = {
    1: "rpc: needs a well-formed bbox2d and bbox3d",
    2: "rpc: the predicted 3D box is inverted",
    3: "rpc: a corner of the predicted 3D box is behind the camera",
    4: "rpc: the projected 3D box falls outside the image",
}


class _Fields:
    """Per field, the samples where it is well-formed (`rows`, `valid`) and its values in row order, with every
    sample's spans and failure reasons. Canonical outputs are read as one batch, the rest one text at a time."""

    def __init__(self, texts: list[str]):
        size = len(texts)
        fast = read_canonical(texts)
        slow_rows = sorted(set(range(size)).difference(fast.rows))
        slow = [parse_output(texts[i]) for i in slow_rows]
        self.rows = {name: fast.rows + [i for i, out in zip(slow_rows, slow) if name in out.fields] for name in FIELDS}
        self.values = {
            name: list(map(attrgetter(name), fast.outputs))
            + [out.fields[name][0] for out in slow if name in out.fields]
            for name in FIELDS
        }
        self.spans: list[dict[str, list[int] | None]] = [None] * size
        self.reasons: list[list[str]] = [[] for _ in range(size)]
        parsed, bare = np.zeros(size, dtype=bool), np.zeros(size, dtype=bool)
        for i, spans in zip(fast.rows, fast.spans):
            self.spans[i] = dict(zip(FIELDS, map(list, spans)))
        parsed[fast.rows], bare[fast.rows] = True, fast.bare
        for i, out in zip(slow_rows, slow):
            self.spans[i] = {name: list(out.fields[name][1]) if name in out.fields else None for name in FIELDS}
            self.reasons[i] = out.reasons
            parsed[i], bare[i] = out.parsed, out.bare
        self.parsed, self.bare = parsed, bare  # bare: the text outside the object is empty or a code fence
        self.valid = {name: np.zeros(size, dtype=bool) for name in FIELDS}
        for name in FIELDS:
            self.valid[name][self.rows[name]] = True

    def reject(self, name: str, rows: np.ndarray, why: str) -> None:
        self.valid[name][rows] = False
        for i in rows.tolist():
            self.spans[i][name] = None
            self.reasons[i].append(f"{name}: {why}")


def _coordinates_ok(q: np.ndarray, bins: int) -> np.ndarray:
    if bins == 0:
        return np.isfinite(q)
    return (q == np.floor(q)) & (q >= 0) & (q <= bins - 1)


def _boxes(fields: _Fields, name: str, size: np.ndarray, quant: Quant) -> np.ndarray:
    """(B, 2D) de-quantized predicted boxes, NaN where the field is not well-formed (out-of-range rows rejected)."""
    width = 4 if name == "bbox2d" else 6
    boxes = np.full((len(size), width), np.nan)
    rows = np.array(fields.rows[name], dtype=np.int64)
    boxes[rows] = np.fromiter(chain.from_iterable(fields.values[name]), np.float64, len(rows) * width).reshape(
        -1, width
    )
    bad = rows[~_coordinates_ok(boxes[rows], quant.bins).all(axis=1)]
    fields.reject(name, bad, _range_message(quant.bins))
    boxes[bad] = np.nan
    lo, hi = _axis_range(name, size, quant)
    return dequantize(boxes, np.tile(lo, 2), np.tile(hi, 2), quant.bins)


def _keypoints(fields: _Fields, name: str, size: np.ndarray, quant: Quant) -> tuple[np.ndarray, np.ndarray]:
    """Flat de-quantized keypoints (P, D) of the well-formed samples and their sample index (P,)."""
    dim = 2 if name == "kpts2d" else 3
    rows, per_sample = fields.rows[name], fields.values[name]
    counts = np.fromiter(map(len, per_sample), np.int64, len(rows))
    points = np.fromiter(chain.from_iterable(chain.from_iterable(per_sample)), np.float64, int(counts.sum()) * dim)
    points = points.reshape(-1, dim)
    owner = np.repeat(np.array(rows, dtype=np.int64), counts)
    ok = _coordinates_ok(points, quant.bins).all(axis=1)
    if not ok.all():
        bad_rows = np.unique(owner[~ok])
        fields.reject(name, bad_rows, _range_message(quant.bins))
        keep = ~np.isin(owner, bad_rows)
        points, owner = points[keep], owner[keep]
    lo, hi = _axis_range(name, size, quant)
    if lo.ndim == 2:
        lo, hi = lo[owner], hi[owner]
    return dequantize(points, lo, hi, quant.bins), owner


def _axis_range(name: str, size: np.ndarray, quant: Quant) -> tuple[np.ndarray, np.ndarray]:
    """Per-axis [lo, hi] of a field's coordinates: (B, 2) image extents for 2D fields, (3,) bounds3d for 3D ones."""
    if name.endswith("2d"):
        return np.zeros_like(size), size
    return quant.lo_hi_3d()


@dataclass
class Predicted:
    """The geometric fields of B answers, de-quantized to the targets' units (pixels; bounds3d units)."""

    bbox2d: np.ndarray  # (B, 4), NaN rows where the field is not well-formed or out of range
    bbox3d: np.ndarray  # (B, 6), likewise
    kpts2d: np.ndarray  # (P, 2) keypoints of the well-formed samples ...
    owner2d: np.ndarray  # (P,) ... and the sample each belongs to
    kpts3d: np.ndarray  # (Q, 3)
    owner3d: np.ndarray  # (Q,)


def _predict(fields: _Fields, size: np.ndarray, quant: Quant) -> Predicted:
    """De-quantize the parsed fields, rejecting (in `fields`) those with coordinates out of range; size (B, 2)."""
    bbox2d, bbox3d = _boxes(fields, "bbox2d", size, quant), _boxes(fields, "bbox3d", size, quant)
    kpts2d, owner2d = _keypoints(fields, "kpts2d", size, quant)
    kpts3d, owner3d = _keypoints(fields, "kpts3d", size, quant)
    return Predicted(bbox2d, bbox3d, kpts2d, owner2d, kpts3d, owner3d)


def dequantized_answer(text: str, width: float, height: float, quant: Quant) -> dict[str, np.ndarray]:
    """One answer's geometric fields as they are scored (what a picture of it shows): bbox2d (4,) and kpts2d (N, 2)
    in pixels of a width x height image, bbox3d (6,) and kpts3d (M, 3) in bounds3d units; a field that is not
    well-formed, or has a coordinate out of range, is absent."""
    fields = _Fields([text])
    predicted = _predict(fields, np.array([[width, height]], dtype=np.float64), quant)
    values = {
        "bbox2d": predicted.bbox2d[0],
        "bbox3d": predicted.bbox3d[0],
        "kpts2d": predicted.kpts2d,
        "kpts3d": predicted.kpts3d,
    }
    return {name: value for name, value in values.items() if fields.valid[name][0]}


def _range_message(bins: int) -> str:
    if bins == 0:
        return "coordinates must be finite numbers"
    return f"coordinates must be whole numbers in [0, {bins - 1}]"


def _answer_rewards(fields: _Fields, batch: Batch) -> np.ndarray:
    reward = np.zeros(len(batch.texts))
    for i, answer in zip(fields.rows["answer"], fields.values["answer"]):
        reward[i] = float(normalize_answer(answer) in batch.answers[i])
    return reward


@contextlib.contextmanager
def _cyclic_gc_paused():
    """A batch allocates ~100 small acyclic objects per sample (decoded fields, spans, results); cyclic-GC passes over
    them find nothing to free yet cost a third of the scoring time, so the collector waits until the batch is done."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def score_request(request: RewardRequest) -> list[dict]:
    """Score a decoded request (the HTTP and Ray Serve paths enter here)."""
    with _cyclic_gc_paused():
        return _score(request)


def _score(request: RewardRequest) -> list[dict]:
    batch = to_batch(request)
    fields = _Fields(batch.texts)

    predicted = _predict(fields, batch.size, batch.quant)
    pred2d, pred3d = predicted.bbox2d, predicted.bbox3d
    valid = fields.valid

    rpc, rpc_why = reprojection_consistency(pred2d, pred3d, batch.K, batch.R, batch.t, batch.size)
    rpc_why = np.where(valid["bbox2d"] & valid["bbox3d"], rpc_why, 1)
    rewards = {
        "format": (np.logical_and.reduce([valid[name] for name in FIELDS]) & fields.bare).astype(np.float64),
        "answer": _answer_rewards(fields, batch),
        "bbox2d": box_iou(pred2d, batch.bbox2d),
        "bbox3d": box_iou(pred3d, batch.bbox3d),
        "kpts2d": keypoint_containment(predicted.kpts2d, predicted.owner2d, batch.bbox2d, batch.num_kpts2d),
        "kpts3d": keypoint_containment(predicted.kpts3d, predicted.owner3d, batch.bbox3d, batch.num_kpts3d),
        "rpc": np.where(rpc_why == 0, rpc, 0.0),
    }
    for name in GEOMETRY_FIELDS:
        rewards[name] = np.where(valid[name], rewards[name], 0.0)
    _explain(fields, valid, pred2d, pred3d, batch, rpc_why)

    columns = [rewards[name].tolist() for name in REWARDS]
    results = [
        {"rewards": dict(zip(REWARDS, row)), "spans": fields.spans[i], "errors": fields.reasons[i]}
        for i, row in enumerate(zip(*columns))
    ]
    if request.geometry:
        for result, geometry in zip(results, _geometry(batch, predicted, valid)):
            result["geometry"] = geometry
    return results


def _geometry(batch: Batch, predicted: Predicted, valid: dict[str, np.ndarray]) -> list[dict]:
    """Per sample, what a picture of it shows, in pixels of its camera's image (`"geometry": true`, the debug view's
    drawing): the target and predicted 2D boxes, both 3D boxes' corners projected, and the predicted 2D keypoints, all
    as they are scored; a predicted field that is not well-formed (or out of range) is None."""
    target3d, predicted3d = _projected_corners(batch.bbox3d, batch), _projected_corners(predicted.bbox3d, batch)
    order = np.argsort(predicted.owner2d, kind="stable")  # owners come fast-reader rows first, not in sample order
    counts = np.bincount(predicted.owner2d, minlength=len(batch.texts))
    kpts2d = np.split(predicted.kpts2d[order], np.cumsum(counts)[:-1])
    edges = [list(edge) for edge in BOX_EDGES]
    return [
        {
            "width": width,
            "height": height,
            "box3d_edges": edges,
            "target": {"bbox2d": batch.bbox2d[i].tolist(), "bbox3d": target3d[i]},
            "predicted": {
                "bbox2d": predicted.bbox2d[i].tolist() if valid["bbox2d"][i] else None,
                "bbox3d": predicted3d[i] if valid["bbox3d"][i] else None,
                "kpts2d": kpts2d[i].tolist() if valid["kpts2d"][i] else None,
            },
        }
        for i, (width, height) in enumerate(batch.size.tolist())
    ]


def _projected_corners(boxes: np.ndarray, batch: Batch) -> list[list[list[float] | None]]:
    """(B, 6) 3D boxes -> per sample its 8 corners (`box3d_corners` order) in pixels, None for a corner behind the
    camera (its pixel means nothing) or not finite (a box that did not parse is a NaN row)."""
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        pixels, depth = project(box3d_corners(boxes), batch.K, batch.R, batch.t)  # (B, 8, 2), (B, 8)
        shown = (depth > MIN_DEPTH) & np.isfinite(pixels).all(axis=-1)
    return [[p if ok else None for p, ok in zip(row, oks)] for row, oks in zip(pixels.tolist(), shown.tolist())]


def _explain(
    fields: _Fields, valid: dict, pred2d: np.ndarray, pred3d: np.ndarray, batch: Batch, rpc_why: np.ndarray
) -> None:
    """Add the reasons that are not parse failures: inverted boxes, text around the object, a failed rpc."""
    for name, predicted, target in (("bbox2d", pred2d, batch.bbox2d), ("bbox3d", pred3d, batch.bbox3d)):
        for i in np.flatnonzero(valid[name] & is_inverted(predicted)).tolist():
            fields.reasons[i].append(f"{name}: the predicted box is inverted (min > max)")
        for i in np.flatnonzero(is_inverted(target)).tolist():
            fields.reasons[i].append(f"{name}: the target box is inverted (min > max)")
    all_valid = np.logical_and.reduce([valid[name] for name in FIELDS])
    for i in np.flatnonzero(all_valid & ~fields.bare).tolist():
        fields.reasons[i].append(
            "format: text outside the JSON object (only whitespace or a ``` fence may surround it)"
        )
    for i in np.flatnonzero(fields.parsed & (rpc_why > 0)).tolist():
        fields.reasons[i].append(_RPC_WHY[int(rpc_why[i])])


def score_batch(samples: list[dict], quant: dict | None = None) -> list[dict]:
    """Score model outputs against their targets: the `results` list of the reward contract, in request order.

    Raises `RequestError` (a ValueError) naming the field when the request itself is malformed; a defect in a
    model's text is never an exception, only zero rewards with a reason in `errors`.
    """
    with _cyclic_gc_paused():
        return _score(convert_request(samples, quant))
