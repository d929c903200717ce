"""The sample model shared by collectors, the store, the rule engine and the exporter.

A collector declares its metric catalogue (:class:`MetricSpec`) and yields :class:`Sample` tuples.
``labels`` is a tuple of ``(name, value)`` pairs in the order the spec declares them; the pair tuple
is the series identity inside the store, so a collector must always emit the same order.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Literal, NamedTuple, Protocol, runtime_checkable

MetricType = Literal["counter", "gauge", "info", "untyped"]
Labels = tuple[tuple[str, str], ...]


class MetricSpec(NamedTuple):
    """One metric family in a catalogue: exposition name, type, help and label names."""

    name: str
    type: MetricType
    help: str
    labels: tuple[str, ...] = ()


class Sample(NamedTuple):
    """One value of one series at the current tick."""

    name: str
    labels: Labels
    value: float


@runtime_checkable
class Collector(Protocol):
    """Something that samples one subsystem. ``collect()`` raises NoData or CollectorError."""

    name: str
    metrics: Sequence[MetricSpec]

    def collect(self) -> Iterable[Sample]:
        """Return this round's samples. Must not keep state the engine depends on."""
        ...


def catalogue(specs: Iterable[MetricSpec]) -> dict[str, MetricSpec]:
    """Index specs by name, refusing duplicates."""
    out: dict[str, MetricSpec] = {}
    for spec in specs:
        if spec.name in out:
            raise ValueError(f"metric {spec.name} declared twice")
        out[spec.name] = spec
    return out
