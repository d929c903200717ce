"""A tiny Prometheus text-exposition reader for tests that compare our samples with node_exporter's."""

from __future__ import annotations

import re

Key = tuple[str, frozenset[tuple[str, str]]]

_LINE = re.compile(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)(?:\s+-?\d+)?\s*$")
_PAIR = re.compile(r'\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*=\s*"((?:[^"\\]|\\.)*)"\s*,?')
_UNESCAPE = {"\\\\": "\\", '\\"': '"', "\\n": "\n"}


def _unescape(value: str) -> str:
    return re.sub(r"\\[\\\"n]", lambda m: _UNESCAPE[m.group()], value)


def parse_exposition(text: str) -> dict[Key, float]:
    """``{(name, frozenset(labels.items())): value}`` for every sample line; comments are skipped."""
    out: dict[Key, float] = {}
    for line in text.split("\n"):
        if not line.strip() or line.startswith("#"):
            continue
        m = _LINE.match(line)
        if m is None:
            raise ValueError(f"not an exposition line: {line!r}")
        name, body, value = m.groups()
        labels = frozenset((k, _unescape(v)) for k, v in _PAIR.findall(body or ""))
        out[(name, labels)] = float(value)
    return out


def sample_key(name: str, labels: tuple[tuple[str, str], ...]) -> Key:
    """The key :func:`parse_exposition` uses, for one of our Samples."""
    return (name, frozenset(labels))
