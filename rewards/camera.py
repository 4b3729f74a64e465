"""Pinhole camera math in the OpenCV convention x = K (R X + t): the one module that projects points."""

from __future__ import annotations

import numpy as np

MIN_DEPTH = 1e-6
# The 12 edges of a box3d_corners box: corner i has bits (x, y, z) = (i >> 2, i >> 1, i) & 1; an edge flips one bit.
BOX_EDGES: list[tuple[int, int]] = [(i, i ^ bit) for i in range(8) for bit in (1, 2, 4) if i < i ^ bit]


def box3d_corners(boxes: np.ndarray) -> np.ndarray:
    """(..., 6) [xmin, ymin, zmin, xmax, ymax, zmax] -> (..., 8, 3) corners."""
    boxes = np.asarray(boxes, dtype=np.float64)
    lo, hi = boxes[..., None, :3], boxes[..., None, 3:]
    pick = np.array([[i >> 2 & 1, i >> 1 & 1, i & 1] for i in range(8)], dtype=bool)
    return np.where(pick, hi, lo)


def to_camera(points: np.ndarray, R: np.ndarray, t: np.ndarray) -> np.ndarray:
    """World (..., N, 3) -> camera coordinates R X + t, batched over leading axes of R (..., 3, 3) and t (..., 3)."""
    return points @ np.swapaxes(R, -1, -2) + t[..., None, :]


def project(points: np.ndarray, K: np.ndarray, R: np.ndarray, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """World points (..., N, 3) -> pixel coordinates (..., N, 2) and camera depth (..., N).

    Pixels are only meaningful where depth > MIN_DEPTH; callers decide what a point behind the camera means.
    """
    cam = to_camera(points, R, t)
    depth = cam[..., 2]
    p = cam @ np.swapaxes(K, -1, -2)
    safe = np.where(np.abs(p[..., 2:3]) > MIN_DEPTH, p[..., 2:3], 1.0)
    return p[..., :2] / safe, depth


def image_projection(K: np.ndarray, R: np.ndarray, t: np.ndarray, width: float, height: float) -> np.ndarray:
    """`project` as one (..., 3, 4) matrix P onto image-normalised coordinates: P [X, 1] = d (x / width, y / height, 1)
    with d the camera depth, so (u, v) in [0, 1]^2 covers the image whatever size an image encoder resizes it to."""
    K, R, t = (np.asarray(a, dtype=np.float64) for a in (K, R, t))
    to_unit = np.diag([1.0 / width, 1.0 / height, 1.0])
    return to_unit @ K @ np.concatenate([R, t[..., None]], axis=-1)
