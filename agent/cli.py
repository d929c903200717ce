"""``nodewarden`` command line: a thin dispatcher over one module per (sub)command.

Each command module in ``agent/commands/`` has ``HELP``, ``add_arguments(parser)`` and
``main(args) -> int``. Register it in :data:`COMMANDS` by its words (``("check", "config")``).
Every command module is imported when the parser is built (to read its HELP and arguments), so command modules
keep heavy imports inside ``main()``.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from agent import __version__

# words -> module; each module's HELP and arguments are read when the parser is built.
COMMANDS: dict[tuple[str, ...], str] = {
    ("run",): "agent.commands.run",
    ("sample",): "agent.commands.sample",
    ("check", "config"): "agent.commands.check_config",
    ("check", "rules"): "agent.commands.check_rules",
    ("check", "web-config"): "agent.commands.check_web_config",
    ("test", "rules"): "agent.commands.test_rules",
    ("simulate",): "agent.commands.simulate",
    ("status",): "agent.commands.status",
    ("act",): "agent.commands.act",
    ("history",): "agent.commands.history",
    ("pause",): "agent.commands.pause",
    ("resume",): "agent.commands.resume",
    ("migrate",): "agent.commands.migrate",
    ("manifest", "create"): "agent.commands.manifest",
}

GROUP_HELP = {
    "check": "validate configuration and rule files without running",
    "test": "run unit tests for rule files (promtool's test format)",
    "manifest": "checksum manifests of protected datasets",
}


def build_parser() -> argparse.ArgumentParser:
    """The full argparse tree."""
    parser = argparse.ArgumentParser(prog="nodewarden", description="Per-node GPU server monitoring and remediation.")
    parser.add_argument("--version", action="version", version=f"nodewarden {__version__}")
    top = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    groups: dict[str, argparse._SubParsersAction] = {}
    for words, modname in sorted(COMMANDS.items()):
        module = importlib.import_module(modname)
        if len(words) == 1:
            sub = top.add_parser(words[0], help=module.HELP, description=module.HELP)
        else:
            if words[0] not in groups:
                gp = top.add_parser(words[0], help=GROUP_HELP.get(words[0], ""))
                groups[words[0]] = gp.add_subparsers(dest="subcommand", metavar="WHAT", required=True)
            sub = groups[words[0]].add_parser(words[1], help=module.HELP, description=module.HELP)
        module.add_arguments(sub)
        sub.set_defaults(_main=module.main)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``nodewarden`` console script."""
    args = build_parser().parse_args(argv)
    try:
        return int(args._main(args) or 0)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
