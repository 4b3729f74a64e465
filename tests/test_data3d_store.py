"""The on-disk format: bit-exact reload, random access, streaming, crash safety and clear errors."""

from __future__ import annotations

import json
import shutil
from dataclasses import fields, replace

import numpy as np
import pytest

from data3d.benchmark import generate_sample
from data3d.store import BenchmarkDataset, DatasetError, read_meta, write_dataset
from rewards.schema import Quant


@pytest.fixture(scope="module")
def samples():
    return [generate_sample(2, i, num_points=64, image_size=32) for i in range(11)]


def assert_same(a, b):
    assert a.uid == b.uid and a.instruction == b.instruction and a.question_type == b.question_type
    pairs = [
        (a.points, b.points),
        (a.image, b.image),
        (a.camera.K, b.camera.K),
        (a.camera.R, b.camera.R),
        (a.camera.t, b.camera.t),
    ]
    for x, y in pairs:
        assert x.dtype == y.dtype and np.array_equal(x, y)
    assert (a.camera.width, a.camera.height) == (b.camera.width, b.camera.height)
    for f in fields(a.targets):
        x, y = getattr(a.targets, f.name), getattr(b.targets, f.name)
        assert np.array_equal(x, y) if isinstance(x, np.ndarray) else x == y, f.name


def test_reload_is_bit_exact_with_random_access(tmp_path, samples):
    meta = write_dataset(
        tmp_path, {"train": samples[:9], "test": samples[9:]}, config={"note": "x"}, quant=Quant(bins=500), shard_size=4
    )
    assert meta == read_meta(tmp_path) and meta["quant"]["bins"] == 500
    assert [s["count"] for s in meta["splits"]["train"]["shards"]] == [4, 4, 1]
    train = BenchmarkDataset(tmp_path, "train")
    assert len(train) == 9 and len(BenchmarkDataset(tmp_path, "test")) == 2
    for written, read in zip(samples[:9], train):
        assert_same(written, read)
    for i in [8, 0, 5, 4, 3, -1, -9]:
        assert_same(samples[:9][i], train[i])
    with pytest.raises(IndexError, match="out of range"):
        train[9]


def test_reading_streams_shard_by_shard(tmp_path, samples):
    write_dataset(tmp_path, {"train": samples}, config={}, shard_size=4)
    shutil.rmtree(tmp_path / "train" / "00002")
    stream = iter(BenchmarkDataset(tmp_path, "train"))
    assert [next(stream).uid for _ in range(8)] == [s.uid for s in samples[:8]]  # shard 2 not touched yet
    with pytest.raises(FileNotFoundError, match="00002"):
        next(stream)


def test_a_crash_leaves_no_dataset_and_overwrite_recovers(tmp_path, samples):
    def crashing():
        yield from samples[:5]
        raise RuntimeError("generator died")

    with pytest.raises(RuntimeError, match="died"):
        write_dataset(tmp_path, {"train": crashing()}, config={}, shard_size=2)
    assert sorted(p.name for p in (tmp_path / "train").iterdir()) == ["00000", "00001"]  # only complete shards
    with pytest.raises(DatasetError, match="meta.json: a partial dataset, 4 samples written"):  # the manifest says so
        BenchmarkDataset(tmp_path, "train")
    with pytest.raises(FileExistsError, match="not empty"):
        write_dataset(tmp_path, {"train": samples[:3]}, config={})
    write_dataset(tmp_path, {"train": samples[:3]}, config={}, overwrite=True)
    assert [s.uid for s in BenchmarkDataset(tmp_path, "train")] == [s.uid for s in samples[:3]]


def test_bad_samples_and_bad_directories_are_named(tmp_path, samples):
    as_float64 = replace(samples[0], points=samples[0].points.astype(np.float64))
    with pytest.raises(ValueError, match=f"{samples[0].uid}.*points must be float32"):
        write_dataset(tmp_path / "a", {"train": [as_float64]}, config={})
    bigger = generate_sample(2, 99, num_points=80, image_size=32)
    with pytest.raises(ValueError, match=f"{bigger.uid}.*points has shape"):
        write_dataset(tmp_path / "b", {"train": [samples[0], bigger]}, config={})
    with pytest.raises(ValueError, match="needs an image"):
        write_dataset(tmp_path / "c", {"train": [replace(samples[0], image=None)]}, config={})
    write_dataset(tmp_path / "d", {"train": samples[:2]}, config={})
    with pytest.raises(ValueError, match="no split 'val'"):
        BenchmarkDataset(tmp_path / "d", "val")
    meta = json.loads((tmp_path / "d" / "meta.json").read_text())
    (tmp_path / "d" / "meta.json").write_text(json.dumps({**meta, "format": "other"}))
    with pytest.raises(ValueError, match="meta.json.*format"):
        BenchmarkDataset(tmp_path / "d", "train")
