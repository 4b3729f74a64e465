"""Procedural object categories built from parametric primitives, with random proportions and colours.

Each builder draws its proportions from `rng` and returns its parts with a colour slot per part (MAIN, ACCENT, DARK,
LIGHT), the countable parts it created (e.g. {"legs": 4}) and a description tail. The frame is y up with the object's
front towards +z (the category camera ranges in `benchmark` rely on it); units are roughly metres, which does not
matter because clouds are normalized to the unit sphere afterwards.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from data3d.primitives import (
    Mesh,
    box,
    cylinder,
    ellipsoid,
    face_areas,
    lathe,
    merge,
    placed,
    rotation,
    torus_arc,
)

PALETTE: dict[str, tuple[float, float, float]] = {
    "red": (0.80, 0.12, 0.12),
    "orange": (0.95, 0.50, 0.10),
    "yellow": (0.95, 0.85, 0.15),
    "green": (0.15, 0.60, 0.20),
    "blue": (0.15, 0.30, 0.80),
    "purple": (0.50, 0.20, 0.65),
    "pink": (0.95, 0.55, 0.70),
    "brown": (0.50, 0.30, 0.15),
    "white": (0.92, 0.92, 0.90),
    "black": (0.10, 0.10, 0.10),
    "grey": (0.50, 0.50, 0.52),
}
COLOUR_NAMES: tuple[str, ...] = tuple(PALETTE)
COLOUR_SYNONYMS: dict[str, list[str]] = {"grey": ["gray"]}
NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight")

MAIN, ACCENT, DARK, LIGHT = 0, 1, 2, 3  # colour slots a builder assigns to its parts
COLOUR_JITTER = 0.04  # per-sample rgb noise so one colour name covers a range of shades


@dataclass
class Shape:
    category: str
    mesh: Mesh  # labels are indices into COLOUR_NAMES
    face_rgb: np.ndarray  # (F, 3) float64 in [0, 1]
    colour: str  # the colour covering the largest surface area
    counts: dict[str, int]  # countable parts the geometry has, e.g. {"legs": 4}
    features: str  # description tail, e.g. "with four legs and a tall back"
    part_count: int
    size_class: str

    @property
    def description(self) -> str:
        return f"{article(self.colour)} {self.colour} {self.category} {self.features}".strip()


def article(word: str) -> str:
    return "an" if word[:1].lower() in "aeiou" else "a"


def _count(n: int, noun: str, plural: str | None = None) -> str:
    return f"{NUMBER_WORDS[n]} {noun if n == 1 else plural or noun + 's'}"


def _corners(half_x: float, half_z: float) -> list[tuple[float, float]]:
    return [(sx * half_x, sz * half_z) for sx in (-1, 1) for sz in (-1, 1)]


def _legs(half_x: float, half_z: float, height: float, side: float, label: int) -> list[Mesh]:
    return [box((side, height, side), (x, height / 2, z), label) for x, z in _corners(half_x, half_z)]


def chair(rng):
    u = rng.uniform
    w, d, seat_y, back_h, leg = u(0.40, 0.55), u(0.40, 0.52), u(0.40, 0.48), u(0.30, 0.60), u(0.03, 0.05)
    parts = [
        box((w, 0.05, d), (0, seat_y - 0.025, 0), MAIN),
        box((w, back_h, 0.04), (0, seat_y + back_h / 2, -d / 2 + 0.02), MAIN),
    ]
    parts += _legs(w / 2 - leg / 2, d / 2 - leg / 2, seat_y - 0.05, leg, ACCENT)
    features = f"with four legs and a {'tall' if back_h > 0.45 else 'low'} back"
    if rng.random() < 0.35:
        for sx in (-1, 1):
            parts += [
                box((0.05, 0.04, d * 0.8), (sx * (w / 2 + 0.025), seat_y + 0.22, 0), ACCENT),
                box((0.04, 0.22, 0.04), (sx * (w / 2 + 0.025), seat_y + 0.11, d * 0.35), ACCENT),
            ]
        features += " and armrests"
    return parts, {"legs": 4}, features


def table(rng):
    h, top_t = rng.uniform(0.68, 0.78), rng.uniform(0.03, 0.06)
    if rng.random() < 0.35:
        r = rng.uniform(0.40, 0.60)
        parts = [
            placed(cylinder(r, top_t, MAIN, segments=24), (0, h - top_t, 0)),
            cylinder(0.05, h - top_t, ACCENT),
            cylinder(r * 0.5, 0.04, ACCENT, segments=24),
        ]
        return parts, {"legs": 1}, "with a round top on one central leg"
    w, d, leg = rng.uniform(0.9, 1.8), rng.uniform(0.6, 1.0), rng.uniform(0.04, 0.07)
    parts = [box((w, top_t, d), (0, h - top_t / 2, 0), MAIN)] + _legs(w / 2 - leg, d / 2 - leg, h - top_t, leg, ACCENT)
    return parts, {"legs": 4}, "with a rectangular top and four legs"


def mug(rng):
    r, h, wall = rng.uniform(0.035, 0.05), rng.uniform(0.08, 0.12), 0.006
    parts = [lathe([(0, 0), (r, 0), (r, h), (r - wall, h), (r - wall, wall), (0, wall)], 20, MAIN)]
    handles = 2 if rng.random() < 0.3 else 1
    for side in (1, -1)[:handles]:
        handle = torus_arc(h * 0.3, 0.007, np.pi, MAIN)
        parts.append(placed(handle, (side * r, h / 2, 0), rotation("y", 90 - 90 * side)))
    return parts, {"handles": handles}, f"with {_count(handles, 'handle')}"


def lamp(rng):
    u = rng.uniform
    base_r, pole_h, shade_r, shade_h = u(0.08, 0.14), u(0.30, 0.60), u(0.12, 0.20), u(0.15, 0.25)
    conical = rng.random() < 0.6
    top_r = shade_r * (rng.uniform(0.45, 0.75) if conical else 0.97)
    parts = [
        cylinder(base_r, 0.03, ACCENT),
        placed(cylinder(0.012, pole_h, ACCENT, segments=8), (0, 0.03, 0)),
        placed(lathe([(shade_r, 0), (top_r, shade_h)], 24, MAIN), (0, 0.03 + pole_h - shade_h * 0.6, 0)),
    ]
    return parts, {}, f"with a {'conical' if conical else 'cylindrical'} shade"


def bottle(rng):
    u = rng.uniform
    r, body_h, shoulder_h, neck_h = u(0.03, 0.05), u(0.12, 0.22), u(0.03, 0.06), u(0.03, 0.10)
    neck_r, top = r * u(0.30, 0.45), body_h + shoulder_h + neck_h
    profile = [(0, 0), (r, 0), (r, body_h), (neck_r, body_h + shoulder_h), (neck_r, top), (0, top)]
    parts = [lathe(profile, 20, MAIN), placed(cylinder(neck_r * 1.15, 0.02, ACCENT, segments=12), (0, top, 0))]
    return parts, {}, f"with a {'long' if neck_h > 0.065 else 'short'} neck"


def bed(rng):
    u = rng.uniform
    w, length, frame_h, head_h = u(0.9, 1.8), u(1.9, 2.1), u(0.25, 0.35), u(0.5, 0.9)
    top = 0.1 + frame_h
    parts = [
        box((w, frame_h, length), (0, 0.1 + frame_h / 2, 0), ACCENT),
        box((w * 0.96, 0.2, length * 0.95), (0, top + 0.1, 0.01), MAIN),
        box((w, head_h + frame_h, 0.06), (0, 0.1 + (head_h + frame_h) / 2, -length / 2 - 0.03), ACCENT),
    ]
    parts += _legs(w / 2 - 0.04, length / 2 - 0.04, 0.1, 0.06, ACCENT)
    pillows = 2 if w > 1.2 and rng.random() < 0.7 else 1
    for k in range(pillows):
        x = (k - (pillows - 1) / 2) * w / 2
        parts.append(placed(ellipsoid((w / pillows * 0.38, 0.06, 0.18), MAIN), (x, top + 0.25, -length / 2 + 0.3)))
    features = f"with a headboard and {_count(pillows, 'pillow')}"
    if rng.random() < 0.5:
        parts.append(box((w, frame_h + 0.2, 0.05), (0, 0.1 + (frame_h + 0.2) / 2, length / 2 + 0.025), ACCENT))
        features += " and a footboard"
    return parts, {"pillows": pillows}, features


def sofa(rng):
    u = rng.uniform
    seats, seat_w, d, arm_w, back_h = int(rng.integers(2, 4)), u(0.5, 0.65), u(0.8, 0.95), u(0.1, 0.2), u(0.4, 0.5)
    w, base_top = seats * seat_w + 2 * arm_w, 0.08 + 0.25
    parts = [
        box((w, 0.25, d), (0, 0.08 + 0.125, 0), MAIN),
        box((w, back_h, 0.18), (0, base_top + back_h / 2, -d / 2 + 0.09), MAIN),
    ]
    parts += [box((arm_w, 0.25, d), (sx * (w - arm_w) / 2, base_top + 0.125, 0), MAIN) for sx in (-1, 1)]
    parts += [
        box((seat_w * 0.97, 0.12, d - 0.2), ((k - (seats - 1) / 2) * seat_w, base_top + 0.06, 0.1), MAIN)
        for k in range(seats)
    ]
    parts += _legs(w / 2 - 0.05, d / 2 - 0.05, 0.08, 0.05, ACCENT)
    return parts, {"seat cushions": seats}, f"with {_count(seats, 'seat cushion')} and armrests"


def bookshelf(rng):
    w, h, d, t = rng.uniform(0.6, 1.2), rng.uniform(0.9, 2.0), rng.uniform(0.25, 0.40), 0.025
    shelves = int(rng.integers(2, 6))
    parts = [box((t, h, d), (sx * (w - t) / 2, h / 2, 0), MAIN) for sx in (-1, 1)]
    parts.append(box((w, h, 0.01), (0, h / 2, -d / 2 + 0.005), ACCENT))
    parts += [box((w - 2 * t, t, d), (0, t / 2 + k * (h - t) / shelves, 0), MAIN) for k in range(shelves + 1)]
    return parts, {"shelves": shelves}, f"with {_count(shelves, 'shelf', 'shelves')}"


def bench(rng):
    length, d, h = rng.uniform(1.0, 1.8), rng.uniform(0.30, 0.45), rng.uniform(0.40, 0.48)
    legs = 6 if length > 1.4 else 4
    parts = [box((length, 0.05, d), (0, h - 0.025, 0), MAIN)]
    parts += [
        box((0.05, h - 0.05, 0.05), (x, (h - 0.05) / 2, z * (d / 2 - 0.04)), ACCENT)
        for x in np.linspace(-length / 2 + 0.05, length / 2 - 0.05, legs // 2)
        for z in (-1, 1)
    ]
    features = f"with {_count(legs, 'leg')}"
    if rng.random() < 0.5:
        back_h = rng.uniform(0.25, 0.40)
        parts.append(box((length, back_h, 0.04), (0, h + back_h / 2, -d / 2 + 0.02), MAIN))
        features += " and a backrest"
    return parts, {"legs": legs}, features


def monitor(rng):
    w, depth, neck_h = rng.uniform(0.45, 0.70), rng.uniform(0.03, 0.05), rng.uniform(0.08, 0.15)
    aspect = rng.uniform(0.45, 0.65)
    h = w * aspect
    centre_y = 0.02 + neck_h + h / 2
    # the screen is a slab standing 2 cm proud of the casing: a flat face closer to the casing would z-fight with it
    parts = [
        box((w, h, depth), (0, centre_y, 0), MAIN),
        box((w * 0.94, h * 0.9, 0.02), (0, centre_y, depth / 2 + 0.01), DARK),
        box((0.05, neck_h + h / 2, 0.03), (0, 0.02 + (neck_h + h / 2) / 2, -depth / 2 - 0.015), ACCENT),
        box((w * 0.4, 0.02, 0.22), (0, 0.01, -0.03), ACCENT),
    ]
    return parts, {}, f"with a {'widescreen' if aspect < 0.58 else 'square'} display on a stand"


def car(rng):
    u = rng.uniform
    length = u(3.8, 4.8)
    w, cabin_l = length * u(0.40, 0.46), length * u(0.45, 0.55)
    body_h, cabin_h, wheel_r = u(0.45, 0.60), u(0.40, 0.55), u(0.30, 0.36)
    parts = [
        box((w, body_h, length), (0, 0.18 + body_h / 2, 0), MAIN),
        box((w * 0.9, cabin_h, cabin_l), (0, 0.18 + body_h + cabin_h / 2, -length * 0.08), MAIN),
    ]
    wheel = placed(cylinder(wheel_r, 0.22, DARK), (0, -0.11, 0), rotation("z", 90))
    parts += [placed(wheel, (x, wheel_r, z)) for x, z in _corners(w / 2 - 0.08, length * 0.32)]
    hood = "long" if cabin_l < length * 0.5 else "short"
    return parts, {"wheels": 4}, f"with four wheels and a {hood} hood"


def airplane(rng):
    u = rng.uniform
    length, sweep = u(3.0, 4.0), u(10, 35)
    radius, span, chord = length * u(0.05, 0.07), length * u(0.8, 1.1), length * u(0.12, 0.20)
    profile = [
        (0, 0),
        (radius * 0.3, 0.03 * length),
        (radius, 0.2 * length),
        (radius, 0.85 * length),
        (radius * 0.3, length),
        (0, length),
    ]
    parts = [placed(lathe(profile, 16, MAIN), (0, 0, length / 2), rotation("x", -90))]  # lathe y axis -> -z: nose at +z
    thick = radius * 0.25
    for side in (1, -1):
        swept = rotation("y", side * sweep) @ np.diag([side, 1, 1])  # mirrored to this side, tip swept back
        parts.append(placed(box((span / 2, thick, chord), (span / 4, 0, 0)), (0, -radius * 0.3, 0), swept))
        parts.append(placed(box((span * 0.18, thick, chord * 0.5), (span * 0.09, 0, 0)), (0, 0, -length * 0.42), swept))
    fin_h = length * rng.uniform(0.10, 0.16)
    parts.append(box((thick, fin_h, chord * 0.6), (0, radius + fin_h / 2, -length * 0.42)))
    engines = 4 if rng.random() < 0.4 else 2
    tan = np.tan(np.radians(sweep))
    engine = placed(cylinder(radius * 0.35, chord * 0.8, ACCENT, segments=12), (0, -chord * 0.4, 0), rotation("x", 90))
    for x in [s * o * span for o in (0.18, 0.32)[: engines // 2] for s in (1, -1)]:
        parts.append(placed(engine, (x, -radius * 0.75, chord * 0.1 - abs(x) * tan)))
    return parts, {"engines": engines}, f"with {_count(engines, 'engine')} under swept wings"


def stool(rng):
    r, h, legs = rng.uniform(0.15, 0.20), rng.uniform(0.45, 0.75), int(rng.integers(3, 5))
    parts = [placed(cylinder(r, 0.04, MAIN, segments=20), (0, h - 0.04, 0))]
    leg = cylinder(0.018, h - 0.04, ACCENT, segments=8)
    angles = np.radians(90 + 360 * np.arange(legs) / legs)
    parts += [placed(leg, (0.8 * r * np.cos(a), 0, 0.8 * r * np.sin(a))) for a in angles]
    features = f"with {_count(legs, 'leg')}"
    if rng.random() < 0.5:
        ring = torus_arc(0.8 * r, 0.012, 2 * np.pi, ACCENT, steps=24)
        parts.append(placed(ring, (0, h * 0.35, 0), rotation("x", 90)))
        features += " and a footrest ring"
    return parts, {"legs": legs}, features


def bowl(rng):
    r, wall = rng.uniform(0.08, 0.15), 0.006
    h = r * rng.uniform(0.4, 0.7)
    a = np.radians(np.linspace(-90, 0, 8))
    outer = np.stack([r * np.cos(a), h * (1 + np.sin(a))], -1)
    inner = np.stack([(r - wall) * np.cos(a), wall + (h - wall) * (1 + np.sin(a))], -1)[::-1]
    parts = [lathe(np.concatenate([outer, inner]), 24, MAIN)]
    return parts, {}, f"that is {'deep' if h > r * 0.55 else 'shallow'}"


CATEGORIES: dict[str, tuple] = {  # name -> (builder, size class)
    "chair": (chair, "medium"),
    "table": (table, "medium"),
    "mug": (mug, "small"),
    "lamp": (lamp, "medium"),
    "bottle": (bottle, "small"),
    "bed": (bed, "large"),
    "sofa": (sofa, "large"),
    "bookshelf": (bookshelf, "large"),
    "bench": (bench, "medium"),
    "monitor": (monitor, "medium"),
    "car": (car, "large"),
    "airplane": (airplane, "large"),
    "stool": (stool, "medium"),
    "bowl": (bowl, "small"),
}


def slot_colours(rng: np.random.Generator) -> np.ndarray:
    """Palette index for each colour slot: MAIN and ACCENT drawn at random, DARK black, LIGHT white."""
    main = int(rng.integers(len(COLOUR_NAMES)))
    accent = main if rng.random() < 0.4 else int(rng.integers(len(COLOUR_NAMES)))
    return np.array([main, accent, COLOUR_NAMES.index("black"), COLOUR_NAMES.index("white")])


def build_shape(category: str, rng: np.random.Generator) -> Shape:
    """One random instance of `category` with its colours, countable parts and description."""
    if category not in CATEGORIES:
        raise ValueError(f"unknown category {category!r}; expected one of {sorted(CATEGORIES)}")
    builder, size_class = CATEGORIES[category]
    parts, counts, features = builder(rng)
    mesh = merge(parts)
    mesh.labels = slot_colours(rng)[mesh.labels]
    shades = np.clip(np.array(list(PALETTE.values())) + rng.normal(0.0, COLOUR_JITTER, (len(PALETTE), 3)), 0.0, 1.0)
    area_per_colour = np.bincount(mesh.labels, weights=face_areas(mesh.vertices, mesh.faces), minlength=len(PALETTE))
    colour = COLOUR_NAMES[int(np.argmax(area_per_colour))]
    return Shape(category, mesh, shades[mesh.labels], colour, counts, features, len(parts), size_class)
