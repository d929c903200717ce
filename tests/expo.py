"""Parse the Prometheus text exposition for oracle tests, with prometheus_client's own text parser (the
reference implementation's Python port: label escapes, NaN/+Inf, timestamps), not a parser of ours."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

SeriesKey = tuple[str, frozenset[tuple[str, str]]]


def parse_exposition(text: str) -> dict[SeriesKey, float]:
    """``{(metric name, frozenset of label pairs): value}`` for every sample line; a series twice is an error."""
    out: dict[SeriesKey, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            key = (sample.name, frozenset(sample.labels.items()))
            if key in out:
                raise ValueError(f"duplicate series: {key!r}")
            out[key] = float(sample.value)
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
