"""The GET routes of the HTTP endpoint, read from the running agent at request time (the daemon only wires them).

Everything here reads what the sampling tick already computed: cached exposition bytes, the rule engine's alert
state, the store's history; nothing a request does changes agent state.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, Protocol

from agent import __version__
from agent.serve.exporter import CONTENT_TYPE, Exporter

Response = tuple[int, str, bytes]
JSON = "application/json"


class Agent(Protocol):
    """What the routes read from the running agent (the daemon satisfies it)."""

    exporter: Exporter

    def status(self) -> dict[str, Any]:
        """Loop and collector summary (``/api/v1/status``)."""

    def api_alerts(self) -> dict[str, Any]:
        """Alerts in the Prometheus API shape (``/api/v1/alerts``)."""

    def api_rules(self) -> dict[str, Any]:
        """Rule groups in the Prometheus API shape (``/api/v1/rules``)."""

    def health_check(self) -> tuple[bool, str]:
        """(loop on time, reason), as /healthz reports it."""


def as_json(doc: dict[str, Any]) -> Response:
    """A 200 JSON response."""
    return 200, JSON, json.dumps(doc).encode()


def build(agent: Agent) -> dict[str, Callable[[], Response]]:
    """The route table for :class:`agent.serve.web.Server`."""

    def healthz() -> Response:
        ok, reason = agent.health_check()
        return (200 if ok else 503), "text/plain; charset=utf-8", (reason + "\n").encode()

    return {
        "/metrics": lambda: (200, CONTENT_TYPE, agent.exporter.body),
        "/healthz": healthz,
        "/": index,
        "/api/v1/status": lambda: as_json({"status": "success", "data": agent.status()}),
        "/api/v1/alerts": lambda: as_json(agent.api_alerts()),
        "/api/v1/rules": lambda: as_json(agent.api_rules()),
    }


def index() -> Response:
    """A page of links to the other routes."""
    html = (
        "<!doctype html><html><head><title>nodewarden</title></head><body>"
        f"<h1>nodewarden {__version__}</h1><ul>"
        '<li><a href="/metrics">/metrics</a> &mdash; Prometheus exposition</li>'
        '<li><a href="/healthz">/healthz</a> &mdash; sampling loop health</li>'
        '<li><a href="/api/v1/status">/api/v1/status</a> &mdash; collectors (JSON)</li>'
        '<li><a href="/api/v1/alerts">/api/v1/alerts</a> &mdash; pending and firing alerts (JSON)</li>'
        '<li><a href="/api/v1/rules">/api/v1/rules</a> &mdash; rule groups and their health (JSON)</li>'
        "</ul></body></html>\n"
    )
    return 200, "text/html; charset=utf-8", html.encode()
