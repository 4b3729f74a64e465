"""The `pointrl` command: one entry point with a subcommand per job (torch and Ray are imported only by the jobs that use them)."""

from __future__ import annotations

import argparse
import json
import sys
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
    print("\nRewards are in [0, 1]: format = schema obeyed; bbox = IoU with the target box; kpts = share of keypoints "
          "inside the target box; rpc = IoU of the projected 3D box with the predicted 2D box.")


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


def cmd_synth(args: argparse.Namespace) -> None:
    from data3d import write_benchmark
    from data3d.settings import DataSettings

    try:
        settings = DataSettings(num_points=args.num_points, image_size=args.image_size, num_kpts=args.num_kpts,
                                bins=args.bins)
        summary = write_benchmark(args.out, args.n, args.seed, test_fraction=args.test_fraction, settings=settings,
                                  relevance=args.relevance, workers=args.workers, overwrite=args.overwrite)
    except FileExistsError:
        sys.exit(f"{args.out} is not empty: choose a new directory or pass --overwrite")
    except ValueError as exc:
        sys.exit(f"pointrl synth: {exc}")
    counts = ", ".join(f"{split} {count}" for split, count in summary["counts"].items())
    print(f"wrote {args.out}: {counts} samples in {summary['seconds']:.1f} s ({summary['samples_per_s']:.1f} samples/s)")


def cmd_eval(args: argparse.Namespace) -> None:
    from rl.evaluate import run_eval

    try:
        run_eval(args.policy, args.data, args.out, args.split, args.limit, args.batch_size, args.max_new_tokens,
                 greedy=not args.sample, reliance=not args.no_reliance, use_images=not args.no_images)
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
    score.add_argument("--via", choices=["local", "http", "ray"], default="local",
                       help="in process, over HTTP (starts a server unless --url), or through a Ray Serve handle")
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
    synth.add_argument("--relevance", type=float, default=0.0,
                       help="share of samples asked whether a description fits the cloud (relevance discrimination)")
    synth.add_argument("--workers", type=int, default=1, help="generator processes (the samples do not depend on it)")
    synth.add_argument("--overwrite", action="store_true")
    synth.set_defaults(run=cmd_synth)

    evaluate = commands.add_parser("eval", help="evaluate a policy directory on a dataset split")
    evaluate.add_argument("--policy", required=True, help="a policy directory (PointVLM.save_pretrained)")
    evaluate.add_argument("--data", required=True, help="a dataset directory (pointrl synth)")
    evaluate.add_argument("--out", required=True, help="the JSON report to write")
    evaluate.add_argument("--split", default="test")
    evaluate.add_argument("--limit", type=int, default=None, help="evaluate only the first N samples")
    evaluate.add_argument("--batch-size", type=int, default=8)
    evaluate.add_argument("--max-new-tokens", type=int, default=320)
    evaluate.add_argument("--sample", action="store_true", help="sample instead of greedy decoding")
    evaluate.add_argument("--no-reliance", action="store_true", help="skip the 3D-masked / swapped-cloud runs")
    evaluate.add_argument("--no-images", action="store_true", help="feed the point cloud only")
    evaluate.set_defaults(run=cmd_eval)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    args.run(args)


if __name__ == "__main__":
    main()
