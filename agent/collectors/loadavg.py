"""Load averages from ``/proc/loadavg`` (node_exporter's loadavg collector: node_load1/5/15)."""

from __future__ import annotations

from agent.collectors.common import read_all
from agent.core.config import CollectorConfig
from agent.core.errors import CollectorError, NoData
from agent.core.metrics import MetricSpec, Sample
from agent.core.paths import Paths

NAME = "loadavg"

METRICS: list[MetricSpec] = [
    MetricSpec("node_load1", "gauge", "1m load average."),
    MetricSpec("node_load5", "gauge", "5m load average."),
    MetricSpec("node_load15", "gauge", "15m load average."),
]


def parse_loadavg(text: str) -> tuple[float, float, float]:
    """The three load averages; ValueError when the line is garbled."""
    parts = text.split()
    if len(parts) < 3:
        raise ValueError(f"/proc/loadavg: unexpected content {text[:80]!r}")
    return float(parts[0]), float(parts[1]), float(parts[2])


class LoadavgConfig(CollectorConfig):
    """Load averages (node_exporter loadavg)."""


class LoadavgCollector:
    """``node_load1``, ``node_load5``, ``node_load15``."""

    NAME = NAME
    Config = LoadavgConfig
    metrics = METRICS

    def __init__(self, config: LoadavgConfig, paths: Paths, **_deps: object) -> None:
        self.name = NAME
        self._path = paths.proc("loadavg")

    def collect(self) -> list[Sample]:
        """One round."""
        try:
            loads = parse_loadavg(read_all(self._path).decode("ascii", "replace"))
        except FileNotFoundError as err:  # not Linux, or a fixture tree without it
            raise NoData(f"no {self._path}") from err
        except OSError as err:
            raise CollectorError(f"cannot read {self._path}: {err.strerror}") from err
        except ValueError as err:
            raise CollectorError(str(err)) from err
        return [Sample(spec.name, (), v) for spec, v in zip(METRICS, loads, strict=True)]
