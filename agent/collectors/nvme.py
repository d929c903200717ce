"""NVMe controllers and namespaces from ``/sys/class/nvme`` (node_exporter's nvme collector).

Namespace sizes are ``size`` and ``nuse`` (in logical blocks) times ``queue/logical_block_size``, as
node_exporter computes them. Controller timeouts and resets show up in the kernel problem detector.
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

NAME = "nvme"
_NS = re.compile(r"^nvme\d+c?\d*n(\d+)$")
_NSL = ("device", "nsid")
METRICS: list[MetricSpec] = [
    MetricSpec("node_nvme_info", "gauge", "Non-numeric data from /sys/class/nvme/<device>, value is always 1.",
               ("device", "firmware_revision", "model", "serial", "state", "cntlid")),
    MetricSpec("node_nvme_namespace_info", "gauge", "Information about NVMe namespaces. Value is always 1",
               ("device", "nsid", "ana_state")),
    MetricSpec("node_nvme_namespace_capacity_bytes", "gauge", "Capacity of the NVMe namespace in bytes. Computed as "
               "namespace_size * namespace_logical_block_size", _NSL),
    MetricSpec("node_nvme_namespace_size_bytes", "gauge", "Size of the NVMe namespace in bytes. Available in "
               "/sys/class/nvme/<device>/<namespace>/size", _NSL),
    MetricSpec("node_nvme_namespace_used_bytes", "gauge", "Used space of the NVMe namespace in bytes. Available in "
               "/sys/class/nvme/<device>/<namespace>/nuse", _NSL),
    MetricSpec("node_nvme_namespace_logical_block_size_bytes", "gauge", "Logical block size of the NVMe namespace "
               "in bytes. Usually 4Kb. Available in /sys/class/nvme/<device>/<namespace>/queue/logical_block_size",
               _NSL),
]


def _text(path: str) -> str:
    try:
        return read_attr(path).decode("utf-8", "replace").strip()
    except OSError:
        return ""


def _int(path: str) -> int | None:
    try:
        return int(read_attr(path))
    except (OSError, ValueError):
        return None


class NvmeConfig(CollectorConfig):
    """NVMe controllers and namespaces (node_exporter nvme)."""


class NvmeCollector:
    """``node_nvme_*`` per controller and namespace."""

    NAME = NAME
    Config = NvmeConfig
    metrics = METRICS

    def __init__(self, config: NvmeConfig, paths: Paths, **_deps: Any) -> None:
        self.name = NAME
        self._base = paths.sys("class", "nvme")

    def collect(self) -> list[Sample]:
        """One round; NoData without NVMe controllers."""
        try:
            devices = sorted(os.listdir(self._base))
        except OSError as err:
            raise NoData("no /sys/class/nvme") from err
        out: list[Sample] = []
        for dev in devices:
            d = os.path.join(self._base, dev)
            out.append(Sample("node_nvme_info", (
                ("device", dev), ("firmware_revision", _text(os.path.join(d, "firmware_rev"))),
                ("model", _text(os.path.join(d, "model"))), ("serial", _text(os.path.join(d, "serial"))),
                ("state", _text(os.path.join(d, "state"))), ("cntlid", _text(os.path.join(d, "cntlid")))), 1.0))
            try:
                names = sorted(os.listdir(d))
            except OSError:
                continue
            for ns in names:
                m = _NS.match(ns)
                if m is None:
                    continue
                nd = os.path.join(d, ns)
                nsid = m[1]
                labels = (("device", dev), ("nsid", nsid))
                lbs = _int(os.path.join(nd, "queue", "logical_block_size"))
                size, used = _int(os.path.join(nd, "size")), _int(os.path.join(nd, "nuse"))
                if lbs is None or size is None or used is None:
                    continue
                out.append(Sample("node_nvme_namespace_info",
                                  (*labels, ("ana_state", _text(os.path.join(nd, "ana_state")))), 1.0))
                out.append(Sample("node_nvme_namespace_capacity_bytes", labels, float(size * lbs)))
                out.append(Sample("node_nvme_namespace_size_bytes", labels, float(size * lbs)))
                out.append(Sample("node_nvme_namespace_used_bytes", labels, float(used * lbs)))
                out.append(Sample("node_nvme_namespace_logical_block_size_bytes", labels, float(lbs)))
        if not out:
            raise NoData("no NVMe controllers")
        return out
