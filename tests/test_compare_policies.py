"""bench/compare_policies.py's parts: the weight interpolation between two policy folders, the per-coordinate box
errors and the pooling of several seeds of one arm."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from bench.compare_policies import WEIGHT_FILES, box_errors, interpolated, pooled
from bench.study import STUDY_METRICS
from data3d import generate_sample
from data3d.serialize import target_text
from policies import PointVLM, build_tiny_policy
from rewards.schema import Quant


def test_interpolation_mixes_every_float_weight_and_loads_as_a_policy(tmp_path):
    build_tiny_policy(seed=0).save_pretrained(tmp_path / "a")
    build_tiny_policy(seed=1).save_pretrained(tmp_path / "b")
    mixed = interpolated(tmp_path / "a", tmp_path / "b", 0.25, tmp_path / "mix")
    for name in WEIGHT_FILES:
        a, b, m = (load_file(d / name) for d in (tmp_path / "a", tmp_path / "b", mixed))
        assert m.keys() == b.keys()
        for key, value in m.items():
            expected = (a[key].double() * 0.75 + b[key].double() * 0.25).to(value.dtype)
            assert torch.equal(value, expected if value.is_floating_point() else b[key]), key
    assert any(
        not torch.equal(load_file(mixed / n)[k], load_file(tmp_path / "b" / n)[k])
        for n in WEIGHT_FILES
        for k in load_file(mixed / n)
    )
    PointVLM.from_pretrained(mixed)


def test_box_errors_are_zero_for_the_truth_and_the_shift_for_a_shifted_box():
    quant = Quant()
    samples = [generate_sample(3, i, num_points=256, image_size=32, num_kpts=4) for i in range(4)]
    texts = [target_text(s, quant) for s in samples]
    assert np.array_equal(box_errors(samples, texts, quant), np.zeros((4, 6)))
    shifted = json.loads(texts[0])
    shifted["bbox3d"] = [v + (2 if i == 1 else 0) for i, v in enumerate(shifted["bbox3d"])]
    errors = box_errors(samples[:2], [json.dumps(shifted), "not an answer"], quant)
    assert errors.tolist() == [[0, 2, 0, 0, 0, 0]]  # the unparsable answer is left out


@pytest.mark.parametrize("alpha", [0.0, 1.0])
def test_a_mix_outside_the_open_interval_is_refused(tmp_path, alpha):
    run = subprocess.run(
        [sys.executable, "bench/compare_policies.py", "a", "b", "--mix", str(alpha)], capture_output=True, text=True
    )
    assert run.returncode != 0 and "--mix must lie strictly between 0 and 1" in run.stderr
    assert "Traceback" not in run.stderr


def test_pooled_seeds_give_the_mean_and_the_paired_difference_with_intervals_over_seeds_and_objects():
    rng = np.random.default_rng(0)
    base = {m: rng.uniform(0, 1, 64) for m in STUDY_METRICS}
    same_gain = [{m: v + 0.1 for m, v in base.items()} for _ in range(3)]
    line = pooled(same_gain, base).splitlines()[1].strip()  # the first metric's line
    metric = STUDY_METRICS[0]
    mean = base[metric].mean() + 0.1
    assert line.startswith(f"{metric} {mean:.4f} [")
    assert line.endswith("(+0.1000 [+0.1000, +0.1000])")  # every seed and object gains exactly 0.1
    seeds_apart = [{m: v + shift for m, v in base.items()} for shift in (-0.2, 0.0, 0.3)]
    text = pooled(seeds_apart, base)
    low, high = (float(x) for x in text.splitlines()[1].split("(")[1].split("[")[1].rstrip("])").split(", "))
    assert low < 0.1 / 3 < high and high - low > 0.2  # the interval holds the seed-to-seed spread
    assert text.startswith("pooled over 3 seeds")
