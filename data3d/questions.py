"""Instructions and accepted answers: category multiple choice, colour, and geometric questions the geometry decides.

Every question returns (question_type, instruction, answers) with the canonical answer first. The geometric ones
read the extents of bbox3d in the object frame (x width, y height, z depth; y is up) and are only asked when the
answer is clear: the compared extents differ by at least CLEAR_MARGIN.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from data3d.shapes import CATEGORIES, COLOUR_SYNONYMS, NUMBER_WORDS, Shape

CLEAR_MARGIN = 1.15  # the larger extent must exceed the other by 15 %
NUM_OPTIONS = 4
AXES = (("x", "width"), ("y", "height"), ("z", "depth"))
RELEVANCE_DRAWS = 8  # other instances tried for a description that differs from the object's own


def category_question(category: str, choices: Sequence[str], rng: np.random.Generator):
    """Multiple choice over NUM_OPTIONS categories (the true one and distractors from `choices`), lettered A-D."""
    distractors = sorted({c for c in choices if c != category})
    if len(distractors) < NUM_OPTIONS - 1:
        raise ValueError(
            f"category question for {category!r}: need {NUM_OPTIONS - 1} other categories, got {distractors}"
        )
    options = [category] + [distractors[i] for i in rng.choice(len(distractors), NUM_OPTIONS - 1, replace=False)]
    options = [options[i] for i in rng.permutation(NUM_OPTIONS)]
    letter = "ABCD"[options.index(category)]
    listed = " ".join(f"({'ABCD'[i]}) {name}" for i, name in enumerate(options))
    return "category", f"What kind of object is this? Options: {listed}.", [category, letter]


def colour_question(colour: str):
    return "colour", "What is the main colour of this object?", [colour] + COLOUR_SYNONYMS.get(colour, [])


def count_question(noun: str, count: int):
    return "count", f"How many {noun} does this object have?", [str(count), NUMBER_WORDS[count]]


def extents(bbox3d: np.ndarray) -> np.ndarray:
    return np.asarray(bbox3d[3:], dtype=np.float64) - np.asarray(bbox3d[:3], dtype=np.float64)


def longest_axis_question(bbox3d: np.ndarray):
    """Which axis is longest, or None when the two longest are too close to call."""
    size = extents(bbox3d)
    first, second = np.argsort(size)[::-1][:2]
    if size[first] < CLEAR_MARGIN * size[second]:
        return None
    axis, name = AXES[first]
    return "axis", "Along which axis is this object longest: x (width), y (height) or z (depth)?", [name, axis]


def taller_question(bbox3d: np.ndarray):
    """Is the height (y) larger than the width (x), or None when they are too close to call."""
    width, height, _ = extents(bbox3d)
    if max(width, height) < CLEAR_MARGIN * min(width, height):
        return None
    return "taller", "Is this object taller than it is wide?", ["yes" if height > width else "no"]


def relevance_question(rng: np.random.Generator, shape: Shape):
    """3D relevance discrimination ("Does your 3D encoder really work?"): does a description fit this cloud? Half the
    time it is the object's own; otherwise the same colour and category with the geometric tail of another random
    instance, so the words alone cannot tell and only the geometry can (yes if RELEVANCE_DRAWS draws all coincide)."""
    candidate = shape.description
    if rng.random() < 0.5:
        for _ in range(RELEVANCE_DRAWS):  # some categories vary little: redraw until the tail differs
            _, _, features = CATEGORIES[shape.category][0](rng)
            if features != shape.features:
                candidate = dataclasses.replace(shape, features=features).description
                break
    answer = "yes" if candidate == shape.description else "no"
    return "match", f"Does this description fit this object: {candidate}?", [answer]


def ask(
    rng: np.random.Generator,
    category: str,
    choices: Sequence[str],
    bbox3d: np.ndarray,
    colour: str | None = None,
    counts: dict[str, int] | None = None,
):
    """One question drawn uniformly from those this object can answer clearly."""
    candidates = [category_question(category, choices, rng), longest_axis_question(bbox3d), taller_question(bbox3d)]
    if colour is not None:
        candidates.append(colour_question(colour))
    candidates += [count_question(noun, n) for noun, n in sorted((counts or {}).items())]
    candidates = [c for c in candidates if c is not None]
    return candidates[int(rng.integers(len(candidates)))]
