"""3DCQA: the choice-question generator (data3d/cqa.py) and the circular evaluation (rl/eval/cqa.py), scored
with answerers that know the answer, follow a prior, or read the cloud."""

from __future__ import annotations

import json

import pytest

from data3d import generate_sample
from data3d.cqa import ABILITIES, LETTERS, choice_questions
from rl.eval.cqa import answer_field, ask_all, chosen_option, evaluate_cqa, format_cqa


@pytest.fixture(scope="module")
def samples():
    return [generate_sample(5, i, num_points=256, image_size=32) for i in range(12)]


def _reply(answer: str) -> str:
    return json.dumps({"answer": answer, "description": "x"})


def test_questions_have_four_distinct_options_one_right_and_are_deterministic(samples):
    seen = set()
    for sample in samples:
        questions = choice_questions(sample, seed=3)
        assert questions == choice_questions(sample, seed=3)
        for q in questions:
            assert len(q.options) == len(LETTERS) == len(set(q.options)) and 0 <= q.correct < len(LETTERS)
            seen.add(q.ability)
    assert {"colour", "size", "category", "count"} <= seen <= set(ABILITIES)
    colour = next(q for s in samples for q in choice_questions(s) if q.ability == "colour")
    assert colour.options[colour.correct] in {s.targets.attributes["colour"] for s in samples}


def test_rotation_moves_every_option_and_keeps_the_right_one(samples):
    q = choice_questions(samples[0])[0]
    for k in range(len(LETTERS)):
        r = q.rotated(k)
        assert r.options[r.correct] == q.options[q.correct]
        assert [r.options[(i + k) % 4] for i in range(4)] == list(q.options)
    assert {q.rotated(k).correct for k in range(4)} == {0, 1, 2, 3}  # the right answer visits every letter


def test_answers_are_read_by_letter_or_text_from_a_cut_off_output():
    q = choice_questions(generate_sample(5, 0, num_points=256, image_size=32))[0]
    assert answer_field('{"answer":"B","description":"a red so') == "B"
    assert answer_field('{"answer": "(c)",') == "(c)"
    assert answer_field('{"answer":"bro') is None and answer_field("no json") is None
    assert answer_field('{"answer": 3}') is None
    assert chosen_option("b", q) == 1 and chosen_option("(D)", q) == 3
    assert chosen_option(q.options[2].upper(), q) == 2
    assert chosen_option("something else", q) == -1 and chosen_option(None, q) == -1


def test_an_oracle_is_right_under_every_rotation_and_a_prior_is_not(samples):
    by_instruction = {}
    for sample in samples:
        for q in choice_questions(sample):
            for k in range(4):
                r = q.rotated(k)
                by_instruction[(sample.uid, r.instruction)] = r

    def oracle(batch):
        out = []
        for s in batch:
            r = by_instruction.get((s.uid, s.instruction))
            out.append(_reply(LETTERS[r.correct] if r else "?"))
        return out

    report = evaluate_cqa(oracle, samples)["clean"]
    assert report["overall"]["accuracy"] == 1.0 and report["overall"]["circular_accuracy"] == 1.0
    assert report["overall"]["invalid"] == 0.0 and report["position_bias"] == pytest.approx(0.0, abs=1e-9)

    always_a = evaluate_cqa(lambda batch: [_reply("A") for _ in batch], samples)["clean"]
    assert always_a["overall"]["accuracy"] == pytest.approx(0.25)  # each option shows at A once
    assert always_a["overall"]["circular_accuracy"] == 0.0
    assert always_a["position_share"]["A"] == 1.0 and always_a["position_bias"] == pytest.approx(0.75)


def test_a_cloud_reader_loses_its_score_when_the_cloud_is_swapped(samples):
    """An answerer that reads the colour from the cloud's points (the most common rgb of the object) is right on its
    own cloud and wrong on another object's: the swapped column is what the cloud contributes."""
    colour_of = {s.points.tobytes(): s.targets.attributes["colour"] for s in samples}

    def reads_cloud(batch):
        out = []
        for s in batch:
            if s.question_type != "3dcqa-colour":
                out.append(_reply("?"))
                continue
            colour = colour_of[s.points.tobytes()]
            listed = s.instruction.split("Options: ", 1)[1].removesuffix(". Answer with the letter.")
            options = [part.split(") ", 1)[1] for part in listed.split(" (")]
            out.append(_reply(colour if colour in options else "?"))
        return out

    report = evaluate_cqa(reads_cloud, samples)
    clean, swapped = (report[k]["by_ability"]["colour"] for k in ("clean", "cloud_swapped"))
    assert clean["accuracy"] == 1.0 and clean["circular_accuracy"] == 1.0
    assert swapped["accuracy"] < 0.5
    assert "colour" in format_cqa(report) and "overall" in format_cqa(report)


def test_choices_map_back_to_the_unrotated_options(samples):
    fixed = "all about the same"  # an option text: chosen whatever letter it shows at
    results = ask_all(lambda batch: [_reply(fixed) for _ in batch], samples[:3])
    for q, chosen in results:
        want = q.options.index(fixed) if fixed in q.options else -1
        assert chosen == [want] * 4
