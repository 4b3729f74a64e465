"""Evaluation: an oracle answerer scores perfectly and shows no 3D reliance, a noise answerer scores near zero, and
`pointrl eval` runs a real tiny policy on a real dataset directory and writes the report."""

import json
import random

import pytest

from data3d import generate_sample, target_text, write_benchmark
from data3d.settings import DataSettings, save_settings
from rl.algorithms.spa import corrupt
from rl.eval.evaluate import METRICS, TEXT_METRICS, evaluate, format_comparison, format_table, swapped_clouds


@pytest.fixture(scope="module")
def samples():
    return [generate_sample(3, i, num_points=512, image_size=64) for i in range(12)]


def oracle(samples):
    return [target_text(s) for s in samples]


def noise(samples):
    rng = random.Random(0)
    texts = []
    for _ in samples:
        garbage = {
            "answer": rng.choice(["zebra", "x"]),
            "description": "tokens " * rng.randint(0, 5),
            "bbox2d": [rng.randint(0, 999) for _ in range(4)],
            "bbox3d": [rng.randint(0, 999) for _ in range(6)],
            "kpts2d": [[rng.randint(0, 999), rng.randint(0, 999)]],
            "kpts3d": [[rng.randint(0, 999)] * 3],
        }
        texts.append(rng.choice([json.dumps(garbage), "I think it is a chair", json.dumps(garbage)[:30]]))
    return texts


def test_the_oracle_scores_perfectly_and_relies_on_nothing(samples):
    report = evaluate(oracle, samples)
    assert report["parse_rate"] == 1.0 and report["answer_acc"] == 1.0 and report["format_rate"] == 1.0
    for metric in ("iou2d", "iou3d", "kpa2d", "kpa3d"):
        assert report[metric] >= 0.95, metric
    assert report["bleu"] == pytest.approx(1.0) and report["rougeL"] == pytest.approx(1.0)
    # its answers come from the targets, not the cloud: masking or swapping the cloud changes nothing
    for condition in (report["reliance"], report["reliance"]["image_blanked"]):
        assert all(gap == 0.0 for gap in condition["gap_masked"].values())
        assert all(gap == 0.0 for gap in condition["gap_swapped"].values())


def test_the_gap_with_the_image_blanked_tells_the_cloud_from_the_picture(samples):
    clean_clouds = {s.uid: s.points.tobytes() for s in samples}

    def reads_the_cloud(batch):
        return [target_text(s) if s.points.tobytes() == clean_clouds[s.uid] else "no idea" for s in batch]

    def reads_the_image(batch):
        return [target_text(s) if s.image.any() else "no idea" for s in batch]

    cloud = evaluate(reads_the_cloud, samples)["reliance"]
    for condition in (cloud, cloud["image_blanked"]):  # the same gap whether or not the picture is there
        assert condition["gap_masked"]["iou3d"] > 0.9 and condition["gap_swapped"]["iou3d"] > 0.9
    picture = evaluate(reads_the_image, samples)["reliance"]
    assert picture["gap_masked"]["iou3d"] == 0.0  # the cloud is never read...
    assert picture["image_blanked"]["clean"]["iou3d"] == 0.0  # ...and without the picture nothing is right
    assert picture["image_blanked"]["gap_masked"]["iou3d"] == 0.0


def test_noise_scores_near_zero(samples):
    report = evaluate(noise, samples, reliance=False)
    assert report["answer_acc"] == 0.0 and report["parse_rate"] < 1.0
    assert report["iou3d"] < 0.2 and report["iou2d"] < 0.2 and report["bleu"] < 0.1
    assert "reliance" not in report


def test_report_keys_and_ranges(samples):
    report = evaluate(oracle, samples)
    for metric in (*METRICS, *TEXT_METRICS):
        assert 0.0 <= report[metric] <= 1.0
    assert set(report["reliance"]) >= {"masked", "swapped", "gap_masked", "gap_swapped", "image_blanked"}
    assert set(report["reliance"]["image_blanked"]) == {"clean", "masked", "swapped", "gap_masked", "gap_swapped"}
    assert set(METRICS) <= set(report["reliance"]["masked"])
    assert set(METRICS) <= set(report["reliance"]["image_blanked"]["swapped"])
    *table, by_question = format_table(report).splitlines()[1:]
    rows = [line.split("  ")[0] for line in table]
    assert rows == ["clean", "3D-masked", "cloud swapped", "image blanked", "blank, 3D-masked", "blank, swapped"]
    kinds = {s.question_type for s in samples}
    assert set(report["answer_by_question"]) == kinds and all(f"{k} 1.000" in by_question for k in kinds)
    assert sum(v["n"] for v in report["answer_by_question"].values()) == len(samples)
    header, sft, final = format_comparison({"sft": report, "grca": {**report, "reliance": None}}).splitlines()
    assert "iou3d gap, blank" in header and sft.split()[0] == "sft" and final.split()[0] == "grca"
    # the oracle reads its targets, not the cloud: swapping the cloud takes nothing away
    assert sft.split()[-4:] == ["0.000"] * 4 and final.split()[-4:] == ["-"] * 4


def test_corrupted_clouds_change_the_points_not_the_targets(samples):
    masked = corrupt(samples, "mask", seed=0, mask_ratio=0.6)
    swapped = swapped_clouds(samples)
    for clean, m, s in zip(samples, masked, swapped):
        assert m.points.shape == clean.points.shape and not (m.points == clean.points).all()
        assert s.targets is clean.targets and not (s.points == clean.points).all()
    assert all(
        a.points.tobytes() == b.points.tobytes() for a, b in zip(masked, corrupt(samples, "mask", 0, mask_ratio=0.6))
    )


def test_empty_split_is_a_clear_error():
    with pytest.raises(ValueError, match="no samples"):
        evaluate(oracle, [])


def test_pointrl_eval_on_a_tiny_policy_and_dataset(tmp_path):
    from policies.tiny import build_tiny_policy
    from rl.cli.main import main

    settings = DataSettings(num_points=256, image_size=32, num_kpts=2, bins=50)
    write_benchmark(tmp_path / "data", 6, seed=1, test_fraction=0.5, settings=settings, relevance=0.5, progress=False)
    build_tiny_policy(out_dir=tmp_path / "policy")
    save_settings(tmp_path / "policy", settings)
    out = tmp_path / "eval.json"
    main(
        [
            "eval",
            "--policy",
            str(tmp_path / "policy"),
            "--data",
            str(tmp_path / "data"),
            "--out",
            str(out),
            "--max-new-tokens",
            "12",
            "--batch-size",
            "3",
        ]
    )
    report = json.loads(out.read_text())
    assert set(METRICS) <= set(report) and report["n"] == 3
    assert all(0.0 <= report[m] <= 1.0 for m in METRICS)
    assert report["meta"]["split"] == "test" and {"masked", "swapped", "image_blanked"} <= set(report["reliance"])
    assert report["meta"]["settings"] == settings.to_dict()


def test_a_points_only_policy_is_evaluated_and_drawn_on_its_clouds_alone(tmp_path, capsys):
    """A policy without an image encoder on a dataset with images (make real-bench's SmolLM2 policy): the images do
    not reach it, and the image-blanked conditions, which would repeat the others, are left out."""
    from policies.tiny import build_tiny_policy, tiny_config
    from rl.cli.main import main

    settings = DataSettings(num_points=256, image_size=32, num_kpts=2, bins=50)
    write_benchmark(tmp_path / "data", 4, seed=2, test_fraction=0.5, settings=settings, progress=False)
    build_tiny_policy(out_dir=tmp_path / "policy", config=tiny_config(image=None))
    save_settings(tmp_path / "policy", settings)
    out = tmp_path / "eval.json"
    common = ["--policy", str(tmp_path / "policy"), "--data", str(tmp_path / "data"), "--max-new-tokens", "8"]
    main(["eval", *common, "--out", str(out)])
    report = json.loads(out.read_text())
    assert report["n"] == 2 and {"masked", "swapped"} <= set(report["reliance"])
    assert "image_blanked" not in report["reliance"]
    table = capsys.readouterr().out
    assert "cloud swapped" in table and "image blanked" not in table
    main(["viz", *common, "--n", "1", "--out", str(tmp_path / "pictures")])
    assert len(list((tmp_path / "pictures").glob("*.png"))) == 1


def test_pointrl_eval_refuses_data_written_with_other_settings(tmp_path):
    from policies.tiny import build_tiny_policy
    from rl.cli.main import main

    write_benchmark(
        tmp_path / "data",
        2,
        seed=1,
        test_fraction=0.5,
        progress=False,
        settings=DataSettings(num_points=256, image_size=32, num_kpts=16, bins=50),
    )
    build_tiny_policy(out_dir=tmp_path / "policy")
    save_settings(tmp_path / "policy", DataSettings(num_points=256, image_size=32, num_kpts=4, bins=50))
    with pytest.raises(SystemExit, match="num_kpts 4 vs 16") as refused:
        main(
            [
                "eval",
                "--policy",
                str(tmp_path / "policy"),
                "--data",
                str(tmp_path / "data"),
                "--out",
                str(tmp_path / "eval.json"),
            ]
        )
    assert "--num-kpts 4" in str(refused.value) and not (tmp_path / "eval.json").exists()
