"""Field rewards as batched numpy functions: box IoU, keypoint containment (KPA), reprojection consistency (RPC).

Every function takes arrays stacked over the batch; rows that hold NaN (a field that did not parse) come out as NaN
and are zeroed by the caller, so one call scores the whole batch without per-sample branches.
"""

from __future__ import annotations

import numpy as np

from rewards.camera import MIN_DEPTH, box3d_corners, project


def is_inverted(boxes: np.ndarray) -> np.ndarray:
    """(..., 2D) [lo..., hi...] -> (...) True where min > max on any axis."""
    d = boxes.shape[-1] // 2
    return (boxes[..., :d] > boxes[..., d:]).any(axis=-1)


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of axis-aligned boxes (..., 2D) in [lo..., hi...] layout (GRCA §3.3, the box reward; 2D and 3D alike).

    An inverted box, or a union of 0, scores 0.
    """
    d = a.shape[-1] // 2
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        inter = np.clip(np.minimum(a[..., d:], b[..., d:]) - np.maximum(a[..., :d], b[..., :d]), 0.0, None).prod(
            axis=-1
        )
        union = (a[..., d:] - a[..., :d]).prod(axis=-1) + (b[..., d:] - b[..., :d]).prod(axis=-1) - inter
        iou = np.clip(inter / union, 0.0, 1.0)
    return np.where(is_inverted(a) | is_inverted(b) | ~(union > 0), 0.0, iou)


def keypoint_containment(points: np.ndarray, owner: np.ndarray, boxes: np.ndarray, expected: np.ndarray) -> np.ndarray:
    """KPA (GRCA eq. 8, guarded against too few keypoints): min(m, K) / max(n, K) per sample.

    points (P, D) keypoints of all samples, owner (P,) their sample index, boxes (B, 2D) target boxes (inclusive
    bounds), expected (B,) the target count K, or 0 to use the predicted count n.
    """
    d = boxes.shape[-1] // 2
    box = boxes[owner]
    inside = ((points >= box[:, :d]) & (points <= box[:, d:])).all(axis=-1)
    n = np.bincount(owner, minlength=len(boxes)).astype(np.float64)
    m = np.bincount(owner, weights=inside, minlength=len(boxes))
    k = np.where(expected > 0, expected, n)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.minimum(m, k) / np.maximum(n, k)


def reprojection_consistency(
    bbox2d: np.ndarray, bbox3d: np.ndarray, K: np.ndarray, R: np.ndarray, t: np.ndarray, size: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """RPC (GRCA eqs. 11-13): IoU of the predicted 2D box with the image-clipped box of the projected 3D-box corners.

    Zero when the 3D box is inverted, a corner lies at depth <= MIN_DEPTH, or the clipped projection is empty.
    bbox2d (B, 4) pixels, bbox3d (B, 6), K/R (B, 3, 3), t (B, 3), size (B, 2) image width and height.
    Returns the rewards (B,) and why each is forced to zero (B,): 0 scored, 2 inverted, 3 behind the camera, 4 off-image.
    """
    with np.errstate(invalid="ignore", divide="ignore"):
        uv, depth = project(box3d_corners(bbox3d), K, R, t)
        lo = np.minimum(np.maximum(uv.min(axis=1), 0.0), size)
        hi = np.minimum(np.maximum(uv.max(axis=1), 0.0), size)
        in_front = (depth > MIN_DEPTH).all(axis=-1)
        nonempty = (hi > lo).all(axis=-1)
    projected = np.concatenate([lo, hi], axis=-1)
    why = np.select([is_inverted(bbox3d), ~in_front, ~nonempty], [2, 3, 4], 0)
    return np.where(why == 0, box_iou(projected, bbox2d), 0.0), why
