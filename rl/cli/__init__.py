"""The `pointrl` command: `main` parses the subcommand and imports only what that job needs."""

from rl.cli.main import main

__all__ = ["main"]
