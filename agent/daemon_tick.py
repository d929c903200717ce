"""The tick: one sampling round from collectors to /metrics, and what it keeps between rounds.

One tick: kick every collector's worker, wait for each until its deadline, write what arrived into the store
under one timestamp, add self-metrics, evaluate the rules, let the remediator decide, render /metrics once.
The HTTP side only reads cached bytes.
"""

from __future__ import annotations

import platform
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import structlog

from agent import __version__
from agent.collectors.runner import CollectorRunner, Outcome
from agent.core.metrics import MetricSpec, Sample
from agent.engine.rules import RuleEngine
from agent.engine.store import Store
from agent.remediation.slot import RemediatorSlot
from agent.serve.exporter import Exporter

log = structlog.get_logger("daemon")

SELF_METRICS = [
    MetricSpec("nodewarden_build_info", "gauge", "nodewarden version and Python runtime.", ("version", "python")),
    MetricSpec("nodewarden_collector_success", "gauge", "1 when the collector's last round succeeded.",
               ("collector",)),
    MetricSpec("nodewarden_collector_duration_seconds", "gauge", "Duration of the collector's last round.",
               ("collector",)),
    MetricSpec("nodewarden_tick_lag_seconds", "gauge", "How late the last tick started against its schedule."),
    MetricSpec("nodewarden_tick_duration_seconds", "gauge", "Wall time of the last tick."),
    MetricSpec("nodewarden_last_tick_timestamp_seconds", "gauge", "Unix time of the last completed tick."),
    MetricSpec("nodewarden_store_series", "gauge", "Series held in the in-memory history store."),
    MetricSpec("nodewarden_store_bytes", "gauge", "Approximate bytes held by the history store."),
    MetricSpec("nodewarden_config_last_reload_successful", "gauge", "1 when the last config reload succeeded."),
    MetricSpec("nodewarden_config_last_reload_success_timestamp_seconds", "gauge",
               "Unix time of the last successful config load."),
    MetricSpec("nodewarden_remediation_recovering", "gauge",
               "1 while actions a crash interrupted are being recovered in the background (no new remediation "
               "starts meanwhile; sampling, rules and HTTP go on)."),
]


@dataclass
class Health:
    """Loop liveness, read by /healthz and the systemd watchdog."""

    last_tick_end: float = 0.0  # monotonic
    interval: float = 5.0
    ticks: int = 0

    def check(self, now: float) -> tuple[bool, str]:
        """(on time, reason)."""
        if self.ticks == 0:
            return False, "no tick completed yet"
        late = now - self.last_tick_end
        if late > 2 * self.interval + 1.0:
            return False, f"last tick completed {late:.1f}s ago (interval {self.interval:g}s)"
        return True, f"ok: last tick {late:.1f}s ago"


class Tick:
    """The tick job's own state: schedule lag, last duration, each collector's last outcome, the failures
    already logged, and loop :class:`Health`. :meth:`run` does one round over the parts it is given (the
    daemon's, which a reload may replace between rounds)."""

    def __init__(self, interval: float, *, wall: Callable[[], float] = time.time,
                 mono: Callable[[], float] = time.monotonic) -> None:
        self.wall = wall
        self.mono = mono
        self.health = Health(interval=interval)
        self.outcomes: dict[str, Outcome] = {}
        self._last_start = 0.0
        self._lag = 0.0
        self._duration = 0.0
        self._warned: set[str] = set()

    def last_outcome(self, name: str) -> dict[str, Any]:
        """The collector's last outcome for the status page ({} before its first round)."""
        out = self.outcomes.get(name)
        if out is None:
            return {}
        return {"status": out.status, "error": out.error or "", "duration_seconds": round(out.duration, 6)}

    def run(self, *, interval: float, runners: list[CollectorRunner], failed: dict[str, str], store: Store,
            rules: RuleEngine, slot: RemediatorSlot, exporter: Exporter, reload_ok: float,
            reload_ok_at: float, swap: Callable[[], None]) -> bool:
        """One round; True when it was the first (the agent is ready). ``swap`` runs before remediation (a
        reload's remediator takes over there when idle)."""
        start = self.mono()
        if self._last_start:
            self._lag = max(0.0, start - self._last_start - interval)
        self._last_start = start
        kicked = {r.name: r.kick() for r in runners}
        outcomes: dict[str, Outcome] = {}
        for r in runners:
            outcomes[r.name] = r.wait(start + r.timeout) if kicked[r.name] else r.hung_outcome()
        now = round(self.wall(), 3)
        if now <= store.now:
            now = store.now + 0.001
        store.begin_tick(now)
        self_samples: list[Sample] = [
            Sample("nodewarden_build_info", (("version", __version__), ("python", platform.python_version())), 1.0)
        ]
        self.outcomes = outcomes
        for name, out in outcomes.items():
            if out.samples:
                store.add(out.samples)
            self._report(name, out)
            lbl = (("collector", name),)
            self_samples.append(Sample("nodewarden_collector_success", lbl, 1.0 if out.success else 0.0))
            self_samples.append(Sample("nodewarden_collector_duration_seconds", lbl, round(out.duration, 6)))
        for name in failed:
            lbl = (("collector", name),)
            self_samples.append(Sample("nodewarden_collector_success", lbl, 0.0))
            self_samples.append(Sample("nodewarden_collector_duration_seconds", lbl, 0.0))
        if store.tick % 60 == 59:
            store.gc()
        swap()
        remediating = not slot.recovering  # the remediator is not touched while its recovery runs
        self_samples += [
            Sample("nodewarden_tick_lag_seconds", (), round(self._lag, 6)),
            Sample("nodewarden_tick_duration_seconds", (), round(self._duration, 6)),
            Sample("nodewarden_last_tick_timestamp_seconds", (), now),
            Sample("nodewarden_store_series", (), float(store.series_count())),
            Sample("nodewarden_store_bytes", (), float(store.nbytes())),
            Sample("nodewarden_config_last_reload_successful", (), reload_ok),
            Sample("nodewarden_config_last_reload_success_timestamp_seconds", (), round(reload_ok_at, 3)),
            Sample("nodewarden_remediation_recovering", (), 0.0 if remediating else 1.0),
        ]
        store.add(self_samples)
        # Everything rules may read must be in this tick before evaluation: a series not yet written in the
        # current tick reads as stale. Remediation/plugin samples (e.g. integrity scrub results) go in first,
        # and again after on_tick so /metrics shows this tick's decisions.
        remediator = slot.current
        if remediating:
            store.add(remediator.samples())
        store.add(rules.evaluate(store, now))  # recording rules, ALERTS, engine metrics
        if remediating:
            remediator.on_tick(rules.alerts(), now)  # decides and journals; actions run off this thread
            store.add(remediator.samples())
        self._duration = self.mono() - start
        exporter.render(store)
        first = self.health.ticks == 0
        self.health.last_tick_end = self.mono()
        self.health.ticks += 1
        if first:
            log.info("ready", series=store.series_count(), tick_seconds=round(self._duration, 4))
        return first

    def _report(self, name: str, out: Outcome) -> None:
        """Log a collector's failure once per change of state (not every tick)."""
        key = f"{name}:{out.status}"
        if out.success:
            if any(w.startswith(f"{name}:") for w in self._warned):
                log.info("collector_recovered", collector=name)
                self._warned = {w for w in self._warned if not w.startswith(f"{name}:")}
            return
        if key not in self._warned:
            self._warned = {w for w in self._warned if not w.startswith(f"{name}:")} | {key}
            log.error("collector_failed", collector=name, status=out.status, error=out.error,
                      duration=round(out.duration, 3))
