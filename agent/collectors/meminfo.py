"""Memory statistics from ``/proc/meminfo`` (node_exporter's meminfo collector: ``node_memory_*``).

Every ``Key: value [kB]`` line becomes a gauge, as node_exporter names it: ``(`` becomes ``_`` and ``)`` is
dropped (``Active(anon)`` -> ``Active_anon``); values in kB are multiplied by 1024 and get ``_bytes``
(``node_memory_MemTotal_bytes``); unitless counts keep the bare name (``node_memory_HugePages_Total``).
"""

from __future__ import annotations

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
    """Memory statistics (node_exporter meminfo)."""


class MeminfoCollector:
    """``node_memory_*`` gauges."""

    NAME = NAME
    Config = MeminfoConfig
    metrics = METRICS

    def __init__(self, config: MeminfoConfig, paths: Paths, **_deps: object) -> None:
        self.name = NAME
        self._path = paths.proc("meminfo")

    def collect(self) -> list[Sample]:
        """One round."""
        try:
            text = read_all(self._path).decode("ascii", "replace")
        except FileNotFoundError as err:  # not Linux, or a fixture tree without it
            raise NoData(f"no {self._path}") from err
        except OSError as err:
            raise CollectorError(f"cannot read {self._path}: {err.strerror}") from err
        return [Sample(name, (), value) for name, value in parse_meminfo(text)]
