"""The learning studies' statistics and outputs (bench/study.py), per-object scores that agree with the report, and
the run seed's prompt order: what Table 3 at CPU scale rests on."""

import json

import numpy as np
import pytest

from bench.study import bootstrap_ci, bootstrap_difference_ci, difference_table, write_study
from data3d import generate_sample, target_text
from rl.config_loading import load_config
from rl.eval.evaluate import METRICS, object_scores, score_answers
from rl.runtime.data import TrainingSet


def test_the_bootstrap_interval_holds_the_mean_and_widens_with_seed_to_seed_spread():
    rng = np.random.default_rng(0)
    objects = rng.uniform(0.4, 0.8, 256)
    alike = np.stack([objects, objects + 0.01, objects - 0.01])  # [seeds, objects]: runs that agree
    apart = np.stack([objects - 0.15, objects, objects + 0.15])  # runs that disagree, same mean
    low, high = bootstrap_ci(alike)
    assert low < alike.mean() < high
    assert high - low < 0.05
    wide_low, wide_high = bootstrap_ci(apart)
    assert wide_low < apart.mean() < wide_high
    assert wide_high - wide_low > 2 * (high - low)  # the seeds' spread is in the interval, not only the objects'
    one_low, one_high = bootstrap_ci(objects[None])  # one seed: the ordinary bootstrap over objects
    sem = objects.std() / np.sqrt(len(objects))
    assert abs((one_high - one_low) - 2 * 1.96 * sem) < 0.3 * 2 * 1.96 * sem


def test_write_study_writes_json_markdown_and_curves(tmp_path):
    rng = np.random.default_rng(1)

    def run(seed, level):
        scores = {m: list(rng.uniform(level - 0.1, level + 0.1, 32)) for m in ("iou3d", "kpa3d", "rpc")}
        point = {m: float(np.mean(v)) for m, v in scores.items()}
        return {"seed": seed, "scores": scores, "curve": [[0, point], [10, point]]}

    results = {"SFT": [run(0, 0.5)], "GRCA + RPC": [run(0, 0.7), run(1, 0.72)], "GRPO": [run(0, 0.6)]}
    routed = {"other_fields_var/bbox3d": 0.0, "other_fields_share/bbox3d": 0.0}
    for seed, grca in enumerate(results["GRCA + RPC"]):
        grca["credit"] = {**routed, "other_fields_var/kpts3d": 0.2 + 0.2 * seed}  # kpts3d in the background
    results["GRPO"][0]["credit"] = {"other_fields_var/bbox3d": 0.4, "other_fields_share/bbox3d": 0.5}
    study = write_study(results, tmp_path, "a study")
    saved = json.loads((tmp_path / "study.json").read_text())
    assert saved["arms"]["GRCA + RPC"]["seeds"] == [0, 1] and study["objects"] == 32
    low, high = saved["arms"]["GRCA + RPC"]["ci95"]["iou3d"]
    assert low < saved["arms"]["GRCA + RPC"]["mean"]["iou3d"] < high
    table = (tmp_path / "study.md").read_text()
    assert "| GRCA + RPC (2) |" in table and "| SFT (1) |" in table
    # GRCA §3.6 per trained arm: the means over seeds, a field an arm did not measure shown as "-"
    assert saved["arms"]["GRCA + RPC"]["credit"]["other_fields_var/kpts3d"] == pytest.approx(0.3)
    assert "credit" not in saved["arms"]["SFT"]
    assert "| arm | bbox3d | kpts3d |" in table
    assert "| GRCA + RPC | 0.000 (0.00) | 0.300 (nan) |" in table and "| GRPO | 0.400 (0.50) | - |" in table
    assert (tmp_path / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_object_scores_are_the_report_per_object():
    samples = [generate_sample(5, i, num_points=256, image_size=32) for i in range(6)]
    texts = [target_text(s) for s in samples[:3]] + ["not json", target_text(samples[0]), "{}"]
    per_object, report = object_scores(samples, texts), score_answers(samples, texts)
    for metric in METRICS:
        assert len(per_object[metric]) == len(samples)
        assert np.isclose(np.mean(per_object[metric]), report[metric])
    assert per_object["parse_rate"][3] == 0.0 and per_object["parse_rate"][0] == 1.0


def test_the_run_seed_reorders_the_training_prompts():
    def order(seed):
        cfg = load_config("grca.yaml", [f"run.seed={seed}"])
        return TrainingSet(cfg, "train", 64, cfg.data.seed).order.tolist()

    assert order(0) == order(0)
    assert order(0) != order(1)
    assert sorted(order(1)) == list(range(64))


def test_a_periodic_evaluation_is_plotted_at_the_number_of_updates_behind_it(tmp_path):
    """The controller logs step index s (0-based) as row step s + 1, the updates done: the curve uses that number."""
    from bench.learning_bench import periodic_points
    from rl.runtime.metrics import MetricsLog

    log = MetricsLog(tmp_path, "curve", steps=60)
    log.log(29, {"loss/total": 1.0}, echo=False)
    log.log(30, {"loss/total": 1.0, "eval/iou3d": 0.5}, echo=False)  # evaluated after 31 updates
    log.close()
    assert periodic_points(tmp_path) == [[31, {"iou3d": 0.5}]]


def test_the_difference_to_a_reference_arm_pairs_the_objects():
    rng = np.random.default_rng(0)
    base = rng.uniform(0, 1, 256) + rng.normal(0, 0.01, (3, 256))  # [seeds, objects]: objects differ far more
    shifted = base + 0.1 + rng.normal(0, 0.01, base.shape)
    low, high = bootstrap_difference_ci(shifted, base)
    assert low < 0.1 < high and high - low < 0.01  # paired: the spread of the objects cancels
    low, high = bootstrap_difference_ci(base, base)
    assert low <= 0 <= high

    def runs(scores):
        return [{"seed": k, "scores": {m: list(scores[k]) for m in ("iou3d", "kpa3d", "rpc")}} for k in range(3)]

    results = {"ref": runs(base), "arm": runs(shifted)}
    lines = difference_table(results, "ref")
    assert lines[-1].startswith("| arm | +0.100 [+0.09") and "ref |" not in "\n".join(lines)
