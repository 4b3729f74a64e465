"""`pointrl import`: real dataset files on disk into a dataset directory (`data3d.importer` does the work; this is
its command line, its checks and its report). Registered by `rl.cli.main.build_parser`."""

from __future__ import annotations

import argparse
import sys

from rl.cli.main import _usage_error, writing_dataset

IMPORT_SOURCES = ("shapenet", "modelnet40", "objaverse", "meshes")
SKIPPED_SHOWN = 20  # reasons printed for unreadable objects; the count is always whole


def _import_argument_problem(args: argparse.Namespace) -> str | None:
    """What is wrong with `pointrl import`'s arguments, checked before any file is read or written."""
    from rewards.schema import BINS_RULE

    checks = [
        (args.limit is None or args.limit >= 1, f"--limit must be at least 1, got {args.limit}"),
        (0.0 <= args.test_fraction < 1.0, f"--test-fraction must be in [0, 1), got {args.test_fraction}"),
        (args.seed >= 0, f"--seed must be >= 0, got {args.seed}"),
        (args.workers >= 1, f"--workers must be at least 1, got {args.workers}"),
        (args.shard_size >= 1, f"--shard-size must be at least 1, got {args.shard_size}"),
        (args.bins == 0 or args.bins >= 2, f"--bins must be {BINS_RULE}, got {args.bins}"),
        (args.synsets is None or args.shapenet is not None, "--synsets applies to --shapenet only"),
        (args.conversations is None or args.objaverse is not None, "--conversations applies to --objaverse only"),
        (args.labels is None or args.meshes is not None, "--labels applies to --meshes only"),
    ]
    for name in ("num_points", "image_size", "num_kpts"):
        value = getattr(args, name)
        checks.append((value >= 1, f"--{name.replace('_', '-')} must be a positive integer, got {value}"))
    return next((message for ok, message in checks if not ok), None)


def _report_import(out: str, summary: dict) -> None:
    counts = ", ".join(f"{split} {count}" for split, count in summary["counts"].items())
    if summary["already_complete"]:
        print(f"{out} is already complete: {counts} samples")
    else:
        resumed = f" (resumed after {summary['resumed_from']} objects)" if summary["resumed_from"] is not None else ""
        print(
            f"wrote {out}: {counts} samples from {summary['objects']} objects of {summary['source']} "
            f"{summary['root']}{resumed} in {summary['seconds']:.1f} s"
        )
    skipped, total = summary["skipped"], summary["skipped_total"]
    if total:
        earlier = f", {total - len(skipped)} of them by an earlier run of this import" if total > len(skipped) else ""
        print(
            f"pointrl import: skipped {total} of {summary['objects']} objects that could not be read{earlier}"
            + (":" if skipped else ""),
            file=sys.stderr,
        )
        for why in skipped[:SKIPPED_SHOWN]:
            print(f"  {why}", file=sys.stderr)
        if len(skipped) > SKIPPED_SHOWN:
            print(f"  ... and {len(skipped) - SKIPPED_SHOWN} more", file=sys.stderr)
    if not sum(summary["counts"].values()):
        first = f"; the first: {skipped[0]}" if skipped else ""
        sys.exit(f"pointrl import: error: none of the {summary['objects']} objects could be read{first}")


def cmd_import_data(args: argparse.Namespace) -> None:
    """`pointrl import` (`import` is a Python keyword, hence the name)."""
    problem = _import_argument_problem(args)
    if problem:
        _usage_error("import", problem)
    from data3d.importer import import_dataset
    from data3d.settings import DataSettings

    source = next(name for name in IMPORT_SOURCES if getattr(args, name) is not None)
    settings = DataSettings(
        num_points=args.num_points, image_size=args.image_size, num_kpts=args.num_kpts, bins=args.bins
    )
    with writing_dataset("import", args.out, "the same command again continues where it stopped"):
        summary = import_dataset(
            args.out,
            source,
            getattr(args, source),
            conversations=args.conversations,
            synsets=args.synsets,
            labels=args.labels or "folders",
            limit=args.limit,
            seed=args.seed,
            test_fraction=args.test_fraction,
            settings=settings,
            shard_size=args.shard_size,
            workers=args.workers,
        )
    _report_import(args.out, summary)


def add_import_parser(commands, defaults) -> None:
    """The `import` subcommand under `commands` (the subparsers of `pointrl`), with `defaults` the DataSettings."""
    imports = commands.add_parser(
        "import",
        help="import ShapeNetCore v2, ModelNet40, Objaverse/PointLLM or any folder of meshes into a dataset directory",
        description="Writes what `pointrl synth` writes (train and test splits, the same data settings) from real "
        "files. Resumable: killed, the same command again continues where it stopped.",
    )
    source = imports.add_mutually_exclusive_group(required=True)
    source.add_argument("--shapenet", metavar="ROOT", help="<synset>/<model_id>/models/model_normalized.obj")
    source.add_argument("--modelnet40", metavar="ROOT", help="modelnet40_normal_resampled: <class>/<class>_0001.txt")
    source.add_argument("--objaverse", metavar="ROOT", help="PointLLM's <object_id>_8192.npy clouds")
    source.add_argument(
        "--meshes", metavar="ROOT", help="any mesh files trimesh reads (.obj .ply .stl .off .glb .gltf), at any depth"
    )
    imports.add_argument(
        "--labels",
        choices=("folders", "none"),
        help="with --meshes: a file's top folder under ROOT is its category (folders, the default), or no labels",
    )
    imports.add_argument(
        "--conversations", metavar="FILE", help="with --objaverse: the conversation JSON (default: the one in ROOT)"
    )
    imports.add_argument("--out", required=True, help="dataset directory (new or empty, or this import's own)")
    imports.add_argument("--limit", type=int, default=None, help="import a random N of the objects (drawn by --seed)")
    imports.add_argument("--synsets", nargs="+", help="with --shapenet: only these synsets (ids or names: chair)")
    imports.add_argument("--test-fraction", type=float, default=0.1)
    imports.add_argument("--seed", type=int, default=0, help="draws the split, --limit's subset and each view")
    imports.add_argument("--num-points", type=int, default=defaults.num_points)
    imports.add_argument("--image-size", type=int, default=defaults.image_size)
    imports.add_argument("--num-kpts", type=int, default=defaults.num_kpts, help="keypoints per target (2D and 3D)")
    imports.add_argument("--bins", type=int, default=defaults.bins, help="coordinate bins recorded as the quantization")
    imports.add_argument("--workers", type=int, default=1, help="reader processes (the samples do not depend on it)")
    imports.add_argument(
        "--shard-size", type=int, default=256, help="samples per shard (the unit a rerun resumes from)"
    )
    imports.set_defaults(run=cmd_import_data)
