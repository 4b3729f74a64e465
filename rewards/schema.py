"""The output schema and the coordinate quantization: the one home of both (ARCHITECTURE.md)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, get_type_hints

import msgspec
import numpy as np

REWARDS: tuple[str, ...] = ("format", "answer", "bbox2d", "bbox3d", "kpts2d", "kpts3d", "rpc")


class ModelOutput(msgspec.Struct):
    """The six fields of a model answer with the types that make each one well-formed (coordinates still unchecked)."""

    answer: str
    description: str
    bbox2d: tuple[float, float, float, float]
    bbox3d: tuple[float, float, float, float, float, float]
    kpts2d: Annotated[list[tuple[float, float]], msgspec.Meta(min_length=1)]
    kpts3d: Annotated[list[tuple[float, float, float]], msgspec.Meta(min_length=1)]


FIELDS: tuple[str, ...] = ModelOutput.__struct_fields__
GEOMETRY_FIELDS: tuple[str, ...] = ("bbox2d", "bbox3d", "kpts2d", "kpts3d")  # the coordinate fields
FIELD_TYPES: dict[str, object] = get_type_hints(ModelOutput, include_extras=True)

# Scoring costs time and memory linear in the characters of model text: a text that is all keypoints (`[1,2],`, six
# characters each) becomes ~35 bytes of Python objects per character while it is parsed. A real answer is a few
# hundred characters to a few KB; 64 Ki holds at most ~10,900 keypoints. A longer text is not read: it scores as an
# answer with no JSON object (zero rewards, the reason naming the limit), and the other samples of its batch score as
# usual. (The characters of a whole request have their own bound, `rewards.request.MAX_REQUEST_CHARS`.)
MAX_TEXT_CHARS = 65_536


def too_long(text: str) -> str | None:
    """Why `text` is not read (longer than MAX_TEXT_CHARS), or None."""
    if len(text) <= MAX_TEXT_CHARS:
        return None
    return f"no JSON object: the text's {len(text)} characters exceed the limit of {MAX_TEXT_CHARS} per text (not read)"


DEFAULT_BINS = 1000
BINS_RULE = "0 (continuous) or an integer >= 2"
DEFAULT_BOUNDS3D: tuple[tuple[float, float, float], tuple[float, float, float]] = ((-1.0, -1.0, -1.0), (1.0, 1.0, 1.0))


@dataclass(frozen=True)
class Quant:
    """How coordinates are written: `bins` integer bins per axis, or continuous values when `bins == 0`."""

    bins: int = DEFAULT_BINS
    bounds3d: tuple[tuple[float, float, float], tuple[float, float, float]] = field(default=DEFAULT_BOUNDS3D)

    def __post_init__(self) -> None:
        if isinstance(self.bins, bool) or not isinstance(self.bins, int) or self.bins < 0 or self.bins == 1:
            raise ValueError(f"quant.bins: expected {BINS_RULE}, got {self.bins!r}")
        lo, hi = np.asarray(self.bounds3d, dtype=np.float64)
        if not (np.isfinite(lo).all() and np.isfinite(hi).all() and (lo < hi).all()):
            raise ValueError(
                f"quant.bounds3d: expected [[lo x,y,z],[hi x,y,z]] finite with lo < hi, got {self.bounds3d!r}"
            )

    @property
    def continuous(self) -> bool:
        return self.bins == 0

    def lo_hi_2d(self, width: float, height: float) -> tuple[np.ndarray, np.ndarray]:
        return np.zeros(2), np.array([width, height], dtype=np.float64)

    def lo_hi_3d(self) -> tuple[np.ndarray, np.ndarray]:
        lo, hi = np.asarray(self.bounds3d, dtype=np.float64)
        return lo, hi


def dequantize(q: np.ndarray, lo: np.ndarray, hi: np.ndarray, bins: int) -> np.ndarray:
    """Bin index -> coordinate, v = lo + q (hi - lo) / (bins - 1); identity when bins == 0 (continuous)."""
    q = np.asarray(q, dtype=np.float64)
    if bins == 0:
        return q
    return lo + q * (hi - lo) / (bins - 1)


def quantize(v: np.ndarray, lo: np.ndarray, hi: np.ndarray, bins: int) -> np.ndarray:
    """Coordinate -> nearest bin index (clipped to [0, bins-1]); the inverse of `dequantize`. Continuous when bins == 0."""
    v = np.asarray(v, dtype=np.float64)
    if bins == 0:
        return v
    q = np.rint((v - lo) * (bins - 1) / (hi - lo))
    return np.clip(q, 0, bins - 1).astype(np.int64)
