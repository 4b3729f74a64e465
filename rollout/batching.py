"""Samples -> model inputs: the one place that decides what a policy sees for a `data3d.Sample`.

Rollout, evaluation and the learner all build their `PolicyInputs` here, so the prompt text, the cloud and the
image a response was sampled from are exactly the ones it is later scored against.
"""

from __future__ import annotations

import numpy as np
import torch

from data3d import Sample, prompt_text
from policies import PointVLM, PolicyInputs


def policy_inputs(policy: PointVLM, samples: list[Sample], quant=None, use_images: bool = True) -> PolicyInputs:
    """Left-padded prompts for `samples`: the text from `data3d.prompt_text(sample, quant)` (`quant` a
    `rewards.Quant`, None for the default bins), the clouds as one (B, N, 6) float32 tensor and, when
    `use_images`, each sample's uint8 (H, W, 3) image (rows without one get none) and the projection of its camera
    onto the image (`data3d.Camera.image_projection`), which the camera-guided fusion reads."""
    if not samples:
        raise ValueError("policy_inputs needs at least one sample")
    for s in samples:
        if np.ndim(s.points) != 2 or np.shape(s.points)[1] != 6:
            raise ValueError(f"sample {s.uid!r}: points must be (N, 6) xyz+rgb, got shape {np.shape(s.points)}")
    counts: dict[int, list[str]] = {}
    for s in samples:
        counts.setdefault(len(s.points), []).append(s.uid)
    if len(counts) > 1:
        listed = "; ".join(f"{n} points: {uids}" for n, uids in sorted(counts.items()))
        raise ValueError(f"samples in one batch must have the same number of points, got {listed}")
    points = torch.from_numpy(np.stack([np.asarray(s.points, dtype=np.float32) for s in samples]))
    images = projections = None
    if use_images and any(s.image is not None for s in samples):
        # a copy: samples that crossed the Ray object store hold read-only arrays
        images = [None if s.image is None else torch.from_numpy(np.array(s.image)) for s in samples]
        projections = [None if s.camera is None else s.camera.image_projection() for s in samples]
    return policy.prepare([prompt_text(s, quant) for s in samples], points, images, projections)
