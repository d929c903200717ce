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
"""

from __future__ import annotations

import contextlib
import math
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

import structlog
from pydantic import Field

from agent.collectors import jobs
from agent.collectors import xid as xidlib
from agent.collectors.gpu_catalogue import (
    CLOCK_EVENT_REASONS,
    CLOCK_REASONS_NAME,
    FIELDS,
    GPM_METRICS,
    GPM_METRICS_GET_VERSION,
    METRICS,
    POWER_CONSTRAINTS,
    POWER_LIMITS,
    SUMMED,
    VALUE_ATTR,
)
from agent.collectors.kmsg import KmsgReader, KmsgRecord
from agent.collectors.nvml import (
    UNSUPPORTED,
    GpuLost,
    Nvml,
    NvmlHung,
    NvmlUnavailable,
    load_module,
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


class _Gpu:
    """What the collector knows about one GPU between ticks."""

    def __init__(self, index: int, handle: Any, uuid: str, bus: str, minor: int, model: str, host: str,
                 driver: str = "") -> None:
        self.index = index
        self.handle = handle
        self.uuid = uuid
        self.bus_nvml = bus
        self.bus = xidlib.normalize_bus_id(bus) if bus else ""
        self.labels: Labels = (
            ("gpu", str(index)),
            ("UUID", uuid),
            ("pci_bus_id", bus),
            ("device", f"nvidia{minor}"),
            ("modelName", model),
            ("hostname", host),
            ("DCGM_FI_DRIVER_VERSION", driver),
        )
        self.reason_labels = [((*self.labels, ("reason", name)), bit) for name, bit in CLOCK_EVENT_REASONS]
        self.skip: set[str] = set()
        self.field_ids = [f[0] for f in FIELDS]
        self.field_specs = [(f[1], f[2]) for f in FIELDS]
        self.mig: list[tuple[Any, Labels, int]] = []  # (handle, labels, GPU instance id)
        self.static: list[Sample] | None = None  # values read once (power constraints, max PCIe link)
        # GPM: the previous and the current sample per scope (None: whole GPU, else GPU instance id)
        self.gpm: dict[int | None, list[Any]] = {}
        self.gpm_ready: set[int | None] = set()
        self.mem_version: int | None = None
        self.lost = False
        self.probed = False
        self.last_xid = 0.0


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
        self._gpus: list[_Gpu] = []
        self._by_handle: dict[Any, _Gpu] = {}
        self._by_bus: dict[str, _Gpu] = {}
        self._ready = False
        self._hung = False
        self._reason = "not started"
        self._retry_at = 0.0
        self._driver_labels: Labels = ()
        self.unsupported: dict[str, list[str]] = {}
        self.processes: dict[int, list[tuple[int, int]]] = {}  # gpu index -> [(pid, used bytes)]
        # XID bookkeeping (events arrive from threads; counted on the collect() thread).
        self._inbox: deque[tuple[str, Any, int, float]] = deque(maxlen=10_000)
        self._dedup = xidlib.Dedup(getattr(config, "xid_dedup_window", 10.0))
        self._xid_counts: dict[Labels, float] = {}
        self._xid_seen: dict[str, float] = {"nvml": 0.0, "kmsg": 0.0}
        self._xids_known: set[int] = set()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._event_thread: threading.Thread | None = None
        self.kmsg_status = "disabled" if not getattr(config, "kmsg", True) else "not started"
        self._jobs = jobs.Resolver(paths) if getattr(config, "job_info", True) else None
        self.kmsg_reader: KmsgReader | None = _deps.get("kmsg") if getattr(config, "kmsg", True) else None
        if self.kmsg_reader is not None:  # the daemon's shared reader: NVRM Xid lines are one consumer
            self.kmsg_reader.subscribe(self._kmsg_record)
            self.kmsg_status = f"shared reader: {self.kmsg_reader.path}"

    # -- lifecycle ---------------------------------------------------------------------------------
    def start(self) -> None:
        """Follow the kernel log (NVML itself starts lazily, under a deadline, in collect()).

        With the daemon's shared reader (``kmsg=``) this collector is one consumer; built alone, it reads
        ``/dev/kmsg`` with a private reader from the end (records already there are not counted).
        """
        if getattr(self.config, "kmsg", True) and self.kmsg_reader is None:
            self.kmsg_reader = KmsgReader(self.paths.dev("kmsg"), start_at_end=True)
            self.kmsg_reader.subscribe(self._kmsg_record)
            self.kmsg_reader.start()
            self.kmsg_status = self.kmsg_reader.status

    def close(self) -> None:
        """Stop background threads (bounded: at most ~1 s) and the NVML worker."""
        self._stop.set()
        if self.kmsg_reader is not None:
            self.kmsg_reader.unsubscribe(self._kmsg_record)
        release = getattr(self._module, "release", None)
        if callable(release):  # the fake: let hung calls go so their threads end
            release()
            nvml_forget(self._module)
        for t in [*self._threads, self._event_thread]:
            if t is not None:
                t.join(timeout=1.0)
        if self.nvml is not None:
            if self._ready:  # under the deadline like every call; a wedged driver cannot block shutdown
                with contextlib.suppress(Exception):
                    self.nvml.run(self._free_gpm)
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
        self._drain_xids(now)
        self._tail(out, hung=0.0)
        return out

    def _hung_samples(self, partial: list[Sample]) -> list[Sample]:
        self._hung = True
        self._drain_xids(self._clock())
        self._tail(partial, hung=1.0)
        return partial

    def _tail(self, out: list[Sample], hung: float) -> None:
        """Samples that come from the collector's own state (valid even while NVML hangs)."""
        append = out.append
        for labels, count in self._xid_counts.items():
            append(Sample("nodewarden_gpu_xid_errors_total", labels, count))
        for xid in self._xids_known:
            info = xidlib.describe(xid)
            append(Sample("nodewarden_gpu_xid_info", (("xid", str(xid)), ("name", info.name),
                                                      ("action", info.action)), 1.0))
        for source, count in self._xid_seen.items():
            append(Sample("nodewarden_gpu_xid_events_seen_total", (("source", source),), count))
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
        if self._gpus and (self._event_thread is None or not self._event_thread.is_alive()):
            self._event_thread = threading.Thread(target=self._event_loop, name="gpu-xid-events", daemon=True)
            self._event_thread.start()

    def _discover(self) -> None:
        nvml = self.nvml
        nv = nvml.nv
        nvml.caller.progress()
        try:
            nv.nvmlInit()
        except nv.NVMLError as err:
            raise NvmlUnavailable(unavailable_reason(nvml.code(err) or 0)) from err
        get = nvml.get
        driver = _text(get(nv.nvmlSystemGetDriverVersion))
        cuda = get(nv.nvmlSystemGetCudaDriverVersion)
        cuda_text = f"{cuda // 1000}.{cuda % 1000 // 10}" if isinstance(cuda, int) else ""
        self._driver_labels = (("driver_version", driver), ("cuda_version", cuda_text),
                               ("nvml_version", _text(get(nv.nvmlSystemGetNVMLVersion))))
        count = get(nv.nvmlDeviceGetCount) or 0
        gpus = []
        for i in range(count if isinstance(count, int) else 0):
            try:
                h = get(nv.nvmlDeviceGetHandleByIndex, i)
            except GpuLost:
                h = None
            if h is None or h is UNSUPPORTED:
                g = _Gpu(i, None, "", "", i, "", self.hostname, driver)
                g.lost = True
                gpus.append(g)
                continue
            try:
                pci = get(nv.nvmlDeviceGetPciInfo, h)
                minor = get(nv.nvmlDeviceGetMinorNumber, h)
                g = _Gpu(i, h, _text(get(nv.nvmlDeviceGetUUID, h)), _text(getattr(pci, "busId", "")),
                         minor if isinstance(minor, int) else i, _text(get(nv.nvmlDeviceGetName, h)), self.hostname,
                         driver)
                self._discover_mig(g)
                self._discover_gpm(g)
            except GpuLost:
                g = _Gpu(i, h, "", "", i, "", self.hostname, driver)
                g.lost = True
            gpus.append(g)
        self._gpus = gpus
        self._by_handle = {_handle_key(g.handle): g for g in gpus if g.handle is not None}
        self._by_bus = {g.bus: g for g in gpus if g.bus}
        self._register_events()

    def _discover_mig(self, g: _Gpu) -> None:
        nv = self.nvml.nv
        get = self.nvml.get
        mode = get(nv.nvmlDeviceGetMigMode, g.handle)
        if not isinstance(mode, (list, tuple)) or not mode[0]:
            return
        n = get(nv.nvmlDeviceGetMaxMigDeviceCount, g.handle) or 0
        for k in range(n if isinstance(n, int) else 0):
            mh = get(nv.nvmlDeviceGetMigDeviceHandleByIndex, g.handle, k)
            if mh is None or mh is UNSUPPORTED:
                continue
            gi = get(nv.nvmlDeviceGetGpuInstanceId, mh)
            profile = ""
            inst = get(nv.nvmlDeviceGetGpuInstanceById, g.handle, gi)
            info = get(nv.nvmlGpuInstanceGetInfo, inst) if inst not in (None, UNSUPPORTED) else None
            if info is not None and info is not UNSUPPORTED:
                pinfo = get(nv.nvmlDeviceGetGpuInstanceProfileInfoById, g.handle, info.profileId)
                if pinfo is not None and pinfo is not UNSUPPORTED:
                    profile = _text(pinfo.name).removeprefix("MIG ")
            if not profile:  # GPU-instance queries can need root: derive the name from the attributes
                attrs = get(nv.nvmlDeviceGetAttributes, mh)
                if attrs is not None and attrs is not UNSUPPORTED:
                    profile = mig_profile_name(attrs.gpuInstanceSliceCount, attrs.memorySizeMB)
            labels = (*g.labels[:5], ("GPU_I_PROFILE", profile), ("GPU_I_ID", str(gi)), *g.labels[5:])
            g.mig.append((mh, labels, gi if isinstance(gi, int) else -1))

    def _discover_gpm(self, g: _Gpu) -> None:
        """Allocate two GPM samples per GPU (and per MIG instance) when the GPU supports GPM."""
        nv = self.nvml.nv
        if not getattr(self.config, "gpm", True) or not hasattr(nv, "nvmlGpmQueryDeviceSupport"):
            return
        support = self.nvml.get(nv.nvmlGpmQueryDeviceSupport, g.handle)
        if support is None or support is UNSUPPORTED or not getattr(support, "isSupportedDevice", 0):
            self._note_unsupported(g, "gpm")
            return
        for scope in [None, *(gi for _, _, gi in g.mig if gi >= 0)]:
            pair = [self.nvml.get(nv.nvmlGpmSampleAlloc), self.nvml.get(nv.nvmlGpmSampleAlloc)]
            if any(x is None or x is UNSUPPORTED for x in pair):
                return
            g.gpm[scope] = pair

    def _free_gpm(self) -> None:
        nv = self.nvml.nv
        for g in self._gpus:
            for pair in g.gpm.values():
                for sample in pair:
                    with contextlib.suppress(Exception):
                        nv.nvmlGpmSampleFree(sample)
            g.gpm = {}

    def _register_events(self) -> None:
        nv = self.nvml.nv
        get = self.nvml.get
        self._event_set = None
        if not self._gpus:
            return
        es = get(nv.nvmlEventSetCreate)
        if es is None or es is UNSUPPORTED:
            return
        for g in self._gpus:
            if g.handle is None or g.lost:
                continue
            try:
                if get(nv.nvmlDeviceRegisterEvents, g.handle, nv.nvmlEventTypeXidCriticalError, es) is UNSUPPORTED:
                    self._note_unsupported(g, "xid_events")
            except GpuLost:
                g.lost = True
        self._event_set = es

    # -- per-tick sampling (runs in the NVML worker) -------------------------------------------------
    def _sample_all(self, out: list[Sample]) -> None:
        for g in self._gpus:
            n = len(out)
            try:
                if g.handle is None:
                    raise GpuLost("no handle")
                self._sample_gpu(g, out)
                g.lost = False
                out.append(Sample("nodewarden_gpu_up", g.labels, 1.0))
            except GpuLost:
                del out[n:]
                if not g.lost:
                    log.warning("gpu lost", gpu=g.index, uuid=g.uuid, pci_bus_id=g.bus_nvml)
                g.lost = True
                out.append(Sample("nodewarden_gpu_up", g.labels, 0.0))
        if self._jobs is not None:  # PIDs are reused: forget processes no GPU lists any more
            self._jobs.forget_except({pid for plist in self.processes.values() for pid, _ in plist})
        for g in self._gpus:
            if not g.probed and not g.lost:
                g.probed = True
                if g.skip:
                    self.unsupported[str(g.index)] = sorted(g.skip)
                    log.info("gpu fields not supported", gpu=g.index, fields=sorted(g.skip))

    def _read(self, g: _Gpu, key: str, fn: Callable[..., Any], *args: Any) -> Any:
        if key in g.skip:
            return None
        v = self.nvml.get(fn, *args)
        if v is UNSUPPORTED:
            self._note_unsupported(g, key)
            return None
        return v

    def _note_unsupported(self, g: _Gpu, key: str) -> None:
        g.skip.add(key)
        if g.probed:
            self.unsupported[str(g.index)] = sorted(g.skip)
            log.info("gpu field no longer supported", gpu=g.index, field=key)

    def _sample_gpu(self, g: _Gpu, out: list[Sample]) -> None:
        nv = self.nvml.nv
        read = self._read
        h = g.handle
        L = g.labels
        add = out.append
        u = read(g, "utilization", nv.nvmlDeviceGetUtilizationRates, h)
        if u is not None:
            add(Sample("DCGM_FI_DEV_GPU_UTIL", L, float(u.gpu)))
            add(Sample("DCGM_FI_DEV_MEM_COPY_UTIL", L, float(u.memory)))
        m = self._memory(g, h)
        if m is not None:
            add(Sample("DCGM_FI_DEV_FB_USED", L, m.used / 1048576))
            add(Sample("DCGM_FI_DEV_FB_FREE", L, m.free / 1048576))
            reserved = getattr(m, "reserved", None)
            if reserved is not None:
                add(Sample("DCGM_FI_DEV_FB_RESERVED", L, reserved / 1048576))
        for name, key, fn, arg in (
            ("DCGM_FI_DEV_SM_CLOCK", "sm_clock", nv.nvmlDeviceGetClockInfo, nv.NVML_CLOCK_SM),
            ("DCGM_FI_DEV_MEM_CLOCK", "mem_clock", nv.nvmlDeviceGetClockInfo, nv.NVML_CLOCK_MEM),
            ("DCGM_FI_DEV_PCIE_TX_THROUGHPUT", "pcie_tx", nv.nvmlDeviceGetPcieThroughput, nv.NVML_PCIE_UTIL_TX_BYTES),
            ("DCGM_FI_DEV_PCIE_RX_THROUGHPUT", "pcie_rx", nv.nvmlDeviceGetPcieThroughput, nv.NVML_PCIE_UTIL_RX_BYTES),
            ("DCGM_FI_DEV_GPU_TEMP", "temperature", nv.nvmlDeviceGetTemperature, nv.NVML_TEMPERATURE_GPU),
        ):
            v = read(g, key, fn, h, arg)
            if v is not None:
                add(Sample(name, L, float(v)))
        p = read(g, "power", nv.nvmlDeviceGetPowerUsage, h)
        if p is not None:
            add(Sample("DCGM_FI_DEV_POWER_USAGE", L, p / 1000.0))
        for (name, _), fn in zip(POWER_LIMITS, (nv.nvmlDeviceGetPowerManagementLimit,
                                                nv.nvmlDeviceGetEnforcedPowerLimit), strict=True):
            v = read(g, name, fn, h)
            if v is not None:
                add(Sample(name, L, v / 1000.0))
        for name, key, fn in (("DCGM_FI_DEV_ENC_UTIL", "encoder", nv.nvmlDeviceGetEncoderUtilization),
                              ("DCGM_FI_DEV_DEC_UTIL", "decoder", nv.nvmlDeviceGetDecoderUtilization)):
            v = read(g, key, fn, h)
            if v is not None:
                add(Sample(name, L, float(v[0])))
        for name, key, fn in (("DCGM_FI_DEV_PCIE_LINK_GEN", "pcie_gen", nv.nvmlDeviceGetCurrPcieLinkGeneration),
                              ("DCGM_FI_DEV_PCIE_LINK_WIDTH", "pcie_width", nv.nvmlDeviceGetCurrPcieLinkWidth)):
            v = read(g, key, fn, h)
            if v is not None:
                add(Sample(name, L, float(v)))
        if g.static is None:
            g.static = self._static(g)
        out.extend(g.static)
        lic = read(g, "vgpu_license", nv.nvmlDeviceGetGridLicensableFeatures, h)
        if lic is not None:
            status = vgpu_license_status(lic)
            if status is not None:
                add(Sample("DCGM_FI_DEV_VGPU_LICENSE_STATUS", L, status))
        reasons = read(g, "clocks_event_reasons", _clock_reasons_fn(nv), h)
        if reasons is not None:
            add(Sample(CLOCK_REASONS_NAME, L, float(reasons)))
            for labels, bit in g.reason_labels:
                add(Sample("nodewarden_gpu_clocks_event_active", labels, 1.0 if reasons & bit else 0.0))
        if g.field_ids:
            values = read(g, "fields", nv.nvmlDeviceGetFieldValues, h, g.field_ids)
            if values is not None:
                self._fields(g, values, out)
        procs = read(g, "processes", nv.nvmlDeviceGetComputeRunningProcesses, h)
        if procs is not None:
            add(Sample("nodewarden_gpu_processes", L, float(len(procs))))
            plist = [(p.pid, p.usedGpuMemory or 0) for p in procs]
            self.processes[g.index] = plist
            if self._jobs is not None:
                self._job_info(g, plist, out)
            if getattr(self.config, "export_process_memory", False):
                base = (L[0], L[1])
                for pid, used in plist:
                    add(Sample("nodewarden_gpu_process_memory_used_bytes", (*base, ("pid", str(pid))), float(used)))
        for mh, ml, _ in g.mig:
            mm = self.nvml.get(nv.nvmlDeviceGetMemoryInfo, mh)
            if mm is not None and mm is not UNSUPPORTED:
                add(Sample("DCGM_FI_DEV_FB_USED", ml, mm.used / 1048576))
                add(Sample("DCGM_FI_DEV_FB_FREE", ml, mm.free / 1048576))
        if g.gpm:
            self._gpm(g, out)

    def _static(self, g: _Gpu) -> list[Sample]:
        """Values that do not change while the driver is loaded: limit constraints, default limit, max PCIe link."""
        nv = self.nvml.nv
        h, L, read = g.handle, g.labels, self._read
        out = []
        c = read(g, "power_constraints", nv.nvmlDeviceGetPowerManagementLimitConstraints, h)
        d = read(g, "power_default", nv.nvmlDeviceGetPowerManagementDefaultLimit, h)
        for (name, _), v in zip(POWER_CONSTRAINTS, [*(c if c is not None else (None, None)), d], strict=True):
            if v is not None:
                out.append(Sample(name, L, v / 1000.0))
        mode = read(g, "power_management", nv.nvmlDeviceGetPowerManagementMode, h)
        if mode is not None:
            out.append(Sample("nodewarden_gpu_power_management_enabled", L, 1.0 if mode else 0.0))
        for name, key, fn in (("DCGM_FI_DEV_PCIE_MAX_LINK_GEN", "pcie_max_gen", nv.nvmlDeviceGetMaxPcieLinkGeneration),
                              ("DCGM_FI_DEV_PCIE_MAX_LINK_WIDTH", "pcie_max_width", nv.nvmlDeviceGetMaxPcieLinkWidth)):
            v = read(g, key, fn, h)
            if v is not None:
                out.append(Sample(name, L, float(v)))
        return out

    def _gpm(self, g: _Gpu, out: list[Sample]) -> None:
        """Take this tick's GPM sample per scope; with a previous one, export the metrics between the two."""
        nv = self.nvml.nv
        get = self.nvml.get
        scopes = [(None, g.labels), *((gi, ml) for _, ml, gi in g.mig if gi in g.gpm)]
        for scope, labels in scopes:
            pair = g.gpm[scope]
            cur = pair[1]
            got = get(nv.nvmlGpmSampleGet, g.handle, cur) if scope is None else \
                get(nv.nvmlGpmMigSampleGet, g.handle, scope, cur)
            if got is None or got is UNSUPPORTED:
                g.gpm_ready.discard(scope)
                if got is UNSUPPORTED:
                    del g.gpm[scope]
                    self._note_unsupported(g, "gpm" if scope is None else f"gpm_mig_{scope}")
                continue
            if scope in g.gpm_ready:
                mg = nv.c_nvmlGpmMetricsGet_t()
                mg.version = GPM_METRICS_GET_VERSION
                mg.numMetrics = len(GPM_METRICS)
                mg.sample1, mg.sample2 = pair[0], cur
                for k, (mid, _, _) in enumerate(GPM_METRICS):
                    mg.metrics[k].metricId = mid
                res = get(nv.nvmlGpmMetricsGet, mg)
                if res is not None and res is not UNSUPPORTED:
                    for k, (_, name, scale) in enumerate(GPM_METRICS):
                        m = mg.metrics[k]
                        if m.nvmlReturn == 0 and not math.isnan(m.value):
                            out.append(Sample(name, labels, m.value * scale))
            pair.reverse()  # the current sample becomes the baseline
            g.gpm_ready.add(scope)

    def _job_info(self, g: _Gpu, plist: list[tuple[int, int]], out: list[Sample]) -> None:
        base = (g.labels[0], g.labels[1])
        seen: set[tuple[tuple[str, str], ...]] = set()
        for pid, _ in plist:
            extra = jobs.job_labels(self._jobs.workload(pid))
            if extra is not None and extra not in seen:
                seen.add(extra)
                out.append(Sample("nodewarden_gpu_job_info", (*base, *extra), 1.0))

    def _memory(self, g: _Gpu, h: Any) -> Any:
        if "memory" in g.skip:
            return None
        nv = self.nvml.nv
        if g.mem_version is None:  # probe once: v2 (with reserved) on drivers that have it
            version = getattr(nv, "nvmlMemory_v2", 0)
            m = self.nvml.get(nv.nvmlDeviceGetMemoryInfo, h, version) if version else None
            if m is None or m is UNSUPPORTED:
                version = 0
                m = self._read(g, "memory", nv.nvmlDeviceGetMemoryInfo, h)
            g.mem_version = version
            return m
        if g.mem_version:
            return self._read(g, "memory", nv.nvmlDeviceGetMemoryInfo, h, g.mem_version)
        return self._read(g, "memory", nv.nvmlDeviceGetMemoryInfo, h)

    def _fields(self, g: _Gpu, values: Any, out: list[Sample]) -> None:
        L = g.labels
        drop = None
        sums: dict[str, float] = {}
        failed: set[str] = set()
        for k, fv in enumerate(values):
            ret = fv.nvmlReturn
            name, scale = g.field_specs[k]
            if ret == 0:
                vt = fv.valueType
                v = getattr(fv.value, VALUE_ATTR[vt] if 0 <= vt < len(VALUE_ATTR) else "ullVal")
                v = float(v) * scale if scale != 1.0 else float(v)
                if name in SUMMED:
                    sums[name] = sums.get(name, 0.0) + v
                else:
                    out.append(Sample(name, L, v))
            elif ret in (2, 3):  # INVALID_ARGUMENT (field unknown to this driver) / NOT_SUPPORTED: drop for good
                drop = drop or []
                drop.append(k)
            elif ret == 15:
                raise GpuLost("GPU is lost")
            else:
                failed.add(name)
        if drop:
            gone = {g.field_specs[k][0] for k in drop}
            for k in reversed(range(len(g.field_specs))):  # a sum loses all its parts with any one of them
                if k in drop or g.field_specs[k][0] in gone & SUMMED:
                    self._note_unsupported(g, g.field_specs[k][0])
                    del g.field_ids[k]
                    del g.field_specs[k]
            failed |= gone
        for name, v in sums.items():
            if name not in failed:
                out.append(Sample(name, L, v))

    # -- XID sources -------------------------------------------------------------------------------------
    def _drain_xids(self, now: float) -> None:
        inbox = self._inbox
        while inbox:
            source, where, xid, t = inbox.popleft()
            g = self._by_handle.get(where) if source == "nvml" else self._by_bus.get(where)
            self._xid_seen[source] = self._xid_seen.get(source, 0.0) + 1
            gpu_id = str(g.index) if g is not None else f"unknown:{where}"
            if not self._dedup.observe(gpu_id, xid, source, t):
                continue
            labels = (("gpu", str(g.index)), ("UUID", g.uuid)) if g is not None else (("gpu", ""), ("UUID", ""))
            key = (*labels, ("xid", str(xid)))
            self._xid_counts[key] = self._xid_counts.get(key, 0.0) + 1
            self._xids_known.add(xid)
            if g is not None:
                g.last_xid = float(xid)
            info = xidlib.describe(xid)
            log.warning("gpu xid", gpu=labels[0][1], uuid=labels[1][1], xid=xid, name=info.name,
                        action=info.action, source=source)
        self._dedup.expire(now)

    def _event_loop(self) -> None:
        """Wait for NVML critical-XID events (own thread; a blocking wait is its job)."""
        nv = self.nvml.nv
        es = self._event_set
        if es is None:
            return
        xid_type = nv.nvmlEventTypeXidCriticalError
        while not self._stop.is_set():
            try:
                data = nv.nvmlEventSetWait(es, 500)
            except nv.NVMLError as err:
                code = self.nvml.code(err)
                if code in (1, 9, 12):  # uninitialized / driver gone: stop listening
                    return
                if code != 10:  # anything but a timeout: back off a little
                    self._stop.wait(1.0)
                continue
            except Exception:  # a broken driver binding must not kill the thread silently
                log.exception("nvml event wait failed")
                self._stop.wait(1.0)
                continue
            if data.eventType & xid_type:
                self._inbox.append(("nvml", _handle_key(data.device), int(data.eventData), self._clock()))

    def _kmsg_record(self, rec: KmsgRecord) -> None:
        self._kmsg_line(rec.message)

    def _kmsg_line(self, line: str) -> None:
        if "Xid" not in line:
            return
        rec = xidlib.parse_kmsg_record(line)
        event = xidlib.parse_xid(rec.message if rec else line)
        if event is not None:
            self._inbox.append(("kmsg", event.bus_id, event.xid, self._clock()))


def vgpu_license_status(features: Any) -> float | None:
    """DCGM's DCGM_FI_DEV_VGPU_LICENSE_STATUS from nvmlDeviceGetGridLicensableFeatures: 0 without vGPU licensing,
    1/0 for the vGPU feature's state, None when licensing is supported but no vGPU feature is listed."""
    if not getattr(features, "isGridLicenseSupported", 0):
        return 0.0
    listed = features.gridLicensableFeatures
    for i in range(min(int(features.licensableFeaturesCount), len(listed))):
        f = listed[i]
        if f.featureCode == 1:  # NVML_GRID_LICENSE_FEATURE_CODE_VGPU
            return 1.0 if f.featureState > 0 else 0.0
    return None


def mig_profile_name(slices: int, memory_mb: int) -> str:
    """NVIDIA's profile name from slice count and memory: ``1g.10gb`` (memory rounded up to 5 GB steps)."""
    return f"{slices}g.{math.ceil(memory_mb / 1024 / 5) * 5}gb"


def _clock_reasons_fn(nv: Any) -> Callable[..., Any]:
    fn = getattr(nv, "nvmlDeviceGetCurrentClocksEventReasons", None)
    return fn if fn is not None else nv.nvmlDeviceGetCurrentClocksThrottleReasons


def _text(v: Any) -> str:
    if v is None or v is UNSUPPORTED:
        return ""
    if isinstance(v, bytes):
        return v.decode("utf-8", "replace").rstrip("\x00")
    return str(v)


def _handle_key(handle: Any) -> Any:
    """A hashable identity for an NVML device handle (ctypes pointers compare by address)."""
    try:
        import ctypes

        return ctypes.cast(handle, ctypes.c_void_p).value
    except Exception:
        return handle
