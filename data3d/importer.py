"""`pointrl import`: a real dataset on disk (ShapeNetCore v2, ModelNet40, Objaverse/PointLLM, any folder of meshes) into
the store format.

The root's objects are listed in the loaders' sorted order (`data3d.sources`). A permutation drawn from the seed picks
`limit` of them (all when unset: the sorted order is by category, so its first N would be one category) and splits
them by `pointrl synth`'s rule (`split_indices`: the first round(n * test_fraction) test, the rest train); each split
keeps the listing's order. Every object becomes a sample through the loaders (`data3d.loaders`), which seed it from
(seed, uid): a sample depends on nothing but its own file, so the workers' count changes nothing.

meta.json's config records every argument that changes the bytes written, the data settings as `pointrl synth` records
them (so `dataset_settings`, `pointrl eval` and training's `data.dir` read it unchanged) and a digest of the listing.
That config is the import's identity: a rerun with the same arguments finds where a killed predecessor stopped (the
samples of the finished shards `write_dataset` lists in its manifest) and carries on with `write_dataset(resume=True)`,
so it ends with the bytes of an uninterrupted run; a run with other arguments, or after the root changed, is refused.
An object whose file cannot be read is skipped and reported rather than fatal: one broken mesh among 50,000 should not
stop an import.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import time
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
from tqdm import tqdm

from data3d.benchmark import split_indices
from data3d.loaders import (
    modelnet_sample,
    objaverse_sample,
    read_conversations,
    shapenet_file_sample,
)
from data3d.meshes import MESHES_LAYOUT, mesh_files, mesh_label, mesh_sample, mesh_uid
from data3d.settings import DataSettings
from data3d.sources import (
    MODELNET40_LAYOUT,
    SHAPENET_LAYOUT,
    SHAPENET_SYNSETS,
    modelnet40_files,
    modelnet_uid,
    objaverse_file,
    objaverse_uid,
    shapenet_files,
    shapenet_uid,
)
from data3d.store import SHARD_SIZE, DatasetError, read_meta, write_dataset_from_pool
from data3d.types import Sample

SOURCES = {
    "shapenet": "ShapeNetCore v2",
    "modelnet40": "ModelNet40",
    "objaverse": "Objaverse/PointLLM",
    "meshes": "a folder of meshes",
}
GENERATOR = "data3d.importer"


@dataclass(frozen=True)
class Item:
    """One object of a root, not read yet: the uid its sample will carry and what `_load` needs to read it."""

    uid: str
    ref: tuple


def resolve_synsets(synsets: list[str] | None) -> list[str] | None:
    """Synset ids from ids or category names ("chair" -> "03001627"), sorted; a name we do not know is an error."""
    if synsets is None:
        return None
    ids = {name: synset for synset, name in SHAPENET_SYNSETS.items()}
    out = set()
    for s in synsets:
        if s not in ids and not s.isdigit():
            raise ValueError(f"--synsets: unknown synset {s!r}; give ids (03001627) or ShapeNet names (chair)")
        out.add(ids.get(s, s))
    return sorted(out)


def list_items(
    source: str, root, *, synsets: list[str] | None = None, conversations=None, labels: str = "folders"
) -> list[Item]:
    """The objects of `root` in a fixed order; a missing root or one holding nothing is an error naming it."""
    root = Path(root)
    if source not in SOURCES:
        raise ValueError(f"source must be one of {', '.join(SOURCES)}, got {source!r}")
    if not root.is_dir():
        raise FileNotFoundError(f"--{source} {root}: no such directory")
    if source == "shapenet":
        items = [Item(shapenet_uid(p), (str(p),)) for p in shapenet_files(root, synsets)]
        of = f" of synsets {', '.join(synsets)}" if synsets else ""
        where = f"no ShapeNetCore v2 models{of}; expected {SHAPENET_LAYOUT}"
    elif source == "modelnet40":
        items = [Item(modelnet_uid(p), (str(p),)) for p in modelnet40_files(root)]
        where = f"no ModelNet40 files; expected {MODELNET40_LAYOUT}"
    elif source == "meshes":
        paths = mesh_files(root)
        categories = tuple(sorted({mesh_label(root, p, labels) for p in paths}))  # the category question's choices
        items = [
            Item(uid, (str(p), uid, mesh_label(root, p, labels), categories))
            for p, uid in zip(paths, map(partial(mesh_uid, root), paths))
        ]
        where = f"no mesh files; expected {MESHES_LAYOUT}"
    else:
        entries = read_conversations(conversations)
        items = [Item(objaverse_uid(oid), (str(root), oid, text, answer)) for oid, text, answer in entries]
        where = f"no conversations in {conversations}"
    if not items:
        raise ValueError(f"--{source} {root}: {where}")
    return items


def find_conversations(root) -> Path:
    """The PointLLM conversation JSON when --conversations is not given: the one .json file in the root."""
    found = sorted(Path(root).glob("*.json"))
    if len(found) != 1:
        raise ValueError(
            f"--objaverse {root}: {len(found)} .json files there, so which holds the conversations is unclear; "
            "name it with --conversations FILE"
        )
    return found[0]


def _load(job: tuple) -> tuple[Sample | None, str | None]:
    """(sample, None), or (None, why) for an object that cannot be read (the why names its file)."""
    source, ref, settings = job
    try:
        if source == "shapenet":
            return shapenet_file_sample(ref[0], **settings), None
        if source == "modelnet40":
            return modelnet_sample(ref[0], **settings), None
        if source == "meshes":
            path, uid, category, categories = ref
            return mesh_sample(path, uid, category, list(categories), **settings), None
        return objaverse_sample(*ref, **settings), None
    except (ValueError, OSError) as exc:  # the loaders' own errors, which name the file
        return None, str(exc)
    except Exception as exc:  # noqa: BLE001 -- a mesh no reader anticipated: skip it, not the 50,000 others
        path = objaverse_file(*ref[:2]) if source == "objaverse" else ref[0]
        return None, f"{path}: {type(exc).__name__}: {exc}"


def _written_uids(root: Path, meta: dict, split: str) -> list[str]:
    """The uids of the samples in the finished shards the manifest lists for `split`, in order."""
    uids = []
    for shard in meta["splits"].get(split, {}).get("shards", []):
        path = root / split / shard["name"] / "samples.jsonl"
        try:
            uids += [json.loads(line)["uid"] for line in path.read_text(encoding="utf-8").splitlines()]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise DatasetError(f"{path}: cannot read the uids of a finished shard ({exc})") from None
    return uids


def _done(items: list[Item], uids: list[str], where: str) -> int:
    """How many of a split's objects the written samples account for. Each written uid is matched with the next object
    of that uid, so the objects skipped before it count as done; those skipped after the last one are tried again,
    which costs a failed read and loses nothing."""
    done = 0
    for uid in uids:
        while done < len(items) and items[done].uid != uid:
            done += 1
        if done == len(items):
            raise DatasetError(f"{where}: sample {uid!r} is not among the objects this import lists, in this order")
        done += 1
    return done


def _differences(written: dict, asked: dict) -> list[str]:
    keys = sorted(set(written) | set(asked))
    return [f"{k} {written.get(k)!r} vs {asked.get(k)!r}" for k in keys if written.get(k) != asked.get(k)]


def import_dataset(
    out_dir,
    source: str,
    root,
    *,
    conversations=None,
    synsets: list[str] | None = None,
    labels: str = "folders",
    limit: int | None = None,
    seed: int = 0,
    test_fraction: float = 0.1,
    settings: DataSettings = DataSettings(),
    shard_size: int = SHARD_SIZE,
    workers: int = 1,
    progress: bool = True,
) -> dict:
    """Import the objects of `root` into `out_dir` (the `data3d.store` format), or finish the import of the same
    arguments that a kill interrupted there; returns a summary (counts, objects, skipped, resumed_from, ...)."""
    if limit is not None and limit < 1:
        raise ValueError(f"--limit must be at least 1, got {limit}")
    if seed < 0 or workers < 1 or shard_size < 1:
        raise ValueError(f"need seed >= 0, workers >= 1, shard_size >= 1; got {seed}, {workers}, {shard_size}")
    root, out = Path(root).absolute(), Path(out_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"--{source} {root}: no such directory")
    if source == "objaverse":
        conversations = Path(conversations).absolute() if conversations else find_conversations(root)
    synsets = resolve_synsets(synsets) if source == "shapenet" else None
    labels = labels if source == "meshes" else None
    items = list_items(source, root, synsets=synsets, conversations=conversations, labels=labels)
    chosen = np.random.default_rng(seed).permutation(len(items))[:limit]
    splits = {
        split: [items[i] for i in sorted(chosen[r].tolist() for r in indices)]
        for split, indices in split_indices(len(chosen), test_fraction).items()
    }
    config = {
        "generator": GENERATOR,
        "source": source,
        "root": str(root),
        "conversations": str(conversations) if conversations else None,
        "synsets": synsets,
        "labels": labels,
        "limit": limit,
        "seed": seed,
        "test_fraction": test_fraction,
        "shard_size": shard_size,
        "listed": len(items),  # with the digest: a root that gained or lost files since is not resumed into
        "listing_sha256": hashlib.sha256("\n".join(i.uid for i in items).encode()).hexdigest(),
        "num_points": settings.num_points,
        "image_size": settings.image_size,
        "num_kpts": settings.num_kpts,
    }
    quant = settings.quant()
    planned = {split: len(split_items) for split, split_items in splits.items()}
    todo, resume = splits, out.is_dir() and any(out.iterdir())
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"--out {out} is a file; give a directory")
    if resume:
        if not (out / "meta.json").is_file():
            raise FileExistsError(f"--out {out} is not empty and holds no pointrl dataset; choose a new directory")
        meta = read_meta(out, partial_ok=True)
        asked_quant = {"bins": quant.bins, "bounds3d": [list(v) for v in quant.bounds3d]}
        differences = _differences(meta.get("config", {}), config)
        differences += _differences({"quant": meta.get("quant")}, {"quant": asked_quant})
        if differences:
            raise FileExistsError(
                f"--out {out} holds a dataset written with other arguments (written vs asked: "
                f"{'; '.join(differences)}); choose a new directory, or rerun with the arguments it was started with"
            )
        todo = {
            split: split_items[_done(split_items, _written_uids(out, meta, split), str(out / split)) :]
            for split, split_items in splits.items()
        }
    total = sum(planned.values())
    resumed_from = total - sum(map(len, todo.values()))
    # a finished import whose last objects were unreadable accounts for fewer than all: it is still finished
    already_complete = resume and meta.get("complete", True) is True
    skipped: list[str] = []
    bar = tqdm(
        total=total,
        initial=resumed_from,
        desc="import",
        unit="object",
        mininterval=0.5,  # a line every half second at most: readable in a log file, live enough on a terminal
        disable=not progress or already_complete,
    )
    job_settings = {"seed": seed, **{k: v for k, v in settings.to_dict().items() if k != "bins"}}
    pool = multiprocessing.get_context("spawn").Pool(workers) if workers > 1 and not already_complete else None

    def samples(split_items: list[Item]) -> Iterator[Sample]:
        # In blocks: Pool.imap queues its whole input, which for 50,000 objects is a lot held for nothing.
        block = 64 * workers
        for lo in range(0, len(split_items), block):
            jobs = [(source, item.ref, job_settings) for item in split_items[lo : lo + block]]
            for sample, why in pool.imap(_load, jobs, chunksize=4) if pool else map(_load, jobs):
                bar.update(1)
                if sample is None:
                    skipped.append(why)
                    bar.set_postfix(skipped=len(skipped), refresh=False)
                else:
                    yield sample

    start = time.perf_counter()
    if already_complete:  # nothing to write (and no pool)
        bar.close()
    else:
        meta = write_dataset_from_pool(
            out,
            {split: samples(split_items) for split, split_items in todo.items()},
            bar=bar,
            pool=pool,
            config=config,
            quant=quant,
            shard_size=shard_size,
            planned=planned,
            resume=resume,
        )
    counts = {split: meta["splits"][split]["count"] for split in splits}  # train, test: the order synth prints
    return {
        "out_dir": str(out),
        "source": SOURCES[source],
        "root": str(root),
        "counts": counts,
        "objects": total,
        "skipped": skipped,  # why, for each object this run could not read
        "skipped_total": total - sum(counts.values()),  # with those a killed earlier run skipped
        "resumed_from": (total if already_complete else resumed_from) if resume else None,
        "already_complete": already_complete,
        "seconds": round(time.perf_counter() - start, 3),
    }
