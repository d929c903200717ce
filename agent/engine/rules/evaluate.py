"""Evaluation of one rule group over the store (Prometheus ``rules/group.go``, ``rules/recording.go``).

Rule outputs (recording series, ``ALERTS``, ``ALERTS_FOR_STATE``) are written into the store's current tick
as each rule finishes, so a later rule of the same group sees them, exactly like Prometheus.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from agent.core.errors import RuleError
from agent.core.metrics import Labels, Sample
from agent.engine.rules.alerting import ActiveAlert, AlertSet
from agent.engine.rules.model import GroupDef, RuleDef
from agent.engine.store import ABSENT_NAN


@dataclass
class RuleState:
    """One loaded rule with its alerts and health."""

    rule: RuleDef
    alerts: AlertSet = field(default_factory=AlertSet)
    health: str = "unknown"  # ok | err | nodata | unknown
    last_error: str = ""
    last_eval: float | None = None
    eval_duration: float = 0.0
    outputs: list[tuple[str, Labels]] = field(default_factory=list)  # series written last evaluation
    check_no_data: bool = True

    @property
    def active(self) -> dict[tuple, ActiveAlert]:
        """The rule's alert instances (pending, firing, and resolved ones still remembered)."""
        return self.alerts.active

    def evaluate(self, group: GroupDef, store: Any, t: float, external_labels: Mapping[str, str],
                 external_url: str) -> list[Sample]:
        """This rule's output samples at ``t``; raises on an evaluation failure."""
        rule = self.rule
        vec = query(rule, store, t)
        if rule.kind == "recording":
            return record(rule, group, vec)
        return self.alerts.update(rule, group, vec, t, external_labels, external_url)

    def no_data(self, store: Any) -> bool:
        """True when none of the metrics the rule reads exist in the store."""
        if "absent" in self.rule.expr:
            return False
        names = [s.name for s in getattr(self.rule.query, "selectors", ()) or ()
                 if s.name and s.name not in ("ALERTS", "ALERTS_FOR_STATE")]
        return bool(names) and all(not store.family(n) for n in names)


@dataclass
class GroupState:
    """One loaded group: its rules' states and evaluation bookkeeping."""

    group: GroupDef
    rules: list[RuleState]
    last_eval: float | None = None
    duration: float = 0.0
    evaluations: float = 0.0
    failures: dict[str, float] = field(default_factory=lambda: {"error": 0.0, "no_data": 0.0})

    def due(self, t: float) -> bool:
        """Is the group due at ``t`` (every tick without an interval)?"""
        if self.last_eval is None or self.group.interval is None:
            return True
        return t - self.last_eval >= self.group.interval * 0.99

    def keepalive(self, store: Any) -> None:
        """Keep the series of a group not due this tick alive in the store's open tick."""
        keep = [Sample(n, lb, ABSENT_NAN) for rs in self.rules for n, lb in rs.outputs]
        if keep:
            store.add(keep)

    def evaluate(self, store: Any, t: float, out: list[Sample], write: bool, external_labels: Mapping[str, str],
                 external_url: str) -> None:
        """Evaluate every rule in order; failures are counted, never raised."""
        start = time.perf_counter()
        for rs in self.rules:
            r0 = time.perf_counter()
            try:
                samples = rs.evaluate(self.group, store, t, external_labels, external_url)
            except Exception as err:  # a rule failure is data: the rule is inactive and counted
                rs.health, rs.last_error = "err", str(err) or type(err).__name__
                self.failures["error"] += 1
                if rs.rule.kind == "alerting":
                    rs.alerts.deactivate(t)
                    rs.outputs = []  # ALERTS series go stale with the alerts
                elif write and rs.outputs:  # like Prometheus: no new samples, old ones age out via lookback
                    store.add([Sample(n, lb, ABSENT_NAN) for n, lb in rs.outputs])
            else:
                rs.outputs = [(s.name, s.labels) for s in samples]
                if write and samples:
                    store.add(samples)
                out.extend(samples)
                if rs.check_no_data and rs.no_data(store):
                    rs.health, rs.last_error = "nodata", "no data: none of the metrics this rule reads exist"
                    self.failures["no_data"] += 1
                else:
                    rs.health, rs.last_error = "ok", ""
            rs.last_eval = t
            rs.eval_duration = time.perf_counter() - r0
        self.evaluations += 1
        self.last_eval = t
        self.duration = time.perf_counter() - start


def query(rule: RuleDef, store: Any, t: float) -> list[tuple[dict[str, str], float]]:
    """The rule's expression at ``t`` as (labels, value) pairs (a scalar is one pair with no labels)."""
    res = rule.query.eval(store, t)
    if isinstance(res, list):
        return res
    value = getattr(res, "value", res)
    return [({}, float(value))]


def record(rule: RuleDef, group: GroupDef, vec: list[tuple[dict[str, str], float]]) -> list[Sample]:
    """A recording rule's output series (group and rule labels applied; limit enforced)."""
    samples = []
    seen = set()
    for labels, value in vec:
        lb = {k: v for k, v in labels.items() if k != "__name__"}
        for k, v in (*group.labels, *rule.labels):
            if v:
                lb[k] = v
            else:
                lb.pop(k, None)
        key = tuple(sorted(lb.items()))
        if key in seen:
            raise RuleError("vector contains metrics with the same labelset after applying rule labels")
        seen.add(key)
        samples.append(Sample(rule.name, key, value))
    if group.limit > 0 and len(samples) > group.limit:
        raise RuleError(f"exceeded limit of {group.limit} with {len(samples)} series")
    return samples
