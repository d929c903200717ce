"""One GPU as the collector sees it between ticks, and its per-tick read through NVML.

A :class:`GpuDevice` owns what it learned about its GPU: identity labels, the fields its driver does not
support (probed once, then skipped), the field-value request, the values read once (power constraints, max
PCIe link), the memory-info version, its MIG instances and GPM samples, its processes and its last XID.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import structlog

from agent.collectors import gpu_mig, jobs
from agent.collectors import xid as xidlib
from agent.collectors.gpu_catalogue import (
    CLOCK_EVENT_REASONS,
    CLOCK_REASONS_NAME,
    FIELDS,
    POWER_CONSTRAINTS,
    POWER_LIMITS,
    SUMMED,
    VALUE_ATTR,
    gpu_labels,
)
from agent.collectors.gpu_gpm import GpmSampler
from agent.collectors.gpu_mig import MigInstance
from agent.collectors.nvml import UNSUPPORTED, GpuLost, Nvml
from agent.core.metrics import Labels, Sample

log = structlog.get_logger("nodewarden.gpu")


class GpuDevice:
    """One GPU: what the collector knows about it between ticks, and :meth:`sample` for one tick's rows.

    ``jobs`` (a :class:`agent.collectors.jobs.Resolver`) adds ``nodewarden_gpu_job_info``;
    ``process_memory`` adds per-process memory rows."""

    def __init__(self, nvml: Nvml, index: int, handle: Any, uuid: str, bus: str, minor: int, model: str,
                 host: str, driver: str = "", *, jobs: jobs.Resolver | None = None,
                 process_memory: bool = False) -> None:
        self.nvml = nvml
        self.index = index
        self.handle = handle
        self.uuid = uuid
        self.bus_nvml = bus
        self.bus = xidlib.normalize_bus_id(bus) if bus else ""
        self.labels: Labels = gpu_labels(index, uuid, bus, minor, model, host, driver)
        self.reason_labels = [((*self.labels, ("reason", name)), bit) for name, bit in CLOCK_EVENT_REASONS]
        self.skip: set[str] = set()
        self.field_ids = [f[0] for f in FIELDS]
        self.field_specs = [(f[1], f[2]) for f in FIELDS]
        self.mig: list[MigInstance] = []
        self.gpm: GpmSampler | None = None
        self.static: list[Sample] | None = None  # values read once (power constraints, max PCIe link)
        self.mem_version: int | None = None
        self.processes: list[tuple[int, int]] | None = None  # (pid, used bytes) at the last read
        self.lost = False
        self.probed = False
        self.last_xid = 0.0
        self._jobs = jobs
        self._process_memory = process_memory

    @classmethod
    def lost_gpu(cls, nvml: Nvml, index: int, handle: Any, host: str, driver: str, **kw: Any) -> GpuDevice:
        """A GPU NVML lists but cannot describe (lost at discovery): ``nodewarden_gpu_up 0`` until it answers."""
        g = cls(nvml, index, handle, "", "", index, "", host, driver, **kw)
        g.lost = True
        return g

    # -- discovery (NVML worker) ---------------------------------------------------------------------
    def discover_parts(self, gpm: bool) -> None:
        """Find the MIG instances and, with ``gpm``, allocate the GPM samples."""
        self.mig = gpu_mig.discover(self.nvml, self.handle, self.labels)
        if gpm and hasattr(self.nvml.nv, "nvmlGpmQueryDeviceSupport"):
            self.gpm = GpmSampler.open(self.nvml, self.handle, (m.gi for m in self.mig))
            if self.gpm is None:
                self.note_unsupported("gpm")

    def close(self) -> None:
        """Free what NVML allocated for this GPU (GPM samples)."""
        if self.gpm is not None:
            self.gpm.free(self.nvml.nv)
        self.gpm = None

    # -- unsupported fields --------------------------------------------------------------------------
    def read(self, key: str, fn: Callable[..., Any], *args: Any) -> Any:
        """One NVML read of field ``key``: its value, or None when it failed or is (now known) unsupported."""
        if key in self.skip:
            return None
        v = self.nvml.get(fn, *args)
        if v is UNSUPPORTED:
            self.note_unsupported(key)
            return None
        return v

    def note_unsupported(self, key: str) -> None:
        """Skip field ``key`` from now on (logged when it happens after the first tick's probe)."""
        self.skip.add(key)
        if self.probed:
            log.info("gpu field no longer supported", gpu=self.index, field=key)

    def finish_probe(self) -> None:
        """After the first tick that reached the GPU: log what it does not support."""
        if not self.probed and not self.lost:
            self.probed = True
            if self.skip:
                log.info("gpu fields not supported", gpu=self.index, fields=sorted(self.skip))

    # -- one tick (NVML worker) ----------------------------------------------------------------------
    def sample(self, out: list[Sample]) -> None:
        """Append this tick's rows of the GPU (raises GpuLost; the caller drops the partial rows)."""
        nv = self.nvml.nv
        read = self.read
        h = self.handle
        L = self.labels
        add = out.append
        u = read("utilization", nv.nvmlDeviceGetUtilizationRates, h)
        if u is not None:
            add(Sample("DCGM_FI_DEV_GPU_UTIL", L, float(u.gpu)))
            add(Sample("DCGM_FI_DEV_MEM_COPY_UTIL", L, float(u.memory)))
        m = self._memory(h)
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
            v = read(key, fn, h, arg)
            if v is not None:
                add(Sample(name, L, float(v)))
        p = read("power", nv.nvmlDeviceGetPowerUsage, h)
        if p is not None:
            add(Sample("DCGM_FI_DEV_POWER_USAGE", L, p / 1000.0))
        for (name, _), fn in zip(POWER_LIMITS, (nv.nvmlDeviceGetPowerManagementLimit,
                                                nv.nvmlDeviceGetEnforcedPowerLimit), strict=True):
            v = read(name, fn, h)
            if v is not None:
                add(Sample(name, L, v / 1000.0))
        for name, key, fn in (("DCGM_FI_DEV_ENC_UTIL", "encoder", nv.nvmlDeviceGetEncoderUtilization),
                              ("DCGM_FI_DEV_DEC_UTIL", "decoder", nv.nvmlDeviceGetDecoderUtilization)):
            v = read(key, fn, h)
            if v is not None:
                add(Sample(name, L, float(v[0])))
        for name, key, fn in (("DCGM_FI_DEV_PCIE_LINK_GEN", "pcie_gen", nv.nvmlDeviceGetCurrPcieLinkGeneration),
                              ("DCGM_FI_DEV_PCIE_LINK_WIDTH", "pcie_width", nv.nvmlDeviceGetCurrPcieLinkWidth)):
            v = read(key, fn, h)
            if v is not None:
                add(Sample(name, L, float(v)))
        if self.static is None:
            self.static = self._static()
        out.extend(self.static)
        lic = read("vgpu_license", nv.nvmlDeviceGetGridLicensableFeatures, h)
        if lic is not None:
            status = vgpu_license_status(lic)
            if status is not None:
                add(Sample("DCGM_FI_DEV_VGPU_LICENSE_STATUS", L, status))
        reasons = read("clocks_event_reasons", _clock_reasons_fn(nv), h)
        if reasons is not None:
            add(Sample(CLOCK_REASONS_NAME, L, float(reasons)))
            for labels, bit in self.reason_labels:
                add(Sample("nodewarden_gpu_clocks_event_active", labels, 1.0 if reasons & bit else 0.0))
        if self.field_ids:
            values = read("fields", nv.nvmlDeviceGetFieldValues, h, self.field_ids)
            if values is not None:
                self._fields(values, out)
        procs = read("processes", nv.nvmlDeviceGetComputeRunningProcesses, h)
        if procs is not None:
            self._processes([(p.pid, p.usedGpuMemory or 0) for p in procs], out)
        gpu_mig.sample_memory(self.nvml, self.mig, out)
        if self.gpm is not None and self.gpm.pairs:
            scopes = [(None, L), *((m.gi, m.labels) for m in self.mig)]
            self.gpm.sample(self.nvml, h, scopes, out, self.note_unsupported)

    def _static(self) -> list[Sample]:
        """Values that do not change while the driver is loaded: limit constraints, default limit, max PCIe link."""
        nv = self.nvml.nv
        h, L, read = self.handle, self.labels, self.read
        out = []
        c = read("power_constraints", nv.nvmlDeviceGetPowerManagementLimitConstraints, h)
        d = read("power_default", nv.nvmlDeviceGetPowerManagementDefaultLimit, h)
        for (name, _), v in zip(POWER_CONSTRAINTS, [*(c if c is not None else (None, None)), d], strict=True):
            if v is not None:
                out.append(Sample(name, L, v / 1000.0))
        mode = read("power_management", nv.nvmlDeviceGetPowerManagementMode, h)
        if mode is not None:
            out.append(Sample("nodewarden_gpu_power_management_enabled", L, 1.0 if mode else 0.0))
        for name, key, fn in (("DCGM_FI_DEV_PCIE_MAX_LINK_GEN", "pcie_max_gen", nv.nvmlDeviceGetMaxPcieLinkGeneration),
                              ("DCGM_FI_DEV_PCIE_MAX_LINK_WIDTH", "pcie_max_width", nv.nvmlDeviceGetMaxPcieLinkWidth)):
            v = read(key, fn, h)
            if v is not None:
                out.append(Sample(name, L, float(v)))
        return out

    def _processes(self, plist: list[tuple[int, int]], out: list[Sample]) -> None:
        """Process count, the job/pod of each process (``jobs``) and per-process memory (``process_memory``)."""
        L = self.labels
        self.processes = plist
        out.append(Sample("nodewarden_gpu_processes", L, float(len(plist))))
        base = (L[0], L[1])
        if self._jobs is not None:
            seen: set[tuple[tuple[str, str], ...]] = set()
            for pid, _ in plist:
                extra = jobs.job_labels(self._jobs.workload(pid))
                if extra is not None and extra not in seen:
                    seen.add(extra)
                    out.append(Sample("nodewarden_gpu_job_info", (*base, *extra), 1.0))
        if self._process_memory:
            for pid, used in plist:
                out.append(Sample("nodewarden_gpu_process_memory_used_bytes", (*base, ("pid", str(pid))), float(used)))

    def _memory(self, h: Any) -> Any:
        if "memory" in self.skip:
            return None
        nv = self.nvml.nv
        if self.mem_version is None:  # probe once: v2 (with reserved) on drivers that have it
            version = getattr(nv, "nvmlMemory_v2", 0)
            m = self.nvml.get(nv.nvmlDeviceGetMemoryInfo, h, version) if version else None
            if m is None or m is UNSUPPORTED:
                version = 0
                m = self.read("memory", nv.nvmlDeviceGetMemoryInfo, h)
            self.mem_version = version
            return m
        if self.mem_version:
            return self.read("memory", nv.nvmlDeviceGetMemoryInfo, h, self.mem_version)
        return self.read("memory", nv.nvmlDeviceGetMemoryInfo, h)

    def _fields(self, values: Any, out: list[Sample]) -> None:
        L = self.labels
        drop = None
        sums: dict[str, float] = {}
        failed: set[str] = set()
        for k, fv in enumerate(values):
            ret = fv.nvmlReturn
            name, scale = self.field_specs[k]
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
            gone = {self.field_specs[k][0] for k in drop}
            for k in reversed(range(len(self.field_specs))):  # a sum loses all its parts with any one of them
                if k in drop or self.field_specs[k][0] in gone & SUMMED:
                    self.note_unsupported(self.field_specs[k][0])
                    del self.field_ids[k]
                    del self.field_specs[k]
            failed |= gone
        for name, v in sums.items():
            if name not in failed:
                out.append(Sample(name, L, v))


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


def _clock_reasons_fn(nv: Any) -> Callable[..., Any]:
    fn = getattr(nv, "nvmlDeviceGetCurrentClocksEventReasons", None)
    return fn if fn is not None else nv.nvmlDeviceGetCurrentClocksThrottleReasons
