"""A small, self-contained parser of the Prometheus text exposition format, for oracle tests."""

from __future__ import annotations

import math

SeriesKey = tuple[str, frozenset[tuple[str, str]]]

_ESCAPES = {"\\": "\\", '"': '"', "n": "\n"}


def _parse_value(text: str) -> float:
    special = {"NaN": math.nan, "+Inf": math.inf, "Inf": math.inf, "-Inf": -math.inf}
    return special[text] if text in special else float(text)


def _parse_labels(line: str, pos: int) -> tuple[list[tuple[str, str]], int]:
    """Labels from just after ``{``; returns them and the index just after ``}``."""
    labels = []
    while True:
        while line[pos] in " ,":
            pos += 1
        if line[pos] == "}":
            return labels, pos + 1
        eq = line.index("=", pos)
        name = line[pos:eq].strip()
        if line[eq + 1] != '"':
            raise ValueError(f"label value must be quoted: {line!r}")
        pos, chars = eq + 2, []
        while line[pos] != '"':
            if line[pos] == "\\":
                chars.append(_ESCAPES.get(line[pos + 1], "\\" + line[pos + 1]))
                pos += 2
            else:
                chars.append(line[pos])
                pos += 1
        labels.append((name, "".join(chars)))
        pos += 1


def parse_exposition(text: str) -> dict[SeriesKey, float]:
    """``{(metric name, frozenset of label pairs): value}`` for every sample line (comments skipped)."""
    out: dict[SeriesKey, float] = {}
    for raw in text.split("\n"):  # not splitlines(): label values may hold \x1c and friends
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        brace = line.find("{")
        space = line.find(" ")
        if brace != -1 and (space == -1 or brace < space):
            name = line[:brace]
            labels, pos = _parse_labels(line, brace + 1)
            rest = line[pos:].split()
        else:
            name, *rest = line.split()
            labels = []
        if not rest:
            raise ValueError(f"sample without a value: {raw!r}")
        key = (name, frozenset(labels))
        if key in out:
            raise ValueError(f"duplicate series: {raw!r}")
        out[key] = _parse_value(rest[0])  # rest[1], if any, is a timestamp
    return out


def parse_types(text: str) -> dict[str, str]:
    """``{metric family: type}`` from the ``# TYPE`` lines."""
    out = {}
    for line in text.split("\n"):
        parts = line.split()
        if len(parts) == 4 and parts[:2] == ["#", "TYPE"]:
            out[parts[2]] = parts[3]
    return out


def sample_key(name: str, labels: tuple[tuple[str, str], ...]) -> SeriesKey:
    """The key :func:`parse_exposition` uses, for one of our Samples."""
    return (name, frozenset(labels))
