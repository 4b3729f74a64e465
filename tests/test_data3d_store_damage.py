"""Damaged and unfinished datasets: written by the real writer, then broken on disk the way crashes and disks break
them. Every reader error is one line that names the file and the sample it concerns."""

from __future__ import annotations

import json
import os

import pytest

from data3d.benchmark import generate_sample
from data3d.store import BenchmarkDataset, DatasetError, read_meta, write_dataset


@pytest.fixture(scope="module")
def samples():
    return [generate_sample(3, i, num_points=32, image_size=16, num_kpts=2) for i in range(10)]


@pytest.fixture
def root(tmp_path, samples):
    write_dataset(tmp_path / "data", {"train": samples}, config={}, shard_size=4)  # shards of 4, 4, 2
    return tmp_path / "data"


def one_line(exc: pytest.ExceptionInfo) -> str:
    message = str(exc.value)
    assert "\n" not in message
    return message


def test_a_truncated_npy_names_the_file_and_the_sample(root):
    path = root / "train" / "00001" / "points.npy"
    os.truncate(path, path.stat().st_size - 100)
    train = BenchmarkDataset(root, "train")
    assert train[3].uid == "synth-3-0000003"  # shard 0 is intact
    with pytest.raises(DatasetError) as info:
        train[5]
    assert str(path) in one_line(info) and "sample 5" in one_line(info) and "truncated" in one_line(info)
    with pytest.raises(DatasetError, match="sample 4"):  # iterating reaches the shard at its first sample
        list(train)


def test_a_garbled_npy_header_names_the_file(root):
    path = root / "train" / "00000" / "image.npy"
    path.write_bytes(b"\x93NUMPY garbage" + path.read_bytes()[14:])
    with pytest.raises(DatasetError) as info:
        BenchmarkDataset(root, "train")[0]
    assert str(path) in one_line(info) and "sample 0" in one_line(info)


def test_a_garbled_json_line_names_the_line_and_the_sample(root):
    path = root / "train" / "00001" / "samples.jsonl"
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    lines[2] = lines[2][:8] + "\x00}{" + lines[2][12:]
    path.write_text("".join(lines), encoding="utf-8")
    with pytest.raises(DatasetError) as info:
        BenchmarkDataset(root, "train")[4]
    assert f"{path} line 3" in one_line(info) and "sample 6" in one_line(info)


def test_a_json_line_that_is_not_utf8_or_lacks_a_key_is_named(root):
    path = root / "train" / "00002" / "samples.jsonl"
    lines = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(lines[0] + b'{"uid": "\xff\xfe"}\n')
    with pytest.raises(DatasetError) as info:
        BenchmarkDataset(root, "train")[8]
    assert f"{path} line 2" in one_line(info) and "sample 9" in one_line(info)
    record = json.loads(lines[0])
    del record["answers"]
    path.write_bytes(json.dumps(record).encode() + b"\n" + lines[1])
    with pytest.raises(DatasetError, match=r"line 1 .*sample 8.*answers"):
        BenchmarkDataset(root, "train")[8]


def test_a_shard_count_in_meta_that_disagrees_with_its_files_is_named(root):
    meta = json.loads((root / "meta.json").read_text())
    meta["splits"]["train"]["shards"][1]["count"] = 5
    meta["splits"]["train"]["count"] = 11
    (root / "meta.json").write_text(json.dumps(meta))
    train = BenchmarkDataset(root, "train")
    assert len(train) == 11
    with pytest.raises(DatasetError) as info:
        train[8]  # today an IndexError: meta puts sample 8 in shard 1, whose files hold 4
    message = one_line(info)
    assert str(root / "train" / "00001") in message and "sample 8" in message and "meta.json" in message


def test_a_split_count_that_disagrees_with_its_shards_is_refused(root):
    meta = json.loads((root / "meta.json").read_text())
    meta["splits"]["train"]["count"] = 12
    (root / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(DatasetError) as info:
        BenchmarkDataset(root, "train")
    assert str(root / "meta.json") in one_line(info) and "12" in one_line(info) and "10" in one_line(info)


def test_an_unfinished_dataset_is_refused_but_its_progress_is_readable(tmp_path, samples):
    def killed():
        yield from samples[:9]
        raise KeyboardInterrupt  # the writer dies in the middle of shard 2

    with pytest.raises(KeyboardInterrupt):
        write_dataset(
            tmp_path,
            {"train": killed(), "test": samples[9:]},
            config={"n": 10},
            shard_size=4,
            planned={"train": 9, "test": 1},
        )
    with pytest.raises(DatasetError) as info:
        BenchmarkDataset(tmp_path, "train")
    message = one_line(info)
    assert "partial" in message and "8 of 10 samples" in message and str(tmp_path / "meta.json") in message
    progress = read_meta(tmp_path, partial_ok=True)
    assert progress["complete"] is False and progress["splits"]["train"]["count"] == 8
    assert progress["splits"]["test"] == {"count": 0, "shards": []}


def test_resume_writes_again_a_shard_the_manifest_never_listed(tmp_path, samples):
    def killed():
        yield from samples[:6]
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_dataset(tmp_path, {"train": killed()}, config={"n": 10}, shard_size=4, planned={"train": 10})
    stray = tmp_path / "train" / "00001"  # as if killed between renaming a shard into place and listing it
    stray.mkdir()
    (stray / "points.npy").write_bytes(b"half")
    with pytest.raises(DatasetError, match="cannot be resumed"):
        write_dataset(tmp_path, {"train": samples[4:]}, config={"n": 11}, shard_size=4, resume=True)
    meta = write_dataset(tmp_path, {"train": samples[4:]}, config={"n": 10}, shard_size=4, resume=True)
    assert meta["complete"] is True and meta["splits"]["train"]["count"] == 10
    assert [s.uid for s in BenchmarkDataset(tmp_path, "train")] == [s.uid for s in samples]
