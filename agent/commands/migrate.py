"""``nodewarden migrate``: plan (default) or apply a tier migration by hand, through the guard rails and journal.

    nodewarden migrate demote                          # plan: which cold files would leave the fast tier
    nodewarden migrate demote low=0.6 --apply           # move them, with a progress bar on a terminal
    nodewarden migrate promote paths=ckpt/run7 --apply
    nodewarden migrate evacuate tier=capacity to=fast --apply

Tiers come from ``plugins.migrate`` in the policy file (see docs/migrate-restore.md).
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import TextIO

from agent.commands._remed import DEFAULT_POLICY, add_common, pause_path, policy_file, print_entry, report, state_dir
from agent.core.errors import ConfigError, PluginLoadError, RemediationError

HELP = "plan (default) or --apply moving files between storage tiers (demote, promote, evacuate)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register arguments."""
    add_common(parser, policy=True)
    parser.add_argument("what", choices=("demote", "promote", "evacuate"), help="the migration")
    parser.add_argument("params", nargs="*", metavar="KEY=VALUE", help="plugin params (tier, to, paths, top, ...)")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--plan", action="store_true", help="only plan (the default)")
    mode.add_argument("--apply", action="store_true", help="move the files")
    parser.add_argument("--json", action="store_true", help="print the journal entry as JSON")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar even on a terminal")


class ProgressBar:
    """A one-line progress bar on a terminal stream, redrawn at most 10 times a second."""

    def __init__(self, stream: TextIO, clock=time.monotonic, width: int = 30) -> None:
        self.stream, self.clock, self.width = stream, clock, width
        self._start = clock()
        self._last = 0.0
        self._drawn = False

    def __call__(self, done: int, total: int) -> None:
        now = self.clock()
        if now - self._last < 0.1 and done < total:
            return
        self._last = now
        self.stream.write("\r" + render_bar(done, total, now - self._start, self.width))
        self._drawn = True
        if done >= total:   # end the line before anything else is logged
            self.close()
        self.stream.flush()

    def close(self) -> None:
        """End the line (once)."""
        if self._drawn:
            self.stream.write("\n")
            self.stream.flush()
            self._drawn = False


def render_bar(done: int, total: int, elapsed: float, width: int = 30) -> str:
    """Pure: ``[#####.....]  45%  1.2/2.7 GB  150 MB/s``."""
    frac = min(1.0, done / total) if total else 1.0
    fill = int(frac * width)
    rate = done / elapsed / 1e6 if elapsed > 0 else 0.0
    return f"[{'#' * fill}{'.' * (width - fill)}] {frac:4.0%}  {done / 1e9:.2f}/{total / 1e9:.2f} GB  {rate:.0f} MB/s"


def main(args: argparse.Namespace) -> int:
    """Plan or apply; exit 0 on success, 1 when refused or failed, 2 on bad input."""
    import structlog

    from agent.commands.act import _params
    from agent.core.discovery import build, classes
    from agent.core.instance import StateDirLocked, StateLock
    from agent.remediation.journal import Journal
    from agent.remediation.policy import load_policy
    from agent.remediation.remediator import Remediator
    from remediations.migrate import NAME, Migrate

    if not structlog.is_configured():
        structlog.configure(logger_factory=lambda *_: structlog.PrintLogger(sys.stderr))
    try:
        directory = state_dir(args)
        policy = load_policy(policy_file(args) or DEFAULT_POLICY, classes().plugins)
    except ConfigError as err:
        return report(err)
    bar = ProgressBar(sys.stderr) if args.apply and sys.stderr.isatty() and not args.no_progress else None
    try:
        plugin = build(Migrate, NAME, policy.plugins.get(NAME), state_dir=directory, progress=bar)
        params = {"action": args.what, **_params(args.params)}
    except (PluginLoadError, RemediationError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    lock = StateLock(directory)
    try:
        lock.acquire()  # one process per state dir: never settle or repeat an action a running agent owns
    except StateDirLocked as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    journal = Journal(directory, policy.journal.retention, policy.journal.max_rows)
    rem = Remediator(policy, journal, {NAME: plugin}, mode="enforce", pause_flag_path=pause_path(directory))
    try:
        rem.recover()
        entry = rem.act(NAME, params, apply=args.apply)
    except RemediationError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    finally:
        if bar is not None:
            bar.close()
        journal.close()
        lock.release()
    return print_entry(entry, args.json)
