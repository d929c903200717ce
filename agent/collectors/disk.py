"""Block device I/O counters from ``/proc/diskstats`` (node_exporter's diskstats collector).

Names, units and default excludes are node_exporter's, so dashboards and rules work unchanged:
sectors are the kernel's fixed 512-byte units, times are milliseconds scaled by 0.001 (the same float
product node_exporter computes). Lines with fewer than 14 columns (pre-2.6.25 partition lines) are
skipped, as node_exporter does; the discard/flush columns of newer kernels are not exported here.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

from agent.collectors.common import DeviceFilter
from agent.core.config import DeviceFilterConfig
from agent.core.errors import CollectorError, NoData
from agent.core.metrics import Labels, MetricSpec, Sample
from agent.core.paths import Paths

NAME = "disk"

# node_exporter's --collector.diskstats.device-exclude default: ram/zram/loop/floppy devices and partitions.
DEFAULT_DEVICE_EXCLUDE = r"^(z?ram|loop|fd|(h|s|v|xv)d[a-z]|nvme\d+n\d+p)\d+$"

_SECTOR = 512.0
_MS = 1.0 / 1000.0  # node_exporter multiplies by this constant; dividing would round differently
_CACHE_MAX = 4096  # device names churn (loop, nbd, dm-N): bound the per-device cache


class DiskStats(NamedTuple):
    """The first 14 columns of one ``/proc/diskstats`` line (Documentation/admin-guide/iostats.rst)."""

    major: int
    minor: int
    device: str
    reads_completed: int
    reads_merged: int
    read_sectors: int
    read_time_ms: int
    writes_completed: int
    writes_merged: int
    write_sectors: int
    write_time_ms: int
    io_now: int
    io_time_ms: int
    io_time_weighted_ms: int


def parse_diskstats(text: str, keep: Callable[[str], bool] | None = None) -> list[DiskStats]:
    """Parse ``/proc/diskstats``; lines with fewer than 14 columns or non-numeric counters are skipped.

    ``keep(device)`` false skips the line before its numbers are converted (cheap filtering).
    """
    out = []
    for line in text.split("\n"):
        f = line.split()
        if len(f) < 14 or (keep is not None and not keep(f[2])):
            continue
        try:
            out.append(DiskStats(int(f[0]), int(f[1]), f[2], *map(int, f[3:14])))
        except ValueError:
            continue
    return out


# (spec, DiskStats field index, scale)
_FIELDS: tuple[tuple[MetricSpec, int, float], ...] = (
    (MetricSpec("node_disk_reads_completed_total", "counter",
                "The total number of reads completed successfully.", ("device",)), 3, 1.0),
    (MetricSpec("node_disk_read_bytes_total", "counter",
                "The total number of bytes read successfully.", ("device",)), 5, _SECTOR),
    (MetricSpec("node_disk_read_time_seconds_total", "counter",
                "The total number of seconds spent by all reads.", ("device",)), 6, _MS),
    (MetricSpec("node_disk_writes_completed_total", "counter",
                "The total number of writes completed successfully.", ("device",)), 7, 1.0),
    (MetricSpec("node_disk_written_bytes_total", "counter",
                "The total number of bytes written successfully.", ("device",)), 9, _SECTOR),
    (MetricSpec("node_disk_write_time_seconds_total", "counter",
                "This is the total number of seconds spent by all writes.", ("device",)), 10, _MS),
    (MetricSpec("node_disk_io_now", "gauge",
                "The number of I/Os currently in progress.", ("device",)), 11, 1.0),
    (MetricSpec("node_disk_io_time_seconds_total", "counter",
                "Total seconds spent doing I/Os.", ("device",)), 12, _MS),
    (MetricSpec("node_disk_io_time_weighted_seconds_total", "counter",
                "The weighted # of seconds spent doing I/Os.", ("device",)), 13, _MS),
)
_EMIT = tuple((spec.name, index, scale) for spec, index, scale in _FIELDS)


class DiskConfig(DeviceFilterConfig):
    """node_exporter diskstats collector equivalent."""


class DiskCollector:
    """``node_disk_*`` counters per block device, filtered by fully anchored include/exclude regexes.

    ``device_exclude: null`` means node_exporter's default exclude unless ``device_include`` is set
    (node_exporter applies its default only without an include); ``device_exclude: ""`` excludes nothing.
    """

    NAME = NAME
    Config = DiskConfig
    metrics = [spec for spec, _, _ in _FIELDS]

    def __init__(self, config: DiskConfig, paths: Paths, **_deps: Any) -> None:
        self.name = NAME
        self._path = paths.proc("diskstats")
        self._wanted = DeviceFilter(config.device_include, config.device_exclude, DEFAULT_DEVICE_EXCLUDE)
        self._labels: dict[str, Labels] = {}  # device -> label tuple

    def collect(self) -> list[Sample]:
        """One round of samples; NoData when every device is filtered out."""
        try:
            with open(self._path, "rb", buffering=0) as f:
                text = f.readall().decode("utf-8", "replace")
        except OSError as err:
            raise CollectorError(f"cannot read {self._path}: {err.strerror or err}") from err
        cache = self._labels
        if len(cache) > _CACHE_MAX:
            cache.clear()
        out: list[Sample] = []
        append = out.append
        for st in parse_diskstats(text, self._wanted):
            labels = cache.get(st.device)
            if labels is None:
                labels = cache[st.device] = (("device", st.device),)
            for name, index, scale in _EMIT:
                append(Sample(name, labels, st[index] * scale))
        if not out:
            raise NoData(f"no block devices left after filtering {self._path}")
        return out
