"""Shared setup of the remediation commands (act, history, pause, resume): state dir, policy, plugins."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from agent.core import config as config_mod
from agent.core.errors import ConfigError

DEFAULT_POLICY = "rules/remediations.yml"
PAUSE_FILE = "paused"


def add_common(parser: argparse.ArgumentParser, policy: bool = False) -> None:
    """--config / --state-dir (and --policy)."""
    parser.add_argument("--config", help="agent config file (for state_dir)")
    parser.add_argument("--state-dir", help="state directory (overrides the config)")
    if policy:
        parser.add_argument("--policy", default=os.environ.get("NODEWARDEN_POLICY", DEFAULT_POLICY),
                            help=f"remediation policy file (default: $NODEWARDEN_POLICY or {DEFAULT_POLICY})")


def state_dir(args: argparse.Namespace) -> str:
    """The state dir from --state-dir, else the config, else the config default."""
    if args.state_dir:
        return args.state_dir
    cfg = config_mod.load_file(args.config) if args.config else config_mod.Config()
    return cfg.state_dir


def pause_path(directory: str) -> str:
    """The pause flag file inside the state dir."""
    return os.path.join(directory, PAUSE_FILE)


def report(err: ConfigError) -> int:
    """Print a config error's problems; exit status 2."""
    for problem in err.problems:
        print(problem, file=sys.stderr)
    return 2


def print_entry(entry: Any, as_json: bool) -> int:
    """Print a journal entry (plan changes, outcome) as text or JSON; exit status 0 when planned/succeeded."""
    import json

    from agent.remediation.journal import to_json

    if as_json:
        print(json.dumps(to_json(entry), indent=1))
    else:
        for change in (entry.plan or {}).get("changes", []):
            print(f"  - {change}")
        print(f"entry {entry.id}: {entry.op} {entry.action} {entry.target} -> {entry.status}"
              f"{' (' + entry.reason + ')' if entry.reason else ''}")
        if entry.output:
            print(entry.output)
    return 0 if entry.status in ("planned", "succeeded") else 1
