"""Random model outputs, targets and cameras that exercise every branch of the reward contract (for the oracle tests)."""

from __future__ import annotations

import json
import math
import random

PREFIXES = ["", "  ", "\n", "```json\n", "```\n", "Sure! ", "ü📦 ", "```JSON\n", "{", "``` json\n"]
SUFFIXES = ["", "\n", "\n```", "```", " done", "}", "\n```\n", "```\n extra"]
WEIRD_VALUES = [None, True, False, "12", [], {}, [[1, 2]], "x", 1.5, -3, 10**400, 1e308, [1, 2, 3, 4, 5, 6, 7]]


def random_camera(rng: random.Random) -> dict:
    yaw, pitch = rng.uniform(-math.pi, math.pi), rng.uniform(-0.6, 0.6)
    cy, sy, cp, sp = math.cos(yaw), math.sin(yaw), math.cos(pitch), math.sin(pitch)
    R = [[cy, 0.0, sy], [sy * sp, cp, -cy * sp], [-sy * cp, sp, cy * cp]]
    w, h = rng.choice([(128, 128), (640, 480), (64, 96)])
    f = rng.uniform(0.6, 2.0) * w
    depth = rng.choice([rng.uniform(2.0, 6.0), rng.uniform(-1.0, 2.0)])  # some boxes straddle the camera plane
    return {
        "K": [[f, 0.0, w / 2], [0.0, f, h / 2], [0.0, 0.0, 1.0]],
        "R": R,
        "t": [rng.uniform(-0.3, 0.3), rng.uniform(-0.3, 0.3), depth],
        "width": w,
        "height": h,
    }


def random_box(rng: random.Random, dims: int, lo: float, hi: float, invert: float = 0.05) -> list[float]:
    a = [rng.uniform(lo, hi) for _ in range(dims)]
    b = [rng.uniform(lo, hi) for _ in range(dims)]
    box = [min(x, y) for x, y in zip(a, b)] + [max(x, y) for x, y in zip(a, b)]
    if rng.random() < invert:
        box[0], box[dims] = box[dims], box[0]
    return box


def _coordinate(rng: random.Random, bins: int) -> float | int:
    if bins == 0:
        return rng.choice([rng.uniform(-1.5, 1.5), rng.uniform(-10, 700), rng.randint(-5, 500)])
    q = rng.randint(0, bins - 1)
    roll = rng.random()
    if roll < 0.03:
        return bins + rng.randint(0, 3)
    if roll < 0.05:
        return -1
    if roll < 0.08:
        return float(q)
    if roll < 0.10:
        return q + 0.5
    return q


def _value(rng: random.Random, name: str, bins: int):
    if rng.random() < 0.05:
        return rng.choice(WEIRD_VALUES)
    if name == "answer":
        return rng.choice(["chair", " Chair. ", "(table)", "a  TABLE!", "lamp", "b", "", "mug?"])
    if name == "description":
        return rng.choice(["a chair", 'braces {"x": [1, {2}]} and \\"quotes\\"', "ünïcødé ✓", "}{", ""])
    sizes = {"bbox2d": 4, "bbox3d": 6}
    if name in sizes:
        n = sizes[name] if rng.random() > 0.05 else rng.choice([3, 5, 7])
        box = [_coordinate(rng, bins) for _ in range(n)]
        if n == sizes[name] and rng.random() < 0.85:
            d = n // 2
            box = [min(box[i], box[i + d]) for i in range(d)] + [max(box[i], box[i + d]) for i in range(d)]
        return box
    dim = 2 if name == "kpts2d" else 3
    count = rng.choice([0, 1, 2, 4, 16, 16, 20])
    return [[_coordinate(rng, bins) for _ in range(dim if rng.random() > 0.02 else dim + 1)] for _ in range(count)]


def random_output(rng: random.Random, bins: int) -> str:
    names = ["answer", "description", "bbox2d", "bbox3d", "kpts2d", "kpts3d"]
    if rng.random() < 0.4:
        rng.shuffle(names)
    if rng.random() < 0.1:
        names.remove(rng.choice(names))
    if rng.random() < 0.05:
        names.append(rng.choice(names))
    if rng.random() < 0.1:
        names.insert(rng.randrange(len(names) + 1), "extra")
    parts = []
    for name in names:
        key = json.dumps(name, ensure_ascii=rng.random() < 0.5)
        if name == "answer" and rng.random() < 0.05:
            key = '"\\u0061nswer"'
        value = {"nested": "{}"} if name == "extra" else _value(rng, name, bins)
        separator = rng.choice([": ", ":", " : ", ":\n  "])
        parts.append(key + separator + json.dumps(value, ensure_ascii=rng.random() < 0.5))
    body = "{" + rng.choice([", ", ",", ",\n "]).join(parts) + rng.choice(["}", " }", "\n}"])
    roll = rng.random()
    if roll < 0.05:
        body = body[: rng.randrange(1, len(body))]
    elif roll < 0.07:
        body = body.replace(",", ",,", 1)
    elif roll < 0.08:
        body = body.replace("1", "NaN", 1)
    return rng.choice(PREFIXES) + body + rng.choice(SUFFIXES)


def random_sample(rng: random.Random, bins: int) -> dict:
    target = {
        "answer": rng.choice(["chair", ["table", "a table"], ["Lamp", "B"], "mug"]),
        "bbox2d": random_box(rng, 2, 0.0, 128.0),
        "bbox3d": random_box(rng, 3, -1.0, 1.0),
    }
    if rng.random() < 0.5:
        target["num_kpts2d"] = rng.choice([1, 16])
    if rng.random() < 0.5:
        target["num_kpts3d"] = rng.choice([1, 16])
    return {"text": random_output(rng, bins), "target": target, "camera": random_camera(rng)}
