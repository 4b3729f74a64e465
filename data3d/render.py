"""A small point-splatting renderer: look-at cameras, a z-buffered image with Lambert shading, and the object mask.

Rendering splats a dense set of surface samples (or a real point cloud) through `rewards.camera.project` into a
z-buffer: each sample covers a (2r+1)^2 pixel square and the nearest one wins (ties go to the lower sample index,
so the image is deterministic); the mask is the pixels hit, closed morphologically with the same r so that it is
solid. r is about the projected sample spacing (1 for the generator's dense sampling). Shading is two-sided Lambert
with a fixed light above-left of the camera, or a linear depth cue when a cloud has no normals.

Foreground processing (the paper's "morphological foreground mask processing") turns the mask into targets:
`mask_box` is the tight box of the mask in pixels, x2/y2 one past the last pixel, and `mask_keypoints` picks
keypoints by farthest-point sampling over the pixel centres of the mask eroded by one pixel, so every 2D keypoint
lies strictly inside the box (at least 1.5 px from its edges) and survives quantization.
"""

from __future__ import annotations

import numpy as np

from data3d.primitives import farthest_point_sample
from data3d.types import Camera
from rewards.camera import project

BACKGROUND = (250, 250, 250)
LIGHT_DIR = np.array([-0.4, -0.6, -1.0]) / np.linalg.norm([-0.4, -0.6, -1.0])  # towards the light, camera frame
AMBIENT, DIFFUSE = 0.35, 0.65
DEPTH_CUE = 0.35  # how much darker the far side of a cloud without normals is drawn


def look_at(eye, target=(0.0, 0.0, 0.0), up=(0.0, 1.0, 0.0)) -> tuple[np.ndarray, np.ndarray]:
    """World -> camera rotation R and translation t for a camera at `eye` looking at `target` (OpenCV axes)."""
    eye, target, up = (np.asarray(v, dtype=np.float64) for v in (eye, target, up))
    forward = target - eye
    forward /= np.linalg.norm(forward)
    right = np.cross(forward, up)
    if np.linalg.norm(right) < 1e-9:
        raise ValueError(f"look_at: viewing direction {forward.tolist()} is parallel to up {up.tolist()}")
    right /= np.linalg.norm(right)
    down = np.cross(forward, right)
    R = np.stack([right, down, forward])
    return R, -R @ eye


def orbit_eye(elevation_deg: float, azimuth_deg: float, distance: float) -> np.ndarray:
    """Camera position on a sphere around the origin: azimuth 0 looks at the front (+z), 90 at the right side (+x)."""
    el, az = np.radians(elevation_deg), np.radians(azimuth_deg)
    return distance * np.array([np.cos(el) * np.sin(az), np.sin(el), np.cos(el) * np.cos(az)])


def fit_camera(xyz: np.ndarray, eye: np.ndarray, fill: float, width: int, height: int) -> Camera:
    """Look-at camera from `eye` whose focal length makes the farthest projected point land at `fill` of the half
    image from the centre, so the object is never cut off (principal point at the image centre)."""
    if not 0.0 < fill <= 1.0:
        raise ValueError(f"fit_camera: fill must be in (0, 1], got {fill}")
    R, t = look_at(eye)
    normalized, depth = project(xyz, np.eye(3), R, t)
    if depth.min() <= 0.0:
        raise ValueError(f"fit_camera: camera at {np.round(eye, 3).tolist()} is inside or behind part of the object")
    half_extent = np.abs(normalized).max(axis=0)
    focal = fill * min(width / 2 / half_extent[0], height / 2 / half_extent[1])
    K = np.array([[focal, 0.0, width / 2], [0.0, focal, height / 2], [0.0, 0.0, 1.0]])
    return Camera(K=K, R=R, t=t, width=int(width), height=int(height))


def shade(rgb: np.ndarray, normals: np.ndarray | None, depth: np.ndarray, R: np.ndarray) -> np.ndarray:
    """Lit colour per sample: two-sided Lambert from the normals, else a linear depth cue."""
    if normals is None:
        near, far = depth.min(), depth.max()
        return rgb * (1.0 - DEPTH_CUE * (depth - near) / max(far - near, 1e-9))[:, None]
    lambert = np.abs((normals @ R.T) @ LIGHT_DIR)
    return rgb * (AMBIENT + DIFFUSE * lambert)[:, None]


def gap_radius(pixels: np.ndarray) -> int:
    """Pixel radius that bridges the gaps between projected samples: about their spacing, estimated from the
    samples per unit of projected box area (1 for a dense mesh sampling, more for a sparse cloud)."""
    extent = np.ptp(pixels, axis=0) + 1.0
    spacing = np.sqrt(extent[0] * extent[1] / len(pixels))
    return int(np.clip(np.rint(spacing), 1, 4))


def _shifted(values: np.ndarray, radius: int, outside: float) -> np.ndarray:
    """The (2r+1)^2 shifted copies of an (H, W, ...) array stacked on a new first axis, `outside` beyond the border."""
    height, width = values.shape[:2]
    pad = [(radius, radius), (radius, radius)] + [(0, 0)] * (values.ndim - 2)
    padded = np.pad(values, pad, constant_values=outside)
    side = 2 * radius + 1
    return np.stack([padded[dy : dy + height, dx : dx + width] for dy in range(side) for dx in range(side)])


def dilate(mask: np.ndarray, radius: int = 1) -> np.ndarray:
    """Binary dilation with a (2r+1)^2 square."""
    return _shifted(mask, radius, False).any(axis=0)


def erode(mask: np.ndarray, radius: int = 1) -> np.ndarray:
    """Binary erosion with a (2r+1)^2 square; pixels outside the image count as background."""
    return _shifted(mask, radius, False).all(axis=0)


def close(mask: np.ndarray, radius: int = 1) -> np.ndarray:
    """Morphological closing (dilate then erode): fills holes and gaps narrower than 2r+1 pixels."""
    return erode(dilate(mask, radius), radius) | mask


def zbuffer(pixels: np.ndarray, depth: np.ndarray, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """Nearest sample per pixel -> (depth (H, W), +inf where empty; sample index (H, W), -1 where empty).
    Ties in depth go to the lower sample index, so the result does not depend on sort stability."""
    col, row = np.floor(pixels[:, 0]).astype(np.int64), np.floor(pixels[:, 1]).astype(np.int64)
    inside = np.flatnonzero((col >= 0) & (col < width) & (row >= 0) & (row < height))
    flat = row[inside] * width + col[inside]
    order = np.lexsort((inside, depth[inside], flat))
    flat, sample = flat[order], inside[order]
    first = np.ones(len(flat), dtype=bool)
    first[1:] = flat[1:] != flat[:-1]
    nearest_depth, nearest = np.full(height * width, np.inf), np.full(height * width, -1)
    nearest_depth[flat[first]], nearest[flat[first]] = depth[sample[first]], sample[first]
    return nearest_depth.reshape(height, width), nearest.reshape(height, width)


def render(
    xyz: np.ndarray,
    rgb: np.ndarray,
    normals: np.ndarray | None,
    camera: Camera,
    background=BACKGROUND,
    radius: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Splat coloured samples through `camera` -> (image (H, W, 3) uint8, object mask (H, W) bool).

    Each pixel of the mask (the sample hits, closed with `radius`) takes the colour of the nearest sample drawn
    within `radius` of it: a z-buffer with square splats, so a far surface never shows through a near one's gaps."""
    pixels, depth = project(xyz, camera.K, camera.R, camera.t)
    front = depth > 0.0
    if not front.any():
        raise ValueError("render: every point is behind the camera")
    pixels, depth, colour = pixels[front], depth[front], shade(rgb, normals, depth, camera.R)[front]
    radius = gap_radius(pixels) if radius is None else radius
    nearest_depth, nearest = zbuffer(pixels, depth, camera.width, camera.height)
    mask = close(nearest >= 0, radius)
    closest = _shifted(nearest_depth, radius, np.inf).argmin(axis=0)
    splat = np.take_along_axis(_shifted(nearest, radius, -1), closest[None], 0)[0]
    lit = np.rint(np.clip(colour[splat], 0.0, 1.0) * 255.0)
    image = np.where(mask[..., None], lit, np.asarray(background, dtype=np.float64))
    return image.astype(np.uint8), mask


def mask_box(mask: np.ndarray) -> np.ndarray:
    """Tight pixel box [x1, y1, x2, y2] of a mask; x2/y2 are one past the last mask pixel."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if len(rows) == 0:
        raise ValueError("mask_box: the object mask is empty (nothing was rendered inside the image)")
    return np.array([cols[0], rows[0], cols[-1] + 1, rows[-1] + 1], dtype=np.float64)


def mask_keypoints(mask: np.ndarray, k: int, erosion: int = 1) -> np.ndarray:
    """(k, 2) pixel-centre keypoints (u, v) by farthest-point sampling over the eroded mask (the whole mask if the
    erosion leaves fewer than k pixels); repeats pixels only when the mask itself has fewer than k."""
    core = erode(mask, erosion)
    rows, cols = np.nonzero(core if core.sum() >= k else mask)
    if len(rows) == 0:
        raise ValueError("mask_keypoints: the object mask is empty")
    centres = np.stack([cols, rows], axis=1).astype(np.float64) + 0.5
    if len(centres) < k:
        return np.resize(centres, (k, 2))
    xyz = np.concatenate([centres, np.zeros((len(centres), 1))], axis=1)
    return centres[farthest_point_sample(xyz, k)]
