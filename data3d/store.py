"""The on-disk dataset format: sharded numpy arrays plus JSON lines, written crash-safely and read as a stream.

Layout of a dataset directory:

    meta.json                 {"format": "pointrl-data3d", "version": 1, "config": {...}, "quant": {"bins", "bounds3d"},
                               "splits": {"train": {"count": n, "shards": [{"name": "00000", "count": 256}, ...]}, ...}}
    <split>/<shard>/points.npy   (n, N, 6) float32  xyz+rgb, xyz in the unit sphere, rgb in [0, 1]
                    image.npy    (n, H, W, 3) uint8
                    K.npy R.npy  (n, 3, 3) float64;  t.npy (n, 3) float64
                    bbox2d.npy   (n, 4) float64 pixels;  bbox3d.npy (n, 6) float64 object units
                    kpts2d.npy   (n, K2, 2) float64;     kpts3d.npy (n, K3, 3) float64
                    samples.jsonl  one line per sample: uid, instruction, question_type, answers, category,
                                   description, attributes, width, height

Row i of every array and line i of samples.jsonl are one sample. Within a shard every sample has the same point
count, image size and keypoint counts. A shard is written into a hidden temporary directory and renamed when
complete, and meta.json (written last, also by rename) lists only complete shards, so a crash never leaves a
dataset that reads as whole. `.npy` and sorted-key JSON carry no timestamps: the same samples give the same bytes.
Readers memory-map one shard at a time, so a split is never loaded whole.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from data3d.types import Camera, Sample, Targets
from rewards.schema import Quant

FORMAT, VERSION = "pointrl-data3d", 1
SHARD_SIZE = 256
ARRAYS: dict[str, np.dtype] = {
    "points": np.dtype(np.float32), "image": np.dtype(np.uint8), "K": np.dtype(np.float64), "R": np.dtype(np.float64),
    "t": np.dtype(np.float64), "bbox2d": np.dtype(np.float64), "bbox3d": np.dtype(np.float64),
    "kpts2d": np.dtype(np.float64), "kpts3d": np.dtype(np.float64),
}
EXACT_DTYPES = ("points", "image")  # stored as given; a cast would change the values


def _arrays_of(sample: Sample) -> dict[str, np.ndarray]:
    if sample.image is None or sample.camera is None:
        raise ValueError(f"sample {sample.uid!r}: the store needs an image and a camera")
    t, c = sample.targets, sample.camera
    values = {"points": sample.points, "image": sample.image, "K": c.K, "R": c.R, "t": c.t, "bbox2d": t.bbox2d,
              "bbox3d": t.bbox3d, "kpts2d": t.kpts2d, "kpts3d": t.kpts3d}
    for name in EXACT_DTYPES:
        if np.asarray(values[name]).dtype != ARRAYS[name]:
            got = np.asarray(values[name]).dtype
            raise ValueError(f"sample {sample.uid!r}: {name} must be {ARRAYS[name]}, got {got}")
    return {name: np.asarray(v, dtype=ARRAYS[name]) for name, v in values.items()}


def _record_of(sample: Sample) -> dict:
    t = sample.targets
    return {"uid": sample.uid, "instruction": sample.instruction, "question_type": sample.question_type,
            "answers": list(t.answers), "category": t.category, "description": t.description,
            "attributes": t.attributes, "width": sample.camera.width, "height": sample.camera.height}


def _write_shard(split_dir: Path, name: str, samples: list[Sample]) -> dict:
    arrays = [_arrays_of(s) for s in samples]
    for sample, a in zip(samples, arrays):
        for key, value in a.items():
            if value.shape != arrays[0][key].shape:
                raise ValueError(f"sample {sample.uid!r}: {key} has shape {value.shape}, "
                                 f"the shard's first sample {arrays[0][key].shape}")
    tmp = split_dir / f".tmp-{name}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for key in ARRAYS:
        np.save(tmp / f"{key}.npy", np.stack([a[key] for a in arrays]))
    with open(tmp / "samples.jsonl", "w", encoding="utf-8") as f:
        f.writelines(json.dumps(_record_of(s), sort_keys=True, ensure_ascii=False) + "\n" for s in samples)
    os.replace(tmp, split_dir / name)
    return {"name": name, "count": len(samples)}


def _write_split(root: Path, split: str, samples: Iterable[Sample], shard_size: int) -> dict:
    shards, batch = [], []
    for sample in samples:
        batch.append(sample)
        if len(batch) == shard_size:
            shards.append(_write_shard(root / split, f"{len(shards):05d}", batch))
            batch = []
    if batch:
        shards.append(_write_shard(root / split, f"{len(shards):05d}", batch))
    return {"count": sum(s["count"] for s in shards), "shards": shards}


def write_dataset(root, splits: dict[str, Iterable[Sample]], *, config: dict, quant: Quant = Quant(),
                  shard_size: int = SHARD_SIZE, overwrite: bool = False) -> dict:
    """Write each split's samples (consumed lazily, one shard in memory) and then meta.json; returns the meta.
    `overwrite` replaces meta.json and the named splits of an existing directory and leaves anything else alone."""
    root = Path(root)
    if shard_size < 1:
        raise ValueError(f"shard_size must be >= 1, got {shard_size}")
    if root.exists() and any(root.iterdir()):
        if not overwrite:
            raise FileExistsError(f"{root} is not empty; choose a new directory or pass overwrite=True")
        for stale in [root / "meta.json", root / ".tmp-meta.json"]:
            stale.unlink(missing_ok=True)  # first, so a half-rewritten directory never reads as a dataset
        for split in splits:
            shutil.rmtree(root / split, ignore_errors=True)
    root.mkdir(parents=True, exist_ok=True)
    meta = {"format": FORMAT, "version": VERSION, "config": config,
            "quant": {"bins": quant.bins, "bounds3d": [list(v) for v in quant.bounds3d]},
            "splits": {split: _write_split(root, split, samples, shard_size) for split, samples in splits.items()}}
    tmp = root / ".tmp-meta.json"
    tmp.write_text(json.dumps(meta, sort_keys=True, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, root / "meta.json")
    return meta


def read_json(path, missing: str = "not found"):
    """A JSON file's content; a missing or unparsable file raises an error naming it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} {missing}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None


def read_meta(root) -> dict:
    """meta.json of a dataset directory, checked for format and version."""
    path = Path(root) / "meta.json"
    meta = read_json(path, "not found: not a pointrl dataset, or its writing did not finish")
    if meta.get("format") != FORMAT or not isinstance(meta.get("version"), int) or meta["version"] > VERSION:
        raise ValueError(f"{path}: expected format {FORMAT!r} version <= {VERSION}, "
                         f"got {meta.get('format')!r} version {meta.get('version')!r}")
    return meta


class BenchmarkDataset:
    """One split of a dataset directory: len(), random access by index and streaming iteration, one shard mapped at
    a time. Samples come back exactly as written."""

    def __init__(self, root, split: str = "train"):
        self.root = Path(root)
        self.meta = read_meta(self.root)
        if split not in self.meta["splits"]:
            raise ValueError(f"{self.root}: no split {split!r}; it has {sorted(self.meta['splits'])}")
        self.split = split
        self.shards = self.meta["splits"][split]["shards"]
        self._ends = np.cumsum([s["count"] for s in self.shards], dtype=np.int64)
        self._loaded: tuple[int, dict, list[dict]] | None = None

    def __len__(self) -> int:
        return int(self._ends[-1]) if len(self._ends) else 0

    def _shard(self, k: int) -> tuple[dict, list[dict]]:
        if self._loaded is None or self._loaded[0] != k:
            directory = self.root / self.split / self.shards[k]["name"]
            arrays = {}
            for key in ARRAYS:
                path = directory / f"{key}.npy"
                if not path.is_file():
                    raise FileNotFoundError(f"{path} is missing")
                arrays[key] = np.load(path, mmap_mode="r")
            with open(directory / "samples.jsonl", encoding="utf-8") as f:
                records = [json.loads(line) for line in f]
            if any(len(a) != len(records) for a in arrays.values()):
                raise ValueError(f"{directory}: arrays and samples.jsonl disagree on the number of samples")
            self._loaded = (k, arrays, records)
        return self._loaded[1], self._loaded[2]

    def _sample(self, arrays: dict, record: dict, row: int) -> Sample:
        a = {key: np.array(value[row]) for key, value in arrays.items()}
        targets = Targets(bbox2d=a["bbox2d"], bbox3d=a["bbox3d"], kpts3d=a["kpts3d"], kpts2d=a["kpts2d"],
                          answers=record["answers"], category=record["category"], description=record["description"],
                          attributes=record["attributes"])
        camera = Camera(K=a["K"], R=a["R"], t=a["t"], width=record["width"], height=record["height"])
        return Sample(uid=record["uid"], points=a["points"], instruction=record["instruction"], targets=targets,
                      image=a["image"], camera=camera, question_type=record["question_type"])

    def __getitem__(self, index: int) -> Sample:
        n = len(self)
        if not -n <= index < n:
            raise IndexError(f"index {index} out of range for {n} samples in {self.root} [{self.split}]")
        index %= n
        k = int(np.searchsorted(self._ends, index, side="right"))
        arrays, records = self._shard(k)
        row = index - (int(self._ends[k - 1]) if k else 0)
        return self._sample(arrays, records[row], row)

    def __iter__(self) -> Iterator[Sample]:
        for k in range(len(self.shards)):
            arrays, records = self._shard(k)
            for row, record in enumerate(records):
                yield self._sample(arrays, record, row)
