"""The alert state machine of one alerting rule (Prometheus ``rules/alerting.go``).

Alerts go inactive -> pending -> firing (once active for ``for``), stay firing for ``keep_firing_for``
after the expression stops returning them, and are remembered as resolved for 15 minutes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from agent.core.errors import RuleError
from agent.core.metrics import Sample
from agent.engine.rules.model import GroupDef, RuleDef

RESOLVED_RETENTION = 15 * 60.0  # Prometheus keeps resolved alerts this long (rules/alerting.go)


@dataclass
class ActiveAlert:
    """One alert instance (Prometheus's rules.Alert)."""

    labels: dict[str, str]
    annotations: dict[str, str]
    state: str  # pending | firing | inactive
    active_at: float
    value: float
    fired_at: float | None = None
    resolved_at: float | None = None
    keep_firing_since: float | None = None


def label_key(labels: Mapping[str, str]) -> tuple:
    """The identity of an alert instance: its sorted label pairs."""
    return tuple(sorted(labels.items()))


@dataclass
class AlertSet:
    """The alert instances of one alerting rule, keyed by label set; ``dirty`` when a persisted field changed."""

    active: dict[tuple, ActiveAlert] = field(default_factory=dict)
    dirty: bool = False

    def deactivate(self, t: float) -> None:
        """A failed evaluation never leaves an alert pending or firing: pending ones go, firing ones resolve."""
        for key in list(self.active):
            a = self.active[key]
            if a.state == "pending":
                del self.active[key]
                self.dirty = True
            elif a.state == "firing":
                a.state, a.resolved_at, a.keep_firing_since = "inactive", t, None
                self.dirty = True

    def update(self, rule: RuleDef, group: GroupDef, vec: list[tuple[dict[str, str], float]], t: float,
               external_labels: Mapping[str, str], external_url: str) -> list[Sample]:
        """Advance the state machine with this evaluation's vector; returns the ALERTS / ALERTS_FOR_STATE samples."""
        fresh: dict[tuple, ActiveAlert] = {}
        for labels, value in vec:
            metric = {k: v for k, v in labels.items() if k != "__name__"}
            lb = dict(metric)
            for k, v in group.labels:
                if v:
                    lb[k] = v
                else:
                    lb.pop(k, None)
            for k, tmpl in rule.label_tmpls:
                v = tmpl.render(metric, value, external_labels, external_url)
                if v:
                    lb[k] = v
                else:
                    lb.pop(k, None)
            lb["alertname"] = rule.name
            ext, url = external_labels, external_url
            ann = {k: tmpl.render(metric, value, ext, url) for k, tmpl in rule.annotation_tmpls}
            key = label_key(lb)
            if key in fresh:
                raise RuleError("vector contains metrics with the same labelset after applying alert labels")
            fresh[key] = ActiveAlert(lb, ann, "pending", t, value)
        active = self.active
        for key, a in fresh.items():
            cur = active.get(key)
            if cur is not None and cur.state != "inactive":
                cur.value, cur.annotations = a.value, a.annotations
                continue
            active[key] = a
            self.dirty = True
        samples: list[Sample] = []
        n_active = 0
        for key in list(active):
            a = active[key]
            if key not in fresh:
                keep = False
                if a.state == "firing" and rule.keep_firing_for > 0:
                    if a.keep_firing_since is None:
                        a.keep_firing_since = t
                    keep = t - a.keep_firing_since < rule.keep_firing_for
                if a.state == "pending" or (a.resolved_at is not None and t - a.resolved_at > RESOLVED_RETENTION):
                    del active[key]
                if a.state != "inactive" and not keep:
                    a.state = "inactive"
                    a.resolved_at = t
                    self.dirty = True
                if not keep:
                    continue
            else:
                a.keep_firing_since = None
            n_active += 1
            if a.state == "pending" and t - a.active_at >= rule.for_:
                a.state = "firing"
                a.fired_at = t
                self.dirty = True
            base = tuple(sorted(a.labels.items()))
            samples.append(Sample("ALERTS", tuple(sorted((*base, ("alertstate", a.state)))), 1.0))
            samples.append(Sample("ALERTS_FOR_STATE", base, float(int(a.active_at))))
        if group.limit > 0 and n_active > group.limit:
            self.active = {}
            self.dirty = True
            raise RuleError(f"exceeded limit of {group.limit} with {n_active} alerts")
        return samples
