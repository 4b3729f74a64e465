"""`pointrl traces` (the viewer of a run's traces, `rl.traces_view`) and `pointrl replay` (a traced step recomputed,
`rl.runtime.replay`). Registered by `rl.cli.main.build_parser`; pyarrow, FastAPI and torch are imported when the
command runs."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rl.cli.main import _usage_error

LOOPBACK = ("127.0.0.1", "localhost", "::1")


def _check_traced(command: str, run: str) -> None:
    """A run directory without traces/ is a usage error, before torch or FastAPI is imported."""
    if not (Path(run) / "traces").is_dir():
        _usage_error(command, f"{run}: no traces/ here (a run with trace.samples_per_step > 0 writes it)")


def cmd_replay(args: argparse.Namespace) -> None:
    _check_traced("replay", args.run_dir)
    from rl.runtime.replay import replay

    try:
        diffs = replay(args.run_dir, args.step)
    except (FileNotFoundError, KeyError, ValueError) as exc:
        _usage_error("replay", exc.args[0] if isinstance(exc, KeyError) else str(exc))
    if diffs:
        print(f"{args.run_dir} step {args.step}: {len(diffs)} differences from what was trained on")
        print("\n".join(diffs))
        sys.exit(1)
    print(f"{args.run_dir} step {args.step}: rewards, token spans and advantages as trained")
    sys.exit(0)


def cmd_traces(args: argparse.Namespace) -> None:
    from serve.limits import resolve_token

    try:
        token = resolve_token(args.token)
    except ValueError as exc:
        _usage_error("traces", str(exc))
    if args.host not in LOOPBACK and not token:
        _usage_error("traces", f"--host {args.host} exposes the traces: give --token (or $POINTRL_REWARDS_TOKEN)")
    for run in args.runs:
        _check_traced("traces", run)
    import uvicorn

    from rl.traces_view.app import create_app

    print(f"pointrl traces of {', '.join(args.runs)} on http://{args.host}:{args.port}  (API: /api/steps)", flush=True)
    uvicorn.run(create_app(args.runs, token), host=args.host, port=args.port, log_level=args.log_level)


def add_traces_parser(commands) -> None:
    """The `traces` and `replay` subcommands under `commands` (the subparsers of `pointrl`)."""
    traces = commands.add_parser("traces", help="browse what a run trained on: rollouts, field rewards, token credit")
    traces.add_argument("runs", nargs="+", metavar="RUN", help="a run directory; a second one is shown side by side")
    traces.add_argument("--host", default="127.0.0.1", help="bind address (default: loopback only)")
    traces.add_argument("--port", type=int, default=8010)
    traces.add_argument("--token", default=None, help="require this bearer token (default: $POINTRL_REWARDS_TOKEN)")
    traces.add_argument("--log-level", default="warning")
    traces.set_defaults(run=cmd_traces)
    replay = commands.add_parser("replay", help="recompute a traced step's rewards, spans and advantages; diff them")
    replay.add_argument("run_dir", metavar="RUN", help="a run directory with traces/")
    replay.add_argument("--step", type=int, required=True, help="the step (as metrics.jsonl numbers it)")
    replay.set_defaults(run=cmd_replay)
