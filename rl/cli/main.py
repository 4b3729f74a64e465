"""The `pointrl` command: one entry point with a subcommand per job (torch and Ray are imported only by the jobs that use them)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def _score_via(via: str, request: dict, url: str | None, token: str | None) -> list[dict]:
    samples, quant = request["samples"], request.get("quant")
    if via == "local":
        from rewards import score_batch

        return score_batch(samples, quant)
    if via == "ray":
        import ray

        from serve.ray_app import deploy_rewards
        from serve.server import free_port

        ray.init(ignore_reinit_error=True, include_dashboard=False)
        handle = deploy_rewards(port=free_port())
        return handle.score.remote(samples, quant).result()
    import httpx

    from serve.server import running_server

    def post(base: str) -> list[dict]:
        headers = {"authorization": f"Bearer {token}"} if token else {}
        response = httpx.post(f"{base}/v1/rewards", json=request, headers=headers, timeout=60)
        if response.status_code != 200:
            sys.exit(f"the reward service answered {response.status_code}: {response.json().get('detail')}")
        return response.json()["results"]

    if url:
        return post(url)
    with running_server() as started:
        print(f"started a reward server at {started} for this request", flush=True)
        return post(started)


def _print_results(samples: list[dict], results: list[dict]) -> None:
    names = list(results[0]["rewards"]) if results else []
    print("sample  " + "".join(f"{name:>8}" for name in names))
    for i, result in enumerate(results):
        print(f"{i:>6}  " + "".join(f"{result['rewards'][name]:8.3f}" for name in names))
    for i, (sample, result) in enumerate(zip(samples, results)):
        text = sample["text"].replace("\n", "\\n")
        print(f"\nsample {i}: {text[:100]}{'...' if len(text) > 100 else ''}")
        spans = ", ".join(f"{name} {span[0]}:{span[1]}" for name, span in result["spans"].items() if span)
        print(f"  field spans: {spans or 'none (nothing parsed)'}")
        for error in result["errors"]:
            print(f"  why: {error}")
    print(
        "\nRewards are in [0, 1]: format = schema obeyed; bbox = IoU with the target box; kpts = share of keypoints "
        "inside the target box; rpc = IoU of the projected 3D box with the predicted 2D box."
    )


def cmd_score(args: argparse.Namespace) -> None:
    path = Path(args.file)
    if not path.is_file():
        sys.exit(f"{path}: no such request file")
    try:
        request = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        sys.exit(f"{path}: not valid JSON ({exc})")
    from rewards import RequestError

    try:
        results = _score_via(args.via, request, args.url, args.token)
    except RequestError as exc:
        sys.exit(f"{path}: {exc}")
    print(f"{path}: {len(results)} samples scored via {args.via}\n")
    _print_results(request["samples"], results)
    if args.out:
        Path(args.out).write_text(json.dumps({"results": results}, indent=1))
        print(f"\nwrote {args.out}")


def _usage_error(command: str, message: str) -> None:
    """One line on stderr and exit status 2 (argparse's status for a bad command line), no traceback."""
    print(f"pointrl {command}: error: {message}", file=sys.stderr)
    raise SystemExit(2)


@contextmanager
def writing_dataset(command: str, out: str, how_to_continue: str) -> Iterator[None]:
    """Around a command that writes a dataset directory: bad input is one line (status 2), and an interrupt says that
    the directory is partial and how to continue it."""
    try:
        yield
    except (FileNotFoundError, FileExistsError, NotADirectoryError, ValueError) as exc:  # DatasetError is a ValueError
        _usage_error(command, str(exc))
    except KeyboardInterrupt:
        print(
            f"\npointrl {command}: interrupted; {out} is partial (its meta.json says how far it got): {how_to_continue}",
            file=sys.stderr,
        )
        raise SystemExit(130) from None


def _synth_argument_problem(args: argparse.Namespace) -> str | None:
    """What is wrong with `pointrl synth`'s arguments, checked before anything is generated or written."""
    from rewards.schema import BINS_RULE

    checks = [
        (args.n >= 1, f"--n must be at least 1, got {args.n}"),
        (0.0 <= args.test_fraction < 1.0, f"--test-fraction must be in [0, 1), got {args.test_fraction}"),
        (args.seed >= 0, f"--seed must be >= 0, got {args.seed}"),
        (args.workers >= 1, f"--workers must be at least 1, got {args.workers}"),
        (args.shard_size >= 1, f"--shard-size must be at least 1, got {args.shard_size}"),
        (0.0 <= args.relevance <= 1.0, f"--relevance must be in [0, 1], got {args.relevance}"),
        (args.bins == 0 or args.bins >= 2, f"--bins must be {BINS_RULE}, got {args.bins}"),
        (not (args.resume and args.overwrite), "--resume and --overwrite exclude each other"),
    ]
    for name in ("num_points", "image_size", "num_kpts"):
        value = getattr(args, name)
        checks.append((value >= 1, f"--{name.replace('_', '-')} must be a positive integer, got {value}"))
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        checks.append((False, f"--out {out} is a file; give a directory"))
    elif args.resume and not (out / "meta.json").is_file():
        checks.append((False, f"--out {out}: nothing to resume (no meta.json); run without --resume"))
    elif out.is_dir() and any(out.iterdir()) and not (args.overwrite or args.resume):
        checks.append(
            (
                False,
                f"--out {out} is not empty: choose a new directory, pass --overwrite to replace it, "
                "or --resume to finish an interrupted run",
            )
        )
    return next((message for ok, message in checks if not ok), None)


_BYTES = [("B", 1), ("KB", 1e3), ("MB", 1e6), ("GB", 1e9), ("TB", 1e12), ("PB", 1e15)]
_SECONDS = [("s", 1), ("minutes", 60), ("hours", 3600), ("days", 86400), ("years", 3.156e7)]


def _human(value: float, units: list[tuple[str, float]]) -> str:
    name, size = next(((name, size) for name, size in reversed(units) if value >= size), units[0])
    return f"{value / size:.3g} {name}"


def _warn_if_large(args: argparse.Namespace, settings) -> None:
    """Time one sample (it is the run's first, deterministic, so nothing is lost) and warn before a run that would
    take more than an hour or more disk than is free: the issue's `--n 1000000000000` ran for "8.8 million hours"
    without a word."""
    import shutil
    import time

    from data3d import generate_sample
    from data3d.store import sample_nbytes

    start = time.perf_counter()
    probe = generate_sample(
        args.seed,
        0,
        num_points=settings.num_points,
        image_size=settings.image_size,
        num_kpts=settings.num_kpts,
        relevance=args.relevance,
    )
    per_sample_s, per_sample_bytes = time.perf_counter() - start, sample_nbytes(probe)
    seconds, size = args.n * per_sample_s / args.workers, args.n * per_sample_bytes
    parent = next(p for p in [Path(args.out).absolute(), *Path(args.out).absolute().parents] if p.exists())
    free = shutil.disk_usage(parent).free
    if seconds < 3600 and size < free:
        return
    over = f", more than the {_human(free, _BYTES)} free" if size >= free else ""
    print(
        f"pointrl synth: warning: {args.n} samples will take about {_human(seconds, _SECONDS)} on {args.workers} "
        f"worker(s) ({per_sample_s:.3f} s each) and {_human(size, _BYTES)} of disk{over}; meta.json records every "
        f"finished shard, so the run can be stopped and finished later with --resume",
        file=sys.stderr,
        flush=True,
    )


def cmd_synth(args: argparse.Namespace) -> None:
    problem = _synth_argument_problem(args)
    if problem:
        _usage_error("synth", problem)
    from data3d import write_benchmark
    from data3d.settings import DataSettings

    settings = DataSettings(
        num_points=args.num_points, image_size=args.image_size, num_kpts=args.num_kpts, bins=args.bins
    )
    with writing_dataset("synth", args.out, "the same command with --resume finishes it"):
        if not args.resume:
            _warn_if_large(args, settings)
        summary = write_benchmark(
            args.out,
            args.n,
            args.seed,
            test_fraction=args.test_fraction,
            settings=settings,
            relevance=args.relevance,
            workers=args.workers,
            overwrite=args.overwrite,
            shard_size=args.shard_size,
            resume=args.resume,
        )
    counts = ", ".join(f"{split} {count}" for split, count in summary["counts"].items())
    if args.resume and summary["resumed_from"] == args.n:
        print(f"{args.out} is already complete: {counts} samples")
        return
    resumed = f" (resumed after {summary['resumed_from']})" if args.resume else ""
    print(
        f"wrote {args.out}: {counts} samples{resumed} in {summary['seconds']:.1f} s "
        f"({summary['samples_per_s']:.1f} samples/s)"
    )


def cmd_eval(args: argparse.Namespace) -> None:
    from rl.eval.evaluate import run_eval

    try:
        run_eval(
            args.policy,
            args.data,
            args.out,
            args.split,
            args.limit,
            args.batch_size,
            args.max_new_tokens,
            greedy=not args.sample,
            reliance=not args.no_reliance,
            use_images=not args.no_images,
            suite=args.suite,
        )
    except (FileNotFoundError, ValueError) as exc:
        sys.exit(str(exc))


def cmd_serve_rewards(args: argparse.Namespace) -> None:
    from serve.server import main

    main(args=args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pointrl", description="RL post-training for point-cloud VLMs.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    from serve.server import build_parser as serve_parser

    serve = commands.add_parser("serve-rewards", help="run the reward service (HTTP, or Ray Serve with --ray)")
    serve_parser(serve).set_defaults(run=cmd_serve_rewards)

    score = commands.add_parser("score", help="score a reward request file and explain the result")
    score.add_argument("file", help="a JSON request body for POST /v1/rewards")
    score.add_argument(
        "--via",
        choices=["local", "http", "ray"],
        default="local",
        help="in process, over HTTP (starts a server unless --url), or through a Ray Serve handle",
    )
    score.add_argument("--url", help="with --via http: an already running service")
    score.add_argument("--token", help="bearer token for --url")
    score.add_argument("--out", help="also write the results JSON here")
    score.set_defaults(run=cmd_score)

    from data3d.settings import DataSettings

    defaults = DataSettings()
    synth = commands.add_parser("synth", help="generate the calibrated procedural 3D benchmark")
    synth.add_argument("--out", required=True, help="dataset directory (must be empty unless --overwrite)")
    synth.add_argument("--n", type=int, default=2000, help="number of samples (train + test)")
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--test-fraction", type=float, default=0.1)
    synth.add_argument("--num-points", type=int, default=defaults.num_points)
    synth.add_argument("--image-size", type=int, default=defaults.image_size)
    synth.add_argument("--num-kpts", type=int, default=defaults.num_kpts, help="keypoints per target (2D and 3D)")
    synth.add_argument("--bins", type=int, default=defaults.bins, help="coordinate bins recorded as the quantization")
    synth.add_argument(
        "--relevance",
        type=float,
        default=0.0,
        help="share of samples asked whether a description fits the cloud (relevance discrimination)",
    )
    synth.add_argument("--workers", type=int, default=1, help="generator processes (the samples do not depend on it)")
    synth.add_argument(
        "--shard-size", type=int, default=256, help="samples per shard (the unit a resume restarts from)"
    )
    synth.add_argument("--overwrite", action="store_true", help="replace an existing dataset at --out")
    synth.add_argument(
        "--resume",
        action="store_true",
        help="finish an interrupted run: the same arguments, continuing after its last finished shard",
    )
    synth.set_defaults(run=cmd_synth)

    # each from a light module: the jobs' own modules (torch, Ray, matplotlib) are imported when their command runs
    from rl.cli.engine import add_engine_parser
    from rl.cli.import_data import add_import_parser
    from rl.cli.init import add_init_parser
    from rl.cli.traces import add_traces_parser
    from rl.cli.viz import add_viz_parser

    add_import_parser(commands, defaults)
    add_init_parser(commands)
    add_viz_parser(commands)
    add_engine_parser(commands)
    add_traces_parser(commands)

    evaluate = commands.add_parser("eval", help="evaluate a policy directory on a dataset split")
    evaluate.add_argument("--policy", required=True, help="a policy directory (PointVLM.save_pretrained)")
    evaluate.add_argument("--data", required=True, help="a dataset directory (pointrl synth or pointrl import)")
    evaluate.add_argument("--out", required=True, help="the JSON report to write")
    evaluate.add_argument("--split", default="test")
    evaluate.add_argument("--limit", type=int, default=None, help="evaluate only the first N samples")
    evaluate.add_argument("--batch-size", type=int, default=8)
    evaluate.add_argument("--max-new-tokens", type=int, default=320)
    evaluate.add_argument("--sample", action="store_true", help="sample instead of greedy decoding")
    evaluate.add_argument("--no-reliance", action="store_true", help="skip the 3D-masked / swapped-cloud runs")
    evaluate.add_argument("--no-images", action="store_true", help="feed the point cloud only")
    evaluate.add_argument(
        "--suite",
        default="geometry",
        help="geometry: the JSON fields with the reliance gaps; 3dcqa: multiple-choice questions "
        "under every rotation of their options, clean and cloud swapped; all: both",
    )
    evaluate.set_defaults(run=cmd_eval)
    for command in commands.choices.values():
        command.set_defaults(command_parser=command)
    return parser


def main(argv: list[str] | None = None) -> None:
    args, unknown = build_parser().parse_known_args(argv)
    if unknown:  # named by the command, with its usage (argparse leaves them to `pointrl`, whose usage says nothing)
        args.command_parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    args.run(args)
