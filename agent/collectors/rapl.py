"""CPU package and core energy from ``/sys/class/powercap/intel-rapl:*`` (node_exporter's rapl collector).

``node_rapl_<zone>_joules_total{index,path}``: ``energy_uj`` / 1e6. The counter wraps at
``max_energy_range_uj`` (use ``rate()``); reading it needs root on kernels with the PLATYPUS fix.
"""

from __future__ import annotations

import os
import re
from typing import Any

from agent.collectors.common import read_attr
from agent.core.config import CollectorConfig
from agent.core.errors import NoData
from agent.core.metrics import MetricSpec, Sample
from agent.core.paths import Paths

NAME = "rapl"
_ZONE_DIR = re.compile(r"^intel-rapl:\d+(:\d+)*$")
_INVALID = re.compile(r"[^a-zA-Z0-9_]")
METRICS: list[MetricSpec] = [
    MetricSpec(f"node_rapl_{zone}_joules_total", "counter", f"Current RAPL {zone} value in joules", ("index", "path"))
    for zone in ("package", "core", "uncore", "dram", "psys")
]


def zone_name(raw: str, seen: dict[str, int]) -> tuple[str, int]:
    """``package-0`` -> (``package``, 0); a name without an index gets the count of earlier zones of that name."""
    name, sep, idx = raw.strip().rpartition("-")
    if sep and idx.isdigit():
        return name, int(idx)
    name = raw.strip()
    index = seen.get(name, 0)
    seen[name] = index + 1
    return name, index


class RaplConfig(CollectorConfig):
    """RAPL energy counters (node_exporter rapl)."""


class RaplCollector:
    """``node_rapl_*_joules_total`` per powercap zone."""

    NAME = NAME
    Config = RaplConfig
    metrics = METRICS

    def __init__(self, config: RaplConfig, paths: Paths, **_deps: Any) -> None:
        self.name = NAME
        self._base = paths.sys("class", "powercap")

    def collect(self) -> list[Sample]:
        """One round; NoData without RAPL zones or permission."""
        try:
            dirs = sorted(n for n in os.listdir(self._base) if _ZONE_DIR.match(n))
        except OSError as err:
            raise NoData("no /sys/class/powercap") from err
        out: list[Sample] = []
        seen: dict[str, int] = {}
        for n in dirs:
            d = os.path.join(self._base, n)
            try:
                raw = read_attr(os.path.join(d, "name")).decode("utf-8", "replace")
                energy = int(read_attr(os.path.join(d, "energy_uj")))
            except PermissionError as err:
                raise NoData("RAPL energy counters need root") from err
            except (OSError, ValueError):
                continue
            name, index = zone_name(raw, seen)
            out.append(Sample(f"node_rapl_{_INVALID.sub('_', name)}_joules_total",
                              (("index", str(index)), ("path", d)), energy / 1000000.0))
        if not out:
            raise NoData("no RAPL zones")
        return out
