"""``nodewarden check web-config FILE``: validate an exporter-toolkit web config without running.

Checks what the daemon checks at start and on reload: the schema, bcrypt hashes, allowed response headers and
their values, and that the TLS certificate, key and client CA files exist and load together.
"""

from __future__ import annotations

import argparse
import sys

from agent.core.errors import ConfigError

HELP = "validate a web config file (TLS, basic auth; exit 0 valid, 2 invalid)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register arguments."""
    parser.add_argument("file", nargs="+", help="web config file(s) (--web.config.file)")


def main(args: argparse.Namespace) -> int:
    """Check each file; print problems as file:line:column: message."""
    from agent.serve.webconfig import load_web_config

    status = 0
    for path in args.file:
        try:
            load_web_config(path)
        except ConfigError as err:
            for problem in err.problems:
                print(problem, file=sys.stderr)
            status = 2
        else:
            print(f"{path}: SUCCESS")
    return status
