"""Pressure stall information from ``/proc/pressure/{cpu,io,memory,irq}`` (node_exporter's pressure collector).

``total=`` is microseconds; exported as seconds (``total / 1000 / 1000``, node_exporter's float steps).
A resource the kernel does not offer (PSI off, irq before 6.1) is skipped, as node_exporter does.
"""

from __future__ import annotations

from agent.collectors.common import read_all
from agent.core.config import CollectorConfig
from agent.core.errors import CollectorError, NoData
from agent.core.metrics import MetricSpec, Sample
from agent.core.paths import Paths

NAME = "pressure"

# (resource, line kind, metric, help)
FIELDS: tuple[tuple[str, str, str, str], ...] = (
    ("cpu", "some", "node_pressure_cpu_waiting_seconds_total", "Total time in seconds that processes have waited "
     "for CPU time"),
    ("io", "some", "node_pressure_io_waiting_seconds_total", "Total time in seconds that processes have waited due "
     "to IO congestion"),
    ("io", "full", "node_pressure_io_stalled_seconds_total", "Total time in seconds no process could make progress "
     "due to IO congestion"),
    ("memory", "some", "node_pressure_memory_waiting_seconds_total", "Total time in seconds that processes have "
     "waited for memory"),
    ("memory", "full", "node_pressure_memory_stalled_seconds_total", "Total time in seconds no process could make "
     "progress due to memory congestion"),
    ("irq", "full", "node_pressure_irq_stalled_seconds_total", "Total time in seconds no process could make progress "
     "due to IRQ congestion"),
)
METRICS = [MetricSpec(name, "counter", help_) for _, _, name, help_ in FIELDS]


def parse_pressure(text: str) -> dict[str, int]:
    """``some avg10=... total=N`` lines to {"some": N, "full": N} (microseconds)."""
    out: dict[str, int] = {}
    for line in text.splitlines():
        kind, *fields = line.split()
        for f in fields:
            key, _, value = f.partition("=")
            if key == "total":
                out[kind] = int(value)
    return out


class PressureConfig(CollectorConfig):
    """Pressure stall information (node_exporter pressure)."""


class PressureCollector:
    """``node_pressure_*_seconds_total`` per resource."""

    NAME = NAME
    Config = PressureConfig
    metrics = METRICS

    def __init__(self, config: PressureConfig, paths: Paths, **_deps: object) -> None:
        self.name = NAME
        self._paths = paths

    def collect(self) -> list[Sample]:
        """One round; NoData when the kernel has no PSI."""
        out = []
        stats: dict[str, dict[str, int] | None] = {}
        for resource in ("cpu", "io", "memory", "irq"):
            path = self._paths.proc("pressure", resource)
            try:
                stats[resource] = parse_pressure(read_all(path).decode("ascii", "replace"))
            except FileNotFoundError:
                stats[resource] = None
            except OSError as err:  # EOPNOTSUPP when PSI is compiled in but disabled (psi=0)
                stats[resource] = None
                if resource == "cpu" and err.errno not in (95,):
                    raise CollectorError(f"cannot read {path}: {err.strerror}") from err
            except ValueError as err:
                raise CollectorError(f"{path}: {err}") from err
        for resource, kind, name, _ in FIELDS:
            values = stats.get(resource)
            if values is not None and kind in values:
                out.append(Sample(name, (), values[kind] / 1000.0 / 1000.0))
        if not out:
            raise NoData("no pressure stall information (kernel >= 4.20 with CONFIG_PSI)")
        return out
