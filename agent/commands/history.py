"""``nodewarden history``: the remediation journal."""

from __future__ import annotations

import argparse
import json
import os
import time

from agent.commands._remed import add_common, report, state_dir
from agent.core.durations import parse_duration
from agent.core.errors import ConfigError
from agent.remediation.journal import FILENAME, Journal, to_json

HELP = "show remediation decisions and outcomes from the journal"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register arguments."""
    add_common(parser)
    parser.add_argument("--since", help="only entries updated within this duration (e.g. 1h, 7d)")
    parser.add_argument("--json", action="store_true", help="one JSON array")


def main(args: argparse.Namespace) -> int:
    """Print the journal."""
    try:
        directory = state_dir(args)
        since = time.time() - parse_duration(args.since) if args.since else 0.0
    except ConfigError as err:
        return report(err)
    except ValueError as err:
        print(f"--since: {err}")
        return 2
    if not os.path.exists(os.path.join(directory, FILENAME)):
        entries = []
    else:
        journal = Journal(directory)
        entries = journal.since(since)
        journal.close()
    if args.json:
        print(json.dumps([to_json(e) for e in entries], indent=1))
        return 0
    print(f"{'ID':>5}  {'TIME (UTC)':19}  {'OP':6}  {'ACTION':10}  {'TARGET':22}  {'STATUS':9}  {'MODE':7}  "
          f"{'REASON':16}  ALERT")
    for e in entries:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(e.ts))
        print(f"{e.id:>5}  {when:19}  {e.op:6}  {e.action:10}  {e.target:22}  {e.status:9}  {e.mode:7}  "
              f"{e.reason:16}  {e.alertname}")
    return 0
