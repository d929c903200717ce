"""The agent's own ``process_*`` metrics, as every Prometheus exporter exports them.

Same names, help and values as prometheus_client's ``ProcessCollector`` (CPU seconds, resident and virtual
memory, open and maximum file descriptors, start time since the epoch), read through psutil for the agent's
own PID (or an injected ``pid``). This always reads the real ``/proc`` of the agent, not ``paths.procfs``.
Resident memory comes from ``/proc/PID/statm`` (psutil) where client_python reads ``/proc/PID/stat``; the
kernel updates the latter's counter lazily, so the two may differ by a few pages.
"""

from __future__ import annotations

import os
from typing import Any

import psutil

from agent.core.config import CollectorConfig
from agent.core.errors import CollectorError
from agent.core.metrics import MetricSpec, Sample
from agent.core.paths import Paths

NAME = "process"
METRICS: list[MetricSpec] = [
    MetricSpec("process_cpu_seconds_total", "counter", "Total user and system CPU time spent in seconds."),
    MetricSpec("process_virtual_memory_bytes", "gauge", "Virtual memory size in bytes."),
    MetricSpec("process_resident_memory_bytes", "gauge", "Resident memory size in bytes."),
    MetricSpec("process_start_time_seconds", "gauge", "Start time of the process since unix epoch in seconds."),
    MetricSpec("process_open_fds", "gauge", "Number of open file descriptors."),
    MetricSpec("process_max_fds", "gauge", "Maximum number of open file descriptors."),
]


class ProcessConfig(CollectorConfig):
    """Self-metrics of the agent process (prometheus_client's process collector)."""


class ProcessCollector:
    """``process_*`` for one process (the agent by default)."""

    NAME = NAME
    Config = ProcessConfig
    metrics = METRICS

    def __init__(self, config: ProcessConfig, paths: Paths, *, pid: int | None = None, **_deps: Any) -> None:
        self.name = NAME
        self._proc = psutil.Process(pid if pid is not None else os.getpid())
        self._start = self._proc.create_time()  # btime + starttime / CLK_TCK, as client_python computes it

    def collect(self) -> list[Sample]:
        """One round."""
        p = self._proc
        try:
            with p.oneshot():
                cpu = p.cpu_times()
                mem = p.memory_info()
                fds = p.num_fds()
            soft, _ = p.rlimit(psutil.RLIMIT_NOFILE)
        except psutil.Error as err:
            raise CollectorError(f"cannot read process {p.pid}: {err}") from err
        return [
            Sample("process_cpu_seconds_total", (), cpu.user + cpu.system),
            Sample("process_virtual_memory_bytes", (), float(mem.vms)),
            Sample("process_resident_memory_bytes", (), float(mem.rss)),
            Sample("process_start_time_seconds", (), self._start),
            Sample("process_open_fds", (), float(fds)),
            Sample("process_max_fds", (), float(soft)),
        ]
