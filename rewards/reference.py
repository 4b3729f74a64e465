"""A plain, per-sample, standard-library reading of the reward contract (issue 2, section 2).

It is the oracle that the fast `score_batch` is cross-checked against, and the straightforward baseline that
`bench/rewards_bench.py` times it against, so it favours the obvious loop over speed everywhere.
"""

from __future__ import annotations

import json
import math
from collections import Counter

from rewards.schema import DEFAULT_BINS, DEFAULT_BOUNDS3D, FIELDS, REWARDS, too_long

JSON_WHITESPACE = " \t\n\r"
ANSWER_STRIP_CHARS = " .,;:!?\"'()[]"
CODE_FENCES_BEFORE = ("```json", "```")
CODE_FENCE_AFTER = "```"
MIN_DEPTH = 1e-6
BOX_SIZES = {"bbox2d": 4, "bbox3d": 6}
KPT_DIMS = {"kpts2d": 2, "kpts3d": 3}


def reference_score_batch(samples: list[dict], quant: dict | None = None) -> list[dict]:
    """Score each sample on its own: the `results` list of the contract, in request order."""
    quant = quant or {}
    bins = quant.get("bins", DEFAULT_BINS)
    bounds3d = quant.get("bounds3d", DEFAULT_BOUNDS3D)
    lo3d, hi3d = [float(v) for v in bounds3d[0]], [float(v) for v in bounds3d[1]]
    return [score_sample(sample, bins, lo3d, hi3d) for sample in samples]


def score_sample(sample: dict, bins: int, lo3d: list[float], hi3d: list[float]) -> dict:
    rewards = dict.fromkeys(REWARDS, 0.0)
    spans: dict[str, list[int] | None] = dict.fromkeys(FIELDS)
    text = sample["text"]
    parsed = parse_object(text)
    if isinstance(parsed, str):
        return {"rewards": rewards, "spans": spans, "errors": [parsed]}
    start, end, members = parsed
    fields, errors = well_formed_fields(members, bins)
    for name, (_, span) in fields.items():
        spans[name] = list(span)

    target, camera = sample["target"], sample["camera"]
    width, height = float(camera["width"]), float(camera["height"])
    target_box2d = box_from_flat([float(v) for v in target["bbox2d"]], 2)
    target_box3d = box_from_flat([float(v) for v in target["bbox3d"]], 3)

    outside_problem = outside_text_problem(text[:start], text[end:])
    if outside_problem:
        errors.append(f"format: {outside_problem}")
    if len(fields) < len(FIELDS):
        errors.append("format: not every field is well-formed")
    rewards["format"] = 1.0 if not outside_problem and len(fields) == len(FIELDS) else 0.0

    if "answer" in fields:
        accepted = target["answer"] if isinstance(target["answer"], list) else [target["answer"]]
        predicted = normalize_answer(fields["answer"][0])
        rewards["answer"] = 1.0 if any(predicted == normalize_answer(a) for a in accepted) else 0.0

    box2d = box3d = None
    if "bbox2d" in fields:
        box2d = box_from_flat(dequantize_2d(fields["bbox2d"][0], bins, width, height), 2)
        rewards["bbox2d"] = iou(box2d, target_box2d)
        if is_inverted(box2d):
            errors.append("bbox2d: predicted box is inverted (x1 > x2 or y1 > y2)")
    if "bbox3d" in fields:
        box3d = box_from_flat(dequantize_3d(fields["bbox3d"][0], bins, lo3d, hi3d), 3)
        rewards["bbox3d"] = iou(box3d, target_box3d)
        if is_inverted(box3d):
            errors.append("bbox3d: predicted box is inverted (a min exceeds its max)")

    if "kpts2d" in fields:
        points = [dequantize_2d(point, bins, width, height) for point in fields["kpts2d"][0]]
        rewards["kpts2d"] = keypoints_in_box(points, target_box2d, target.get("num_kpts2d"))
    if "kpts3d" in fields:
        points = [dequantize_3d(point, bins, lo3d, hi3d) for point in fields["kpts3d"][0]]
        rewards["kpts3d"] = keypoints_in_box(points, target_box3d, target.get("num_kpts3d"))

    if box2d is None or box3d is None:
        errors.append("rpc: needs well-formed bbox2d and bbox3d")
    elif is_inverted(box2d) or is_inverted(box3d):
        errors.append("rpc: needs bbox2d and bbox3d that are not inverted")
    else:
        projected, problem = project_box3d(box3d, camera, width, height)
        if projected is None:
            errors.append(f"rpc: {problem}")
        else:
            rewards["rpc"] = iou(projected, box2d)
    return {"rewards": rewards, "spans": spans, "errors": errors}


def parse_object(text: str) -> tuple[int, int, list[tuple[str, object, tuple[int, int]]]] | str:
    """The object at the first '{': (start, end, [(key, value, value span), ...] top-level, in order), or why not."""
    if why := too_long(text):
        return why
    start = text.find("{")
    if start < 0:
        return "no JSON object: the text has no '{'"
    scanned = scan_object(text, start)
    if scanned is None:
        return f"no JSON object: the '{{' at char {start} is never closed"
    end, value_spans = scanned
    objects_pairs: list[list[tuple[str, object]]] = []

    def keep_pairs(pairs: list[tuple[str, object]]) -> dict:
        objects_pairs.append(pairs)
        return dict(pairs)

    try:
        json.loads(text[start:end], object_pairs_hook=keep_pairs, parse_constant=reject_constant, parse_int=parse_int)
    except (ValueError, RecursionError) as err:
        return f"no JSON object: the object at chars {start}..{end} is not valid JSON ({err})"
    # The decoder finishes nested objects first, so the top-level object's pairs arrive last.
    top_pairs = objects_pairs[-1]
    if len(top_pairs) != len(value_spans):
        raise AssertionError(f"span scan found {len(value_spans)} members, the decoder {len(top_pairs)}")
    return start, end, [(key, value, span) for (key, value), span in zip(top_pairs, value_spans)]


def reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not standard JSON")


def parse_int(digits: str) -> int | float:
    """An integer too long for int() (over sys.get_int_max_str_digits digits) is valid JSON: it reads as float(digits),
    +-infinity, which no coordinate field accepts, so only the field holding it fails."""
    try:
        return int(digits)
    except ValueError:
        return float(digits)


def scan_object(text: str, start: int) -> tuple[int, list[tuple[int, int]]] | None:
    """From the '{' at `start`, find one past its matching '}' and the [s, e) of each top-level value; None if unclosed.

    Strings (with backslash escapes) are skipped so braces inside them do not count. Only meaningful when the
    substring then decodes as JSON, which the caller checks.
    """
    depth = 0
    in_string = escaped = awaiting_value = False
    value_start: int | None = None
    last_solid = start
    value_spans: list[tuple[int, int]] = []
    for i in range(start, len(text)):
        char = text[i]
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
            last_solid = i
            continue
        if char in JSON_WHITESPACE:
            continue
        if awaiting_value:
            value_start, awaiting_value = i, False
        if depth == 1 and char in ",}" and value_start is not None:
            value_spans.append((value_start, last_solid + 1))
            value_start = None
        if char == '"':
            in_string = True
        elif char in "{[":
            depth += 1
        elif char in "}]":
            depth -= 1
            if depth == 0:
                return i + 1, value_spans
        elif char == ":" and depth == 1:
            awaiting_value = True
        last_solid = i
    return None


def well_formed_fields(
    members: list[tuple[str, object, tuple[int, int]]], bins: int
) -> tuple[dict[str, tuple[object, tuple[int, int]]], list[str]]:
    """The schema fields that appear exactly once with a valid value, name -> (value, span), and an error per other field."""
    counts = Counter(key for key, _, _ in members)
    found = {key: (value, span) for key, value, span in members}
    fields: dict[str, tuple[object, tuple[int, int]]] = {}
    errors: list[str] = []
    for name in FIELDS:
        if counts[name] == 0:
            errors.append(f"{name}: missing")
        elif counts[name] > 1:
            errors.append(f"{name}: duplicated key ({counts[name]} times)")
        else:
            problem = field_problem(name, found[name][0], bins)
            if problem:
                errors.append(f"{name}: {problem}")
            else:
                fields[name] = found[name]
    return fields, errors


def field_problem(name: str, value: object, bins: int) -> str | None:
    if name in ("answer", "description"):
        return None if isinstance(value, str) else f"expected a string, got {json_type(value)}"
    if name in BOX_SIZES:
        size = BOX_SIZES[name]
        if not isinstance(value, list):
            return f"expected a list of {size} coordinates, got {json_type(value)}"
        if len(value) != size:
            return f"expected a list of {size} coordinates, got {len(value)} items"
        return coordinates_problem(value, bins)
    dims = KPT_DIMS[name]
    if not isinstance(value, list) or not value:
        return f"expected a non-empty list of {dims}-coordinate lists, got {describe(value)}"
    for index, point in enumerate(value):
        if not isinstance(point, list) or len(point) != dims:
            return f"keypoint {index}: expected a list of {dims} coordinates, got {describe(point)}"
        problem = coordinates_problem(point, bins)
        if problem:
            return f"keypoint {index}: {problem}"
    return None


def coordinates_problem(values: list, bins: int) -> str | None:
    for index, value in enumerate(values):
        problem = coordinate_problem(value, bins)
        if problem:
            return f"coordinate {index}: {problem}"
    return None


def coordinate_problem(value: object, bins: int) -> str | None:
    """Why `value` is not a coordinate: JSON booleans are not numbers; bins need whole values in [0, bins-1]."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return f"expected a number, got {json_type(value)}"
    if bins == 0:
        try:
            finite = math.isfinite(value)
        except OverflowError:
            finite = False
        return None if finite else f"{value!r} is not a finite number"
    if isinstance(value, float) and not value.is_integer():
        return f"{value!r} is not a whole bin index"
    if not 0 <= value <= bins - 1:
        return f"bin {value!r} is outside [0, {bins - 1}]"
    return None


def json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    return "a list" if isinstance(value, list) else "an object"


def describe(value: object) -> str:
    if isinstance(value, list):
        return f"a list of {len(value)} items"
    return json_type(value)


def outside_text_problem(before: str, after: str) -> str | None:
    before, after = before.strip(), after.strip()
    if not before and not after:
        return None
    if before in CODE_FENCES_BEFORE and after == CODE_FENCE_AFTER:
        return None
    return "text outside the JSON object (only whitespace or a ```json / ``` code fence is allowed)"


def normalize_answer(answer: str) -> str:
    return " ".join(answer.lower().split()).strip(ANSWER_STRIP_CHARS)


def dequantize(q: float, lo: float, hi: float, bins: int) -> float:
    """Bin index -> coordinate, v = lo + q (hi - lo) / (bins - 1); bins == 0 means q already is the coordinate."""
    if bins == 0:
        return float(q)
    return lo + q * (hi - lo) / (bins - 1)


def dequantize_2d(values: list, bins: int, width: float, height: float) -> list[float]:
    """Even positions are x (over [0, width]), odd ones y (over [0, height]): fits [x1,y1,x2,y2] and [u,v]."""
    return [dequantize(q, 0.0, width if i % 2 == 0 else height, bins) for i, q in enumerate(values)]


def dequantize_3d(values: list, bins: int, lo3d: list[float], hi3d: list[float]) -> list[float]:
    """Position i is axis i % 3: fits [xmin,ymin,zmin,xmax,ymax,zmax] and [x,y,z]."""
    return [dequantize(q, lo3d[i % 3], hi3d[i % 3], bins) for i, q in enumerate(values)]


def box_from_flat(flat: list[float], dims: int) -> tuple[list[float], list[float]]:
    return flat[:dims], flat[dims:]


def is_inverted(box: tuple[list[float], list[float]]) -> bool:
    return any(lo > hi for lo, hi in zip(*box))


def iou(a: tuple[list[float], list[float]], b: tuple[list[float], list[float]]) -> float:
    """IoU of two axis-aligned boxes (mins, maxs) in any dimension; an inverted box or a zero union scores 0."""
    if is_inverted(a) or is_inverted(b):
        return 0.0
    intersection = volume_a = volume_b = 1.0
    for a_lo, a_hi, b_lo, b_hi in zip(a[0], a[1], b[0], b[1]):
        intersection *= max(0.0, min(a_hi, b_hi) - max(a_lo, b_lo))
        volume_a *= a_hi - a_lo
        volume_b *= b_hi - b_lo
    union = volume_a + volume_b - intersection
    return intersection / union if union > 0 else 0.0


def keypoints_in_box(points: list[list[float]], box: tuple[list[float], list[float]], num_kpts: int | None) -> float:
    """KPA: min(m, K) / max(n, K) with m of the n points inside the box (inclusive) and K = num_kpts, else n."""
    n = len(points)
    m = sum(1 for point in points if all(lo <= v <= hi for v, lo, hi in zip(point, box[0], box[1])))
    k = n if num_kpts is None else num_kpts
    return min(m, k) / max(n, k)


def project_box3d(
    box3d: tuple[list[float], list[float]], camera: dict, width: float, height: float
) -> tuple[tuple[list[float], list[float]] | None, str | None]:
    """The image box of the 8 corners (x = K(RX + t)), clipped to [0,W]x[0,H]; (None, why) if behind or empty."""
    K, R, t = camera["K"], camera["R"], camera["t"]
    lo, hi = box3d
    us: list[float] = []
    vs: list[float] = []
    for x in (lo[0], hi[0]):
        for y in (lo[1], hi[1]):
            for z in (lo[2], hi[2]):
                corner = (x, y, z)
                in_camera = [sum(R[r][c] * corner[c] for c in range(3)) + t[r] for r in range(3)]
                if in_camera[2] <= MIN_DEPTH:
                    return None, f"corner {list(corner)} of the predicted 3D box is behind the camera"
                pixel = [sum(K[r][c] * in_camera[c] for c in range(3)) for r in range(3)]
                us.append(pixel[0] / pixel[2])
                vs.append(pixel[1] / pixel[2])
    x1, x2 = (min(max(u, 0.0), width) for u in (min(us), max(us)))
    y1, y2 = (min(max(v, 0.0), height) for v in (min(vs), max(vs)))
    if x2 <= x1 or y2 <= y1:
        return None, "the predicted 3D box projects outside the image"
    return ([x1, y1], [x2, y2]), None
