"""PiSA's Stage 2 (rl.pisa.crosscheck) on the procedural benchmark: the ground truth passes, and each kind of wrong
annotation is dropped or repaired for the reason the decision names."""

import json

import numpy as np

from data3d.annotate import box3d
from data3d.benchmark import generate_sample
from data3d.serialize import target_fields, target_text
from data3d.settings import DataSettings
from rl.pisa.crosscheck import (
    MIN_VIEW_COVERAGE,
    Annotation,
    cloud_colour,
    count_decisions,
    cross_check,
    medoid,
    medoid_only,
    view_coverage,
)

SETTINGS = DataSettings()
QUANT = SETTINGS.quant()
G = 4


def sample(index: int, seed: int = 77):
    return generate_sample(
        seed, index, num_points=SETTINGS.num_points, image_size=SETTINGS.image_size, num_kpts=SETTINGS.num_kpts
    )


def edited(s, **fields) -> str:
    """The sample's target JSON with some fields replaced (coordinates in bins, as the policy writes them)."""
    return json.dumps({**target_fields(s, QUANT), **fields}, separators=(",", ":"))


def verdicts(decisions) -> dict[str, tuple[str, str]]:
    return {d.field: (d.verdict, d.reason) for d in decisions}


def first(question_type: str, seed: int = 77):
    return next(s for s in map(lambda i: sample(i, seed), range(200)) if s.question_type == question_type)


def test_the_ground_truth_passes_every_check_unchanged():
    kept = 0
    for i in range(24):
        s = sample(i)
        annotated, decisions = cross_check(s, [target_text(s, QUANT)] * G, QUANT)
        assert cloud_colour(s) == s.targets.attributes["colour"]
        assert all(d.verdict == "kept" for d in decisions), verdicts(decisions)
        kept += annotated is not None
        # what is kept trains like the benchmark's own targets: same JSON, and the alignment loss's labels
        assert target_text(annotated, QUANT) == target_text(s, QUANT)
        assert (annotated.targets.category, annotated.targets.attributes["colour"]) == (
            s.targets.category,
            s.targets.attributes["colour"],
        )
    assert kept == 24


def test_a_box_near_the_cloud_is_refitted_and_one_off_it_is_dropped():
    s = sample(3)
    fields = target_fields(s, QUANT)
    nudged = np.clip(np.array(fields["bbox3d"]) + [2, -2, 1, 2, 1, -2], 0, QUANT.bins - 1).tolist()
    annotated, decisions = cross_check(s, [edited(s, bbox3d=nudged)] * G, QUANT)
    assert verdicts(decisions)["bbox3d"] == ("repaired", "refitted to the cloud")
    np.testing.assert_allclose(annotated.targets.bbox3d, box3d(s.points[:, :3].astype(np.float64)))

    shrunk = [24, 24, 24, 39, 39, 39]  # the middle eighth of the bounds: misses most of any object
    assert view_coverage(np.array([-0.25, -0.25, -0.25, 0.25, 0.25, 0.25]), s.points[:, :3], 128) < MIN_VIEW_COVERAGE
    annotated, decisions = cross_check(s, [edited(s, bbox3d=shrunk)] * G, QUANT)
    assert annotated is None
    assert verdicts(decisions)["bbox3d"] == ("dropped", "misses the object in a view")


def test_samples_that_disagree_are_dropped_and_the_medoid_is_the_consensus():
    s = first("colour")
    colours = ["red", "blue", "green", "black"]
    texts = [edited(s, answer=c) for c in colours]
    _, decisions = cross_check(s, texts, QUANT)
    assert verdicts(decisions)["answer"] == ("dropped", "samples disagree")

    odd = (np.array(target_fields(s, QUANT)["bbox3d"]) // 2).tolist()
    texts = [edited(s, bbox3d=odd)] + [target_text(s, QUANT)] * 3
    assert medoid([Annotation.read(t, s, QUANT) for t in texts]) == 1


def test_answers_are_checked_against_the_cloud_and_the_box():
    s = first("colour")
    wrong = next(c for c in ("red", "blue") if c != s.targets.attributes["colour"])
    _, decisions = cross_check(s, [edited(s, answer=wrong)] * G, QUANT)
    assert verdicts(decisions)["answer"] == ("dropped", "not the cloud's colour")

    s = first("axis")
    truth = s.targets.answers[0]
    other = next(a for a in ("width", "height", "depth") if a != truth)
    annotated, decisions = cross_check(s, [edited(s, answer=other)] * G, QUANT)
    assert verdicts(decisions)["answer"] == ("repaired", "read off the box")
    assert annotated.targets.answers == [truth]

    s = first("category")
    other = next(c for c in ("chair", "table") if c != s.targets.category)
    description = s.targets.description.replace(s.targets.category, other)
    _, decisions = cross_check(s, [edited(s, description=description)] * G, QUANT)
    assert verdicts(decisions)["answer"] == ("dropped", "the description names another category")


def test_keypoints_off_the_object_are_dropped_and_near_ones_snapped():
    s = sample(5)
    far = [[0, 0, 0]] * len(s.targets.kpts3d)  # a corner of the bounds: outside every unit-sphere cloud's reach
    annotated, decisions = cross_check(s, [edited(s, kpts3d=far)] * G, QUANT)
    assert annotated is None
    assert verdicts(decisions)["kpts3d"] == ("dropped", "off the object")


def test_without_stage_2_the_medoid_is_kept_as_written_when_complete():
    s = sample(6)
    wrong = edited(s, bbox3d=[0, 0, 0, 63, 63, 63], answer="nonsense")
    annotated, decisions = medoid_only(s, [wrong] * G, QUANT)
    assert [(d.verdict, d.reason) for d in decisions] == [("kept", "no cross-check")]
    assert annotated.targets.answers == ["nonsense"]
    assert annotated.uid == f"pisa-{s.uid}"

    annotated, decisions = medoid_only(s, ['{"answer": "chair"'] * G, QUANT)
    assert annotated is None and decisions[0].reason == "incomplete"


def test_decisions_are_counted_by_field_verdict_and_reason():
    s = sample(7)
    _, decisions = cross_check(s, ["not json"] * G, QUANT)
    counts = count_decisions(decisions)
    assert counts["bbox3d"] == {"dropped: unparsed": 1}
    assert set(counts) == {"bbox2d", "bbox3d", "kpts2d", "kpts3d", "answer", "description"}
