"""`pointrl engine`: the command line of PiSA's data engine (`rl.pisa.loop` does the work, and imports torch and Ray:
it is imported only when the command runs). Registered by `rl.cli.main.build_parser`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def cmd_engine(args: argparse.Namespace) -> None:
    from rl.config import ConfigError
    from rl.config_loading import parse_cli
    from rl.pisa.loop import run_engine

    cfg = parse_cli(["--config", args.config, *args.overrides], args.config)
    try:
        run_engine(cfg, Path(args.policy), Path(args.clouds), args.split, Path(args.out))
    except (ConfigError, FileNotFoundError, ValueError) as exc:
        sys.exit(f"pointrl engine: error: {exc}")
    print((Path(args.out) / "engine_report.md").read_text())


def add_engine_parser(commands) -> None:
    """The `engine` subcommand under `commands` (the subparsers of `pointrl`)."""
    engine = commands.add_parser(
        "engine",
        help="PiSA's data engine: the policy annotates unlabeled clouds, a cross-check keeps what holds, retrain, loop",
    )
    engine.add_argument("--policy", required=True, help="the starting policy directory")
    engine.add_argument("--clouds", required=True, help="a dataset directory whose split is read as unlabeled")
    engine.add_argument("--split", default="train")
    engine.add_argument("--out", required=True, help="the engine's output directory (a rerun continues it)")
    engine.add_argument(
        "--config",
        default="demo.yaml",
        help="the run config of the retraining and evaluation (a bare name: rl/configs/)",
    )
    engine.add_argument("overrides", nargs="*", help="section.key=value, e.g. engine.loops=3 engine.num_clouds=256")
    engine.set_defaults(run=cmd_engine)
