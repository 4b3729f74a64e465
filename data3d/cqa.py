"""3DCQA (SPA §3.3): four-option multiple-choice questions about one object, built so that a language prior cannot
pass them: every wrong option is plausible for the words of the question (other colours of the palette, categories of
the same size class, the geometric tails of other instances of the same category, counts next to the true one).

`choice_questions(sample, seed)` asks each ability the sample's targets can answer clearly: colour, shape (which
description tail fits), size (the longest extent), category and count. Spatial relations need scenes of several
objects, which the procedural benchmark does not generate, so they are not asked. `ChoiceQuestion.rotated(k)` moves
every option k places on (circular evaluation: a question counts as solved only if all rotations are).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from data3d.questions import CLEAR_MARGIN, NUM_OPTIONS, extents
from data3d.shapes import CATEGORIES, COLOUR_NAMES, NUMBER_WORDS, article
from data3d.types import Sample

ABILITIES = ("colour", "shape", "size", "category", "count")
LETTERS = "ABCD"[:NUM_OPTIONS]
EXTENT_OPTIONS = ("width (x)", "height (y)", "depth (z)", "all about the same")
SHAPE_DRAWS = 24  # instances drawn for the other description tails of a category


@dataclass(frozen=True)
class ChoiceQuestion:
    uid: str  # the sample's uid and the ability
    ability: str
    stem: str
    options: tuple[str, ...]  # NUM_OPTIONS, in the order shown
    correct: int  # index of the right option

    def rotated(self, k: int) -> ChoiceQuestion:
        """The same question with every option moved k places on (option i shows at (i + k) mod n)."""
        n = len(self.options)
        options = tuple(self.options[(i - k) % n] for i in range(n))
        return dataclasses.replace(self, options=options, correct=(self.correct + k) % n)

    @property
    def instruction(self) -> str:
        listed = " ".join(f"({letter}) {option}" for letter, option in zip(LETTERS, self.options))
        return f"{self.stem} Options: {listed}. Answer with the letter."

    def as_sample(self, sample: Sample) -> Sample:
        """`sample` (cloud, image, geometry targets) asked this question; the right letter and its option's text
        are the accepted answers."""
        targets = dataclasses.replace(sample.targets, answers=[LETTERS[self.correct], self.options[self.correct]])
        return dataclasses.replace(
            sample, instruction=self.instruction, targets=targets, question_type=f"3dcqa-{self.ability}"
        )


def _question(uid: str, ability: str, stem: str, right: str, wrong: list[str], rng: np.random.Generator):
    options = [right, *wrong]
    order = rng.permutation(len(options))
    return ChoiceQuestion(
        f"{uid}/{ability}", ability, stem, tuple(options[i] for i in order), int(np.flatnonzero(order == 0)[0])
    )


def _pick(rng: np.random.Generator, pool: list[str], count: int = NUM_OPTIONS - 1) -> list[str] | None:
    pool = sorted(set(pool))
    return [pool[i] for i in rng.choice(len(pool), count, replace=False)] if len(pool) >= count else None


def _features(sample: Sample) -> str:
    t = sample.targets
    colour = t.attributes.get("colour", "")
    head = f"{article(colour)} {colour} {t.category}"
    return t.description[len(head) :].strip() if t.description.startswith(head) else ""


def colour_question(sample: Sample, rng: np.random.Generator) -> ChoiceQuestion | None:
    colour = sample.targets.attributes.get("colour")
    wrong = _pick(rng, [c for c in COLOUR_NAMES if c != colour]) if colour in COLOUR_NAMES else None
    return wrong and _question(sample.uid, "colour", "What is the main colour of this object?", colour, wrong, rng)


def shape_question(sample: Sample, rng: np.random.Generator) -> ChoiceQuestion | None:
    """Which description tail fits: the object's own against those of other instances of its category."""
    category, own = sample.targets.category, _features(sample)
    if category not in CATEGORIES or not own:
        return None
    others = {CATEGORIES[category][0](rng)[2] for _ in range(SHAPE_DRAWS)} - {own}
    wrong = _pick(rng, [f for f in others if f])
    stem = f"Which describes the shape of this {category}?"
    return wrong and _question(sample.uid, "shape", stem, own, wrong, rng)


def size_question(sample: Sample, rng: np.random.Generator) -> ChoiceQuestion | None:
    """The longest extent, asked only when it beats the second by CLEAR_MARGIN (else "all about the same" could be
    right)."""
    size = extents(sample.targets.bbox3d)
    first, second = np.argsort(size)[::-1][:2]
    if size[first] < CLEAR_MARGIN * size[second]:
        return None
    wrong = [option for i, option in enumerate(EXTENT_OPTIONS) if i != first]
    return _question(
        sample.uid, "size", "Along which extent is this object largest?", EXTENT_OPTIONS[first], wrong, rng
    )


def category_question(sample: Sample, rng: np.random.Generator) -> ChoiceQuestion | None:
    """Distractors of the same size class first (a mug is not confused with an airplane by its words)."""
    category = sample.targets.category
    if category not in CATEGORIES:
        return None
    size_class = CATEGORIES[category][1]
    alike = [c for c, (_, s) in CATEGORIES.items() if s == size_class and c != category]
    wrong = _pick(rng, alike) or _pick(rng, [c for c in CATEGORIES if c != category])
    return _question(sample.uid, "category", "What kind of object is this?", category, wrong, rng)


def count_question(sample: Sample, rng: np.random.Generator) -> ChoiceQuestion | None:
    counts = sample.targets.attributes.get("counts") or {}
    if not counts:
        return None
    noun = sorted(counts)[int(rng.integers(len(counts)))]
    n = int(counts[noun])
    near = [str(k) for k in range(max(1, n - 3), min(len(NUMBER_WORDS) - 1, n + 3) + 1) if k != n]
    wrong = _pick(rng, near)
    return wrong and _question(sample.uid, "count", f"How many {noun} does this object have?", str(n), wrong, rng)


ASK = {
    "colour": colour_question,
    "shape": shape_question,
    "size": size_question,
    "category": category_question,
    "count": count_question,
}


def choice_questions(sample: Sample, seed: int = 0) -> list[ChoiceQuestion]:
    """Every ability of ABILITIES that the sample can answer clearly, one question each (deterministic in seed)."""
    rng = np.random.default_rng([seed, *sample.uid.encode()])
    return [q for ability in ABILITIES if (q := ASK[ability](sample, rng)) is not None]
