"""``nodewarden pause``: stop all remediation (the daemon checks the flag file every tick)."""

from __future__ import annotations

import argparse
import os
import time

from agent.commands._remed import add_common, pause_path, report, state_dir
from agent.core.errors import ConfigError

HELP = "pause all remediation actions until `nodewarden resume`"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register arguments."""
    add_common(parser)
    parser.add_argument("--reason", default="", help="why (kept in the flag file)")


def main(args: argparse.Namespace) -> int:
    """Create the pause flag file."""
    try:
        directory = state_dir(args)
    except ConfigError as err:
        return report(err)
    os.makedirs(directory, exist_ok=True)
    path = pause_path(directory)
    with open(path, "w", encoding="utf-8") as f:
        f.write(f"paused at {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())} by uid {os.getuid()}"
                f"{': ' + args.reason if args.reason else ''}\n")
    print(f"remediation paused ({path})")
    return 0
