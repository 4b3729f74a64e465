"""The on-disk dataset format: sharded numpy arrays plus JSON lines, written crash-safely and read as a stream.

Layout of a dataset directory:

    meta.json                 {"format": "pointrl-data3d", "version": 1, "config": {...}, "quant": {"bins", "bounds3d"},
                               "complete": true, "planned": {"train": n, ...} (when the writer was told),
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
complete. meta.json, the manifest, is also written by rename: at the start and after every shard with
`"complete": false`, at the end with `true`. A killed writer so leaves a dataset that says how far it got (readers
refuse it in one line; `resume=True` carries on from there) but never one that reads as whole. A manifest without
"complete" predates it and was written whole. `.npy` and sorted-key JSON carry no timestamps: the same samples give
the same bytes. Readers memory-map one shard at a time, so a split is never loaded whole, and check the shard against
the manifest as they map it: a damaged file is a one-line `DatasetError` naming the file and the sample.
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
    "points": np.dtype(np.float32),
    "image": np.dtype(np.uint8),
    "K": np.dtype(np.float64),
    "R": np.dtype(np.float64),
    "t": np.dtype(np.float64),
    "bbox2d": np.dtype(np.float64),
    "bbox3d": np.dtype(np.float64),
    "kpts2d": np.dtype(np.float64),
    "kpts3d": np.dtype(np.float64),
}
EXACT_DTYPES = ("points", "image")  # stored as given; a cast would change the values
RECORD_KEYS = (
    "uid",
    "instruction",
    "question_type",
    "answers",
    "category",
    "description",
    "attributes",
    "width",
    "height",
)


class DatasetError(ValueError):
    """A dataset directory that is damaged or unfinished; the message names the file and, where one is concerned, the
    sample."""


def _arrays_of(sample: Sample) -> dict[str, np.ndarray]:
    if sample.image is None or sample.camera is None:
        raise ValueError(f"sample {sample.uid!r}: the store needs an image and a camera")
    t, c = sample.targets, sample.camera
    values = {
        "points": sample.points,
        "image": sample.image,
        "K": c.K,
        "R": c.R,
        "t": c.t,
        "bbox2d": t.bbox2d,
        "bbox3d": t.bbox3d,
        "kpts2d": t.kpts2d,
        "kpts3d": t.kpts3d,
    }
    for name in EXACT_DTYPES:
        if np.asarray(values[name]).dtype != ARRAYS[name]:
            got = np.asarray(values[name]).dtype
            raise ValueError(f"sample {sample.uid!r}: {name} must be {ARRAYS[name]}, got {got}")
    return {name: np.asarray(v, dtype=ARRAYS[name]) for name, v in values.items()}


def _record_of(sample: Sample) -> dict:
    t = sample.targets
    return {
        "uid": sample.uid,
        "instruction": sample.instruction,
        "question_type": sample.question_type,
        "answers": list(t.answers),
        "category": t.category,
        "description": t.description,
        "attributes": t.attributes,
        "width": sample.camera.width,
        "height": sample.camera.height,
    }


def sample_nbytes(sample: Sample) -> int:
    """The bytes one sample takes on disk (its rows of every array and its JSON line; shard headers aside)."""
    line = json.dumps(_record_of(sample), sort_keys=True, ensure_ascii=False) + "\n"
    return sum(a.nbytes for a in _arrays_of(sample).values()) + len(line.encode("utf-8"))


def _write_shard(split_dir: Path, name: str, samples: list[Sample]) -> dict:
    arrays = [_arrays_of(s) for s in samples]
    for sample, a in zip(samples, arrays):
        for key, value in a.items():
            if value.shape != arrays[0][key].shape:
                raise ValueError(
                    f"sample {sample.uid!r}: {key} has shape {value.shape}, "
                    f"the shard's first sample {arrays[0][key].shape}"
                )
    tmp = split_dir / f".tmp-{name}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for key in ARRAYS:
        np.save(tmp / f"{key}.npy", np.stack([a[key] for a in arrays]))
    with open(tmp / "samples.jsonl", "w", encoding="utf-8") as f:
        f.writelines(json.dumps(_record_of(s), sort_keys=True, ensure_ascii=False) + "\n" for s in samples)
    os.replace(tmp, split_dir / name)
    return {"name": name, "count": len(samples)}


def _write_meta(root: Path, meta: dict) -> None:
    tmp = root / ".tmp-meta.json"
    tmp.write_text(json.dumps(meta, sort_keys=True, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, root / "meta.json")


def _write_split(root: Path, meta: dict, split: str, samples: Iterable[Sample], shard_size: int) -> None:
    """Append the samples to the split in shards, recording each finished shard in the manifest."""
    entry = meta["splits"].setdefault(split, {"count": 0, "shards": []})
    batch = []
    for sample in samples:
        batch.append(sample)
        if len(batch) == shard_size:
            _add_shard(root, meta, entry, split, batch)
            batch = []
    if batch:
        _add_shard(root, meta, entry, split, batch)


def _add_shard(root: Path, meta: dict, entry: dict, split: str, batch: list[Sample]) -> None:
    entry["shards"].append(_write_shard(root / split, f"{len(entry['shards']):05d}", batch))
    entry["count"] += len(batch)
    _write_meta(root, meta)


def _drop_unlisted_shards(root: Path, meta: dict) -> None:
    """Shards renamed into place after the last manifest write (a kill between the two) are written again."""
    for split, entry in meta["splits"].items():
        listed = {shard["name"] for shard in entry["shards"]}
        if (root / split).is_dir():
            for path in (root / split).iterdir():
                if path.name in listed:
                    continue
                if path.is_dir():
                    shutil.rmtree(path)
                else:
                    path.unlink()


def write_dataset(
    root,
    splits: dict[str, Iterable[Sample]],
    *,
    config: dict,
    quant: Quant = Quant(),
    shard_size: int = SHARD_SIZE,
    overwrite: bool = False,
    planned: dict[str, int] | None = None,
    resume: bool = False,
) -> dict:
    """Write each split's samples (consumed lazily, one shard in memory), updating meta.json after every shard;
    returns the meta. `planned` (split -> count) is recorded so that a partial dataset can say how far it got.
    `overwrite` replaces meta.json and the named splits of an existing directory and leaves anything else alone.
    `resume` appends to the unfinished dataset at `root`, which must have been started with the same config and
    quantization; the caller passes only the samples that are not written yet (`read_meta(root, partial_ok=True)`)."""
    root = Path(root)
    if shard_size < 1:
        raise ValueError(f"shard_size must be >= 1, got {shard_size}")
    if root.exists() and not root.is_dir():
        raise NotADirectoryError(f"{root} is a file, not a dataset directory")
    new_quant = {"bins": quant.bins, "bounds3d": [list(v) for v in quant.bounds3d]}
    if resume:
        meta = read_meta(root, partial_ok=True)
        if meta.get("config") != config or meta.get("quant") != new_quant:
            raise DatasetError(
                f"{root / 'meta.json'}: started with config {meta.get('config')} and quant "
                f"{meta.get('quant')}, so it cannot be resumed with {config} and {new_quant}"
            )
        _drop_unlisted_shards(root, meta)
        meta["complete"] = False
    else:
        if root.exists() and any(root.iterdir()):
            if not overwrite:
                raise FileExistsError(f"{root} is not empty; choose a new directory or pass overwrite=True")
            for stale in [root / "meta.json", root / ".tmp-meta.json"]:
                stale.unlink(missing_ok=True)  # first, so a half-rewritten directory never reads as a dataset
            for split in splits:
                shutil.rmtree(root / split, ignore_errors=True)
        root.mkdir(parents=True, exist_ok=True)
        meta = {
            "format": FORMAT,
            "version": VERSION,
            "config": config,
            "quant": new_quant,
            "complete": False,
            "splits": {split: {"count": 0, "shards": []} for split in splits},
        }
        if planned is not None:
            meta["planned"] = dict(planned)
    _write_meta(root, meta)  # at once: a run killed before its first shard is already marked partial
    for split, samples in splits.items():
        _write_split(root, meta, split, samples, shard_size)
    meta["complete"] = True
    _write_meta(root, meta)
    return meta


def write_dataset_from_pool(root, splits: dict[str, Iterable[Sample]], *, bar, pool, **options) -> dict:
    """`write_dataset(root, splits, **options)` for a writer whose samples come from a worker pool with a progress
    bar (`data3d.benchmark.write_benchmark`, `data3d.importer.import_dataset`): once the write has ended, or failed,
    `bar` (a tqdm bar) is closed and `pool` (a multiprocessing pool; None when there is none) terminated."""
    try:
        return write_dataset(root, splits, **options)
    finally:
        bar.close()
        if pool:
            pool.terminate()


def read_json(path, missing: str = "not found"):
    """A JSON file's content; a missing or unparsable file raises an error naming it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} {missing}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except ValueError as e:  # JSONDecodeError, UnicodeDecodeError
        raise ValueError(f"{path}: not valid JSON ({e})") from None


def _check_manifest(path: Path, meta: dict) -> None:
    """The shape of meta.json and, per split, its count against its shards (a hand edit or a torn copy)."""
    splits = meta.get("splits")
    if not isinstance(splits, dict):
        raise DatasetError(f"{path}: no 'splits' object")
    for split, entry in splits.items():
        shards = entry.get("shards") if isinstance(entry, dict) else None
        if not isinstance(shards, list) or not all(
            isinstance(s, dict)
            and isinstance(s.get("name"), str)
            and isinstance(s.get("count"), int)
            and s["count"] >= 0
            for s in shards
        ):
            raise DatasetError(
                f"{path}: split {split!r} needs 'shards': a list of {{name, count}}, got {shards!r:.200}"
            )
        total = sum(s["count"] for s in shards)
        if entry.get("count") != total:
            raise DatasetError(
                f"{path}: split {split!r} says {entry.get('count')!r} samples but its {len(shards)} shards list {total}"
            )


def read_meta(root, *, partial_ok: bool = False) -> dict:
    """meta.json of a dataset directory, checked for format, version and the counts of its shards. An unfinished
    dataset (a writer that was killed, or is still running) is a DatasetError unless `partial_ok`."""
    path = Path(root) / "meta.json"
    meta = read_json(path, "not found: not a pointrl dataset, or its writing did not finish")
    if (
        not isinstance(meta, dict)
        or meta.get("format") != FORMAT
        or not isinstance(meta.get("version"), int)
        or meta["version"] > VERSION
    ):
        got = (meta.get("format"), meta.get("version")) if isinstance(meta, dict) else (type(meta).__name__, None)
        raise ValueError(f"{path}: expected format {FORMAT!r} version <= {VERSION}, got {got[0]!r} version {got[1]!r}")
    _check_manifest(path, meta)
    if meta.get("complete", True) is not True and not partial_ok:
        done = sum(entry["count"] for entry in meta["splits"].values())
        planned = meta.get("planned")
        of = f" of {sum(planned.values())}" if isinstance(planned, dict) else ""
        raise DatasetError(
            f"{path}: a partial dataset, {done}{of} samples written; its writer stopped (or is still "
            f"running). If it was `pointrl synth`, the same command with --resume finishes it"
        )
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

    def _where(self, k: int, index: int) -> str:
        first = int(self._ends[k - 1]) if k else 0
        return (
            f"sample {index} of {self.root} [{self.split}] (shard {self.shards[k]['name']} holds samples "
            f"{first}..{int(self._ends[k]) - 1})"
        )

    def _shard(self, k: int, index: int) -> tuple[dict, list[dict]]:
        """Shard k, mapped and checked against the manifest; `index` is the sample asked for (named in errors)."""
        if self._loaded is None or self._loaded[0] != k:
            directory = self.root / self.split / self.shards[k]["name"]
            count, first = self.shards[k]["count"], int(self._ends[k - 1]) if k else 0
            arrays = {}
            for key in ARRAYS:
                path = directory / f"{key}.npy"
                if not path.is_file():
                    raise FileNotFoundError(f"{path} is missing; {self._where(k, index)}")
                try:
                    arrays[key] = np.load(path, mmap_mode="r")
                except (ValueError, OSError, EOFError) as exc:  # numpy names neither the file nor the sample
                    raise DatasetError(f"{path}: truncated or damaged .npy ({exc}); {self._where(k, index)}") from None
                if arrays[key].ndim == 0 or len(arrays[key]) != count:
                    held = len(arrays[key]) if arrays[key].ndim else 0
                    raise DatasetError(f"{path} holds {held} samples, meta.json says {count}; {self._where(k, index)}")
            records = self._records(directory / "samples.jsonl", first, k, index)
            if len(records) != count:
                raise DatasetError(
                    f"{directory / 'samples.jsonl'} holds {len(records)} samples, meta.json says "
                    f"{count}; {self._where(k, index)}"
                )
            self._loaded = (k, arrays, records)
        return self._loaded[1], self._loaded[2]

    def _records(self, path: Path, first: int, k: int, index: int) -> list[dict]:
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing; {self._where(k, index)}")
        records = []
        for line_no, line in enumerate(path.read_bytes().splitlines(), start=1):
            where = f"{path} line {line_no} (sample {first + line_no - 1} of {self.root} [{self.split}])"
            try:
                record = json.loads(line)
            except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError
                raise DatasetError(f"{where}: not valid JSON ({exc})") from None
            missing = [key for key in RECORD_KEYS if not isinstance(record, dict) or key not in record]
            if missing:
                raise DatasetError(f"{where}: missing {', '.join(missing)}")
            records.append(record)
        return records

    def _sample(self, arrays: dict, record: dict, row: int) -> Sample:
        a = {key: np.array(value[row]) for key, value in arrays.items()}
        targets = Targets(
            bbox2d=a["bbox2d"],
            bbox3d=a["bbox3d"],
            kpts3d=a["kpts3d"],
            kpts2d=a["kpts2d"],
            answers=record["answers"],
            category=record["category"],
            description=record["description"],
            attributes=record["attributes"],
        )
        camera = Camera(K=a["K"], R=a["R"], t=a["t"], width=record["width"], height=record["height"])
        return Sample(
            uid=record["uid"],
            points=a["points"],
            instruction=record["instruction"],
            targets=targets,
            image=a["image"],
            camera=camera,
            question_type=record["question_type"],
        )

    def __getitem__(self, index: int) -> Sample:
        n = len(self)
        if not -n <= index < n:
            raise IndexError(f"index {index} out of range for {n} samples in {self.root} [{self.split}]")
        index %= n
        k = int(np.searchsorted(self._ends, index, side="right"))
        arrays, records = self._shard(k, index)
        row = index - (int(self._ends[k - 1]) if k else 0)
        return self._sample(arrays, records[row], row)

    def __iter__(self) -> Iterator[Sample]:
        for k in range(len(self.shards)):
            arrays, records = self._shard(k, int(self._ends[k - 1]) if k else 0)
            for row, record in enumerate(records):
                yield self._sample(arrays, record, row)
