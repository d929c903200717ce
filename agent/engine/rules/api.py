"""The Prometheus HTTP API shapes of rules and alerts (``/api/v1/rules``, ``/api/v1/alerts``)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from agent.core.formatting import go_float, rfc3339
from agent.engine.rules.alerting import ActiveAlert
from agent.engine.rules.evaluate import GroupState


def api_alert(a: ActiveAlert) -> dict[str, Any]:
    """One alert as the API prints it."""
    d = {"labels": dict(a.labels), "annotations": dict(a.annotations), "state": a.state,
         "activeAt": rfc3339(a.active_at), "value": go_float(a.value, "e")}
    if a.keep_firing_since is not None:
        d["keepFiringSince"] = rfc3339(a.keep_firing_since)
    return d


def api_alerts(groups: Iterable[GroupState]) -> dict[str, Any]:
    """``GET /api/v1/alerts`` body."""
    alerts = [api_alert(a) for gs in groups for rs in gs.rules for a in rs.active.values() if a.state != "inactive"]
    return {"status": "success", "data": {"alerts": alerts}}


def api_rules(groups: Iterable[GroupState]) -> dict[str, Any]:
    """``GET /api/v1/rules`` body."""
    out = []
    for gs in groups:
        rules = []
        for rs in gs.rules:
            r = rs.rule
            health = {"ok": "ok", "err": "err", "nodata": "err"}.get(rs.health, "unknown")
            common = {"name": r.name, "query": r.expr, "labels": dict(r.labels), "health": health,
                      "lastError": rs.last_error, "evaluationTime": rs.eval_duration,
                      "lastEvaluation": rfc3339(rs.last_eval)}
            if r.kind == "recording":
                rules.append({**common, "type": "recording"})
                continue
            live = [a for a in rs.active.values() if a.state != "inactive"]
            state = "firing" if any(a.state == "firing" for a in live) else (
                "pending" if live else "inactive")
            rules.append({"state": state, **common, "duration": r.for_, "keepFiringFor": r.keep_firing_for,
                          "annotations": dict(r.annotations), "alerts": [api_alert(a) for a in live],
                          "type": "alerting"})
        out.append({"name": gs.group.name, "file": gs.group.file, "rules": rules,
                    "interval": gs.group.interval or 0.0, "limit": gs.group.limit,
                    "evaluationTime": gs.duration, "lastEvaluation": rfc3339(gs.last_eval)})
    return {"status": "success", "data": {"groups": out}}
