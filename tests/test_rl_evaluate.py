"""Evaluation: an oracle answerer scores perfectly and shows no 3D reliance, a noise answerer scores near zero, and
`pointrl eval` runs a real tiny policy on a real dataset directory and writes the report."""

import json
import random

import pytest

from data3d import generate_sample, target_text, write_benchmark
from rl.batches import corrupt
from rl.evaluate import METRICS, TEXT_METRICS, evaluate, format_table, swapped_clouds


@pytest.fixture(scope="module")
def samples():
    return [generate_sample(3, i, num_points=512, image_size=64) for i in range(12)]


def oracle(samples):
    return [target_text(s) for s in samples]


def noise(samples):
    rng = random.Random(0)
    texts = []
    for _ in samples:
        garbage = {"answer": rng.choice(["zebra", "x"]), "description": "tokens " * rng.randint(0, 5),
                   "bbox2d": [rng.randint(0, 999) for _ in range(4)], "bbox3d": [rng.randint(0, 999) for _ in range(6)],
                   "kpts2d": [[rng.randint(0, 999), rng.randint(0, 999)]], "kpts3d": [[rng.randint(0, 999)] * 3]}
        texts.append(rng.choice([json.dumps(garbage), "I think it is a chair", json.dumps(garbage)[:30]]))
    return texts


def test_the_oracle_scores_perfectly_and_relies_on_nothing(samples):
    report = evaluate(oracle, samples)
    assert report["parse_rate"] == 1.0 and report["answer_acc"] == 1.0 and report["format_rate"] == 1.0
    for metric in ("iou2d", "iou3d", "kpa2d", "kpa3d"):
        assert report[metric] >= 0.95, metric
    assert report["bleu"] == pytest.approx(1.0) and report["rougeL"] == pytest.approx(1.0)
    # its answers come from the targets, not the cloud: masking or swapping the cloud changes nothing
    assert all(gap == 0.0 for gap in report["reliance"]["gap_masked"].values())
    assert all(gap == 0.0 for gap in report["reliance"]["gap_swapped"].values())


def test_noise_scores_near_zero(samples):
    report = evaluate(noise, samples, reliance=False)
    assert report["answer_acc"] == 0.0 and report["parse_rate"] < 1.0
    assert report["iou3d"] < 0.2 and report["iou2d"] < 0.2 and report["bleu"] < 0.1
    assert "reliance" not in report


def test_report_keys_and_ranges(samples):
    report = evaluate(oracle, samples)
    for metric in (*METRICS, *TEXT_METRICS):
        assert 0.0 <= report[metric] <= 1.0
    assert set(report["reliance"]) >= {"masked", "swapped"}
    assert set(METRICS) <= set(report["reliance"]["masked"])
    table = format_table(report)
    assert "3D-masked" in table and "cloud swapped" in table and "iou3d" in table


def test_corrupted_clouds_change_the_points_not_the_targets(samples):
    masked = corrupt(samples, "mask", seed=0, mask_ratio=0.6)
    swapped = swapped_clouds(samples)
    for clean, m, s in zip(samples, masked, swapped):
        assert m.points.shape == clean.points.shape and not (m.points == clean.points).all()
        assert s.targets is clean.targets and not (s.points == clean.points).all()
    assert all(a.points.tobytes() == b.points.tobytes() for a, b in zip(masked, corrupt(samples, "mask", 0, mask_ratio=0.6)))


def test_empty_split_is_a_clear_error():
    with pytest.raises(ValueError, match="no samples"):
        evaluate(oracle, [])


def test_pointrl_eval_on_a_tiny_policy_and_dataset(tmp_path):
    from policies.tiny import build_tiny_policy
    from rl.cli import main

    write_benchmark(tmp_path / "data", 6, seed=1, test_fraction=0.5, num_points=256, image_size=32, progress=False)
    build_tiny_policy(out_dir=tmp_path / "policy")
    out = tmp_path / "eval.json"
    main(["eval", "--policy", str(tmp_path / "policy"), "--data", str(tmp_path / "data"), "--out", str(out),
          "--max-new-tokens", "12", "--batch-size", "3"])
    report = json.loads(out.read_text())
    assert set(METRICS) <= set(report) and report["n"] == 3
    assert all(0.0 <= report[m] <= 1.0 for m in METRICS)
    assert report["meta"]["split"] == "test" and {"masked", "swapped"} <= set(report["reliance"])
