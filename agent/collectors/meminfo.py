"""Memory statistics from ``/proc/meminfo`` (node_exporter's meminfo collector: ``node_memory_*``).

Every ``Key: value [kB]`` line becomes a gauge, as node_exporter names it: ``(`` becomes ``_`` and ``)`` is
dropped (``Active(anon)`` -> ``Active_anon``); values in kB are multiplied by 1024 and get ``_bytes``
(``node_memory_MemTotal_bytes``); unitless counts keep the bare name (``node_memory_HugePages_Total``).

``numa: true`` adds node_exporter's meminfo_numa collector (off by default there too): per NUMA node
``node_memory_numa_<Field>{node}`` from ``/sys/devices/system/node/nodeN/meminfo`` (kB * 1024, no ``_bytes``)
and ``node_memory_numa_<stat>_total{node}`` counters from ``numastat``.
"""

from __future__ import annotations

import os
import re

from pydantic import Field

from agent.collectors.common import read_all
from agent.core.config import CollectorConfig
from agent.core.errors import CollectorError, NoData
from agent.core.metrics import MetricSpec, Sample
from agent.core.paths import Paths

NAME = "meminfo"

# Fields of a current x86-64 kernel (the catalogue; a field a kernel adds is exported under the same rule).
_KB = (
    "MemTotal", "MemFree", "MemAvailable", "Buffers", "Cached", "SwapCached", "Active", "Inactive",
    "Active(anon)", "Inactive(anon)", "Active(file)", "Inactive(file)", "Unevictable", "Mlocked", "SwapTotal",
    "SwapFree", "Zswap", "Zswapped", "Dirty", "Writeback", "AnonPages", "Mapped", "Shmem", "KReclaimable",
    "Slab", "SReclaimable", "SUnreclaim", "KernelStack", "ShadowCallStack", "PageTables", "SecPageTables",
    "NFS_Unstable", "Bounce", "WritebackTmp", "CommitLimit", "Committed_AS", "VmallocTotal", "VmallocUsed",
    "VmallocChunk", "Percpu", "HardwareCorrupted", "AnonHugePages", "ShmemHugePages", "ShmemPmdMapped",
    "FileHugePages", "FilePmdMapped", "CmaTotal", "CmaFree", "Unaccepted", "Hugepagesize", "Hugetlb",
    "DirectMap4k", "DirectMap2M", "DirectMap1G",
)
_COUNT = ("HugePages_Total", "HugePages_Free", "HugePages_Rsvd", "HugePages_Surp")


def metric_name(key: str, kb: bool) -> str:
    """node_exporter's family name for a meminfo key."""
    name = key.replace("(", "_").replace(")", "")
    return f"node_memory_{name}_bytes" if kb else f"node_memory_{name}"


METRICS: list[MetricSpec] = [
    *(MetricSpec(metric_name(k, True), "gauge", f"Memory information field {metric_name(k, True)[12:]}.")
      for k in _KB),
    *(MetricSpec(metric_name(k, False), "gauge", f"Memory information field {k}.") for k in _COUNT),
]


_NUMA_GAUGES = (
    "Active", "Active_anon", "Active_file", "AnonHugePages", "AnonPages", "Bounce", "Dirty", "FilePages",
    "HugePages_Free", "HugePages_Surp", "HugePages_Total", "Inactive", "Inactive_anon", "Inactive_file",
    "KernelStack", "Mapped", "MemFree", "MemTotal", "MemUsed", "Mlocked", "NFS_Unstable", "PageTables",
    "SReclaimable", "SUnreclaim", "Shmem", "Slab", "Unevictable", "Writeback", "WritebackTmp",
)
_NUMA_STATS = ("interleave_hit", "local_node", "numa_foreign", "numa_hit", "numa_miss", "other_node")
METRICS += [MetricSpec(f"node_memory_numa_{f}", "gauge", f"Memory information field {f}.", ("node",))
            for f in _NUMA_GAUGES]
METRICS += [MetricSpec(f"node_memory_numa_{f}_total", "counter", f"Memory information field {f}_total.", ("node",))
            for f in _NUMA_STATS]


def parse_numa_meminfo(text: str) -> list[tuple[str, float]]:
    """``Node 0 MemTotal: 8 kB`` lines to (``node_memory_numa_MemTotal``, bytes); ValueError when garbled."""
    out = []
    for line in text.splitlines():
        parts = line.split()
        if not parts:
            continue
        if len(parts) not in (4, 5) or (len(parts) == 5 and parts[4] != "kB"):
            raise ValueError(f"invalid line in NUMA meminfo: {line!r}")
        value = float(parts[3]) * (1024 if len(parts) == 5 else 1)
        key = re.sub(r"\((.*)\)", r"_\1", parts[2].rstrip(":"))
        out.append((f"node_memory_numa_{key}", value))
    return out


def parse_numastat(text: str) -> list[tuple[str, float]]:
    """``numa_hit 193460335812`` lines to (``node_memory_numa_numa_hit_total``, value)."""
    out = []
    for line in text.splitlines():
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 2:
            raise ValueError(f"invalid line in numastat: {line!r}")
        out.append((f"node_memory_numa_{parts[0]}_total", float(parts[1])))
    return out


def parse_meminfo(text: str) -> list[tuple[str, float]]:
    """(metric name, value) per line; lines that do not parse are skipped."""
    out = []
    for line in text.splitlines():
        key, sep, rest = line.partition(":")
        parts = rest.split()
        if not sep or not parts or len(parts) > 2:
            continue
        try:
            value = float(int(parts[0]))
        except ValueError:
            continue
        kb = len(parts) == 2 and parts[1] == "kB"
        out.append((metric_name(key.strip(), kb), value * 1024 if kb else value))
    return out


class MeminfoConfig(CollectorConfig):
    """Memory statistics (node_exporter meminfo, and meminfo_numa with ``numa: true``)."""

    numa: bool = Field(False, description="also export node_memory_numa_* per NUMA node (node_exporter meminfo_numa)")


class MeminfoCollector:
    """``node_memory_*`` gauges."""

    NAME = NAME
    Config = MeminfoConfig
    metrics = METRICS

    def __init__(self, config: MeminfoConfig, paths: Paths, **_deps: object) -> None:
        self.name = NAME
        self._path = paths.proc("meminfo")
        self._numa = paths.sys("devices", "system", "node") if config.numa else None

    def collect(self) -> list[Sample]:
        """One round."""
        try:
            text = read_all(self._path).decode("ascii", "replace")
        except FileNotFoundError as err:  # not Linux, or a fixture tree without it
            raise NoData(f"no {self._path}") from err
        except OSError as err:
            raise CollectorError(f"cannot read {self._path}: {err.strerror}") from err
        out = [Sample(name, (), value) for name, value in parse_meminfo(text)]
        if self._numa is not None:
            self._numa_samples(self._numa, out)
        return out

    @staticmethod
    def _numa_samples(base: str, out: list[Sample]) -> None:
        try:
            nodes = sorted(n for n in os.listdir(base) if n.startswith("node") and n[4:].isdigit())
        except OSError:
            return
        for n in nodes:
            labels = (("node", n[4:]),)
            try:
                for name, value in parse_numa_meminfo(read_all(os.path.join(base, n, "meminfo")).decode()):
                    out.append(Sample(name, labels, value))
                for name, value in parse_numastat(read_all(os.path.join(base, n, "numastat")).decode()):
                    out.append(Sample(name, labels, value))
            except (OSError, ValueError) as err:
                raise CollectorError(f"NUMA node {n}: {err}") from err
