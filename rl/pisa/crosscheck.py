"""PiSA's Stage 2 (2D cross-check and refinement) for the data engine: G sampled annotations of one unlabeled cloud
in, one annotation out (or none), with a decision per field.

The policy's G outputs are first reduced to one: the medoid, the sample that agrees best with the others. Then each
field is checked against what the sample itself shows, never against its (hidden) targets:
- bbox3d: projected into rendered views of the cloud from VIEW_AZIMUTHS (PiSA shows its views to a 2D model; here
  the check is geometric), it must cover the object's mask in every view; one that does and is close to the box of
  the cloud's points is refitted to it (`data3d.annotate.box3d`, how the benchmark boxes its objects);
- bbox2d: against the box of the object's mask in the sample's own image, and refitted to it when close;
- kpts2d / kpts3d: each point snapped to the mask's nearest pixel / the cloud's nearest point when it is close;
- answer: most of the G samples must agree; a colour answer must name the cloud's own colour (the palette colour of
  most of its points), a category answer the category the description names, and an axis or height answer is read
  off the refitted box (repaired when it disagrees);
- description: it must name the cloud's colour and a category (the SFT's cloud-alignment loss reads both).
A sample is kept only if every field is kept or repaired, since the SFT target is the whole JSON. Thresholds are
module constants, calibrated so that the ground-truth annotations of the procedural benchmark pass (tests check it).
`medoid_only` is the ablation without Stage 2: the medoid as written, if all six fields parse.
"""

from __future__ import annotations

import dataclasses
import re
from collections import Counter
from dataclasses import dataclass

import numpy as np

from data3d import Sample
from data3d.annotate import box2d, box3d
from data3d.questions import longest_axis_question, taller_question
from data3d.render import BACKGROUND, dilate, fit_camera, mask_box, orbit_eye, render
from data3d.shapes import CATEGORIES, COLOUR_NAMES, PALETTE
from data3d.types import Targets
from rewards import Quant
from rewards.camera import box3d_corners, project
from rewards.geometry import box_iou
from rewards.parse import parse_output
from rewards.request import normalize_answer
from rewards.schema import FIELDS, GEOMETRY_FIELDS
from rl.eval.viz import predicted_geometry

VIEW_AZIMUTHS = (0.0, 90.0, 180.0, 270.0)  # four sides, from 20 degrees above
VIEW_ELEVATION, VIEW_DISTANCE, VIEW_FILL = 20.0, 3.0, 0.8
MIN_VIEW_COVERAGE = 0.85  # ground-truth boxes cover >= 0.99 of the mask box in every view, 10%-noisy ones 0.92
MIN_FIT_IOU = 0.5  # 3D IoU with the box fitted to the cloud, for the annotation to be refitted rather than dropped
MIN_BOX2D_IOU = 0.6  # an annotated 2D box this close to the mask box is refitted to it
MIN_AGREEMENT = 0.5  # share of the G answers that must match the medoid's; mean pairwise IoU of the G boxes
SNAP_PIXELS = 12.0  # a 2D keypoint this far from the mask at most (about a tenth of the image) is moved onto it
SNAP_3D = 0.25  # object units: a 3D keypoint this far from the cloud at most (a quarter of its radius) is moved onto it


@dataclass(frozen=True)
class Decision:
    """What Stage 2 did with one field of one sample: kept, repaired or dropped, and why."""

    uid: str
    field: str
    verdict: str  # "kept" | "repaired" | "dropped"
    reason: str


@dataclass
class Annotation:
    """One parsed output: the dequantized geometric fields and the two text fields that parsed."""

    geometry: dict[str, np.ndarray]
    answer: str | None
    description: str | None

    @classmethod
    def read(cls, text: str, sample: Sample, quant: Quant) -> Annotation:
        fields = parse_output(text).fields
        text_field = {name: fields[name][0] if name in fields else None for name in ("answer", "description")}
        return cls(predicted_geometry(text, sample, quant), **text_field)

    def complete(self, sample: Sample) -> bool:
        """All six fields well formed, with the sample's number of keypoints."""
        g = self.geometry
        return (
            self.answer is not None
            and self.description is not None
            and set(GEOMETRY_FIELDS) <= g.keys()
            and len(g["kpts2d"]) == len(sample.targets.kpts2d)
            and len(g["kpts3d"]) == len(sample.targets.kpts3d)
        )


def _similarity(a: Annotation, b: Annotation) -> float:
    """How much two annotations agree: the boxes' IoUs plus 1 for the same answer (0 for what either lacks)."""
    score = float(a.answer is not None and a.answer == b.answer)
    for name in ("bbox2d", "bbox3d"):
        if name in a.geometry and name in b.geometry:
            score += float(box_iou(a.geometry[name], b.geometry[name]))
    return score


def medoid(annotations: list[Annotation]) -> int:
    """Index of the annotation that agrees best with the others (GRPO-style G samples -> one)."""
    n = len(annotations)
    agreement = [sum(_similarity(annotations[i], annotations[j]) for j in range(n) if j != i) for i in range(n)]
    return int(np.argmax(agreement))


def object_mask(sample: Sample) -> np.ndarray:
    """The object's pixels in the sample's own image: everything that is not the renderer's background."""
    return np.any(sample.image != np.asarray(BACKGROUND, dtype=np.uint8), axis=-1)


def cloud_colour(sample: Sample) -> str:
    """The palette colour nearest to most of the cloud's points (the benchmark names an object by its largest
    colour area, and the points sample the surface by area)."""
    rgb = sample.points[:, 3:6].astype(np.float64)
    palette = np.array(list(PALETTE.values()))
    nearest = np.argmin(((rgb[:, None, :] - palette[None]) ** 2).sum(-1), axis=1)  # [N]
    return COLOUR_NAMES[int(np.bincount(nearest, minlength=len(palette)).argmax())]


def view_coverage(box: np.ndarray, xyz: np.ndarray, size: int) -> float:
    """The 3D box against the cloud in rendered views: the least share, over the views, of the object's mask box
    that the bounds of the box's projected corners cover (1 for any box that holds the cloud)."""
    corners = box3d_corners(box[None])[0]  # [8, 3]
    grey = np.full_like(xyz, 0.5)  # only the mask is used
    coverage = []
    for azimuth in VIEW_AZIMUTHS:
        camera = fit_camera(xyz, orbit_eye(VIEW_ELEVATION, azimuth, VIEW_DISTANCE), VIEW_FILL, size, size)
        _, mask = render(xyz, grey, None, camera)
        pixels, depth = project(corners, camera.K, camera.R, camera.t)
        if (depth <= 0).any():
            return 0.0
        lo, hi = pixels.min(0), pixels.max(0)
        object_lo, object_hi = np.split(mask_box(mask), 2)
        overlap = np.clip(np.minimum(hi, object_hi) - np.maximum(lo, object_lo), 0.0, None).prod()
        coverage.append(overlap / (object_hi - object_lo).prod())
    return float(min(coverage))


def _cell(lo: np.ndarray, hi: np.ndarray, quant: Quant) -> float:
    """The largest side of one quantization cell (0 for continuous coordinates)."""
    return 0.0 if quant.continuous else float(((np.asarray(hi) - np.asarray(lo)) / quant.bins).max())


def _snap(points: np.ndarray, onto: np.ndarray, tolerance: float) -> np.ndarray | None:
    """Each point moved to its nearest of `onto`, or None when one is farther than `tolerance`."""
    distances = np.linalg.norm(points[:, None, :] - onto[None], axis=-1)  # [K, M]
    nearest = distances.argmin(axis=1)
    if (distances[np.arange(len(points)), nearest] > tolerance).any():
        return None
    return onto[nearest]


def _geometric_answer(question_type: str, box: np.ndarray) -> tuple[str, ...] | None:
    """The accepted answers of an axis or height question on this box (data3d.questions asks them), canonical
    first; None when the extents are too close to call."""
    question = longest_axis_question(box) if question_type == "axis" else taller_question(box)
    return None if question is None else tuple(question[2])


def check_answer(
    sample: Sample,
    annotations: list[Annotation],
    answer: str | None,
    description: str | None,
    box: np.ndarray | None,
    colour: str,
) -> tuple[str | None, str, str]:
    """The answer to keep (None: drop it), its verdict and the reason."""
    if answer is None:
        return None, "dropped", "unparsed"
    said = [normalize_answer(a.answer) for a in annotations if a.answer is not None]
    if said.count(normalize_answer(answer)) < MIN_AGREEMENT * len(annotations):
        return None, "dropped", "samples disagree"
    if sample.question_type == "colour" and _named(answer, COLOUR_NAMES) != colour:
        return None, "dropped", "not the cloud's colour"
    if sample.question_type == "category" and description is not None:
        named = _named(description, CATEGORIES)
        if named is not None and normalize_answer(_option(sample, answer)) != named:
            return None, "dropped", "the description names another category"
    if sample.question_type in ("axis", "taller") and box is not None:
        truth = _geometric_answer(sample.question_type, box)
        if truth is None:
            return None, "dropped", "too close to call"
        if normalize_answer(answer) in truth:
            return truth[0], "kept", "the box agrees"
        return truth[0], "repaired", "read off the box"
    return answer, "kept", "samples agree"


def _named(text: str, names) -> str | None:
    """The one name of `names` that the text uses as a word, or None when it uses none or several."""
    words = set(normalize_answer(text).replace("gray", "grey").split())
    named = [name for name in names if name in words]
    return named[0] if len(named) == 1 else None


def _option(sample: Sample, answer: str) -> str:
    """A lettered answer to a multiple-choice question as the option's text ("B" -> "chair"); others as they are."""
    found = (
        re.search(rf"\({re.escape(answer.strip().upper())}\) (\w+)", sample.instruction)
        if len(answer.strip()) == 1
        else None
    )
    return found.group(1) if found else answer


def cross_check(sample: Sample, texts: list[str], quant: Quant) -> tuple[Sample | None, list[Decision]]:
    """Stage 2 on one sample's G outputs: the annotated sample (its targets replaced), or None, and the decisions."""
    annotations = [Annotation.read(t, sample, quant) for t in texts]
    best = annotations[medoid(annotations)]
    decisions: list[Decision] = []

    def decide(field: str, verdict: str, reason: str) -> None:
        decisions.append(Decision(sample.uid, field, verdict, reason))

    targets = {}
    xyz = sample.points[:, :3].astype(np.float64)
    mask = object_mask(sample)
    cell = {2: _cell(*quant.lo_hi_2d(mask.shape[1], mask.shape[0]), quant), 3: _cell(*quant.lo_hi_3d(), quant)}

    def correct(field: str, value: np.ndarray, fixed: np.ndarray, how: str) -> None:
        """Keep the corrected value; the annotation counts as repaired if it moved by more than one quantization cell."""
        targets[field] = fixed
        moved = np.abs(fixed - value).max() > cell[int(field[-2])]  # a field name ends in 2d or 3d
        decide(field, *(("repaired", how) if moved else ("kept", "within a quantization cell")))

    box, fitted = best.geometry.get("bbox3d"), box3d(xyz)
    if box is None:
        decide("bbox3d", "dropped", "unparsed")
    elif np.mean([box_iou(box, a.geometry["bbox3d"]) for a in annotations if "bbox3d" in a.geometry]) < MIN_AGREEMENT:
        decide("bbox3d", "dropped", "samples disagree")
    elif view_coverage(box, xyz, sample.image.shape[0]) < MIN_VIEW_COVERAGE:
        decide("bbox3d", "dropped", "misses the object in a view")
    elif box_iou(box, fitted) < MIN_FIT_IOU:
        decide("bbox3d", "dropped", "far from the cloud's box")
    else:
        correct("bbox3d", box, fitted, "refitted to the cloud")

    box = best.geometry.get("bbox2d")
    if box is None:
        decide("bbox2d", "dropped", "unparsed")
    elif box_iou(box, mask_box(mask)) < MIN_BOX2D_IOU:
        decide("bbox2d", "dropped", "off the object's mask")
    else:
        correct("bbox2d", box, box2d(mask), "refitted to the mask")

    rows, cols = np.nonzero(dilate(mask))
    onto = {"kpts2d": (np.stack([cols, rows], 1) + 0.5, SNAP_PIXELS), "kpts3d": (xyz, SNAP_3D)}
    for field, (points, tolerance) in onto.items():
        kpts = best.geometry.get(field)
        snapped = None if kpts is None else _snap(kpts, points, tolerance)
        if kpts is None or len(kpts) != len(getattr(sample.targets, field)):
            decide(field, "dropped", "unparsed")
        elif snapped is None:
            decide(field, "dropped", "off the object")
        else:
            correct(field, kpts, snapped, "snapped onto the object")

    colour = cloud_colour(sample)
    answer, verdict, reason = check_answer(
        sample, annotations, best.answer, best.description, targets.get("bbox3d"), colour
    )
    decide("answer", verdict, reason)
    if answer is not None:
        targets["answer"] = answer

    description = best.description
    if description is None:
        decide("description", "dropped", "unparsed")
    elif _named(description, COLOUR_NAMES) != colour:
        decide("description", "dropped", "not the cloud's colour")
    elif _named(description, CATEGORIES) is None:
        decide("description", "dropped", "names no category")
    else:
        targets["description"] = description
        decide("description", "kept", "names the cloud's colour")

    return _annotated(sample, targets) if len(targets) == len(FIELDS) else None, decisions


def medoid_only(sample: Sample, texts: list[str], quant: Quant) -> tuple[Sample | None, list[Decision]]:
    """The ablation without Stage 2: the medoid annotation as the policy wrote it, kept whenever it is complete."""
    annotations = [Annotation.read(t, sample, quant) for t in texts]
    best = annotations[medoid(annotations)]
    if not best.complete(sample):
        return None, [Decision(sample.uid, "all", "dropped", "incomplete")]
    if _named(best.description, COLOUR_NAMES) is None or _named(best.description, CATEGORIES) is None:
        # the SFT's cloud-alignment loss needs both (rl.algorithms.sft.alignment_targets)
        return None, [Decision(sample.uid, "all", "dropped", "description names no colour or category")]
    targets = {**best.geometry, "answer": best.answer, "description": best.description}
    return _annotated(sample, targets), [Decision(sample.uid, "all", "kept", "no cross-check")]


def _annotated(sample: Sample, fields: dict) -> Sample:
    """The sample with its targets replaced by the annotation (the rest of the sample is what the engine saw)."""
    targets = Targets(
        bbox2d=np.asarray(fields["bbox2d"], dtype=np.float64).reshape(4),
        bbox3d=np.asarray(fields["bbox3d"], dtype=np.float64).reshape(6),
        kpts3d=np.asarray(fields["kpts3d"], dtype=np.float64).reshape(-1, 3),
        kpts2d=np.asarray(fields["kpts2d"], dtype=np.float64).reshape(-1, 2),
        answers=[fields["answer"]],
        category=_named(fields["description"], CATEGORIES),
        description=fields["description"],
        attributes={"source": "pisa", "colour": _named(fields["description"], COLOUR_NAMES)},
    )
    return dataclasses.replace(sample, uid=f"pisa-{sample.uid}", targets=targets)


def count_decisions(decisions: list[Decision]) -> dict[str, dict[str, int]]:
    """field -> "verdict: reason" -> count."""
    counts: dict[str, Counter] = {}
    for d in decisions:
        counts.setdefault(d.field, Counter())[f"{d.verdict}: {d.reason}"] += 1
    return {field: dict(sorted(c.items())) for field, c in counts.items()}
