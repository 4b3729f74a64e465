"""Hand-computed cases of the reward contract (issue 2, section 2), run on the fast scorer and on the plain oracle."""

from __future__ import annotations

import json

import pytest

from rewards import score_batch
from rewards.reference import reference_score_batch
from rewards.schema import FIELDS, REWARDS

# Pinhole camera looking down +z with no principal-point offset: a world point (x, y, z) lands at (100x/(z+tz), 100y/(z+tz)).
CAMERA = {
    "K": [[100, 0, 0], [0, 100, 0], [0, 0, 1]],
    "R": [[1, 0, 0], [0, 1, 0], [0, 0, 1]],
    "t": [0, 0, 4],
    "width": 100,
    "height": 100,
}
TARGET = {"answer": "chair", "bbox2d": [5, 0, 15, 10], "bbox3d": [1, 0, 0, 3, 2, 2]}
PREDICTION = {
    "answer": "Chair",
    "description": "a chair",
    "bbox2d": [0, 0, 10, 10],
    "bbox3d": [0, 0, 0, 2, 2, 2],
    "kpts2d": [[6, 1], [15, 10], [0, 0]],
    "kpts3d": [[1, 1, 1], [0, 0, 0]],
}
CONTINUOUS = {"bins": 0}


@pytest.fixture(params=[score_batch, reference_score_batch], ids=["score_batch", "reference"])
def scorer(request):
    return request.param


def score(
    scorer, text: str, target: dict | None = None, camera: dict | None = None, quant: dict | None = CONTINUOUS
) -> dict:
    sample = {"text": text, "target": target or TARGET, "camera": camera or CAMERA}
    (result,) = scorer([sample], quant)
    return result


def output(**changes: object) -> str:
    return json.dumps({**PREDICTION, **changes})


def test_every_reward_on_a_well_formed_output(scorer):
    result = score(scorer, output(), {**TARGET, "num_kpts2d": 4})
    assert result["errors"] == []
    assert set(result["rewards"]) == set(REWARDS)
    assert result["rewards"]["format"] == 1.0
    assert result["rewards"]["answer"] == 1.0  # "Chair" lowercases to "chair"
    # [0,0,10,10] vs [5,0,15,10]: intersection 5*10 = 50, union 100 + 100 - 50 = 150.
    assert result["rewards"]["bbox2d"] == pytest.approx(50 / 150)
    # [0,2]^3 vs [1,3]x[0,2]x[0,2]: intersection 1*2*2 = 4, union 8 + 8 - 4 = 12.
    assert result["rewards"]["bbox3d"] == pytest.approx(4 / 12)
    # (6,1) and (15,10) are inside [5,15]x[0,10] (inclusive), (0,0) is not: n=3, m=2, K=4 -> min(2,4)/max(3,4).
    assert result["rewards"]["kpts2d"] == pytest.approx(2 / 4)
    # (1,1,1) inside [1,3]x[0,2]x[0,2], (0,0,0) not; no num_kpts3d so K = n = 2 -> 1/2.
    assert result["rewards"]["kpts3d"] == pytest.approx(1 / 2)
    # Corners of [0,2]^3 at depth 4..6: u, v = 100*{0,2}/{4,6} span [0, 50]; IoU([0,0,50,50], [0,0,10,10]) = 100/2500.
    assert result["rewards"]["rpc"] == pytest.approx(100 / 2500)


def test_spans_are_str_offsets_after_unicode(scorer):
    text = (
        'ü📦{"answer": "chäir", "description": "d", "bbox2d": [0, 0, 10, 10], "bbox3d": [0, 0, 0, 2, 2, 2], '
        '"kpts2d": [[1, 1]], "kpts3d": [[1, 1, 1]]}'
    )
    result = score(scorer, text)
    # 'ü' 0, '📦' 1 (one str char, four UTF-8 bytes), '{' 2, '"answer"' 3..10, ':' 11, ' ' 12, '"chäir"' 13..19.
    assert result["spans"]["answer"] == [13, 20]
    for name in FIELDS:
        start, end = result["spans"][name]
        assert json.loads(text[start:end]) == json.loads(text[2:])[name]
    assert result["rewards"]["format"] == 0.0  # text before the object
    assert result["rewards"]["bbox2d"] == pytest.approx(50 / 150)


def test_duplicate_key_counts_by_decoded_name(scorer):
    text = output()[:-1] + ', "\\u0061nswer": "chair"}'  # the escaped spelling decodes to "answer" again
    result = score(scorer, text)
    assert result["rewards"]["answer"] == 0.0
    assert result["spans"]["answer"] is None
    assert any(error.startswith("answer: duplicated") for error in result["errors"])
    assert result["rewards"]["format"] == 0.0
    assert result["rewards"]["bbox2d"] == pytest.approx(50 / 150)  # the other fields still score


@pytest.mark.parametrize(
    "text",
    [
        output()[:-1],  # truncated: the '{' is never closed
        output()[:-1] + ",}",  # trailing comma is not JSON
        output()[:-1] + ', "x": NaN}',  # NaN is not standard JSON
        "no object here",
    ],
)
def test_invalid_or_missing_object_parses_nothing(scorer, text):
    result = score(scorer, text)
    assert result["rewards"] == dict.fromkeys(REWARDS, 0.0)
    assert result["spans"] == dict.fromkeys(FIELDS)
    assert len(result["errors"]) == 1 and result["errors"][0].startswith("no JSON object")


def test_braces_and_escaped_quotes_inside_strings(scorer):
    text = output(description='a {weird} "}" box {', answer="chair}")
    result = score(scorer, text)
    start, end = result["spans"]["description"]
    assert text[start:end] == r'"a {weird} \"}\" box {"'
    assert result["rewards"]["format"] == 1.0
    assert result["rewards"]["answer"] == 0.0  # "chair}" keeps its brace: '}' is not a stripped character


@pytest.mark.parametrize(
    "before, after, expected",
    [
        ("```json\n", "\n```", 1.0),
        ("```\n", "```\n\n", 1.0),
        ("  \n", " \t", 1.0),
        ("```python\n", "\n```", 0.0),
        ("```json\n", "", 0.0),  # an unclosed fence is not exactly a code fence
        ("Answer: ", "", 0.0),
        ("", " thanks", 0.0),
    ],
)
def test_format_allows_only_whitespace_or_a_code_fence(scorer, before, after, expected):
    assert score(scorer, before + output() + after)["rewards"]["format"] == expected


def test_inverted_boxes_score_zero_but_stay_well_formed(scorer):
    result = score(scorer, output(bbox2d=[10, 0, 0, 10], bbox3d=[0, 0, 2, 2, 2, 0]))
    assert result["rewards"]["bbox2d"] == 0.0 and result["rewards"]["bbox3d"] == 0.0
    assert result["rewards"]["rpc"] == 0.0
    assert result["spans"]["bbox2d"] is not None and result["rewards"]["format"] == 1.0
    assert result["rewards"]["kpts2d"] == pytest.approx(2 / 3)  # keypoints do not depend on the predicted boxes


def test_rpc_is_zero_when_a_corner_is_behind_the_camera(scorer):
    # t_z = 0: the corners with z = 0 sit at depth 0 <= 1e-6.
    assert score(scorer, output(), camera={**CAMERA, "t": [0, 0, 0]})["rewards"]["rpc"] == 0.0
    # t_z = 1e-6 + 1e-9 keeps every corner strictly in front: the projection spans u, v in [0, ~2e8], clipped to
    # [0,0,100,100]; its IoU with the prediction [0,0,10,10] is 100/10000.
    assert score(scorer, output(), camera={**CAMERA, "t": [0, 0, 1e-6 + 1e-9]})["rewards"]["rpc"] == pytest.approx(0.01)


def test_rpc_clips_the_projection_to_the_image(scorer):
    # t = (2, 0, 4): corner x in {2, 4}, depth in {4, 6} -> u in [200/6, 100] = [33.33, 100]; v in [0, 50].
    # With W = 80 the box clips to [33.33, 0, 80, 50]; the prediction [40, 0, 80, 50] lies inside it:
    # IoU = (40*50) / ((80 - 200/6) * 50).
    camera = {**CAMERA, "t": [2, 0, 4], "width": 80}
    result = score(scorer, output(bbox2d=[40, 0, 80, 50]), camera=camera)
    assert result["rewards"]["rpc"] == pytest.approx(40 / (80 - 200 / 6))
    # t_x = -10: corner x in {-10, -8} -> u in [-250, -133.3], entirely left of the image: empty after clipping.
    assert score(scorer, output(), camera={**CAMERA, "t": [-10, 0, 4]})["rewards"]["rpc"] == 0.0


@pytest.mark.parametrize(
    "bbox2d, well_formed",
    [
        ([0, 0, 999, 999], True),
        ([0, 0, 12.0, 999.0], True),  # whole-valued floats are bin indices
        ([0, 0, 999, 1000], False),  # past bins - 1
        ([-1, 0, 10, 10], False),
        ([0, 0, 12.5, 10], False),
        ([True, 0, 10, 10], False),  # a JSON boolean is not a number
        ([0, 0, 10], False),
        (["0", 0, 10, 10], False),
    ],
)
def test_bin_coordinates_must_be_whole_and_in_range(scorer, bbox2d, well_formed):
    result = score(scorer, output(bbox2d=bbox2d), quant=None)  # default quant: 1000 bins
    assert (result["spans"]["bbox2d"] is not None) == well_formed
    assert any(error.startswith("bbox2d:") for error in result["errors"]) != well_formed


def test_dequantization_over_image_and_bounds(scorer):
    # bins = 11: x = q * 100/10, y = q * 50/10; a 3D axis = -1 + q * 2/10.
    quant = {"bins": 11, "bounds3d": [[-1, -1, -1], [1, 1, 1]]}
    camera = {**CAMERA, "height": 50}
    target = {"answer": "chair", "bbox2d": [0, 0, 50, 50], "bbox3d": [-1, -1, -1, 0, 0, 0]}
    text = output(
        bbox2d=[0, 0, 5.0, 10], bbox3d=[0, 0, 0, 5, 5, 5], kpts2d=[[5, 10], [6, 10]], kpts3d=[[5, 5, 5], [6, 5, 5]]
    )
    result = score(scorer, text, target, camera, quant)
    assert result["rewards"]["bbox2d"] == pytest.approx(1.0)  # [0,0,5,10] -> [0,0,50,50]
    assert result["rewards"]["bbox3d"] == pytest.approx(1.0)  # [0..5] -> [-1, 0] on every axis
    # (5,10) -> (50, 50) on the target's corner (inclusive); (6,10) -> (60, 50) outside: 1 of 2.
    assert result["rewards"]["kpts2d"] == pytest.approx(1 / 2)
    assert result["rewards"]["kpts3d"] == pytest.approx(1 / 2)


def test_continuous_coordinates_with_bins_zero(scorer):
    result = score(scorer, output(bbox2d=[-2.5, 0, 10, 10], bbox3d=[0, 0, 0, 2, 2, 1e308]))
    # [-2.5,0,10,10] vs [5,0,15,10]: intersection 5*10 = 50, union 125 + 100 - 50 = 175.
    assert result["rewards"]["bbox2d"] == pytest.approx(50 / 175)
    assert result["spans"]["bbox3d"] is not None
    # 1e999 decodes to inf, which is not finite.
    result = score(scorer, output().replace("[0, 0, 0, 2, 2, 2]", "[0, 0, 0, 2, 2, 1e999]"))
    assert result["spans"]["bbox3d"] is None and result["rewards"]["bbox3d"] == 0.0


@pytest.mark.parametrize(
    "predicted, accepted, expected",
    [
        (" (Chair). ", "chair", 1.0),
        ("A   Table!", ["table", "a table"], 1.0),
        ('"[TABLE]"', ["a table", "Table."], 1.0),
        ("tables", ["table", "a table"], 0.0),
        ("a\ttable", "a  table", 1.0),
    ],
)
def test_answer_normalization(scorer, predicted, accepted, expected):
    assert score(scorer, output(answer=predicted), {**TARGET, "answer": accepted})["rewards"]["answer"] == expected


def test_malformed_and_missing_fields(scorer):
    prediction = {**PREDICTION, "answer": 3, "kpts2d": [], "kpts3d": [[1, 1]]}
    del prediction["description"]
    result = score(scorer, json.dumps(prediction))
    for name in ("answer", "description", "kpts2d", "kpts3d"):
        assert result["spans"][name] is None and any(e.startswith(f"{name}:") for e in result["errors"])
    assert result["rewards"]["format"] == 0.0 and result["rewards"]["kpts2d"] == 0.0
    assert result["rewards"]["bbox2d"] == pytest.approx(50 / 150)


def test_keypoint_count_against_num_kpts(scorer):
    inside = [[10, 5]]
    # One keypoint inside with K = 16: min(1, 16) / max(1, 16).
    assert score(scorer, output(kpts2d=inside), {**TARGET, "num_kpts2d": 16})["rewards"]["kpts2d"] == pytest.approx(
        1 / 16
    )
    # 20 keypoints all inside with K = 16: min(20, 16) / max(20, 16).
    assert score(scorer, output(kpts2d=inside * 20), {**TARGET, "num_kpts2d": 16})["rewards"][
        "kpts2d"
    ] == pytest.approx(16 / 20)
