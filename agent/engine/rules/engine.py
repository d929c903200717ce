"""The rule engine: the loaded groups, their evaluation each tick, the engine's own metrics, alert state on disk."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from agent.core.alerts import Alert
from agent.core.errors import RuleError
from agent.core.metrics import MetricSpec, Sample
from agent.engine.rules import api, persist
from agent.engine.rules.alerting import AlertSet
from agent.engine.rules.evaluate import GroupState, RuleState
from agent.engine.rules.load import load_files
from agent.engine.rules.model import Compiler, GroupDef
from agent.engine.store import is_ring

METRICS = [
    MetricSpec("ALERTS", "gauge", "Pending and firing alerts of the alerting rules (value 1).",
               ("alertname", "alertstate")),
    MetricSpec("ALERTS_FOR_STATE", "gauge", "Unix time since which each pending/firing alert is active.",
               ("alertname",)),
    MetricSpec("nodewarden_rule_group_last_evaluation_timestamp_seconds", "gauge",
               "Unix time of the rule group's last evaluation.", ("rule_group",)),
    MetricSpec("nodewarden_rule_group_last_duration_seconds", "gauge",
               "Duration of the rule group's last evaluation.", ("rule_group",)),
    MetricSpec("nodewarden_rule_group_interval_seconds", "gauge",
               "Evaluation interval of the rule group (0: every tick).", ("rule_group",)),
    MetricSpec("nodewarden_rule_group_rules", "gauge", "Number of rules in the group.", ("rule_group",)),
    MetricSpec("nodewarden_rule_evaluations_total", "counter", "Rule evaluations.", ("rule_group",)),
    MetricSpec("nodewarden_rule_evaluation_failures_total", "counter",
               "Rule evaluations that failed (reason=error) or found none of the metrics the rule reads "
               "(reason=no_data).", ("rule_group", "reason")),
    MetricSpec("nodewarden_alerts", "gauge", "Active alerts by state.", ("state",)),
    MetricSpec("nodewarden_rules_last_reload_successful", "gauge",
               "Whether the last rule load succeeded (1) or kept the previous rules (0).", ()),
    MetricSpec("nodewarden_rules_last_reload_success_timestamp_seconds", "gauge",
               "Unix time of the last successful rule reload.", ()),
]


class RuleEngine:
    """Loads rule files, evaluates due groups over the store each tick and keeps alert state."""

    metrics: list[MetricSpec] = METRICS

    def __init__(self, state_path: str | None, external_labels: dict[str, str] | None = None,
                 clock: Callable[[], float] = time.time, *, compiler: Compiler | None = None,
                 check_no_data: bool = True) -> None:
        self.state_path = state_path
        self.external_labels = dict(external_labels or {})
        self.external_url = ""  # {{ $externalURL }} in templates
        self.clock = clock
        self.compiler = compiler
        self.check_no_data = check_no_data
        self.groups: list[GroupState] = []
        self.files: list[str] = []
        self.reload_ok = 1.0
        self.reload_time = 0.0
        self.lock = threading.RLock()
        self._state = persist.StateFile(state_path, clock) if state_path else None
        self._restored: dict[tuple, list[dict[str, Any]]] = {}
        self._dirty = False

    # -- loading ---------------------------------------------------------------------------
    def load(self, files: list[str]) -> None:
        """Load rule files all-or-nothing; unchanged rules keep their pending/firing state."""
        self.swap(self.prepare(files), files)

    def prepare(self, files: list[str]) -> list[GroupDef]:
        """Read, parse and validate rule files without touching the engine (no lock: the slow part of a reload
        runs while ticks go on); RuleError lists every problem and marks the reload failed."""
        try:
            return load_files(files, self.compiler)
        except RuleError:
            self.reload_ok = 0.0
            raise

    def swap(self, defs: list[GroupDef], files: list[str]) -> None:
        """Put prepared groups in force; unchanged rules keep their pending/firing state."""
        with self.lock:
            old: dict[tuple, list[RuleState]] = {}
            for gs in self.groups:
                for rs in gs.rules:
                    old.setdefault((gs.group.file, gs.group.name, rs.rule.identity), []).append(rs)
            new_groups = []
            for g in defs:
                states = []
                for r in g.rules:
                    key = (g.file, g.name, r.identity)
                    prev = old.get(key)
                    rs = RuleState(r, check_no_data=self.check_no_data)
                    if prev:
                        p = prev.pop(0)
                        rs.alerts, rs.health, rs.last_error = p.alerts, p.health, p.last_error
                        rs.last_eval, rs.eval_duration, rs.outputs = p.last_eval, p.eval_duration, p.outputs
                    elif key in self._restored:
                        rs.alerts = AlertSet(persist.restore_alerts(self._restored.pop(key)))
                    states.append(rs)
                gs = GroupState(g, states)
                for ogs in self.groups:
                    if ogs.group.key == g.key:
                        gs.last_eval, gs.duration = ogs.last_eval, ogs.duration
                        gs.evaluations, gs.failures = ogs.evaluations, ogs.failures
                new_groups.append(gs)
            self.groups = new_groups
            self.files = list(files)
            self.reload_ok = 1.0
            self.reload_time = self.clock()

    # -- evaluation ------------------------------------------------------------------------
    def evaluate(self, store: Any, t: float, force: bool | None = None) -> list[Sample]:
        """Evaluate the groups due at ``t``; return their samples plus the engine's own metrics.

        Outputs are also written into the store's open tick when its time is ``t`` (so later rules see
        earlier ones); series of groups not due this tick are kept alive there with ABSENT_NAN.
        ``force=True`` evaluates every group, ``force=False`` none (promtool's unit-test loop uses both).
        """
        out: list[Sample] = []
        write = is_ring(store) and store.tick >= 0 and store.now == t
        with self.lock:
            for gs in self.groups:
                due = force if force is not None else gs.due(t)
                if due:
                    gs.evaluate(store, t, out, write, self.external_labels, self.external_url)
                    for rs in gs.rules:
                        if rs.alerts.dirty:
                            rs.alerts.dirty, self._dirty = False, True
                elif write:
                    gs.keepalive(store)
            out.extend(self._self_metrics())
            self._maybe_persist()
        return out

    def _self_metrics(self) -> list[Sample]:
        out = []
        counts = {"pending": 0, "firing": 0}
        for gs in self.groups:
            k = (("rule_group", gs.group.key),)
            if gs.last_eval is not None:
                out.append(Sample("nodewarden_rule_group_last_evaluation_timestamp_seconds", k, gs.last_eval))
                out.append(Sample("nodewarden_rule_group_last_duration_seconds", k, gs.duration))
            out.append(Sample("nodewarden_rule_group_interval_seconds", k, gs.group.interval or 0.0))
            out.append(Sample("nodewarden_rule_group_rules", k, float(len(gs.rules))))
            out.append(Sample("nodewarden_rule_evaluations_total", k, gs.evaluations))
            for reason, n in gs.failures.items():
                out.append(Sample("nodewarden_rule_evaluation_failures_total", (*k, ("reason", reason)), n))
            for rs in gs.rules:
                for a in rs.active.values():
                    if a.state in counts:
                        counts[a.state] += 1
        for state, n in counts.items():
            out.append(Sample("nodewarden_alerts", (("state", state),), float(n)))
        out.append(Sample("nodewarden_rules_last_reload_successful", (), self.reload_ok))
        out.append(Sample("nodewarden_rules_last_reload_success_timestamp_seconds", (), self.reload_time))
        return out

    # -- reading ---------------------------------------------------------------------------
    def rule_states(self) -> Iterable[tuple[GroupDef, RuleState]]:
        """Every (group, rule state), in file order."""
        for gs in self.groups:
            for rs in gs.rules:
                yield gs.group, rs

    def alerts(self) -> list[Alert]:
        """Pending and firing alerts, plus resolved ones still remembered (state "inactive")."""
        out = []
        with self.lock:
            for _, rs in self.rule_states():
                for a in rs.active.values():
                    out.append(Alert(labels=dict(a.labels), annotations=dict(a.annotations), state=a.state,
                                     active_at=a.active_at, value=a.value, fired_at=a.fired_at,
                                     resolved_at=a.resolved_at if a.state == "inactive" else None))
        return out

    def api_alerts(self) -> dict[str, Any]:
        """``GET /api/v1/alerts`` body."""
        with self.lock:
            return api.api_alerts(self.groups)

    def api_rules(self) -> dict[str, Any]:
        """``GET /api/v1/rules`` body."""
        with self.lock:
            return api.api_rules(self.groups)

    # -- persistence -----------------------------------------------------------------------
    def _maybe_persist(self) -> None:
        if not self._dirty or self._state is None:
            return
        self._dirty = False
        self._state.write_if_changed(persist.snapshot(self.rule_states()))

    def save_state(self) -> None:
        """Write pending/firing alerts with their active-since times (temp file, fsync, rename)."""
        if self._state is None:
            return
        with self.lock:
            self._state.write(persist.snapshot(self.rule_states()))

    def restore_state(self) -> None:
        """Read the state file; alerts of matching rules resume with their active-since times."""
        if self._state is None:
            return
        pending = self._state.read()
        if pending is None:
            return
        with self.lock:
            for g, rs in self.rule_states():
                key = (g.file, g.name, rs.rule.identity)
                if key in pending:
                    rs.alerts = AlertSet(persist.restore_alerts(pending.pop(key)))
            self._restored.update(pending)
            self._state.last = persist.snapshot(self.rule_states())
