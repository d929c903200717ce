"""The pager: pushes exhausted escalations to Alertmanager (v2 API) and remembers when each was last sent."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

import structlog

from agent.core.alerts import Alert
from agent.remediation.policy import AlertmanagerConfig

log = structlog.get_logger("nodewarden.remediator")


class Pager:
    """Alertmanager client for ``page`` steps; no URL configured: pages are only journaled."""

    def __init__(self, config: AlertmanagerConfig, clock: Callable[[], float], post=None) -> None:
        self.config = config
        self.clock = clock
        self._post = post or http_post

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
            self._post(am.url.rstrip("/") + "/api/v2/alerts", [am_alert(alert, resolved, self.clock())], am.timeout)
        except (OSError, urllib.error.URLError, ValueError) as err:
            log.error("page_failed", error=str(err))
            return "failed", f"alertmanager push failed: {err}"
        return "succeeded", f"pushed to {am.url}" + (" (resolved)" if resolved else "")


def _rfc3339(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def am_alert(alert: Alert, resolved: bool, now: float, labels: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The Alertmanager v2 body of one alert (``labels``: added where the alert has none of that name)."""
    out_labels = {**(labels or {}), **alert.labels, "remediation": "exhausted"}
    out: dict[str, Any] = {"labels": out_labels, "annotations": dict(alert.annotations),
                           "startsAt": _rfc3339(alert.fired_at or alert.active_at)}
    if resolved:
        out["endsAt"] = _rfc3339(now)
    return out


def http_post(url: str, body: Any, timeout: float) -> None:
    """POST JSON; raises OSError/URLError on failure or a non-2xx status."""
    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        if resp.status // 100 != 2:
            raise OSError(f"HTTP {resp.status}")
