"""``nodewarden resume``: allow remediation again."""

from __future__ import annotations

import argparse
import os

from agent.commands._remed import add_common, pause_path, report, state_dir
from agent.core.errors import ConfigError

HELP = "resume remediation after `nodewarden pause`"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register arguments."""
    add_common(parser)


def main(args: argparse.Namespace) -> int:
    """Remove the pause flag file."""
    try:
        path = pause_path(state_dir(args))
    except ConfigError as err:
        return report(err)
    try:
        os.unlink(path)
    except FileNotFoundError:
        print("remediation was not paused")
        return 0
    print("remediation resumed")
    return 0
