"""Run the reward service: under uvicorn (`pointrl serve-rewards`), or on Ray Serve (`pointrl serve-rewards --ray`).

Light at import (argparse and `serve.limits`): `pointrl --help` builds this parser, so FastAPI, uvicorn and httpx are
imported by the functions that use them, and Ray only with `--ray`."""

from __future__ import annotations

import argparse
import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

from serve.limits import TOKEN_ENV, ServiceLimits, resolve_token


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def wait_healthy(url: str, timeout_s: float = 60.0, process: subprocess.Popen | None = None) -> None:
    """Poll `GET /health` until it answers 200; fail early with the server's exit code if it died."""
    import httpx

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"the server exited with code {process.returncode} before it became healthy")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{url}/health", timeout=2.0).status_code == 200:
                return
        time.sleep(0.1)
    raise TimeoutError(f"the server at {url} was not healthy after {timeout_s:.0f} s")


@contextlib.contextmanager
def running_server(
    host: str = "127.0.0.1",
    port: int | None = None,
    extra_args: tuple[str, ...] = (),
    module: tuple[str, ...] = ("serve",),
) -> Iterator[str]:
    """Start `python -m serve` (or `python -m <module...>`, another of our servers that answers `GET /health`, such as
    `rl.cli traces RUN`) in a child process on a free loopback port; yield its base URL; stop it on exit."""
    with server_process(host, port, extra_args, module) as (url, _):
        yield url


@contextlib.contextmanager
def server_process(
    host: str = "127.0.0.1",
    port: int | None = None,
    extra_args: tuple[str, ...] = (),
    module: tuple[str, ...] = ("serve",),
) -> Iterator[tuple[str, int]]:
    """`running_server` that also yields the server's pid (tests read its memory from /proc/<pid>/status)."""
    port = port or free_port(host)
    command = [
        sys.executable,
        "-m",
        *module,
        "--host",
        host,
        "--port",
        str(port),
        "--log-level",
        "warning",
        *extra_args,
    ]
    process = subprocess.Popen(command)
    url = f"http://{host}:{port}"
    try:
        wait_healthy(url, process=process)
        yield url, process.pid
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def run_uvicorn(host: str, port: int, token: str | None, limits: ServiceLimits, log_level: str) -> None:
    import uvicorn

    print(
        f"pointrl reward service on http://{host}:{port}  (debug view /, API docs /docs, POST /v1/rewards)", flush=True
    )
    from serve.app import create_app
    from serve.deadline import headers_deadline_protocol

    uvicorn.run(
        create_app(token, limits),
        host=host,
        port=port,
        log_level=log_level,
        http=headers_deadline_protocol(limits.body_timeout_s),
    )


def run_ray_serve(host: str, port: int, token: str | None, limits: ServiceLimits, replicas: int) -> None:
    import ray
    from ray import serve

    from serve.ray_app import deploy_rewards

    ray.init(address=os.environ.get("RAY_ADDRESS"), ignore_reinit_error=True)
    deploy_rewards(host=host, port=port, token=token, limits=limits, max_replicas=replicas)
    print(f"pointrl reward service on Ray Serve at http://{host}:{port}  (app 'rewards'; Ctrl-C stops it)", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        serve.shutdown()


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    parser = parser or argparse.ArgumentParser(prog="pointrl serve-rewards", description="Run the reward service.")
    parser.add_argument("--host", default="127.0.0.1", help="bind address (default: loopback only)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument(
        "--token", default=None, help=f"require 'Authorization: Bearer TOKEN' (default: ${TOKEN_ENV} if set)"
    )
    defaults = ServiceLimits()
    parser.add_argument(
        "--max-body-mb",
        type=float,
        default=defaults.max_body_bytes / 2**20,
        help="largest request body in MiB (413 above)",
    )
    parser.add_argument(
        "--max-samples", type=int, default=defaults.max_samples, help="largest batch per request (413 above)"
    )
    parser.add_argument(
        "--max-concurrent",
        type=int,
        default=defaults.max_concurrent,
        help="requests decoded and scored at once; the others wait (bounds the memory of all of them)",
    )
    parser.add_argument(
        "--body-timeout-s",
        type=float,
        default=defaults.body_timeout_s,
        help="seconds a request's headers, then its body, may take to arrive (then the connection "
        "is closed, with a 408 for a body)",
    )
    parser.add_argument(
        "--ray", action="store_true", help="deploy on Ray Serve (joins $RAY_ADDRESS or starts a local Ray)"
    )
    parser.add_argument("--replicas", type=int, default=2, help="with --ray: the autoscaling maximum")
    parser.add_argument("--log-level", default="info")
    return parser


def main(argv: list[str] | None = None, args: argparse.Namespace | None = None) -> None:
    args = args or build_parser().parse_args(argv)
    try:
        token = resolve_token(args.token)
    except ValueError as exc:  # one line and the usage-error status, before anything starts
        print(f"pointrl serve-rewards: error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    try:
        limits = ServiceLimits(
            max_body_bytes=int(args.max_body_mb * 1024 * 1024),
            max_samples=args.max_samples,
            max_concurrent=args.max_concurrent,
            body_timeout_s=args.body_timeout_s,
        )
    except ValueError as exc:
        print(f"pointrl serve-rewards: error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    if args.ray:
        run_ray_serve(args.host, args.port, token, limits, args.replicas)
    else:
        run_uvicorn(args.host, args.port, token, limits, args.log_level)
