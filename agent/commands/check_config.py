"""``nodewarden check config FILE``: validate a config file without running."""

from __future__ import annotations

import argparse
import sys

from agent.core import config
from agent.core.errors import ConfigError

HELP = "validate a config file (exit 0 valid, 2 invalid)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register arguments."""
    parser.add_argument("file", nargs="+", help="config file(s)")


def main(args: argparse.Namespace) -> int:
    """Check each file; print problems as file:line:column: message."""
    status = 0
    for path in args.file:
        try:
            config.load_file(path)
        except ConfigError as err:
            for problem in err.problems:
                print(problem, file=sys.stderr)
            status = 2
        except Exception as err:  # a bug, not the file's fault: still one located line, never a traceback
            print(f"{path}:1:1: internal error while checking: {type(err).__name__}: {err}", file=sys.stderr)
            status = 2
        else:
            print(f"{path}: SUCCESS")
    return status
