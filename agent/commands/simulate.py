"""``nodewarden simulate``: list, show and check GPU simulation scenarios (for ``run --simulate``)."""

from __future__ import annotations

import argparse
import sys

from agent.collectors import simulate
from agent.core.errors import ConfigError

HELP = "list, show or check GPU simulation scenarios for `nodewarden run --simulate NAME|FILE`"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register arguments."""
    parser.add_argument("--list", action="store_true", help="list the built-in scenarios (default)")
    parser.add_argument("--show", metavar="NAME", help="print a built-in scenario's YAML (a starting point)")
    parser.add_argument("--check", metavar="FILE", nargs="+", help="validate scenario files (exit 2 when invalid)")


def main(args: argparse.Namespace) -> int:
    """List, show or check scenarios."""
    try:
        if args.show:
            sys.stdout.write(simulate.builtin_text(args.show))
            return 0
        if args.check:
            status = 0
            for path in args.check:
                try:
                    sc = simulate.load(path if path.endswith((".yml", ".yaml")) or "/" in path else f"./{path}")
                except ConfigError as err:
                    for problem in err.problems:
                        print(problem, file=sys.stderr)
                    status = 2
                else:
                    print(f"{path}: SUCCESS ({sc.gpu_count} GPUs, {len(sc.timeline)} timeline steps)")
            return status
    except ConfigError as err:
        print(err, file=sys.stderr)
        return 2
    width = max(len(n) for n in simulate.builtin_names())
    for name in simulate.builtin_names():
        sc = simulate.load(name)
        print(f"{name:<{width}}  {sc.gpu_count} GPU  {' '.join(sc.description.split())}")
    return 0
