"""The 3DCQA suite (SPA §3.3): `data3d.cqa`'s choice questions asked under every rotation of their options.

Each question is asked NUM_OPTIONS times, its options rotated one place each time (circular evaluation). The answer
field of the policy's JSON is read as a letter, or as an option's text (the policy answers the benchmark's category
questions with the category); anything else is invalid. Reported per ability and overall: accuracy over all asked
rotations, the circular accuracy (every rotation right), the invalid rate, and the position bias (the share of valid
answers at each letter; 0.25 each for a policy without one). The same questions with another object's cloud swapped in
show how much of the score needs the cloud.
"""

from __future__ import annotations

import json

import numpy as np

from data3d import Sample
from data3d.cqa import ABILITIES, LETTERS, ChoiceQuestion, choice_questions
from rewards.request import normalize_answer
from rl.eval.evaluate import Answerer, swapped_clouds

ANSWER_KEY = '"answer"'
CQA_MAX_NEW_TOKENS = 24  # "answer" is the output's first key: its value is out long before the JSON closes


def answer_field(text: str) -> str | None:
    """The string value of the output's "answer" key, read without the rest of the object (a short generation
    stops before the JSON closes)."""
    at = text.find(ANSWER_KEY)
    colon = text.find(":", at + len(ANSWER_KEY)) if at >= 0 else -1
    if colon < 0:
        return None
    try:
        value, _ = json.JSONDecoder().raw_decode(text[colon + 1 :].lstrip())
    except json.JSONDecodeError:
        return None
    return value if isinstance(value, str) else None


def chosen_option(answer: str | None, question: ChoiceQuestion) -> int:
    """The option index an answer names, by its letter or its text; -1 when it names none."""
    if answer is None:
        return -1
    said = normalize_answer(answer)
    for i, (letter, option) in enumerate(zip(LETTERS, question.options)):
        if said in (letter.lower(), normalize_answer(option)):
            return i
    return -1


def ask_all(answer: Answerer, samples: list[Sample], seed: int = 0) -> list[tuple[ChoiceQuestion, list[int]]]:
    """Each sample's questions under every rotation: (question, the option chosen under rotation k) pairs, with the
    choices mapped back to the unrotated options."""
    questions = [(q, sample) for sample in samples for q in choice_questions(sample, seed)]
    asked = [(q.rotated(k), sample, k) for q, sample in questions for k in range(len(LETTERS))]
    texts = answer([q.as_sample(sample) for q, sample, _ in asked])
    chosen = [chosen_option(answer_field(text), q) for (q, _, _), text in zip(asked, texts)]
    n = len(LETTERS)
    return [
        (q, [(c - k) % n if c >= 0 else -1 for c, k in zip(chosen[i * n : (i + 1) * n], range(n))])
        for i, (q, _) in enumerate(questions)
    ]


def summarize(results: list[tuple[ChoiceQuestion, list[int]]]) -> dict:
    """Accuracy, circular accuracy, invalid rate and n by ability and overall; the position bias over all answers."""

    def stats(rows):
        right = np.array([[c == q.correct for c in chosen] for q, chosen in rows], dtype=float).reshape(
            -1, len(LETTERS)
        )
        invalid = np.array([[c < 0 for c in chosen] for _, chosen in rows], dtype=float)
        return {
            "accuracy": float(right.mean()) if rows else 0.0,
            "circular_accuracy": float(right.all(1).mean()) if rows else 0.0,
            "invalid": float(invalid.mean()) if rows else 0.0,
            "n": len(rows),
        }

    report = {"overall": stats(results)}
    report["by_ability"] = {
        a: stats([r for r in results if r[0].ability == a])
        for a in ABILITIES
        if any(r[0].ability == a for r in results)
    }
    # where the chosen option sat when it was shown: option o under rotation k is at letter (o + k) mod n
    n = len(LETTERS)
    positions = [(c + k) % n for _, chosen in results for k, c in enumerate(chosen) if c >= 0]
    counts = np.bincount(positions, minlength=n) / max(1, len(positions))
    report["position_share"] = dict(zip(LETTERS, counts.round(4).tolist()))
    report["position_bias"] = float(np.abs(counts - 1 / n).max()) if positions else 0.0
    return report


def evaluate_cqa(answer: Answerer, samples: list[Sample], seed: int = 0) -> dict:
    """The suite on `samples`, and again with each cloud swapped for another object's."""
    return {
        "clean": summarize(ask_all(answer, samples, seed)),
        "cloud_swapped": summarize(ask_all(answer, swapped_clouds(samples), seed)),
    }


def format_cqa(report: dict) -> str:
    """The suite as a terminal table: one row per ability, clean and cloud-swapped side by side."""
    clean, swapped = report["clean"], report["cloud_swapped"]
    lines = [f"{'3DCQA':<10} {'n':>5} {'acc':>7} {'circular':>9} {'invalid':>8} {'acc swap':>9} {'circ swap':>10}"]
    rows = [(a, clean["by_ability"][a], swapped["by_ability"].get(a, {})) for a in clean["by_ability"]]
    for name, row, other in [*rows, ("overall", clean["overall"], swapped["overall"])]:
        lines.append(
            f"{name:<10} {row['n']:>5} {row['accuracy']:>7.3f} {row['circular_accuracy']:>9.3f} "
            f"{row['invalid']:>8.3f} {other.get('accuracy', 0):>9.3f} {other.get('circular_accuracy', 0):>10.3f}"
        )
    shares = " ".join(f"{k} {v:.3f}" for k, v in clean["position_share"].items())
    lines.append(f"position share of valid answers (clean): {shares}; bias {clean['position_bias']:.3f}")
    return "\n".join(lines)
