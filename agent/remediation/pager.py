"""The pager: Alertmanager (v2 API) for paging and for silences.

Every alert sent carries the agent's identity labels (``external_labels`` plus the node label, e.g.
``instance="gpu-a1"``; an alert's own label of the same name wins, as in Prometheus), so two nodes paging
the same rule stay two alerts and resolve independently. Before an action starts, :meth:`Pager.silence`
asks whether an active silence matches the alert with those labels (cached briefly).
"""

from __future__ import annotations

import json
import re
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from typing import Any

import structlog

from agent.core.alerts import Alert
from agent.core.formatting import rfc3339
from agent.remediation.policy import AlertmanagerConfig

log = structlog.get_logger("nodewarden.remediator")


class Pager:
    """Alertmanager client for ``page`` steps; no URL configured: pages are only journaled."""

    def __init__(self, config: AlertmanagerConfig, clock: Callable[[], float], post=None,
                 labels: Mapping[str, str] | None = None, get=None) -> None:
        self.config = config
        self.clock = clock
        self.labels = dict(labels or {})
        self._post = post or http_post
        self._get = get or http_get
        self._lock = threading.Lock()
        self._silences: tuple[float, list[dict[str, Any]]] | None = None   # (fetched at, active silences)

    def identity(self, alert: Alert) -> dict[str, str]:
        """The labels the alert has in Alertmanager: identity labels, overridden by the alert's own."""
        return {**self.labels, **alert.labels}

    @property
    def enabled(self) -> bool:
        """An Alertmanager URL is configured."""
        return bool(self.config.url)

    def due(self, paged_at: float | None, now: float) -> bool:
        """Time to resend a firing page (Alertmanager forgets alerts not resent)?"""
        return self.enabled and paged_at is not None and now - paged_at >= self.config.resend

    def push(self, alert: Alert, resolved: bool) -> tuple[str, str]:
        """Send one alert (``resolved``: with ``endsAt``); returns (status, output) for the journal."""
        am = self.config
        if not am.url:
            return "succeeded", "no alertmanager url configured; journaled only"
        try:
            self._post(am.url.rstrip("/") + "/api/v2/alerts", [am_alert(alert, resolved, self.clock(), self.labels)],
                       am.timeout)
        except (OSError, urllib.error.URLError, ValueError) as err:
            log.error("page_failed", error=str(err))
            return "failed", f"alertmanager push failed: {err}"
        return "succeeded", f"pushed to {am.url}" + (" (resolved)" if resolved else "")


    def silence(self, alert: Alert) -> tuple[str, str]:
        """(reason, detail) before an action: ``silenced`` when an active silence matches the alert's labels;
        Alertmanager unreachable: ``silence_unknown`` (``unreachable: hold``) or ``""`` with a note (``act``)."""
        am = self.config
        if not am.url or not am.silences.enabled:
            return "", ""
        try:
            silences = self._active_silences()
        except (OSError, urllib.error.URLError, ValueError) as err:
            log.warning("silences_unknown", error=str(err))
            why = f"alertmanager silences unknown ({err})"
            if am.silences.unreachable == "hold":
                return "silence_unknown", why + "; holding (alertmanager.silences.unreachable: hold)"
            return "", why + "; acting (alertmanager.silences.unreachable: act)"
        labels = self.identity(alert)
        for sil in silences:
            if silence_matches(sil.get("matchers") or [], labels):
                return "silenced", (f"silence {sil.get('id', '?')} by {sil.get('createdBy', '?')} until "
                                    f"{sil.get('endsAt', '?')}: {sil.get('comment', '')}")[:500]
        return "", ""

    def _active_silences(self) -> list[dict[str, Any]]:
        now = self.clock()
        with self._lock:
            if self._silences is not None and 0 <= now - self._silences[0] < self.config.silences.cache:
                return self._silences[1]
        body = self._get(self.config.url.rstrip("/") + "/api/v2/silences", self.config.timeout)  # type: ignore[union-attr]
        if not isinstance(body, list):
            raise ValueError("unexpected /api/v2/silences answer")
        active = [s for s in body if isinstance(s, dict) and (s.get("status") or {}).get("state") == "active"]
        with self._lock:
            self._silences = (now, active)
        return active


def silence_matches(matchers: list[dict[str, Any]], labels: Mapping[str, str]) -> bool:
    """Alertmanager's rule: every matcher holds (regexes anchored; a missing label is the empty string)."""
    if not matchers:
        return False
    for m in matchers:
        value = labels.get(str(m.get("name", "")), "")
        want = str(m.get("value", ""))
        if m.get("isRegex"):
            try:
                hit = re.fullmatch(want, value) is not None
            except re.error:
                return False
        else:
            hit = value == want
        if hit != bool(m.get("isEqual", True)):
            return False
    return True


def am_alert(alert: Alert, resolved: bool, now: float, labels: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The Alertmanager v2 body of one alert (``labels``: added where the alert has none of that name)."""
    out_labels = {**(labels or {}), **alert.labels, "remediation": "exhausted"}
    out: dict[str, Any] = {"labels": out_labels, "annotations": dict(alert.annotations),
                           "startsAt": rfc3339(alert.fired_at or alert.active_at)}
    if resolved:
        out["endsAt"] = rfc3339(now)
    return out


def http_get(url: str, timeout: float) -> Any:
    """GET JSON; raises OSError/URLError/ValueError on failure."""
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        if resp.status // 100 != 2:
            raise OSError(f"HTTP {resp.status}")
        return json.loads(resp.read())


def http_post(url: str, body: Any, timeout: float) -> None:
    """POST JSON; raises OSError/URLError on failure or a non-2xx status."""
    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        if resp.status // 100 != 2:
            raise OSError(f"HTTP {resp.status}")
