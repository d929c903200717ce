"""Prometheus duration strings (``1h30m``, ``5s``, ``250ms``) to seconds and back."""

from __future__ import annotations

import re

_UNITS = {"y": 365 * 86400.0, "w": 7 * 86400.0, "d": 86400.0, "h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
_RE = re.compile(r"^(?:(\d+)y)?(?:(\d+)w)?(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?(?:(\d+)ms)?$")


def parse_duration(text: str) -> float:
    """Seconds in a Prometheus duration string; ValueError on anything else (``0`` is allowed)."""
    if not isinstance(text, str):
        raise ValueError(f"duration must be a string like 30s or 5m, got {text!r}")
    if text == "0":
        return 0.0
    m = _RE.match(text)
    if not text or m is None or not any(m.groups()):
        raise ValueError(f"not a valid duration string: {text!r} (use e.g. 30s, 5m, 1h30m)")
    return sum(int(g) * _UNITS[u] for g, u in zip(m.groups(), _UNITS, strict=True) if g)


def parse_prometheus_duration(text: str | None) -> float:
    """:func:`parse_duration` failing the way Prometheus's ``model.ParseDuration`` does in rule and test files:
    ValueError ``not a valid duration string: "5 minutes"`` (``text`` None: a YAML mapping or list)."""
    try:
        if text is None:
            raise ValueError(text)
        return parse_duration(text)
    except ValueError:
        raise ValueError(f"not a valid duration string: {text!r}".replace("'", '"')) from None


def format_duration(seconds: float) -> str:
    """The shortest Prometheus duration string for ``seconds`` (millisecond precision)."""
    ms = round(seconds * 1000)
    if ms == 0:
        return "0s"
    out = []
    for unit, size in (
        ("y", 31536000000),
        ("w", 604800000),
        ("d", 86400000),
        ("h", 3600000),
        ("m", 60000),
        ("s", 1000),
        ("ms", 1),
    ):
        n, ms = divmod(ms, size)
        if n:
            out.append(f"{n}{unit}")
    return "".join(out)
