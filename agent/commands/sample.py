"""``nodewarden sample``: one round of every collector, as a table or JSON, for an SRE poking at a node."""

from __future__ import annotations

import argparse
import json
import sys

from agent.collectors.runner import CollectorRunner
from agent.commands import run as runcmd
from agent.core.errors import ConfigError
from agent.core.metrics import CollectorStarts, Describes

HELP = "sample every collector once and print the values"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register arguments."""
    parser.add_argument("--config", metavar="FILE", help="YAML config file (default: embedded defaults)")
    parser.add_argument("--simulate", metavar="SCENARIO", help="sample scripted fake GPUs instead of NVML")
    parser.add_argument("--collector", action="append", metavar="NAME", help="only this collector (repeatable)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")


def _labels(labels: tuple[tuple[str, str], ...]) -> str:
    return ",".join(f'{k}="{v}"' for k, v in labels)


def main(args: argparse.Namespace) -> int:
    """Run each collector once under its deadline and print what it returned."""
    from agent.collectors.kmsg import start_readers
    from agent.core import logs
    from agent.daemon import build_collectors, collector_timeout

    logs.setup("warning", "console", sys.stderr)  # stdout is the table / JSON (kernel problems log warnings)

    try:
        cfg = runcmd.apply_simulate(runcmd.load(argparse.Namespace(
            config=args.config, listen=None, state_dir=None, web_config_file=None)), args.simulate)
    except ConfigError as err:
        for problem in err.problems:
            print(problem, file=sys.stderr)
        return 2
    built, failed = build_collectors(cfg, kmsg_persist=False)
    if args.collector:
        built = [c for c in built if c.name in args.collector]
    results = []
    for coll in built:
        if isinstance(coll, CollectorStarts):
            coll.start()
    start_readers(built)
    for coll in built:
        runner = CollectorRunner(coll, collector_timeout(cfg, coll.name))
        out = runner.run_once()
        runner.close()
        note = out.error
        if not out.samples and isinstance(coll, Describes):
            note = note or coll.describe()
        results.append((coll.name, out, note))
    if args.json:
        doc = {
            name: {"status": out.status, "duration_seconds": round(out.duration, 6), "note": note,
                   "samples": [{"name": s.name, "labels": dict(s.labels), "value": s.value} for s in out.samples]}
            for name, out, note in results
        }
        doc.update({name: {"status": "load_error", "note": why, "samples": []} for name, why in failed.items()})
        json.dump(doc, sys.stdout, indent=2)
        print()
        return 0
    rows = [(name, s.name, _labels(s.labels), f"{s.value:g}") for name, out, _ in results for s in out.samples]
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(("COLLECTOR", "METRIC", "LABELS"))]
    print(f"{'COLLECTOR':<{widths[0]}}  {'METRIC':<{widths[1]}}  {'LABELS':<{widths[2]}}  VALUE")
    for r in rows:
        print(f"{r[0]:<{widths[0]}}  {r[1]:<{widths[1]}}  {r[2]:<{widths[2]}}  {r[3]}")
    print()
    for name, out, note in results:
        extra = f"  ({note})" if note else ""
        print(f"{name}: {out.status}, {len(out.samples)} samples in {out.duration * 1000:.1f} ms{extra}")
    for name, why in failed.items():
        print(f"{name}: load error: {why}")
    return 0
