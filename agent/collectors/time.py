"""System time, time zone and clock source (node_exporter's time collector).

``node_time_seconds`` (wall clock, injected), ``node_time_zone_offset_seconds{time_zone}`` and the clock
sources of ``/sys/devices/system/clocksource/clocksource*``.
"""

from __future__ import annotations

import os
import time as _time
from collections.abc import Callable
from typing import Any

from agent.collectors.common import read_attr
from agent.core.config import CollectorConfig
from agent.core.metrics import MetricSpec, Sample
from agent.core.paths import Paths

NAME = "time"
METRICS: list[MetricSpec] = [
    MetricSpec("node_time_seconds", "gauge", "System time in seconds since epoch (1970)."),
    MetricSpec("node_time_zone_offset_seconds", "gauge", "System time zone offset in seconds.", ("time_zone",)),
    MetricSpec("node_time_clocksource_available_info", "gauge",
               "Available clocksources read from '/sys/devices/system/clocksource'.", ("device", "clocksource")),
    MetricSpec("node_time_clocksource_current_info", "gauge",
               "Current clocksource read from '/sys/devices/system/clocksource'.", ("device", "clocksource")),
]


class TimeConfig(CollectorConfig):
    """System time and clock sources (node_exporter time)."""


class TimeCollector:
    """``node_time_*``."""

    NAME = NAME
    Config = TimeConfig
    metrics = METRICS

    def __init__(self, config: TimeConfig, paths: Paths, *, wall: Callable[[], float] = _time.time,
                 **_deps: Any) -> None:
        self.name = NAME
        self._wall = wall
        self._base = paths.sys("devices", "system", "clocksource")

    def collect(self) -> list[Sample]:
        """One round."""
        now = self._wall()
        local = _time.localtime(now)
        out = [Sample("node_time_seconds", (), now),
               Sample("node_time_zone_offset_seconds", (("time_zone", local.tm_zone or ""),), float(local.tm_gmtoff))]
        try:
            names = sorted(n for n in os.listdir(self._base) if n.startswith("clocksource"))
        except OSError:
            names = []
        for n in names:
            d = os.path.join(self._base, n)
            device = n[len("clocksource"):]
            try:
                available = read_attr(os.path.join(d, "available_clocksource")).decode().split()
                current = read_attr(os.path.join(d, "current_clocksource")).decode().strip()
            except OSError:
                continue
            out += [Sample("node_time_clocksource_available_info", (("device", device), ("clocksource", c)), 1.0)
                    for c in available]
            out.append(Sample("node_time_clocksource_current_info", (("device", device), ("clocksource", current)),
                              1.0))
        return out
