"""Shared setup of the remediation commands (act, history, pause, resume): state dir, policy, plugins.

Where the files come from, first match wins (so the commands work from any directory on an installed node):

- config: ``--config``, else ``$NODEWARDEN_CONFIG``, else ``/etc/nodewarden/config.yml`` when it exists, else the
  embedded defaults;
- policy: ``--policy``, else ``$NODEWARDEN_POLICY``, else the config's ``remediation_policy`` (the built-in default
  ``rules/remediations.yml`` only when it exists in the working directory), else an empty policy.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from agent.core import config as config_mod
from agent.core.errors import ConfigError

DEFAULT_POLICY = "rules/remediations.yml"
SYSTEM_CONFIG = "/etc/nodewarden/config.yml"
PAUSE_FILE = "paused"


def add_common(parser: argparse.ArgumentParser, policy: bool = False) -> None:
    """--config / --state-dir (and --policy)."""
    parser.add_argument("--config", help=f"agent config file (default: $NODEWARDEN_CONFIG, else {SYSTEM_CONFIG} "
                                         "when it exists)")
    parser.add_argument("--state-dir", help="state directory (overrides the config)")
    if policy:
        parser.add_argument("--policy", help="remediation policy file (default: $NODEWARDEN_POLICY, else the "
                                             "config's remediation_policy)")


def config_file(args: argparse.Namespace) -> str | None:
    """The config file to read: --config, $NODEWARDEN_CONFIG, or the system one when it exists."""
    given = getattr(args, "config", None) or os.environ.get("NODEWARDEN_CONFIG")
    if given:
        return given
    return SYSTEM_CONFIG if os.path.exists(SYSTEM_CONFIG) else None


def load_config(args: argparse.Namespace) -> config_mod.Config:
    """The config (see :func:`config_file`); ConfigError when it is invalid."""
    path = config_file(args)
    return config_mod.load_file(path) if path else config_mod.Config()


def policy_file(args: argparse.Namespace) -> str | None:
    """The policy file to load, or None for an empty policy (see the module docstring)."""
    given = getattr(args, "policy", None) or os.environ.get("NODEWARDEN_POLICY")
    if given:
        return given
    return config_mod.policy_path(load_config(args))


def state_dir(args: argparse.Namespace) -> str:
    """The state dir from --state-dir, else the config, else the config default."""
    if args.state_dir:
        return args.state_dir
    return load_config(args).state_dir


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
