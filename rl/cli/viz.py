"""`pointrl viz`: the command line of `rl.eval.viz` (which draws with matplotlib and answers with the policy: it is
imported only when the command runs). Registered by `rl.cli.main.build_parser`."""

from __future__ import annotations

import argparse
import sys

from rl.cli.main import _usage_error


def cmd_viz(args: argparse.Namespace) -> None:
    if args.n < 1 or args.max_new_tokens < 1:
        _usage_error("viz", f"--n and --max-new-tokens must be at least 1, got {args.n}, {args.max_new_tokens}")
    from rl.eval.viz import visualize

    try:
        paths = visualize(args.policy, args.data, args.out, args.split, args.n, args.max_new_tokens)
    except (FileNotFoundError, ValueError) as exc:
        sys.exit(f"pointrl viz: error: {exc}")
    print(f"wrote {len(paths)} pictures to {args.out}")


def add_viz_parser(commands) -> None:
    """The `viz` subcommand under `commands` (the subparsers of `pointrl`)."""
    viz = commands.add_parser("viz", help="draw a policy's answers on held-out objects (PNG per object)")
    viz.add_argument("--policy", required=True, help="a policy directory (PointVLM.save_pretrained)")
    viz.add_argument("--data", required=True, help="a dataset directory (pointrl synth or pointrl import)")
    viz.add_argument("--split", default="test")
    viz.add_argument("--n", type=int, default=8, help="objects drawn (the split's first N)")
    viz.add_argument("--out", required=True, help="the directory the PNGs go to")
    viz.add_argument("--max-new-tokens", type=int, default=320)
    viz.set_defaults(run=cmd_viz)
