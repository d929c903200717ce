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
class Catalogued(Protocol):
    """``metrics``: the metric families something emits, readable on the class (the catalogue, ``check rules``
    and ``docs/metrics.md`` read it without constructing anything). Required of a collector; optional for a
    plugin (with ``samples()``, :class:`agent.core.plugin.ExportsMetrics`)."""

    metrics: Sequence[MetricSpec]


@runtime_checkable
class Collector(Catalogued, Protocol):
    """Something that samples one subsystem: the required part.

    Required: ``name``; a class-level ``metrics`` catalogue (:class:`Catalogued`); ``collect()``. The class is
    built as ``cls(config, paths, hostname=...)`` with its settings section, validated by its ``Config``
    model when it declares one (a :class:`agent.core.config.CollectorConfig` subclass; see
    :class:`agent.core.plugin.Configurable`). Optional hooks, each used only when present (runtime-checkable):
    :class:`CollectorStarts`, :class:`CollectorCloses`, :class:`Describes`; an error with samples is
    :class:`PartialSamples`.
    """

    name: str

    def collect(self) -> Iterable[Sample]:
        """Return this round's samples. Must not keep state the engine depends on. Raise NoData when there is
        nothing to report (success, no series) and CollectorError (or anything else) when the round failed."""
        ...


@runtime_checkable
class CollectorStarts(Protocol):
    """Optional: background work (the GPU collector's kmsg reader), started before the first round."""

    def start(self) -> None:
        """Start it (called once, after construction)."""
        ...


@runtime_checkable
class CollectorCloses(Protocol):
    """Optional: release what the collector holds (threads, NVML, file descriptors) on stop and reload."""

    def close(self) -> None:
        """Release it; the collector is not called again."""
        ...


@runtime_checkable
class Describes(Protocol):
    """Optional: why a round has no samples, in a few words (``nodewarden sample`` prints it)."""

    def describe(self) -> str:
        """E.g. ``NVML not found``."""
        ...


@runtime_checkable
class PartialSamples(Protocol):
    """Optional, on an error ``collect()`` raises: ``samples`` still worth storing (the round reports success 0;
    the GPU collector's hung-driver report)."""

    samples: Sequence[Sample]


def catalogue(specs: Iterable[MetricSpec]) -> dict[str, MetricSpec]:
    """Index specs by name, refusing duplicates."""
    out: dict[str, MetricSpec] = {}
    for spec in specs:
        if spec.name in out:
            raise ValueError(f"metric {spec.name} declared twice")
        out[spec.name] = spec
    return out
