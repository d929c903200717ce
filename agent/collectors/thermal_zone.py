"""Thermal zones from ``/sys/class/thermal/thermal_zone*`` (node_exporter's thermal_zone collector).

``node_thermal_zone_temp{zone,type}`` in degrees Celsius (millidegrees / 1000); cooling devices as
``node_cooling_device_{cur,max}_state{name,type}``.
"""

from __future__ import annotations

import os
from typing import Any

from agent.collectors.common import read_attr
from agent.core.config import CollectorConfig
from agent.core.errors import NoData
from agent.core.metrics import MetricSpec, Sample
from agent.core.paths import Paths

NAME = "thermal_zone"
METRICS: list[MetricSpec] = [
    MetricSpec("node_thermal_zone_temp", "gauge", "Zone temperature in Celsius", ("zone", "type")),
    MetricSpec("node_cooling_device_cur_state", "gauge", "Current throttle state of the cooling device",
               ("name", "type")),
    MetricSpec("node_cooling_device_max_state", "gauge", "Maximum throttle state of the cooling device",
               ("name", "type")),
]


class ThermalZoneConfig(CollectorConfig):
    """Thermal zones (node_exporter thermal_zone)."""


def _text(path: str) -> str | None:
    try:
        return read_attr(path).decode("utf-8", "replace").strip()
    except OSError:
        return None


class ThermalZoneCollector:
    """Zone temperatures and cooling-device states."""

    NAME = NAME
    Config = ThermalZoneConfig
    metrics = METRICS

    def __init__(self, config: ThermalZoneConfig, paths: Paths, **_deps: Any) -> None:
        self.name = NAME
        self._base = paths.sys("class", "thermal")

    def collect(self) -> list[Sample]:
        """One round; NoData without thermal zones."""
        try:
            names = sorted(os.listdir(self._base))
        except OSError as err:
            raise NoData(f"no {self._base}") from err
        out: list[Sample] = []
        for n in names:
            d = os.path.join(self._base, n)
            if n.startswith("thermal_zone"):
                kind, temp = _text(os.path.join(d, "type")), _text(os.path.join(d, "temp"))
                try:
                    value = int(temp) if temp is not None else None
                except ValueError:
                    value = None
                if kind is None or value is None:  # procfs skips zones it cannot read (e.g. EAGAIN, ENODATA)
                    continue
                out.append(Sample("node_thermal_zone_temp", (("zone", n[len("thermal_zone"):]), ("type", kind)),
                                  value / 1000.0))
            elif n.startswith("cooling_device"):
                kind = _text(os.path.join(d, "type"))
                cur, top = _text(os.path.join(d, "cur_state")), _text(os.path.join(d, "max_state"))
                if kind is None:
                    continue
                labels = (("name", n[len("cooling_device"):]), ("type", kind))
                for metric, raw in (("node_cooling_device_cur_state", cur), ("node_cooling_device_max_state", top)):
                    try:
                        out.append(Sample(metric, labels, float(int(raw or ""))))
                    except ValueError:
                        continue
        if not out:
            raise NoData("no thermal zones")
        return out
