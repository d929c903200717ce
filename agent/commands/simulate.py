"""``nodewarden simulate``: list, show, check and run simulation scenarios.

``--run NAME|FILE`` runs the whole agent (collectors -> rules -> remediation policy, observe mode) against a
simulated node in accelerated time — as fast as the CPU allows, on a manual clock — and checks the scenario's
``expect:`` list (and, for ``healthy: true`` scenarios, that no default rule fires and no action is planned).
``nodewarden run --simulate NAME --speed N`` is the real-time variant that serves /metrics.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.collectors import simulate
from agent.core.errors import ConfigError, RuleError

HELP = "list, show, check or run (accelerated, with expectations) simulation scenarios"
REPO = Path(__file__).resolve().parents[2]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register arguments."""
    parser.add_argument("--list", action="store_true", help="list the built-in scenarios (default)")
    parser.add_argument("--show", metavar="NAME", help="print a built-in scenario's YAML (a starting point)")
    parser.add_argument("--check", metavar="FILE", nargs="+", help="validate scenario files (exit 2 when invalid)")
    parser.add_argument("--run", metavar="SCENARIO", nargs="+",
                        help="run scenarios in accelerated time through the whole agent; exit 1 when an "
                             "expectation fails")
    parser.add_argument("--interval", default="5s", help="simulated tick interval for --run (default 5s)")
    parser.add_argument("--duration", help="simulated time for --run (default: the scenario's duration)")
    parser.add_argument("--rules", nargs="*", help="rule files for --run (default: the default rule files)")
    parser.add_argument("--json", action="store_true", help="--run: print the reports as JSON")


@dataclass
class Report:
    """What one accelerated run saw."""

    scenario: str
    ticks: int = 0
    simulated_s: float = 0.0
    wall_s: float = 0.0
    fired: dict[str, float] = field(default_factory=dict)        # alertname -> first firing (scenario s)
    fired_labels: dict[str, list[dict[str, str]]] = field(default_factory=dict)
    pending: set[str] = field(default_factory=set)               # alertnames that were ever pending
    actions: dict[str, float] = field(default_factory=dict)      # action -> first journal row (scenario s)
    action_rows: int = 0
    recorded: set[str] = field(default_factory=set)              # recording rules that produced a sample
    failures: list[str] = field(default_factory=list)
    series_max: int = 0
    store: dict[str, int] = field(default_factory=dict)          # the history store at the end (Store.stats)

    def to_json(self) -> dict[str, Any]:
        """Plain dict."""
        return {"scenario": self.scenario, "ticks": self.ticks, "simulated_s": self.simulated_s,
                "wall_s": round(self.wall_s, 3), "fired": self.fired, "actions": self.actions,
                "action_rows": self.action_rows, "recorded": sorted(self.recorded), "failures": self.failures,
                "pending": sorted(self.pending),
                "series_max": self.series_max, "store": self.store}


class ManualClock:
    """Wall and monotonic clocks that move only when told (one tick at a time)."""

    def __init__(self, wall0: float | None = None) -> None:
        self.t = 0.0
        self.wall0 = time.time() if wall0 is None else wall0
        self.mono0 = 10_000.0

    def wall(self) -> float:
        """Unix seconds."""
        return self.wall0 + self.t

    def mono(self) -> float:
        """Monotonic seconds."""
        return self.mono0 + self.t


def default_rule_files() -> list[str]:
    """The default rule library (agent.core.config.DEFAULT_RULE_FILES) as absolute paths that exist."""
    from agent.core.config import DEFAULT_RULE_FILES

    return [str(REPO / f) for f in DEFAULT_RULE_FILES if (REPO / f).exists()]


def rule_names(files: list[str]) -> tuple[list[str], list[str]]:
    """(alert names, recording rule names) in rule files, in file order."""
    from agent.core import yamlpos

    alerts, records = [], []
    for f in files:
        doc = yamlpos.plain(yamlpos.load(yamlpos.read_text(f, "rule file"), f)) or {}
        for g in doc.get("groups") or []:
            for r in g.get("rules") or []:
                if "alert" in r:
                    alerts.append(r["alert"])
                elif "record" in r:
                    records.append(r["record"])
    return alerts, records


def node_tree(workdir: str) -> str:
    """Where the simulated node's proc/sys/dev/root trees go: a private directory under /dev/shm when there is
    one (memory-backed, as the real procfs and sysfs are; the simulator rewrites hundreds of small files a tick,
    about 20 us each there against 0.6 ms on an ext4 disk), else ``workdir/node``."""
    shm = "/dev/shm"
    if os.path.isdir(shm) and os.access(shm, os.W_OK | os.X_OK):
        try:
            return tempfile.mkdtemp(prefix="nodewarden-sim-", dir=shm)
        except OSError:
            pass
    return os.path.join(workdir, "node")


def run_scenario(scenario: simulate.Scenario, workdir: str, *, interval: float = 5.0,
                 duration: float | None = None, rule_files: list[str] | None = None,
                 policy: str | None = None) -> Report:
    """Run the whole agent against ``scenario`` on a manual clock (observe mode); check its expectations."""
    from agent.collectors.nodesim import NodeSim
    from agent.core import config as configmod
    from agent.daemon import Daemon

    clock = ManualClock()
    node_dir = node_tree(workdir)
    sim = NodeSim(scenario, node_dir, clock.mono)
    rules = rule_files if rule_files is not None else default_rule_files()
    policy = policy or str(REPO / configmod.DEFAULT_POLICY)
    if scenario.datasets:
        policy = _datasets(scenario, sim, policy, workdir)
    cfg = configmod.Config.model_validate({}).model_copy(update={
        "state_dir": os.path.join(workdir, "state"), "interval": interval, "mode": "observe",
        "hostname": sim.hostname, "rule_files": rules, "remediation_policy": policy})
    cfg = cfg.model_copy(update={"rule_files": rules})
    os.makedirs(cfg.state_dir, exist_ok=True)
    report = Report(scenario.name)
    record_names = set(rule_names(rules)[1])
    daemon = Daemon(cfg, collector_factory=lambda c: sim.collectors(c), wall=clock.wall, mono=clock.mono,
                    plugin_deps={"nvml": sim.nvml, "paths": sim.paths})
    started = time.perf_counter()
    end = duration if duration is not None else scenario.duration
    scrubber = daemon.remediator.plugins.get("restore") if scenario.datasets else None
    scrub_every = min((d.scrub_every for d in scenario.datasets.values()), default=0.0)
    next_scrub = 0.0
    try:
        daemon.remediator.recover()
        while clock.t <= end + 1e-9:
            if scrubber is not None and clock.t >= next_scrub:  # the restore scrubber, on simulated time
                sim.advance()
                scrubber.scrub_once()
                next_scrub = clock.t + scrub_every
            daemon.tick()
            now = clock.t
            report.ticks += 1
            for a in daemon.rules.alerts():
                if a.state == "firing":
                    report.fired.setdefault(a.name, now)
                    seen = report.fired_labels.setdefault(a.name, [])
                    if len(seen) < 20 and dict(a.labels) not in seen:
                        seen.append(dict(a.labels))
                elif a.state == "pending":
                    report.pending.add(a.name)
            for name in record_names - report.recorded:
                if any(daemon.store.latest(s) is not None for s in daemon.store.family(name).values()):
                    report.recorded.add(name)
            report.series_max = max(report.series_max, daemon.store.series_count())
            clock.t += interval
        report.simulated_s = clock.t - interval
        report.store = daemon.store.stats()
        for e in daemon.remediator.journal.query("op = 'apply'"):
            report.action_rows += 1
            report.actions.setdefault(e.action, max(0.0, e.ts - clock.wall0))
    finally:
        report.wall_s = time.perf_counter() - started
        sim.release()
        daemon.stop(timeout=4.0)
        if node_dir != os.path.join(workdir, "node"):  # a private tree under /dev/shm
            shutil.rmtree(node_dir, ignore_errors=True)
    check(scenario, report, rule_names(rules)[0])
    return report


def _datasets(scenario: simulate.Scenario, sim: Any, policy: str, workdir: str) -> str:
    """Write the datasets' files and manifests on the simulated host; a policy copy whose ``restore`` plugin
    protects them (scrubbed by the runner on simulated time)."""
    import yaml

    from agent.core import yamlpos
    from remediations.manifest import DEFAULT_NAME, create, write

    settings: dict[str, Any] = {}
    for name, ds in scenario.datasets.items():
        root = os.path.join(sim.paths.rootfs, ds.root)
        for rel, text in ds.files.items():
            path = os.path.join(root, simulate.check_sim_path(rel))
            os.makedirs(os.path.dirname(path), exist_ok=True)
            Path(path).write_text(text, encoding="utf-8")
        write(os.path.join(root, DEFAULT_NAME), create(root))
        settings[name] = {"root": root}
    doc = yamlpos.plain(yamlpos.load(yamlpos.read_text(policy, "policy"), policy)) or {}
    plugins = doc.setdefault("plugins", {}) or {}
    doc["plugins"] = plugins
    plugins["restore"] = {"scrub_interval": 0, "state_dir": os.path.join(workdir, "restore"), "datasets": settings}
    out = os.path.join(workdir, "policy.yml")
    with open(out, "w", encoding="utf-8") as f:
        yaml.safe_dump(doc, f, sort_keys=False)
    return out


def check(scenario: simulate.Scenario, report: Report, alerts: list[str]) -> None:
    """Fill ``report.failures`` from the scenario's expectations."""
    for ex in scenario.expect:
        name = ex.alert or ex.action
        seen = report.fired if ex.alert else report.actions
        what = "alert" if ex.alert else "action"
        if ex.alert and ex.labels and name in report.fired and not any(
                all(lbl.get(k) == v for k, v in ex.labels.items()) for lbl in report.fired_labels[name]):
            seen = {}
        if ex.never:
            if name in seen:
                report.failures.append(f"{what} {name} must never happen, but did at {seen[name]:g}s")
        elif name not in seen:
            report.failures.append(f"{what} {name}{_labels(ex.labels)} did not happen within {report.simulated_s:g}s")
        elif ex.within is not None and seen[name] > ex.within:
            report.failures.append(f"{what} {name} happened at {seen[name]:g}s, later than {ex.within:g}s")
    if scenario.healthy:
        for name in sorted(set(report.fired) & set(alerts)):
            report.failures.append(f"healthy scenario: alert {name} fired at {report.fired[name]:g}s")
        if report.action_rows:
            report.failures.append(f"healthy scenario: {report.action_rows} remediation decisions journaled "
                                   f"({', '.join(sorted(report.actions))})")


def _labels(labels: dict[str, str]) -> str:
    return "{" + ", ".join(f"{k}={v}" for k, v in labels.items()) + "}" if labels else ""


def _load(name: str) -> simulate.Scenario:
    return simulate.load(name if name.endswith((".yml", ".yaml")) or "/" in name or name in
                         simulate.builtin_names() else f"./{name}")


def main(args: argparse.Namespace) -> int:
    """List, show, check or run scenarios."""
    from agent.core.durations import parse_duration

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
                    print(f"{path}: SUCCESS ({sc.gpu_count} GPUs, {len(sc.node or {})} host objects, "
                          f"{len(sc.timeline)} timeline steps, {len(sc.expect)} expectations)")
            return status
        if args.run:
            return _run(args, parse_duration)
    except ConfigError as err:
        for problem in err.problems:
            print(problem, file=sys.stderr)
        return 2
    width = max(len(n) for n in simulate.builtin_names())
    for name in simulate.builtin_names():
        sc = simulate.load(name)
        scope = f"{sc.gpu_count} GPUs + host" if sc.node else f"{sc.gpu_count} GPUs"
        print(f"{name:<{width}}  {scope:<13}  {' '.join(sc.description.split())}")
    return 0


def _run(args: argparse.Namespace, parse_duration: Any) -> int:
    import structlog

    structlog.configure(logger_factory=lambda *_: structlog.PrintLogger(open(os.devnull, "w")))  # noqa: SIM115
    interval = parse_duration(args.interval)
    duration = parse_duration(args.duration) if args.duration else None
    status = 0
    reports = []
    for name in args.run:
        sc = _load(name)
        with tempfile.TemporaryDirectory(prefix="nodewarden-sim-", ignore_cleanup_errors=True) as tmp:
            try:
                rep = run_scenario(sc, tmp, interval=interval, duration=duration, rule_files=args.rules or None)
            except RuleError as err:
                for problem in err.problems:
                    print(problem, file=sys.stderr)
                return 2
        reports.append(rep)
        if rep.failures:
            status = 1
        if not args.json:
            verdict = "FAILED" if rep.failures else "ok"
            print(f"{sc.name}: {verdict}: {rep.ticks} ticks, {rep.simulated_s:g}s simulated in {rep.wall_s:.1f}s "
                  f"({rep.simulated_s / max(rep.wall_s, 1e-9):.0f}x)")
            for alert, t in sorted(rep.fired.items(), key=lambda x: x[1]):
                print(f"  alert {alert} firing at {t:g}s")
            for action, t in sorted(rep.actions.items(), key=lambda x: x[1]):
                print(f"  action {action} planned at {t:g}s")
            for f in rep.failures:
                print(f"  FAIL {f}")
    if args.json:
        print(json.dumps([r.to_json() for r in reports], indent=1))
    return status
