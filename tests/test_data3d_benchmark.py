"""The calibrated benchmark generator: geometry invariants, category cameras, questions, determinism, the split."""

from __future__ import annotations

import numpy as np
import pytest

from data3d.benchmark import VIEWS, generate_sample, split_indices, write_benchmark
from data3d.questions import AXES, extents
from data3d.settings import DataSettings, dataset_settings
from data3d.shapes import CATEGORIES, PALETTE
from data3d.store import BenchmarkDataset, read_meta
from rewards.camera import project

BACKGROUND = np.array([250, 250, 250])


@pytest.fixture(scope="module")
def samples():
    return [generate_sample(7, i) for i in range(40)] + [generate_sample(8, 0, categories=(c,)) for c in CATEGORIES]


def test_points_are_a_unit_sphere_cloud_inside_their_box(samples):
    for s in samples:
        assert s.points.shape == (1024, 6) and s.points.dtype == np.float32
        xyz, rgb = s.points[:, :3].astype(np.float64), s.points[:, 3:]
        assert np.linalg.norm(xyz, axis=1).max() == pytest.approx(1.0, abs=1e-6)
        assert np.abs(xyz.mean(axis=0)).max() < 1e-5 and ((rgb >= 0) & (rgb <= 1)).all()
        box = s.targets.bbox3d
        assert ((xyz >= box[:3]) & (xyz <= box[3:])).all() and (box[3:] - box[:3] >= 0.1).all()
        assert ((box >= -1) & (box <= 1)).all()
        kpts = s.targets.kpts3d
        assert (
            kpts.shape == (DataSettings().num_kpts, 3) and np.isin(kpts[:, 0], xyz[:, 0]).all()
        )  # keypoints are points of the cloud


def test_camera_image_and_2d_targets(samples):
    for s in samples:
        cam, image = s.camera, s.image
        assert image.shape == (128, 128, 3) and image.dtype == np.uint8
        assert cam.K[0, 2] == cam.width / 2 and cam.K[1, 2] == cam.height / 2
        pixels, depth = project(s.points[:, :3].astype(np.float64), cam.K, cam.R, cam.t)
        assert (depth > 0).all() and ((pixels >= 0) & (pixels <= [cam.width, cam.height])).all()
        border = np.concatenate([image[0], image[-1], image[:, 0], image[:, -1]])
        assert (border == BACKGROUND).all()  # never cut off
        rows, cols = np.nonzero((image != BACKGROUND).any(axis=-1))
        drawn = np.array([cols.min(), rows.min(), cols.max() + 1, rows.max() + 1])
        box = s.targets.bbox2d
        assert (box[2:] - box[:2] >= 8).all()
        assert (box[:2] <= drawn[:2]).all() and (box[2:] >= drawn[2:]).all()
        if (drawn[2:] - drawn[:2] >= 8).all():
            assert np.array_equal(box, drawn)  # the tight box of the rendered object
        kpts = s.targets.kpts2d
        assert kpts.shape == (DataSettings().num_kpts, 2) and ((kpts > box[:2]) & (kpts < box[2:])).all()
        assert (image[kpts[:, 1].astype(int), kpts[:, 0].astype(int)] != BACKGROUND).any(axis=-1).all()


def test_cameras_follow_the_category_view_ranges(samples):
    for s in samples:
        view, allowed = s.targets.attributes["view"], VIEWS[s.targets.category]
        assert allowed.elevation[0] <= view["elevation"] <= allowed.elevation[1]
        assert any(lo <= view["azimuth"] <= hi for lo, hi in allowed.azimuths)


def test_questions_are_decided_by_the_geometry(samples):
    seen = set()
    for s in samples:
        t, answer = s.targets, s.targets.answers[0]
        seen.add(s.question_type)
        if s.question_type == "category":
            letter = t.answers[1]
            assert answer == t.category and f"({letter}) {t.category}" in s.instruction
            assert s.instruction.count("(") == 4
        elif s.question_type == "colour":
            assert answer == t.attributes["colour"] and answer in PALETTE
        elif s.question_type == "count":
            noun = s.instruction.removeprefix("How many ").split(" does")[0]
            assert answer == str(t.attributes["counts"][noun])
        elif s.question_type == "axis":
            assert answer == AXES[int(np.argmax(extents(t.bbox3d)))][1]
        elif s.question_type == "taller":
            width, height, _ = extents(t.bbox3d)
            assert answer == ("yes" if height > width else "no")
        else:
            pytest.fail(f"unexpected question type {s.question_type}")
        assert t.description.startswith(("a ", "an ")) and t.category in t.description
    assert seen == {"category", "colour", "count", "axis", "taller"}


def test_a_sample_depends_only_on_seed_and_index():
    a, b = generate_sample(3, 11), generate_sample(3, 11)
    assert a.uid == b.uid and a.instruction == b.instruction
    for x, y in [
        (a.points, b.points),
        (a.image, b.image),
        (a.camera.K, b.camera.K),
        (a.targets.kpts2d, b.targets.kpts2d),
    ]:
        assert np.array_equal(x, y)
    assert not np.array_equal(a.points, generate_sample(4, 11).points)
    assert not np.array_equal(a.points, generate_sample(3, 12).points)


def test_split_and_bad_arguments():
    assert split_indices(20, 0.1) == {"train": range(2, 20), "test": range(0, 2)}
    with pytest.raises(ValueError, match="test_fraction"):
        split_indices(10, 1.0)
    with pytest.raises(ValueError, match="seed"):
        generate_sample(-1, 0)
    with pytest.raises(ValueError, match="categories"):
        generate_sample(0, 0, categories=("teapot",))


def _tree(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_write_benchmark_is_byte_identical_for_a_seed(tmp_path):
    settings = DataSettings(num_points=128, image_size=48, num_kpts=3, bins=50)
    kwargs = dict(test_fraction=0.25, settings=settings, progress=False, shard_size=5)
    summary = write_benchmark(tmp_path / "a", 12, 5, **kwargs)
    write_benchmark(tmp_path / "b", 12, 5, **kwargs, workers=2)  # the same bytes from two generator processes
    assert _tree(tmp_path / "a") == _tree(tmp_path / "b")
    assert dataset_settings(read_meta(tmp_path / "a")) == settings
    assert summary["counts"] == {"train": 9, "test": 3} and sum(summary["categories"].values()) == 12
    test = BenchmarkDataset(tmp_path / "a", "test")
    again = generate_sample(5, 1, num_points=128, image_size=48, num_kpts=3)
    assert test[1].uid == again.uid and np.array_equal(test[1].image, again.image)
    assert [s.uid for s in BenchmarkDataset(tmp_path / "a", "train")] == [f"synth-5-{i:07d}" for i in range(3, 12)]
    with pytest.raises(FileExistsError, match="not empty"):
        write_benchmark(tmp_path / "a", 12, 5, **kwargs)
    write_benchmark(tmp_path / "a", 4, 6, **kwargs, overwrite=True)
    assert len(BenchmarkDataset(tmp_path / "a", "train")) == 3


def test_relevance_questions_need_the_geometry():
    asked = [generate_sample(8, i, num_points=128, image_size=32, relevance=1.0) for i in range(40)]
    assert {s.question_type for s in asked} == {"match"}
    answers = [s.targets.answers[0] for s in asked]
    assert 12 <= answers.count("yes") <= 28  # balanced: a negative is redrawn until it differs
    for s in asked:
        candidate = s.instruction.removeprefix("Does this description fit this object: ").removesuffix("?")
        assert (candidate == s.targets.description) == (s.targets.answers == ["yes"])
        # a negative shares the colour and category: only the geometric tail tells it apart
        assert candidate.split()[:3] == s.targets.description.split()[:3]
    plain = generate_sample(8, 3, num_points=128, image_size=32)
    assert generate_sample(8, 3, num_points=128, image_size=32, relevance=0.0).instruction == plain.instruction
    with pytest.raises(ValueError, match="relevance"):
        generate_sample(8, 3, relevance=1.5)
