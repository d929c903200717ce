"""NVIDIA GPU health and load through NVML, with dcgm-exporter's metric names and labels.

Per GPU (and per MIG instance for framebuffer and GPM activity): load, encoder/decoder, clocks, thermal,
power and power limits, ECC, retired pages, row remapping, PCIe link (generation/width, current vs max),
PCIe/NVLink errors and NVLink bandwidth, vGPU license; the DCGM profiling set (``DCGM_FI_PROF_*``) from
NVML's GPM API (Hopper and later: a GPM sample per GPU / MIG instance each tick, metrics between the last
two; absent where GPM is not supported); which Slurm job or Kubernetes pod uses each GPU; XIDs counted from
NVML events *and* ``NVRM: Xid`` kernel-log lines, each event once. Every NVML call goes through
:class:`agent.collectors.nvml.Nvml` (deadline, abandonable worker, error translation): a wedged driver
makes ``collect()`` report ``nodewarden_gpu_collector_hung 1`` and fail fast instead of blocking the loop.
``config.simulate`` swaps pynvml for the scenario-driven fake.

The parts: the catalogue (:mod:`~agent.collectors.gpu_catalogue`), one :class:`~agent.collectors.gpu_device.
GpuDevice` per GPU (its state and per-tick read, with :mod:`~agent.collectors.gpu_mig` and
:mod:`~agent.collectors.gpu_gpm`), and the XID sources (:mod:`~agent.collectors.gpu_xid`). This module holds
the collector: NVML's lifecycle, discovery, the tick and the rows that come from its own state.
"""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Callable, Iterable
from typing import Any

import structlog
from pydantic import Field

from agent.collectors import jobs
from agent.collectors.gpu_catalogue import METRICS
from agent.collectors.gpu_device import GpuDevice
from agent.collectors.gpu_xid import XidEventListener, XidTracker
from agent.collectors.kmsg import KmsgReader
from agent.collectors.nvml import (
    UNSUPPORTED,
    GpuLost,
    Nvml,
    NvmlHung,
    NvmlUnavailable,
    handle_key,
    load_module,
    text,
    unavailable_reason,
)
from agent.collectors.nvml import (
    forget as nvml_forget,
)
from agent.core.config import CollectorConfig, Duration
from agent.core.errors import CollectorError, NoData
from agent.core.metrics import Labels, Sample
from agent.core.paths import Paths

NAME = "gpu"
log = structlog.get_logger("nodewarden.gpu")

INIT_RETRY = 60.0  # seconds between attempts to find NVML when it is unavailable


class PartialFailure(CollectorError):
    """``collect()`` failed but still has samples to report (store them; success stays 0)."""

    def __init__(self, message: str, samples: list[Sample]) -> None:
        super().__init__(message)
        self.samples = samples


class GpuConfig(CollectorConfig):
    """NVIDIA GPUs through NVML."""

    simulate: str | None = Field(None, description="scenario name or file: fake NVML instead of pynvml")
    call_timeout: Duration = 2.0
    max_abandoned_calls: int = Field(4, ge=1, le=64)
    kmsg: bool = Field(True, description="also read NVRM Xid lines from /dev/kmsg (root only)")
    xid_dedup_window: Duration = Field(10.0, description="an XID seen by NVML and kmsg within this counts once")
    export_process_memory: bool = Field(False, description="export per-process GPU memory with a pid label")
    gpm: bool = Field(True, description="DCGM_FI_PROF_* from NVML GPM (Hopper+): two samples per GPU per tick")
    job_info: bool = Field(True, description="nodewarden_gpu_job_info from /proc/PID/cgroup of GPU processes")


class GpuCollector:
    """The ``gpu`` collector (see module docstring)."""

    NAME = NAME
    Config = GpuConfig
    name = NAME
    metrics = METRICS

    def __init__(
        self,
        config: Any,
        paths: Paths,
        hostname: str = "",
        *,
        nvml_module: Any = None,
        clock: Callable[[], float] = time.monotonic,
        **_deps: Any,
    ) -> None:
        self.config = config
        self.paths = paths
        self.hostname = hostname or socket.gethostname()
        self._clock = clock
        # A simulation scenario is loaded now, so a bad one fails at start with its file:line (ConfigError).
        self._module = nvml_module
        if self._module is None and getattr(config, "simulate", None):
            self._module = load_module(config.simulate, clock)
        self.nvml: Nvml | None = None
        self._gpus: list[GpuDevice] = []
        self._by_handle: dict[Any, GpuDevice] = {}
        self._by_bus: dict[str, GpuDevice] = {}
        self._ready = False
        self._hung = False
        self._reason = "not started"
        self._retry_at = 0.0
        self._driver_labels: Labels = ()
        self.processes: dict[int, list[tuple[int, int]]] = {}  # gpu index -> [(pid, used bytes)]
        # XIDs: reports arrive from the event thread and the kernel log; counted on the collect() thread.
        self.xids = XidTracker(getattr(config, "xid_dedup_window", 10.0), clock)
        self._events = XidEventListener(self.xids)
        self.kmsg_status = "disabled" if not getattr(config, "kmsg", True) else "not started"
        self._jobs = jobs.Resolver(paths) if getattr(config, "job_info", True) else None
        self.kmsg_reader: KmsgReader | None = _deps.get("kmsg") if getattr(config, "kmsg", True) else None
        if self.kmsg_reader is not None:  # the daemon's shared reader: NVRM Xid lines are one consumer
            self.kmsg_reader.subscribe(self.xids.kmsg_record)
            self.kmsg_status = f"shared reader: {self.kmsg_reader.path}"

    @property
    def unsupported(self) -> dict[str, list[str]]:
        """GPU index -> the fields its driver does not support (GPUs probed by a first tick)."""
        return {str(g.index): sorted(g.skip) for g in self._gpus if g.probed and g.skip}

    # -- lifecycle ---------------------------------------------------------------------------------
    def start(self) -> None:
        """Follow the kernel log (NVML itself starts lazily, under a deadline, in collect()).

        With the daemon's shared reader (``kmsg=``) this collector is one consumer; built alone, it reads
        ``/dev/kmsg`` with a private reader from the end (records already there are not counted).
        """
        if getattr(self.config, "kmsg", True) and self.kmsg_reader is None:
            self.kmsg_reader = KmsgReader(self.paths.dev("kmsg"), start_at_end=True)
            self.kmsg_reader.subscribe(self.xids.kmsg_record)
            self.kmsg_reader.start()
            self.kmsg_status = self.kmsg_reader.status

    def close(self) -> None:
        """Stop background threads (bounded: at most ~1 s) and the NVML worker."""
        if self.kmsg_reader is not None:
            self.kmsg_reader.unsubscribe(self.xids.kmsg_record)
        release = getattr(self._module, "release", None)
        if callable(release):  # the fake: let hung calls go so their threads end
            release()
            nvml_forget(self._module)
        self._events.stop(timeout=1.0)
        if self.nvml is not None:
            if self._ready:  # under the deadline like every call; a wedged driver cannot block shutdown
                with contextlib.suppress(Exception):
                    self.nvml.run(self._free)
                with contextlib.suppress(Exception):
                    self.nvml.run(self.nvml.nv.nvmlShutdown)
                self._ready = False
            self.nvml.close()

    def describe(self) -> str:
        """One line: why there are no GPU rows (empty when GPUs are being reported)."""
        if self._ready and self._gpus and not self._hung:
            return ""
        return self._reason

    # -- collect -------------------------------------------------------------------------------------
    def collect(self) -> Iterable[Sample]:
        """One round of samples; NoData without NVML; PartialFailure (with samples) when calls hang."""
        now = self._clock()
        if not self._ready:
            if now < self._retry_at:
                raise NoData(self._reason)
            try:
                self._open()
            except NvmlUnavailable as err:
                self._reason = str(err)
                self._retry_at = now + INIT_RETRY
                raise NoData(self._reason) from err
            except NvmlHung as err:
                self._reason = f"NVML hung: {err}"
                raise PartialFailure(self._reason, self._hung_samples([])) from err
        out: list[Sample] = []
        try:
            self.nvml.run(self._sample_all, out)
        except NvmlHung as err:
            self._reason = f"NVML hung: {err}"
            raise PartialFailure(self._reason, self._hung_samples(list(out))) from err
        except NvmlUnavailable as err:
            self._ready = False
            self._reason = str(err)
            raise NoData(self._reason) from err
        self._hung = False
        self.xids.drain(now, self._by_handle, self._by_bus)
        self._tail(out, hung=0.0)
        return out

    def _hung_samples(self, partial: list[Sample]) -> list[Sample]:
        self._hung = True
        self.xids.drain(self._clock(), self._by_handle, self._by_bus)
        self._tail(partial, hung=1.0)
        return partial

    def _tail(self, out: list[Sample], hung: float) -> None:
        """Samples that come from the collector's own state (valid even while NVML hangs)."""
        append = out.append
        self.xids.samples(out)
        for g in self._gpus:
            append(Sample("DCGM_FI_DEV_XID_ERRORS", g.labels, g.last_xid))
        if self._driver_labels:
            append(Sample("nodewarden_gpu_driver_info", self._driver_labels, 1.0))
            append(Sample("DCGM_FI_DEV_COUNT", (("hostname", self.hostname),), float(len(self._gpus))))
        append(Sample("nodewarden_gpu_collector_hung", (), hung))
        append(Sample("nodewarden_gpu_abandoned_calls", (), float(self.nvml.caller.abandoned if self.nvml else 0)))

    # -- NVML inventory (runs in the NVML worker) ---------------------------------------------------
    def _open(self) -> None:
        if self.nvml is None:
            module = self._module
            if module is None:
                module = self._module = load_module(getattr(self.config, "simulate", None), self._clock)
            self.nvml = Nvml(module, self.config.call_timeout, self.config.max_abandoned_calls)
        self.nvml.run(self._discover)
        self._ready = True
        self._reason = "" if self._gpus else "no NVIDIA GPUs found by NVML"
        if self._gpus:
            self._events.start(self.nvml)

    def _discover(self) -> None:
        nvml = self.nvml
        nv = nvml.nv
        nvml.caller.progress()
        try:
            nv.nvmlInit()
        except nv.NVMLError as err:
            raise NvmlUnavailable(unavailable_reason(nvml.code(err) or 0)) from err
        get = nvml.get
        driver = text(get(nv.nvmlSystemGetDriverVersion))
        cuda = get(nv.nvmlSystemGetCudaDriverVersion)
        cuda_text = f"{cuda // 1000}.{cuda % 1000 // 10}" if isinstance(cuda, int) else ""
        self._driver_labels = (("driver_version", driver), ("cuda_version", cuda_text),
                               ("nvml_version", text(get(nv.nvmlSystemGetNVMLVersion))))
        count = get(nv.nvmlDeviceGetCount) or 0
        host = self.hostname
        gpm = getattr(self.config, "gpm", True)
        parts = {"jobs": self._jobs, "process_memory": getattr(self.config, "export_process_memory", False)}
        gpus = []
        for i in range(count if isinstance(count, int) else 0):
            try:
                h = get(nv.nvmlDeviceGetHandleByIndex, i)
            except GpuLost:
                h = None
            if h is None or h is UNSUPPORTED:
                gpus.append(GpuDevice.lost_gpu(nvml, i, None, host, driver, **parts))
                continue
            try:
                pci = get(nv.nvmlDeviceGetPciInfo, h)
                minor = get(nv.nvmlDeviceGetMinorNumber, h)
                g = GpuDevice(nvml, i, h, text(get(nv.nvmlDeviceGetUUID, h)), text(getattr(pci, "busId", "")),
                              minor if isinstance(minor, int) else i, text(get(nv.nvmlDeviceGetName, h)), host,
                              driver, **parts)
                g.discover_parts(gpm)
            except GpuLost:
                g = GpuDevice.lost_gpu(nvml, i, h, host, driver, **parts)
            gpus.append(g)
        self._gpus = gpus
        self._by_handle = {handle_key(g.handle): g for g in gpus if g.handle is not None}
        self._by_bus = {g.bus: g for g in gpus if g.bus}
        self._events.register(nvml, gpus)

    def _free(self) -> None:
        for g in self._gpus:
            g.close()

    # -- per-tick sampling (runs in the NVML worker) -------------------------------------------------
    def _sample_all(self, out: list[Sample]) -> None:
        for g in self._gpus:
            n = len(out)
            try:
                if g.handle is None:
                    raise GpuLost("no handle")
                g.sample(out)
                g.lost = False
                out.append(Sample("nodewarden_gpu_up", g.labels, 1.0))
            except GpuLost:
                del out[n:]
                if not g.lost:
                    log.warning("gpu lost", gpu=g.index, uuid=g.uuid, pci_bus_id=g.bus_nvml)
                g.lost = True
                out.append(Sample("nodewarden_gpu_up", g.labels, 0.0))
            if g.processes is not None:
                self.processes[g.index] = g.processes
        if self._jobs is not None:  # PIDs are reused: forget processes no GPU lists any more
            self._jobs.forget_except({pid for plist in self.processes.values() for pid, _ in plist})
        for g in self._gpus:
            g.finish_probe()
