"""The calibrated benchmark: one sample from (seed, index), and `write_benchmark` for a whole train/test set.

Sample `index` of seed `seed` draws everything (category, proportions, colours, camera, question) from
`np.random.default_rng([seed, index])`, so it depends on nothing else and a set is identical for a seed. The camera
is category-adaptive (VIEWS): cars from the side, monitors and bookshelves from the front, tables from above, so
no view is meaningless. Geometry and targets follow `data3d.annotate`; questions follow `data3d.questions`.
The first round(n * test_fraction) indices form the test split, the rest the train split. The manifest is written
shard by shard (`data3d.store`), so a killed `write_benchmark` can be resumed: it regenerates from the first index
that no finished shard holds, and, each sample depending only on (seed, index), ends with the same bytes.
"""

from __future__ import annotations

import multiprocessing
import time
from collections import Counter
from collections.abc import Iterator

import numpy as np
from tqdm import tqdm

from data3d.annotate import ViewRange, annotate, mesh_surface, timed
from data3d.questions import ask, relevance_question
from data3d.settings import DataSettings
from data3d.shapes import CATEGORIES, build_shape
from data3d.store import SHARD_SIZE, DatasetError, read_meta, write_dataset_from_pool
from data3d.types import Sample

FRONT, SIDES, ALL = ((-60.0, 60.0),), ((40.0, 140.0), (-140.0, -40.0)), ((-180.0, 180.0),)
VIEWS: dict[str, ViewRange] = {  # azimuth 0 = the object's front (+z), elevation in degrees above the ground
    "chair": ViewRange((10, 40), ((-130, 130),)),
    "table": ViewRange((20, 50), ALL),
    "mug": ViewRange((15, 45), ALL),
    "lamp": ViewRange((5, 35), ALL),
    "bottle": ViewRange((5, 30), ALL),
    "bed": ViewRange((20, 50), ((-140, 140),)),
    "sofa": ViewRange((10, 40), ((-110, 110),)),
    "bookshelf": ViewRange((5, 30), FRONT),
    "bench": ViewRange((10, 40), ((-120, 120),)),
    "monitor": ViewRange((0, 30), ((-70, 70),)),
    "car": ViewRange((5, 35), SIDES),
    "airplane": ViewRange((15, 60), ALL),
    "stool": ViewRange((10, 40), ALL),
    "bowl": ViewRange((20, 55), ALL),
}
POOL_FACTOR = 2  # surface samples per final point fed to farthest-point thinning
DEFAULTS = DataSettings()


def sample_rng(seed: int, index: int) -> np.random.Generator:
    if seed < 0 or index < 0:
        raise ValueError(f"seed and index must be >= 0, got seed={seed}, index={index}")
    return np.random.default_rng([seed, index])


def generate_sample(
    seed: int,
    index: int,
    *,
    num_points: int = DEFAULTS.num_points,
    image_size: int = DEFAULTS.image_size,
    num_kpts: int = DEFAULTS.num_kpts,
    categories: tuple[str, ...] = tuple(CATEGORIES),
    relevance: float = 0.0,
    timings: dict | None = None,
) -> Sample:
    """Sample `index` of the benchmark with seed `seed`; `timings`, if given, accumulates seconds per stage
    (shape, points, render, targets). A share `relevance` of the samples is asked the relevance-discrimination
    question (`data3d.questions.relevance_question`) instead of one drawn by `ask`; at 0 the stream of random
    draws is the one it always was, so existing datasets stay byte-identical."""
    if not 0.0 <= relevance <= 1.0:
        raise ValueError(f"relevance must be in [0, 1], got {relevance}")
    unknown = set(categories) - set(CATEGORIES)
    if unknown or not categories:
        raise ValueError(f"categories must be a non-empty subset of {sorted(CATEGORIES)}, got {categories}")
    rng = sample_rng(seed, index)
    with timed(timings, "shape"):
        category = categories[int(rng.integers(len(categories)))]
        shape = build_shape(category, rng)
    with timed(timings, "points"):
        count = max(image_size**2, POOL_FACTOR * num_points)  # about one sample per pixel for the renderer
        surface = mesh_surface(shape.mesh.vertices, shape.mesh.faces, shape.face_rgb, count, rng)
    geometry = annotate(
        surface,
        rng,
        num_points=num_points,
        image_size=image_size,
        view=VIEWS[category],
        pool_size=POOL_FACTOR * num_points,
        num_kpts=num_kpts,
        timings=timings,
    )
    with timed(timings, "targets"):
        if relevance and rng.random() < relevance:
            question = relevance_question(rng, shape)
        else:
            question = ask(rng, category, tuple(CATEGORIES), geometry.bbox3d, shape.colour, shape.counts)
        attributes = {
            "colour": shape.colour,
            "size_class": shape.size_class,
            "part_count": shape.part_count,
            "counts": shape.counts,
            "view": geometry.view,
            "source": "synthetic",
        }
    return geometry.sample(f"synth-{seed}-{index:07d}", question, category, shape.description, attributes)


def split_indices(n: int, test_fraction: float) -> dict[str, range]:
    """Index ranges of the two splits: test first, then train."""
    if n < 1 or not 0.0 <= test_fraction < 1.0:
        raise ValueError(f"need n >= 1 and 0 <= test_fraction < 1, got n={n}, test_fraction={test_fraction}")
    n_test = int(round(n * test_fraction))
    return {"train": range(n_test, n), "test": range(0, n_test)}


def _generate(job: tuple[int, int, DataSettings, float]) -> Sample:
    seed, index, settings, relevance = job
    return generate_sample(
        seed,
        index,
        num_points=settings.num_points,
        image_size=settings.image_size,
        num_kpts=settings.num_kpts,
        relevance=relevance,
    )


def _remaining(out_dir, config: dict, splits: dict[str, range]) -> dict[str, range]:
    """For `resume`: the indices of each split that no finished shard of `out_dir` holds yet."""
    meta = read_meta(out_dir, partial_ok=True)
    started = meta.get("config", {})
    differences = [
        f"{key} {started.get(key)!r} vs {value!r}" for key, value in config.items() if started.get(key) != value
    ]
    if differences:
        raise DatasetError(
            f"{out_dir} was started with other settings, so it cannot be resumed with these (written "
            f"vs asked: {', '.join(differences)})"
        )
    done = {split: meta["splits"].get(split, {"count": 0})["count"] for split in splits}
    return {split: indices[done[split] :] for split, indices in splits.items()}


def write_benchmark(
    out_dir,
    n: int,
    seed: int,
    *,
    test_fraction: float = 0.1,
    settings: DataSettings = DEFAULTS,
    relevance: float = 0.0,
    workers: int = 1,
    progress: bool = True,
    shard_size: int = SHARD_SIZE,
    overwrite: bool = False,
    resume: bool = False,
) -> dict:
    """Generate n samples into `out_dir` (the `data3d.store` format) with a progress bar, on `workers` processes
    (each sample depends only on (seed, index), so the set is the same for any count); returns a summary.
    `resume` finishes an interrupted run of the same arguments (summary["resumed_from"]: the samples it found)."""
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    if seed < 0 or not 0.0 <= relevance <= 1.0:
        raise ValueError(f"need seed >= 0 and 0 <= relevance <= 1, got seed={seed}, relevance={relevance}")
    splits = split_indices(n, test_fraction)
    config = {
        "generator": "data3d.benchmark",
        "seed": seed,
        "n": n,
        "test_fraction": test_fraction,
        "num_points": settings.num_points,
        "image_size": settings.image_size,
        "num_kpts": settings.num_kpts,
        "relevance": relevance,
        "categories": list(CATEGORIES),
    }
    planned = {split: len(indices) for split, indices in splits.items()}
    todo = _remaining(out_dir, config, splits) if resume else splits
    resumed_from = n - sum(map(len, todo.values()))
    categories: Counter = Counter()
    bar = tqdm(total=n, initial=resumed_from, desc="synth", unit="sample", disable=not progress)
    pool = multiprocessing.get_context("spawn").Pool(workers) if workers > 1 else None

    def samples(indices: range) -> Iterator[Sample]:
        # In blocks: a list of every job (or Pool.imap, which queues its whole input) is n tuples in memory up front.
        block = 64 * workers
        for lo in range(0, len(indices), block):
            jobs = [(seed, index, settings, relevance) for index in indices[lo : lo + block]]
            for sample in pool.imap(_generate, jobs, chunksize=8) if pool else map(_generate, jobs):
                categories[sample.targets.category] += 1
                bar.update(1)
                yield sample

    start = time.perf_counter()
    meta = write_dataset_from_pool(
        out_dir,
        {split: samples(indices) for split, indices in todo.items()},
        bar=bar,
        pool=pool,
        config=config,
        quant=settings.quant(),
        shard_size=shard_size,
        overwrite=overwrite,
        planned=planned,
        resume=resume,
    )
    seconds = time.perf_counter() - start
    made = n - resumed_from
    return {
        "out_dir": str(out_dir),
        "counts": {split: info["count"] for split, info in meta["splits"].items()},
        "seconds": round(seconds, 3),
        "samples_per_s": round(made / max(seconds, 1e-9), 2),
        "categories": dict(sorted(categories.items())),
        "resumed_from": resumed_from,
    }
