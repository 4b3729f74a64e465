"""From coloured surface samples to a sample's geometry: the normalized cloud, a camera, the image and the targets.

The generator and every real-data loader go through `annotate`, so all samples share one definition of targets:
- points: farthest-point thinned from the surface samples, then centred on their mean and scaled so the farthest
  point is at distance 1 (PointLLM's `pc_norm`); the same transform moves the dense samples used for rendering.
- bbox3d: the axis-aligned box of the points, padded by BOX3D_MARGIN so that keypoints on the surface stay inside
  after quantization, each extent at least MIN_EXTENT_3D, clipped to the default quantization bounds.
- kpts3d: NUM_KPTS points chosen by farthest-point sampling over the points (fixed start index 0).
- camera: a look-at view drawn from a `ViewRange`, focal length fitted so the object fills `fill` of the image.
- bbox2d / kpts2d: from the rendered mask (see `render`), the box widened to at least MIN_EXTENT_2D pixels.
The two minimum extents keep the quantized ground truth at IoU >= 0.95 against itself.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

from data3d.primitives import farthest_point_sample, sample_surface
from data3d.render import fit_camera, mask_box, mask_keypoints, orbit_eye, render
from data3d.settings import DataSettings
from data3d.types import Camera, Sample, Targets
from rewards.schema import DEFAULT_BOUNDS3D

NUM_KPTS = DataSettings.num_kpts
MIN_EXTENT_3D = 0.1
MIN_EXTENT_2D = 8.0
BOX3D_MARGIN = 1.05 / (DataSettings.bins - 1)  # half a default bin in [-1, 1], + 5%: a rounded keypoint stays in


@dataclass(frozen=True)
class ViewRange:
    """Where a camera may stand: elevation in degrees, azimuth intervals in degrees (0 = front, 90 = right side),
    distance in unit-sphere radii, and the fraction of the half image the object's farthest point reaches."""

    elevation: tuple[float, float] = (10.0, 40.0)
    azimuths: tuple[tuple[float, float], ...] = ((-180.0, 180.0),)
    distance: tuple[float, float] = (2.5, 4.0)
    fill: tuple[float, float] = (0.65, 0.9)


DEFAULT_VIEW = ViewRange()


@dataclass
class Surface:
    """Dense oriented surface samples: xyz (M, 3), rgb (M, 3) in [0, 1], unit normals (M, 3) or None."""

    xyz: np.ndarray
    rgb: np.ndarray
    normals: np.ndarray | None = None


@dataclass
class Geometry:
    points: np.ndarray  # (N, 6) float32
    camera: Camera
    image: np.ndarray  # (H, W, 3) uint8
    bbox2d: np.ndarray
    bbox3d: np.ndarray
    kpts2d: np.ndarray
    kpts3d: np.ndarray
    view: dict  # the drawn elevation, azimuth, distance and fill

    def sample(
        self, uid: str, question: tuple[str, str, list[str]], category: str, description: str, attributes: dict
    ) -> Sample:
        """The sample of this cloud, image and camera, with the targets drawn here and `question` = (question type,
        instruction, accepted answers)."""
        question_type, instruction, answers = question
        targets = Targets(
            bbox2d=self.bbox2d,
            bbox3d=self.bbox3d,
            kpts3d=self.kpts3d,
            kpts2d=self.kpts2d,
            answers=answers,
            category=category,
            description=description,
            attributes=attributes,
        )
        return Sample(
            uid=uid,
            points=self.points,
            instruction=instruction,
            targets=targets,
            image=self.image,
            camera=self.camera,
            question_type=question_type,
        )


@contextmanager
def timed(timings: dict | None, stage: str):
    """Adds the seconds spent in the block to `timings[stage]` (no-op when timings is None)."""
    start = time.perf_counter()
    yield
    if timings is not None:
        timings[stage] = timings.get(stage, 0.0) + time.perf_counter() - start


def mesh_surface(
    vertices: np.ndarray, faces: np.ndarray, face_rgb: np.ndarray, count: int, rng: np.random.Generator
) -> Surface:
    """`count` area-uniform samples of a triangle mesh with their face colours and normals."""
    xyz, normals, face = sample_surface(vertices, faces, count, rng)
    return Surface(xyz, np.asarray(face_rgb, dtype=np.float64)[face], normals)


def normalize_unit_sphere(xyz: np.ndarray) -> tuple[np.ndarray, float]:
    """PointLLM's pc_norm: (centre, scale) with centre the mean and scale the largest distance from it."""
    centre = xyz.mean(axis=0)
    scale = float(np.linalg.norm(xyz - centre, axis=1).max())
    if not scale > 0.0:
        raise ValueError(f"cannot normalize a cloud of {len(xyz)} points that all coincide")
    return centre, scale


def thin_cloud(surface: Surface, num_points: int, pool_size: int | None = None) -> tuple[np.ndarray, Surface]:
    """Farthest-point thin the first `pool_size` samples (all by default) to `num_points` and normalize
    -> ((N, 6) float32 xyz+rgb points, the whole surface moved by the same normalization)."""
    pool = surface.xyz[:pool_size]
    if len(pool) < num_points:
        raise ValueError(f"need at least num_points={num_points} surface points, got {len(pool)}")
    keep = np.arange(num_points) if len(pool) == num_points else farthest_point_sample(pool, num_points)
    centre, scale = normalize_unit_sphere(pool[keep])
    moved = Surface((surface.xyz - centre) / scale, surface.rgb, surface.normals)
    points = np.concatenate([moved.xyz[keep], surface.rgb[keep]], axis=1).astype(np.float32)
    return points, moved


def widen(lo: np.ndarray, hi: np.ndarray, min_extent: float, limit_lo: np.ndarray, limit_hi: np.ndarray):
    """Grow each axis of [lo, hi] around its centre to at least `min_extent`, shifted to stay inside the limits."""
    grow = np.maximum(min_extent - (hi - lo), 0.0) / 2
    lo, hi = lo - grow, hi + grow
    shift = np.maximum(limit_lo - lo, 0.0) - np.maximum(hi - limit_hi, 0.0)
    return np.maximum(lo + shift, limit_lo), np.minimum(hi + shift, limit_hi)


def box3d(xyz: np.ndarray) -> np.ndarray:
    """[xmin, ymin, zmin, xmax, ymax, zmax] of the points, padded and widened as the module docstring says."""
    bounds_lo, bounds_hi = np.asarray(DEFAULT_BOUNDS3D, dtype=np.float64)
    lo, hi = xyz.min(axis=0).astype(np.float64) - BOX3D_MARGIN, xyz.max(axis=0).astype(np.float64) + BOX3D_MARGIN
    lo, hi = widen(np.maximum(lo, bounds_lo), np.minimum(hi, bounds_hi), MIN_EXTENT_3D, bounds_lo, bounds_hi)
    return np.concatenate([lo, hi])


def box2d(mask: np.ndarray) -> np.ndarray:
    """The mask box widened to at least MIN_EXTENT_2D pixels per side, inside the image."""
    box = mask_box(mask)
    height, width = mask.shape
    lo, hi = widen(box[:2], box[2:], MIN_EXTENT_2D, np.zeros(2), np.array([width, height], dtype=np.float64))
    return np.concatenate([lo, hi])


def draw_view(view: ViewRange, rng: np.random.Generator) -> dict:
    """Elevation, azimuth (an interval chosen in proportion to its width), distance and fill for one camera."""
    widths = np.array([hi - lo for lo, hi in view.azimuths], dtype=np.float64)
    lo, hi = view.azimuths[int(rng.choice(len(widths), p=widths / widths.sum()))]
    return {
        "elevation": float(rng.uniform(*view.elevation)),
        "azimuth": float(rng.uniform(lo, hi)),
        "distance": float(rng.uniform(*view.distance)),
        "fill": float(rng.uniform(*view.fill)),
    }


def annotate(
    surface: Surface,
    rng: np.random.Generator,
    *,
    num_points: int,
    image_size: int,
    view: ViewRange = DEFAULT_VIEW,
    pool_size: int | None = None,
    num_kpts: int = NUM_KPTS,
    timings: dict | None = None,
) -> Geometry:
    """The whole geometry of one sample from its surface samples (stages timed into `timings`)."""
    with timed(timings, "points"):
        points, moved = thin_cloud(surface, num_points, pool_size)
        kpts3d = points[farthest_point_sample(points[:, :3], num_kpts), :3].astype(np.float64)
        bbox3d = box3d(points[:, :3])
    with timed(timings, "render"):
        pose = draw_view(view, rng)
        eye = orbit_eye(pose["elevation"], pose["azimuth"], pose["distance"])
        camera = fit_camera(moved.xyz, eye, pose["fill"], image_size, image_size)
        image, mask = render(moved.xyz, moved.rgb, moved.normals, camera)
    with timed(timings, "targets"):
        bbox2d = box2d(mask)
        kpts2d = mask_keypoints(mask, num_kpts)
    return Geometry(points, camera, image, bbox2d, bbox3d, kpts2d, kpts3d, pose)
