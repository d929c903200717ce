"""The GET routes of the HTTP endpoint, read from the running agent at request time (the daemon only wires them).

Everything here reads what the sampling tick already computed: cached exposition bytes, the rule engine's alert
state, the store's history; nothing a request does changes agent state.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, Protocol

from agent.engine.store import Store
from agent.serve.exporter import CONTENT_TYPE, Exporter
from agent.serve.status_page import StatusPage

Response = tuple[int, str, bytes]
JSON = "application/json"


class Agent(Protocol):
    """What the routes read from the running agent (the daemon satisfies it)."""

    exporter: Exporter
    store: Store

    def status(self) -> dict[str, Any]:
        """Loop and collector summary (``/api/v1/status``)."""

    def api_alerts(self) -> dict[str, Any]:
        """Alerts in the Prometheus API shape (``/api/v1/alerts``)."""

    def api_rules(self) -> dict[str, Any]:
        """Rule groups in the Prometheus API shape (``/api/v1/rules``)."""

    def health_check(self) -> tuple[bool, str]:
        """(loop on time, reason), as /healthz reports it."""

    def recent_remediations(self, limit: int) -> list[Any]:
        """The newest journal entries, newest first (for the status page)."""

    def hostname(self) -> str:
        """This node's name."""


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
        "/": StatusPage(agent, refresh=lambda: agent.store.interval).response,
        "/api/v1/status": lambda: as_json({"status": "success", "data": agent.status()}),
        "/api/v1/alerts": lambda: as_json(agent.api_alerts()),
        "/api/v1/rules": lambda: as_json(agent.api_rules()),
    }

