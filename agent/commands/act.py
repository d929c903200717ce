"""``nodewarden act``: plan one remediation by hand; ``--apply`` runs it through the guard rails and journal.

    nodewarden act rebalance node=gpu-a1 gpu=3 reason="xid 79"        # plan only (journaled as planned)
    nodewarden act rebalance node=gpu-a1 gpu=3 reason="xid 79" --apply
    nodewarden act --revert 42                                          # undo journal entry 42
"""

from __future__ import annotations

import argparse
import sys

from agent.commands._remed import add_common, pause_path, policy_file, print_entry, report, state_dir
from agent.core.discovery import classes, load_remediations
from agent.core.errors import ConfigError, RemediationError
from agent.core.instance import StateDirLocked, StateLock
from agent.remediation.journal import Journal
from agent.remediation.policy import Policy, load_policy

HELP = "plan (and with --apply run) one remediation by hand, or --revert one"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register arguments."""
    add_common(parser, policy=True)
    parser.add_argument("plugin", nargs="?", help="plugin name, e.g. rebalance")
    parser.add_argument("params", nargs="*", metavar="KEY=VALUE", help="plugin params")
    parser.add_argument("--apply", action="store_true", help="run it (default: only plan)")
    parser.add_argument("--revert", type=int, metavar="ID", help="revert the applied journal entry ID")
    parser.add_argument("--json", action="store_true", help="print the journal entry as JSON")
    parser.add_argument("--simulate", metavar="SCENARIO",
                        help="plugins that use NVML see the scenario's fake GPUs (settings persist in "
                             "$NODEWARDEN_FAKE_NVML_STATE when set)")


def _params(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise RemediationError(f"params must be KEY=VALUE, got {item!r}")
        out[key] = value
    return out


def param_problems(model: type, params: dict[str, str]) -> list[str]:
    """Validate ``params`` against a plugin's Params model: one ``field: message`` line per problem, none if valid.

    pydantic's own text (types, input dumps, links to errors.pydantic.dev) is for developers, not for the SRE at
    the prompt.
    """
    from pydantic import ValidationError

    try:
        model.model_validate(params)  # type: ignore[attr-defined]
    except ValidationError as err:
        out = []
        for e in err.errors(include_url=False):
            msg = e["msg"].removeprefix("Value error, ").removeprefix("Assertion failed, ")
            parts = [str(p) for p in e["loc"]]
            if len(parts) > 2 and parts[0] not in params and parts[1] == "0":
                parts = parts[2:]  # a list the plugin built from flat params (throttle's rate= dport=)
            loc = ".".join(parts)
            if e["type"] == "missing":
                msg = "missing (give " + (loc.rsplit(".", 1)[-1]) + "=VALUE)"
            elif e["type"] == "extra_forbidden":
                msg = "unknown parameter"
            out.append(f"{loc}: {msg}" if loc else msg)
        return out
    return []


def main(args: argparse.Namespace) -> int:
    """Plan, apply or revert; exit 0 on success, 1 when refused or failed, 2 on bad input."""
    import structlog

    from agent.remediation.remediator import Remediator

    # Logs go to stderr (looked up at each write), stdout stays for the plan / JSON.
    structlog.configure(logger_factory=lambda *_: structlog.PrintLogger(sys.stderr))
    if (args.plugin is None) == (args.revert is None):
        print("give a PLUGIN with KEY=VALUE params, or --revert ID", file=sys.stderr)
        return 2
    try:
        directory = state_dir(args)
        found = classes()
        path = policy_file(args)
        policy = load_policy(path, found.plugins) if path else Policy()
    except ConfigError as err:
        return report(err)
    deps = {}
    if args.simulate:
        from agent.collectors.nvml import load_module

        try:
            deps["nvml"] = load_module(args.simulate)
        except ConfigError as err:
            return report(err)
    loaded = load_remediations(policy.plugins, state_dir=directory, **deps)
    for name, error in loaded.errors.items():
        print(f"warning: plugin {name} disabled: {error}", file=sys.stderr)
    if args.plugin in loaded.plugins:
        try:
            params = _params(args.params)
        except RemediationError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        problems = param_problems(loaded.plugins[args.plugin].Params, params)
        if problems:
            print(f"error: bad params for {args.plugin}:", *(f"  {p}" for p in problems), sep="\n", file=sys.stderr)
            return 2
    lock = StateLock(directory)
    try:
        lock.acquire()  # one process per state dir: never settle or repeat an action a running agent owns
    except StateDirLocked as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    journal = Journal(directory, policy.journal.retention, policy.journal.max_rows)
    rem = Remediator(policy, journal, loaded.plugins, mode="enforce", pause_flag_path=pause_path(directory))
    try:
        rem.recover()  # like the daemon and migrate: what a crash left started is finished or rolled back first
        entry = rem.revert_entry(args.revert) if args.revert is not None else \
            rem.act(args.plugin, _params(args.params), apply=args.apply)
    except RemediationError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    finally:
        journal.close()
        lock.release()
    return print_entry(entry, args.json)
