"""Prompt and target text, and the round trip through the reward function: ground truth scores as ground truth."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

from data3d.benchmark import generate_sample
from data3d.serialize import prompt_text, reward_sample, target_text
from data3d.settings import DataSettings
from rewards import score_batch
from rewards.schema import FIELDS, Quant, dequantize, quantize


@pytest.fixture(scope="module")
def samples():
    return [generate_sample(21, i) for i in range(50)]


def test_target_text_is_one_compact_line_in_field_order(samples):
    s = samples[0]
    text = target_text(s)
    obj = json.loads(text)
    assert list(obj) == list(FIELDS) and "\n" not in text
    assert text == json.dumps(obj, separators=(",", ":"), ensure_ascii=False)
    assert obj["answer"] == s.targets.answers[0] and obj["description"] == s.targets.description
    size = np.array([s.camera.width, s.camera.height], dtype=np.float64)
    assert obj["bbox2d"] == quantize(s.targets.bbox2d, 0.0, np.tile(size, 2), 1000).tolist()
    assert obj["kpts3d"] == quantize(s.targets.kpts3d, -1.0, 1.0, 1000).tolist()
    back = dequantize(np.array(obj["kpts2d"]), 0.0, size, 1000)
    assert np.abs(back - s.targets.kpts2d).max() <= 0.5 * 128 / 999 + 1e-9


def test_target_text_follows_the_quantization(samples):
    s = samples[1]
    coarse = json.loads(target_text(s, Quant(bins=100)))
    assert max(max(row) for row in coarse["kpts2d"]) <= 99
    continuous = json.loads(target_text(s, Quant(bins=0)))
    assert np.allclose(continuous["bbox3d"], s.targets.bbox3d, atol=5e-4)
    wide = json.loads(target_text(s, Quant(bounds3d=((-2.0, -2.0, -2.0), (2.0, 2.0, 2.0)))))
    assert wide["bbox3d"] == quantize(s.targets.bbox3d, -2.0, 2.0, 1000).tolist()


def test_prompt_text_states_the_task_and_the_bins(samples):
    s = samples[2]
    prompt = prompt_text(s)
    assert prompt.startswith(s.instruction + "\n") and all(name in prompt for name in FIELDS)
    assert "0-999" in prompt and f"{DataSettings().num_kpts} [u, v]" in prompt and "<point" not in prompt
    assert "0-99:" in prompt_text(s, Quant(bins=100))
    assert "pixels" in prompt_text(s, Quant(bins=0))


def test_reward_sample_follows_the_contract(samples):
    s = samples[3]
    item = reward_sample(s, "{}")
    assert item["text"] == "{}" and item["target"]["answer"] == s.targets.answers
    assert item["target"]["num_kpts2d"] == DataSettings().num_kpts and item["camera"]["width"] == 128
    assert np.allclose(item["camera"]["K"], s.camera.K)
    with pytest.raises(ValueError, match="no camera"):
        target_text(replace(s, camera=None))


@pytest.mark.parametrize("bins", [DataSettings().bins, 1000])
def test_serialized_ground_truth_scores_as_ground_truth(samples, bins):
    quant = Quant(bins=bins)
    results = score_batch([reward_sample(s, target_text(s, quant)) for s in samples], {"bins": bins})
    rewards = {name: np.array([r["rewards"][name] for r in results]) for name in results[0]["rewards"]}
    assert (rewards["format"] == 1).all() and (rewards["answer"] == 1).all()
    for name in ("bbox2d", "bbox3d"):  # 64 bins are 1/32 of the radius: a small box loses some IoU to rounding
        assert rewards[name].min() >= (0.85 if bins < 100 else 0.95), name
    # the 3D box's margin covers half a bin, so no rounded keypoint falls outside it
    assert (rewards["kpts2d"] == 1).all() and (rewards["kpts3d"] == 1).all()
    print(f"ground-truth rpc: mean {rewards['rpc'].mean():.3f}, min {rewards['rpc'].min():.3f}")
    assert rewards["rpc"].mean() > 0.5  # mask box vs projected 3D-box corners: below 1 by nature
    assert all(r["errors"] == [] for r in results)
