"""The sample type every stage consumes: a point cloud, an optional image and camera, an instruction and targets."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from rewards.camera import image_projection


@dataclass
class Camera:
    """Pinhole camera, OpenCV convention: pixel = K (R X + t), X in object/world units."""

    K: np.ndarray  # (3, 3) float64
    R: np.ndarray  # (3, 3) float64
    t: np.ndarray  # (3,) float64
    width: int
    height: int

    def to_dict(self) -> dict:
        """The reward contract's `camera` object."""
        return {
            "K": self.K.tolist(),
            "R": self.R.tolist(),
            "t": self.t.tolist(),
            "width": self.width,
            "height": self.height,
        }

    def image_projection(self) -> np.ndarray:
        """(3, 4) matrix onto image-normalised (u, v) (`rewards.camera.image_projection`): what the camera-guided fusion
        needs of the camera, whatever size the policy resizes the image to."""
        return image_projection(self.K, self.R, self.t, self.width, self.height)


@dataclass
class Targets:
    """Ground truth for one sample. Boxes are continuous: bbox2d in pixels, bbox3d axis-aligned in object units."""

    bbox2d: np.ndarray  # (4,) x1, y1, x2, y2
    bbox3d: np.ndarray  # (6,) xmin, ymin, zmin, xmax, ymax, zmax
    kpts3d: np.ndarray  # (K3, 3)
    kpts2d: np.ndarray  # (K2, 2)
    answers: list[str]  # accepted answers to the instruction; the first is canonical
    category: str = ""
    description: str = ""
    attributes: dict = field(default_factory=dict)

    def to_reward_target(self) -> dict:
        """The reward contract's `target` object."""
        return {
            "answer": list(self.answers),
            "bbox2d": self.bbox2d.tolist(),
            "bbox3d": self.bbox3d.tolist(),
            "num_kpts2d": int(len(self.kpts2d)),
            "num_kpts3d": int(len(self.kpts3d)),
        }


@dataclass
class Sample:
    """One benchmark item. `points` is (N, 6) float32 xyz+rgb, xyz centred and scaled to the unit sphere, rgb in [0, 1]."""

    uid: str
    points: np.ndarray
    instruction: str
    targets: Targets
    image: np.ndarray | None = None  # (H, W, 3) uint8
    camera: Camera | None = None
    question_type: str = "category"
