"""A sample as text: the instruction prompt, the target JSON answer (coordinates quantized as the reward contract
says), and the request object `rewards.score_batch` scores.

The target is one line of JSON with the keys in `rewards.schema.FIELDS` order and compact separators, e.g.
{"answer":"chair","description":"a red chair with four legs","bbox2d":[x1,y1,x2,y2],"bbox3d":[...],"kpts2d":[[u,v],...],
"kpts3d":[[x,y,z],...]}; 2D coordinates are bins over [0, width] / [0, height], 3D bins over the quant's bounds3d.
With continuous quantization (bins == 0) coordinates are written as numbers rounded to CONTINUOUS_DIGITS.
"""

from __future__ import annotations

import json

import numpy as np

from data3d.types import Sample
from rewards.schema import FIELDS, Quant, quantize

SEPARATORS = (",", ":")
CONTINUOUS_DIGITS = 3


def _camera_of(sample: Sample):
    if sample.camera is None:
        raise ValueError(f"sample {sample.uid!r} has no camera: 2D targets need the image width and height")
    return sample.camera


def _coordinates(values: np.ndarray, lo: np.ndarray, hi: np.ndarray, quant: Quant) -> list:
    if quant.continuous:
        return np.round(np.asarray(values, dtype=np.float64), CONTINUOUS_DIGITS).tolist()
    return quantize(values, lo, hi, quant.bins).tolist()


def target_fields(sample: Sample, quant: Quant | None = None) -> dict:
    """The six output fields of the ground truth, coordinates quantized, in FIELDS order."""
    quant = quant or Quant()
    camera, t = _camera_of(sample), sample.targets
    lo2, hi2 = quant.lo_hi_2d(camera.width, camera.height)
    lo3, hi3 = quant.lo_hi_3d()
    fields = {
        "answer": t.answers[0],
        "description": t.description,
        "bbox2d": sum(_coordinates(np.reshape(t.bbox2d, (2, 2)), lo2, hi2, quant), []),
        "bbox3d": sum(_coordinates(np.reshape(t.bbox3d, (2, 3)), lo3, hi3, quant), []),
        "kpts2d": _coordinates(np.reshape(t.kpts2d, (-1, 2)), lo2, hi2, quant),
        "kpts3d": _coordinates(np.reshape(t.kpts3d, (-1, 3)), lo3, hi3, quant),
    }
    return {name: fields[name] for name in FIELDS}


def target_text(sample: Sample, quant: Quant | None = None) -> str:
    """The ground-truth answer as the policy should write it: one line of JSON."""
    return json.dumps(target_fields(sample, quant), separators=SEPARATORS, ensure_ascii=False)


def prompt_text(sample: Sample, quant: Quant | None = None) -> str:
    """The instruction and a line saying which JSON object to answer with (no chat template, no point tokens)."""
    quant = quant or Quant()
    t = sample.targets
    if quant.continuous:
        units = "2D in pixels, 3D in object units"
    else:
        lo, hi = quant.lo_hi_3d()
        bounds = ", ".join(f"{axis} in [{a:g}, {b:g}]" for axis, a, b in zip("xyz", lo, hi))
        units = f"integer bins 0-{quant.bins - 1}: 2D over the image, 3D over {bounds}"
    # short on purpose: every prompt carries this line, and on a small model its tokens are a large part of a step
    return (
        f"{sample.instruction}\n"
        f"Answer in JSON: {FIELDS[0]}, {FIELDS[1]}, bbox2d [x1, y1, x2, y2], bbox3d [xmin, ymin, zmin, xmax, "
        f"ymax, zmax], kpts2d {len(t.kpts2d)} [u, v] and kpts3d {len(t.kpts3d)} [x, y, z]. Coordinates: {units}."
    )


def reward_sample(sample: Sample, text: str) -> dict:
    """The reward contract's request item for a model output `text` about `sample`."""
    return {"text": text, "target": sample.targets.to_reward_target(), "camera": _camera_of(sample).to_dict()}
