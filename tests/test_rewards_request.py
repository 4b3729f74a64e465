"""Defects in the request itself raise RequestError naming the field; defects in the model's text never raise."""

import math

import pytest

from rewards import RequestError, score_batch

CAMERA = {
    "K": [[100, 0, 64], [0, 100, 64], [0, 0, 1]],
    "R": [[1, 0, 0], [0, 1, 0], [0, 0, 1]],
    "t": [0, 0, 3],
    "width": 128,
    "height": 128,
}
TARGET = {"answer": "chair", "bbox2d": [10, 10, 50, 50], "bbox3d": [-0.5, -0.5, -0.5, 0.5, 0.5, 0.5]}


def sample(**changes) -> dict:
    return {"text": "{}", "target": dict(TARGET), "camera": dict(CAMERA), **changes}


@pytest.mark.parametrize(
    "samples, quant, field",
    [
        ([sample(camera=None)], None, "samples[0].camera"),
        ([{"text": "{}", "target": TARGET}], None, "samples[0]"),
        ([sample(), sample(target={**TARGET, "bbox2d": [1, 2, 3]})], None, "samples[1].target.bbox2d"),
        ([sample(target={**TARGET, "bbox3d": [0, 0, 0, 1, 1, math.nan]})], None, "samples[0].target.bbox3d"),
        ([sample(target={**TARGET, "bbox2d": [0, 0, math.inf, 1]})], None, "samples[0].target.bbox2d"),
        ([sample(camera={**CAMERA, "K": [[1, 0, 0], [0, 1, 0]]})], None, "samples[0].camera.K"),
        ([sample(camera={**CAMERA, "K": [[1, 0, 0], [0, 1, 0], [0, 1, 1]]})], None, "samples[0].camera.K"),
        ([sample(camera={**CAMERA, "t": [0, 0, math.nan]})], None, "samples[0].camera.t"),
        ([sample(camera={**CAMERA, "width": 0})], None, "samples[0].camera.width"),
        ([sample(target={**TARGET, "num_kpts2d": 0})], None, "samples[0].target.num_kpts2d"),
        ([sample(target={**TARGET, "num_kpt2d": 16})], None, "samples[0].target"),
        ([sample(target={**TARGET, "answer": []})], None, "samples[0].target.answer"),
        ([sample(text=None)], None, "samples[0].text"),
        ([sample()], {"bins": 1}, "quant.bins"),
        ([sample()], {"bins": -3}, "quant.bins"),
        ([sample()], {"bounds3d": [[1, 1, 1], [-1, -1, -1]]}, "quant.bounds3d"),
        ({"text": "{}"}, None, "samples"),
    ],
)
def test_request_defects_name_the_field(samples, quant, field):
    with pytest.raises(RequestError) as info:
        score_batch(samples, quant)
    assert str(info.value).startswith(field), str(info.value)


def test_empty_batch_is_valid():
    assert score_batch([]) == []


def test_text_defects_are_zero_rewards_not_errors():
    results = score_batch([sample(text=t) for t in ["", "{", "}{", "null", '{"answer": "chair"}', "\x00" * 10]])
    assert [r["rewards"]["format"] for r in results] == [0.0] * 6
    assert all(r["errors"] for r in results)


def test_inverted_target_box_scores_zero_with_a_reason():
    target = {**TARGET, "bbox2d": [50, 10, 10, 50]}
    text = (
        '{"answer": "chair", "description": "", "bbox2d": [100, 100, 400, 400], "bbox3d": [250, 250, 250, 750, 750, 750],'
        ' "kpts2d": [[200, 200]], "kpts3d": [[500, 500, 500]]}'
    )
    (result,) = score_batch([sample(text=text, target=target)])
    assert result["rewards"]["bbox2d"] == 0.0 and result["rewards"]["kpts2d"] == 0.0
    assert result["rewards"]["bbox3d"] > 0.99 and result["rewards"]["format"] == 1.0  # bin 250 of 999 is -0.4995
    assert any("target box is inverted" in e for e in result["errors"])
