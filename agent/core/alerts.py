"""The alert record shared by the rule engine (producer) and the remediator (consumer)."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

AlertState = Literal["inactive", "pending", "firing"]


def fingerprint(labels: Mapping[str, str]) -> str:
    """Stable 16-hex-digit identity of a label set (order independent)."""
    h = hashlib.sha256()
    for k in sorted(labels):
        h.update(k.encode())
        h.update(b"\xff")
        h.update(labels[k].encode())
        h.update(b"\xff")
    return h.hexdigest()[:16]


@dataclass(frozen=True, slots=True)
class Alert:
    """One alert instance of one alerting rule, as of the latest evaluation.

    ``labels`` includes ``alertname`` and the rule's templated labels. Times are Unix seconds.
    ``resolved_at`` is set (and ``state`` is "inactive") for an alert that stopped firing and is still
    remembered (Prometheus keeps resolved alerts for 15 minutes).
    """

    labels: Mapping[str, str]
    annotations: Mapping[str, str]
    state: AlertState
    active_at: float
    value: float
    fired_at: float | None = None
    resolved_at: float | None = None
    fingerprint: str = field(default="")

    def __post_init__(self) -> None:
        if not self.fingerprint:
            object.__setattr__(self, "fingerprint", fingerprint(self.labels))

    @property
    def name(self) -> str:
        """The alertname label."""
        return self.labels.get("alertname", "")
