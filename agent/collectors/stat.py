"""Kernel and system statistics from ``/proc/stat`` (node_exporter's stat collector).

Interrupts, context switches, forks, boot time, running/blocked processes and, with ``softirq: true``
(node_exporter's ``--collector.stat.softirq``), softirq calls per vector. CPU times are the cpu collector's.
"""

from __future__ import annotations

from pydantic import Field

from agent.collectors.common import read_all
from agent.core.config import CollectorConfig
from agent.core.errors import CollectorError, NoData
from agent.core.metrics import MetricSpec, Sample
from agent.core.paths import Paths

NAME = "stat"
SOFTIRQ_VECTORS = ("hi", "timer", "net_tx", "net_rx", "block", "block_iopoll", "tasklet", "sched", "hrtimer", "rcu")

# (key in /proc/stat, spec)
SCALARS: tuple[tuple[str, MetricSpec], ...] = (
    ("intr", MetricSpec("node_intr_total", "counter", "Total number of interrupts serviced.")),
    ("ctxt", MetricSpec("node_context_switches_total", "counter", "Total number of context switches.")),
    ("processes", MetricSpec("node_forks_total", "counter", "Total number of forks.")),
    ("btime", MetricSpec("node_boot_time_seconds", "gauge", "Node boot time, in unixtime.")),
    ("procs_running", MetricSpec("node_procs_running", "gauge", "Number of processes in runnable state.")),
    ("procs_blocked", MetricSpec("node_procs_blocked", "gauge",
                                 "Number of processes blocked waiting for I/O to complete.")),
)
SOFTIRQS = MetricSpec("node_softirqs_total", "counter", "Number of softirq calls.", ("vector",))
METRICS = [spec for _, spec in SCALARS] + [SOFTIRQS]
_VECTOR_LABELS = tuple((("vector", v),) for v in SOFTIRQ_VECTORS)


def parse_stat(text: str) -> tuple[dict[str, int], list[int]]:
    """({key: first number} for the scalar lines, softirq per-vector counts)."""
    scalars: dict[str, int] = {}
    softirq: list[int] = []
    for line in text.splitlines():
        key, _, rest = line.partition(" ")
        if key.startswith("cpu") or not rest:
            continue
        fields = rest.split()
        try:
            if key == "softirq":
                softirq = [int(x) for x in fields[1 : 1 + len(SOFTIRQ_VECTORS)]]
            scalars[key] = int(fields[0])
        except (ValueError, IndexError):
            continue
    return scalars, softirq


class StatConfig(CollectorConfig):
    """/proc/stat counters (node_exporter stat)."""

    softirq: bool = Field(False, description="export node_softirqs_total per vector")


class StatCollector:
    """Interrupts, context switches, forks, boot time, process counts."""

    NAME = NAME
    Config = StatConfig
    metrics = METRICS

    def __init__(self, config: StatConfig, paths: Paths, **_deps: object) -> None:
        self.name = NAME
        self._path = paths.proc("stat")
        self._softirq = config.softirq

    def collect(self) -> list[Sample]:
        """One round."""
        try:
            scalars, softirq = parse_stat(read_all(self._path).decode("ascii", "replace"))
        except FileNotFoundError as err:  # not Linux, or a fixture tree without it
            raise NoData(f"no {self._path}") from err
        except OSError as err:
            raise CollectorError(f"cannot read {self._path}: {err.strerror}") from err
        out = [Sample(spec.name, (), float(scalars[key])) for key, spec in SCALARS if key in scalars]
        if self._softirq:
            out += [Sample(SOFTIRQS.name, labels, float(v)) for labels, v in zip(_VECTOR_LABELS, softirq, strict=False)]
        return out
