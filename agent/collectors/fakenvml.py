"""A fake ``pynvml`` driven by a simulation scenario (:mod:`agent.collectors.simulate`).

:class:`FakeNvml` instances look like the ``pynvml`` module for the calls nodewarden makes: same function
names, same constants and the very same ``NVMLError`` classes (taken from ``pynvml``, which imports without
the NVIDIA library). Scenario time starts at ``nvmlInit``; timeline steps apply as calls observe the clock.
Faults: per-field ``NotSupported``, ``GpuIsLost`` on every call to a lost GPU, XID events for
``nvmlEventSetWait``, MIG instances, and calls that hang until the scenario (or :meth:`release`) lets go.

GPM (``nvmlGpmSampleGet`` / ``nvmlGpmMetricsGet``) works as on Hopper: a sample snapshots time integrals of
the activity fields, a metric is the average between two samples. ``nvmlDeviceSetPowerManagementLimit``
is honoured: power draw is held at the limit, the ``sw_power_cap`` clock reason is set while it bites, and
the temperature falls by :data:`C_PER_W` for every watt the cap takes off the demand (a simulation heuristic).

Settable state (power limits, compute mode) lives on the hardware, not in the agent: with ``state_path`` (or
``$NODEWARDEN_FAKE_NVML_STATE``) it is kept in a JSON file, so it survives an agent restart or kill -9 the
way a real GPU keeps its power limit until the driver reloads.

The parts: the simulated GPUs and the settings file (:mod:`~agent.collectors.fakegpu`), GPM samples and
their metrics (:mod:`~agent.collectors.fakegpm`); this module is the ``pynvml``-shaped surface over them, with
scenario time, the timeline, hangs and the XID event queue.
"""

from __future__ import annotations

import os
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import pynvml

from agent.collectors import simulate
from agent.collectors.fakegpm import GpmMetricsGet, GpmSample, metrics_between
from agent.collectors.fakegpu import Device, MigDevice, Obj, SettingsFile
from agent.collectors.simulate import CLOCK_EVENT_REASONS, Scenario, Step

NVMLError = pynvml.NVMLError
MIB = 1024 * 1024
C_PER_W = 0.08  # degrees C the GPU cools per watt a power cap removes from its demand
SW_POWER_CAP = CLOCK_EVENT_REASONS["sw_power_cap"]
NVLINK_ALL = 0xFFFFFFFF  # scopeId meaning "all links" (DCGM passes it for the *_TOTAL NVLink fields)

# nvmlDeviceGetFieldValues ids -> (scenario field, scale to NVML units)
FIELD_IDS: dict[int, tuple[str, float]] = {
    pynvml.NVML_FI_DEV_ECC_SBE_VOL_TOTAL: ("ecc_sbe_volatile", 1),
    pynvml.NVML_FI_DEV_ECC_DBE_VOL_TOTAL: ("ecc_dbe_volatile", 1),
    pynvml.NVML_FI_DEV_ECC_SBE_AGG_TOTAL: ("ecc_sbe_aggregate", 1),
    pynvml.NVML_FI_DEV_ECC_DBE_AGG_TOTAL: ("ecc_dbe_aggregate", 1),
    pynvml.NVML_FI_DEV_RETIRED_SBE: ("retired_sbe", 1),
    pynvml.NVML_FI_DEV_RETIRED_DBE: ("retired_dbe", 1),
    pynvml.NVML_FI_DEV_RETIRED_PENDING: ("retired_pending", 1),
    pynvml.NVML_FI_DEV_NVLINK_CRC_FLIT_ERROR_COUNT_TOTAL: ("nvlink_crc_flit", 1),
    pynvml.NVML_FI_DEV_NVLINK_CRC_DATA_ERROR_COUNT_TOTAL: ("nvlink_crc_data", 1),
    pynvml.NVML_FI_DEV_NVLINK_REPLAY_ERROR_COUNT_TOTAL: ("nvlink_replay", 1),
    pynvml.NVML_FI_DEV_NVLINK_RECOVERY_ERROR_COUNT_TOTAL: ("nvlink_recovery", 1),
    pynvml.NVML_FI_DEV_PERF_POLICY_POWER: ("power_violation_us", 1000),
    pynvml.NVML_FI_DEV_PERF_POLICY_THERMAL: ("thermal_violation_us", 1000),
    pynvml.NVML_FI_DEV_MEMORY_TEMP: ("memory_temperature", 1),
    pynvml.NVML_FI_DEV_TOTAL_ENERGY_CONSUMPTION: ("energy_mj", 1),
    pynvml.NVML_FI_DEV_PCIE_REPLAY_COUNTER: ("pcie_replay", 1),
    pynvml.NVML_FI_DEV_REMAPPED_COR: ("remapped_correctable", 1),
    pynvml.NVML_FI_DEV_REMAPPED_UNC: ("remapped_uncorrectable", 1),
    pynvml.NVML_FI_DEV_REMAPPED_PENDING: ("remap_pending", 1),
    pynvml.NVML_FI_DEV_REMAPPED_FAILURE: ("remap_failure", 1),
    pynvml.NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_TX: ("nvlink_tx_kib", 1),
    pynvml.NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_RX: ("nvlink_rx_kib", 1),
}
_INIT_ERRORS = {
    "library_not_found": pynvml.NVML_ERROR_LIBRARY_NOT_FOUND,
    "driver_not_loaded": pynvml.NVML_ERROR_DRIVER_NOT_LOADED,
    "no_permission": pynvml.NVML_ERROR_NO_PERMISSION,
}


class _Value:
    __slots__ = ("dVal", "siVal", "sllVal", "uiVal", "ulVal", "ullVal", "usVal")

    def __init__(self, v: int | float) -> None:
        self.dVal = float(v)
        self.uiVal = self.ulVal = self.ullVal = self.sllVal = self.siVal = self.usVal = int(v)


class _FieldValue:
    __slots__ = ("fieldId", "latencyUsec", "nvmlReturn", "scopeId", "timestamp", "value", "valueType")

    def __init__(self, field_id: int, ret: int, v: int | float) -> None:
        self.fieldId = field_id
        self.scopeId = 0
        self.timestamp = 0
        self.latencyUsec = 0
        self.nvmlReturn = ret
        self.valueType = pynvml.NVML_VALUE_TYPE_UNSIGNED_LONG_LONG
        self.value = _Value(v)


class FakeNvml:
    """Module-like fake of ``pynvml`` for one scenario. ``clock`` returns seconds (monotonic)."""

    def __init__(self, scenario: Scenario, clock: Callable[[], float] = time.monotonic,
                 state_path: str | None = None) -> None:
        self.scenario = scenario
        self.state_path = state_path if state_path is not None else os.environ.get("NODEWARDEN_FAKE_NVML_STATE")
        self._clock = clock
        self._lock = threading.RLock()
        self._t0: float | None = None
        self._initialized = 0
        self._released = threading.Event()
        self._events: deque[tuple[Device, int]] = deque()
        self._event_cv = threading.Condition(self._lock)
        self._registered: set[int] = set()
        self._hang: dict[str, set[int] | None] = {}  # function -> GPU indexes (None: every call)
        self.devices = [Device(i, spec) for i, spec in enumerate(scenario.devices)]
        horizon = scenario.duration
        plan = [(t, n, step) for n, step in enumerate(scenario.timeline) for t in step.times(horizon)]
        plan.sort(key=lambda x: (x[0], x[1]))
        self._plan = plan
        self._next = 0
        self.calls = 0  # number of NVML calls served (for tests and the benchmark)
        self.set_limit_calls = 0  # nvmlDeviceSetPowerManagementLimit calls that changed a limit
        self.resets = 0  # reset_gpu() calls (nvidia-smi --gpu-reset stand-in)
        self.settings = SettingsFile(self.state_path)
        self.settings.load(self.devices)

    def reset_gpu(self, index: int) -> None:
        """What ``nvidia-smi --gpu-reset`` does to the simulated GPU: lost -> back, settings to defaults."""
        dev = self.devices[index]
        with self._lock:
            dev.reset(self.now())
            self.settings.save(self.devices)
            self.resets += 1

    # -- module-like fallbacks ---------------------------------------------------------------
    def __getattr__(self, name: str) -> Any:
        value = getattr(pynvml, name)  # constants, NVMLError classes
        if callable(value) and not isinstance(value, type) and name.startswith("nvml"):

            def unsupported(*_a: Any, **_k: Any) -> Any:
                raise NVMLError(pynvml.NVML_ERROR_FUNCTION_NOT_FOUND)

            return unsupported
        return value

    # -- scenario time -------------------------------------------------------------------------
    def now(self) -> float:
        """Scenario seconds since nvmlInit (0 before)."""
        return 0.0 if self._t0 is None else self._clock() - self._t0

    def release(self) -> None:
        """Stop every hang for good (the driver "answers again"); used on shutdown and by tests."""
        self._released.set()
        with self._lock:
            self._hang.clear()
            self._event_cv.notify_all()

    def _advance(self) -> float:
        now = self.now()
        if self._next < len(self._plan) and self._plan[self._next][0] <= now:
            with self._lock:
                while self._next < len(self._plan) and self._plan[self._next][0] <= now:
                    t, n, step = self._plan[self._next]
                    if step.occurs(self.scenario.seed, n, t):
                        self._apply(step, t, n)
                    self._next += 1
        return now

    def _targets(self, step: Step) -> list[Device]:
        if step.gpu == "all":
            return self.devices
        idx = [step.gpu] if isinstance(step.gpu, int) else step.gpu
        return [self.devices[i] for i in idx]

    def _apply(self, step: Step, t: float, n: int = 0) -> None:
        targets = self._targets(step)
        for dev in targets:
            dev.apply(step, t, self.scenario.seed, n)
            if step.xid is not None and dev.index in self._registered:
                self._events.append((dev, step.xid))
                self._event_cv.notify_all()
        if step.hang is not None:
            if not step.hang:
                self._hang.clear()
            scope = None if step.gpu == "all" else {d.index for d in targets}
            for fn in step.hang:
                for name in simulate.HANGABLE if fn == "all" else (fn,):
                    self._hang[name] = scope

    # -- call prologue ---------------------------------------------------------------------------
    def _enter(self, fn: str, dev: Device | None = None, field: str | None = None) -> Device | None:
        self.calls += 1
        if self._initialized <= 0 and fn != "nvmlInit":
            raise NVMLError(pynvml.NVML_ERROR_UNINITIALIZED)
        self._advance()
        if self._hang:
            self._maybe_hang(fn, dev)
        if dev is not None:
            if dev.lost:
                raise NVMLError(pynvml.NVML_ERROR_GPU_IS_LOST)
            if field is not None and field in dev.not_supported:
                raise NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)
        return dev

    def _maybe_hang(self, fn: str, dev: Device | None) -> None:
        while not self._released.is_set():
            scope = self._hang.get(fn, False)
            if scope is False or (scope is not None and (dev is None or dev.index not in scope)):
                return
            self._released.wait(0.02)
            self._advance()

    @staticmethod
    def _dev(handle: Any) -> Device:
        if isinstance(handle, MigDevice):
            return handle.parent
        if not isinstance(handle, Device):
            raise NVMLError(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        return handle

    # -- system ------------------------------------------------------------------------------------
    def nvmlInit(self) -> None:
        self._enter("nvmlInit")
        if self.scenario.nvml != "ok":
            raise NVMLError(_INIT_ERRORS[self.scenario.nvml])
        with self._lock:
            if self._t0 is None:
                self._t0 = self._clock()
            self._initialized += 1

    nvmlInitWithFlags = lambda self, flags: self.nvmlInit()  # noqa: E731

    def nvmlShutdown(self) -> None:
        self._enter("nvmlShutdown")
        with self._lock:
            self._initialized -= 1

    def nvmlSystemGetDriverVersion(self) -> str:
        self._enter("nvmlSystemGetDriverVersion")
        return self.scenario.driver_version

    def nvmlSystemGetCudaDriverVersion(self) -> int:
        self._enter("nvmlSystemGetCudaDriverVersion")
        return self.scenario.cuda_version

    def nvmlSystemGetNVMLVersion(self) -> str:
        self._enter("nvmlSystemGetNVMLVersion")
        return self.scenario.nvml_version

    def nvmlDeviceGetCount(self) -> int:
        self._enter("nvmlDeviceGetCount")
        return len(self.devices)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> Device:
        self._enter("nvmlDeviceGetHandleByIndex")
        if not 0 <= index < len(self.devices):
            raise NVMLError(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        dev = self.devices[index]
        if dev.lost:
            raise NVMLError(pynvml.NVML_ERROR_GPU_IS_LOST)
        return dev

    def nvmlDeviceGetHandleByUUID(self, uuid: str | bytes) -> Device:
        self._enter("nvmlDeviceGetHandleByUUID")
        text = uuid.decode() if isinstance(uuid, bytes) else uuid
        for dev in self.devices:
            if dev.spec.uuid == text:
                if dev.lost:
                    raise NVMLError(pynvml.NVML_ERROR_GPU_IS_LOST)
                return dev
        raise NVMLError(pynvml.NVML_ERROR_NOT_FOUND)

    def nvmlDeviceGetComputeMode(self, handle: Any) -> int:
        return self._enter("nvmlDeviceGetComputeMode", self._dev(handle)).compute_mode

    def nvmlDeviceSetComputeMode(self, handle: Any, mode: int) -> None:
        dev = self._enter("nvmlDeviceGetComputeMode", self._dev(handle))
        with self._lock:
            dev.compute_mode = int(mode)
            self.settings.save(self.devices)

    def nvmlDeviceGetGraphicsRunningProcesses(self, handle: Any) -> list[Obj]:
        self._enter("nvmlDeviceGetGraphicsRunningProcesses", self._dev(handle), "processes")
        return []

    # -- identity -------------------------------------------------------------------------------------
    def nvmlDeviceGetUUID(self, handle: Any) -> str:
        dev = self._enter("nvmlDeviceGetUUID", self._dev(handle))
        return handle.uuid if isinstance(handle, MigDevice) else dev.spec.uuid

    def nvmlDeviceGetName(self, handle: Any) -> str:
        dev = self._enter("nvmlDeviceGetName", self._dev(handle))
        return dev.spec.name

    def nvmlDeviceGetPciInfo(self, handle: Any) -> Obj:
        dev = self._enter("nvmlDeviceGetPciInfo", self._dev(handle))
        bus = dev.spec.pci_bus_id
        return Obj(busId=bus, busIdLegacy=bus[4:], domain=0, bus=int(bus.split(":")[1], 16), device=0)

    def nvmlDeviceGetMinorNumber(self, handle: Any) -> int:
        dev = self._enter("nvmlDeviceGetMinorNumber", self._dev(handle))
        return dev.index

    def nvmlDeviceGetIndex(self, handle: Any) -> int:
        return self._enter("nvmlDeviceGetIndex", self._dev(handle)).index

    # -- load --------------------------------------------------------------------------------------------
    def nvmlDeviceGetUtilizationRates(self, handle: Any) -> Obj:
        if isinstance(handle, MigDevice):
            raise NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)
        dev = self._enter("nvmlDeviceGetUtilizationRates", self._dev(handle), "utilization")
        v = dev.values
        if "gpu_util" in dev.not_supported:
            raise NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)
        return Obj(gpu=int(v["gpu_util"]), memory=int(v["mem_copy_util"]))

    def nvmlDeviceGetMemoryInfo(self, handle: Any, version: int | None = None) -> Obj:
        dev = self._enter("nvmlDeviceGetMemoryInfo", self._dev(handle), "fb_used_mib")
        if isinstance(handle, MigDevice):
            total, reserved, used = handle.memory_mib, 0.0, handle.fb_used_mib
        else:
            v = dev.values
            total, reserved, used = v["fb_total_mib"], v["fb_reserved_mib"], v["fb_used_mib"]
        free = max(total - reserved - used, 0.0)
        out = Obj(total=int(total * MIB), used=int(used * MIB), free=int(free * MIB))
        if version:
            out.reserved = int(reserved * MIB)
            out.version = version
        return out

    def nvmlDeviceGetClockInfo(self, handle: Any, clock_type: int) -> int:
        key = "sm_clock" if clock_type == pynvml.NVML_CLOCK_SM else "mem_clock"
        dev = self._enter("nvmlDeviceGetClockInfo", self._dev(handle), key)
        return int(dev.values[key])

    def nvmlDeviceGetPcieThroughput(self, handle: Any, counter: int) -> int:
        key = "pcie_tx_kbps" if counter == pynvml.NVML_PCIE_UTIL_TX_BYTES else "pcie_rx_kbps"
        dev = self._enter("nvmlDeviceGetPcieThroughput", self._dev(handle), key)
        return int(dev.values[key])

    # -- thermal / power -------------------------------------------------------------------------------
    def nvmlDeviceGetTemperature(self, handle: Any, sensor: int) -> int:
        dev = self._enter("nvmlDeviceGetTemperature", self._dev(handle), "temperature")
        return int(dev.values["temperature"] - C_PER_W * dev.capped())

    def nvmlDeviceGetPowerUsage(self, handle: Any) -> int:
        dev = self._enter("nvmlDeviceGetPowerUsage", self._dev(handle), "power_w")
        return int(dev.power() * 1000)

    # -- power management -------------------------------------------------------------------------------
    def nvmlDeviceGetPowerManagementMode(self, handle: Any) -> int:
        dev = self._enter("nvmlDeviceGetPowerManagementMode", self._dev(handle), "power_management")
        return pynvml.NVML_FEATURE_ENABLED if dev else pynvml.NVML_FEATURE_DISABLED

    def nvmlDeviceGetPowerManagementLimit(self, handle: Any) -> int:
        dev = self._enter("nvmlDeviceGetPowerManagementLimit", self._dev(handle), "power_management")
        return int(dev.values["power_limit_w"] * 1000)

    def nvmlDeviceGetEnforcedPowerLimit(self, handle: Any) -> int:
        dev = self._enter("nvmlDeviceGetEnforcedPowerLimit", self._dev(handle), "power_management")
        return int(dev.values["power_limit_w"] * 1000)

    def nvmlDeviceGetPowerManagementDefaultLimit(self, handle: Any) -> int:
        dev = self._enter("nvmlDeviceGetPowerManagementDefaultLimit", self._dev(handle), "power_management")
        return int(dev.values["power_limit_default_w"] * 1000)

    def nvmlDeviceGetPowerManagementLimitConstraints(self, handle: Any) -> list[int]:
        dev = self._enter("nvmlDeviceGetPowerManagementLimitConstraints", self._dev(handle), "power_management")
        return [int(dev.values["power_limit_min_w"] * 1000), int(dev.values["power_limit_max_w"] * 1000)]

    def nvmlDeviceSetPowerManagementLimit(self, handle: Any, limit_mw: int) -> None:
        """As the driver: INVALID_ARGUMENT outside the constraints, NO_PERMISSION when not allowed (not root)."""
        dev = self._enter("nvmlDeviceSetPowerManagementLimit", self._dev(handle), "power_management")
        if "set_power_limit" in dev.not_supported:
            raise NVMLError(pynvml.NVML_ERROR_NO_PERMISSION)
        v = dev.values
        if not v["power_limit_min_w"] * 1000 <= limit_mw <= v["power_limit_max_w"] * 1000:
            raise NVMLError(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        with self._lock:
            dev.integrate(self.now())
            v["power_limit_w"] = limit_mw / 1000.0
            self.settings.save(self.devices)
        self.set_limit_calls += 1

    # -- PCIe link ---------------------------------------------------------------------------------------
    def nvmlDeviceGetCurrPcieLinkGeneration(self, handle: Any) -> int:
        return int(self._enter("nvmlDeviceGetCurrPcieLinkGeneration", self._dev(handle), "pcie_link_gen")
                   .values["pcie_link_gen"])

    def nvmlDeviceGetMaxPcieLinkGeneration(self, handle: Any) -> int:
        return int(self._enter("nvmlDeviceGetMaxPcieLinkGeneration", self._dev(handle), "pcie_max_link_gen")
                   .values["pcie_max_link_gen"])

    def nvmlDeviceGetCurrPcieLinkWidth(self, handle: Any) -> int:
        return int(self._enter("nvmlDeviceGetCurrPcieLinkWidth", self._dev(handle), "pcie_link_width")
                   .values["pcie_link_width"])

    def nvmlDeviceGetMaxPcieLinkWidth(self, handle: Any) -> int:
        return int(self._enter("nvmlDeviceGetMaxPcieLinkWidth", self._dev(handle), "pcie_max_link_width")
                   .values["pcie_max_link_width"])

    # -- encoder / decoder, vGPU license -------------------------------------------------------------------
    def nvmlDeviceGetEncoderUtilization(self, handle: Any) -> list[int]:
        dev = self._enter("nvmlDeviceGetEncoderUtilization", self._dev(handle), "enc_util")
        return [int(dev.values["enc_util"]), 167000]

    def nvmlDeviceGetDecoderUtilization(self, handle: Any) -> list[int]:
        dev = self._enter("nvmlDeviceGetDecoderUtilization", self._dev(handle), "dec_util")
        return [int(dev.values["dec_util"]), 167000]

    def nvmlDeviceGetGridLicensableFeatures(self, handle: Any) -> Obj:
        dev = self._enter("nvmlDeviceGetGridLicensableFeatures", self._dev(handle), "vgpu_license_status")
        if not dev.spec.grid_license_supported:
            return Obj(isGridLicenseSupported=0, licensableFeaturesCount=0, gridLicensableFeatures=[])
        feature = Obj(featureCode=pynvml.NVML_GRID_LICENSE_FEATURE_CODE_VGPU,
                       featureState=int(dev.values["vgpu_license_status"]), featureEnabled=1)
        return Obj(isGridLicenseSupported=1, licensableFeaturesCount=1, gridLicensableFeatures=[feature])

    nvmlDeviceGetGridLicensableFeatures_v4 = nvmlDeviceGetGridLicensableFeatures

    # -- GPM ----------------------------------------------------------------------------------------------
    c_nvmlGpmMetricsGet_t = GpmMetricsGet

    def nvmlGpmQueryDeviceSupport(self, handle: Any) -> Obj:
        dev = self._enter("nvmlGpmQueryDeviceSupport", self._dev(handle))
        return Obj(version=pynvml.NVML_GPM_SUPPORT_VERSION, isSupportedDevice=0 if "gpm" in dev.not_supported else 1)

    def nvmlGpmSampleAlloc(self) -> GpmSample:
        self._enter("nvmlGpmSampleAlloc")
        return GpmSample()

    def nvmlGpmSampleFree(self, sample: Any) -> None:
        self._enter("nvmlGpmSampleFree")

    def nvmlGpmSampleGet(self, handle: Any, sample: Any) -> Any:
        dev = self._enter("nvmlGpmSampleGet", self._dev(handle), "gpm")
        now = self.now()
        with self._lock:
            dev.integrate(now)
            sample.take(dev, None, now, dict(dev.gpm_acc))
        return sample

    def nvmlGpmMigSampleGet(self, handle: Any, gi_id: int, sample: Any) -> Any:
        dev = self._enter("nvmlGpmMigSampleGet", self._dev(handle), "gpm")
        mig = next((m for m in dev.mig if m.gi_id == gi_id), None)
        if mig is None:
            raise NVMLError(pynvml.NVML_ERROR_NOT_FOUND)
        now = self.now()
        sample.take(dev, gi_id, now, {k: v * now for k, v in mig.activity.items()})  # constant activity
        return sample

    def nvmlGpmMetricsGet(self, mg: Any) -> Any:
        """Averages between sample1 and sample2; per-metric NOT_SUPPORTED for what a MIG sample lacks."""
        self._enter("nvmlGpmMetricsGet")
        if not metrics_between(mg):
            raise NVMLError(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        return mg

    def nvmlDeviceGetTotalEnergyConsumption(self, handle: Any) -> int:
        dev = self._enter("nvmlDeviceGetTotalEnergyConsumption", self._dev(handle), "energy_mj")
        dev.integrate(self.now())
        return int(dev.values["energy_mj"])

    def nvmlDeviceGetCurrentClocksEventReasons(self, handle: Any) -> int:
        dev = self._enter("nvmlDeviceGetCurrentClocksEventReasons", self._dev(handle), "clocks_event_reasons")
        return dev.reasons | (SW_POWER_CAP if dev.capped() > 0 else 0)

    nvmlDeviceGetCurrentClocksThrottleReasons = nvmlDeviceGetCurrentClocksEventReasons

    def nvmlDeviceGetFieldValues(self, handle: Any, field_ids: list[int]) -> list[_FieldValue]:
        dev = self._enter("nvmlDeviceGetFieldValues", self._dev(handle))
        now = self.now()
        out = []
        ok, unsupported = pynvml.NVML_SUCCESS, pynvml.NVML_ERROR_NOT_SUPPORTED
        for fid in field_ids:
            if isinstance(fid, tuple):  # (fieldId, scopeId), as pynvml accepts
                fid, scope = fid
                if fid in (pynvml.NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_TX, pynvml.NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_RX) \
                        and scope != NVLINK_ALL:
                    out.append(_FieldValue(fid, unsupported, 0))  # per-link values are not simulated
                    continue
            key, scale = FIELD_IDS.get(fid, (None, 1))
            if key is None or key in dev.not_supported:
                out.append(_FieldValue(fid, unsupported, 0))
                continue
            if key in simulate.INTEGRATED:
                dev.integrate(now)
            out.append(_FieldValue(fid, ok, dev.values[key] * scale))
        return out

    def nvmlDeviceGetComputeRunningProcesses(self, handle: Any) -> list[Obj]:
        dev = self._enter("nvmlDeviceGetComputeRunningProcesses", self._dev(handle), "processes")
        return [
            Obj(pid=pid, usedGpuMemory=int(mib * MIB), gpuInstanceId=0xFFFFFFFF, computeInstanceId=0xFFFFFFFF)
            for pid, mib in dev.processes
        ]

    # -- MIG ---------------------------------------------------------------------------------------------
    def nvmlDeviceGetMigMode(self, handle: Any) -> list[int]:
        dev = self._enter("nvmlDeviceGetMigMode", self._dev(handle), "mig")
        mode = 1 if dev.mig_enabled else 0
        return [mode, mode]

    def nvmlDeviceGetMaxMigDeviceCount(self, handle: Any) -> int:
        dev = self._enter("nvmlDeviceGetMaxMigDeviceCount", self._dev(handle), "mig")
        return 7 if dev.mig_enabled else 0

    def nvmlDeviceGetMigDeviceHandleByIndex(self, handle: Any, index: int) -> MigDevice:
        dev = self._enter("nvmlDeviceGetMigDeviceHandleByIndex", self._dev(handle), "mig")
        if not 0 <= index < len(dev.mig):
            raise NVMLError(pynvml.NVML_ERROR_NOT_FOUND)
        return dev.mig[index]

    def nvmlDeviceIsMigDeviceHandle(self, handle: Any) -> int:
        return 1 if isinstance(handle, MigDevice) else 0

    def nvmlDeviceGetGpuInstanceId(self, handle: Any) -> int:
        self._enter("nvmlDeviceGetGpuInstanceId", self._dev(handle))
        if not isinstance(handle, MigDevice):
            raise NVMLError(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        return handle.gi_id

    def nvmlDeviceGetGpuInstanceById(self, handle: Any, gi_id: int) -> MigDevice:
        dev = self._enter("nvmlDeviceGetGpuInstanceById", self._dev(handle), "mig")
        for mig in dev.mig:
            if mig.gi_id == gi_id:
                return mig
        raise NVMLError(pynvml.NVML_ERROR_NOT_FOUND)

    def nvmlGpuInstanceGetInfo(self, gi: MigDevice) -> Obj:
        self._enter("nvmlGpuInstanceGetInfo", gi.parent)
        return Obj(device=gi.parent, id=gi.gi_id, profileId=gi.profile_id)

    def nvmlDeviceGetGpuInstanceProfileInfoById(self, handle: Any, profile_id: int) -> Obj:
        dev = self._enter("nvmlDeviceGetGpuInstanceProfileInfoById", self._dev(handle), "mig")
        for mig in dev.mig:
            if mig.profile_id == profile_id:
                return Obj(id=profile_id, sliceCount=mig.slices, memorySizeMB=mig.memory_mib,
                            name=f"MIG {mig.profile}".encode())
        raise NVMLError(pynvml.NVML_ERROR_INVALID_ARGUMENT)

    def nvmlDeviceGetAttributes(self, handle: Any) -> Obj:
        self._enter("nvmlDeviceGetAttributes", self._dev(handle))
        if isinstance(handle, MigDevice):
            return Obj(gpuInstanceSliceCount=handle.slices, memorySizeMB=handle.memory_mib)
        return Obj(gpuInstanceSliceCount=7, memorySizeMB=int(handle.values["fb_total_mib"]))

    # -- events ------------------------------------------------------------------------------------------
    def nvmlDeviceGetSupportedEventTypes(self, handle: Any) -> int:
        dev = self._enter("nvmlDeviceGetSupportedEventTypes", self._dev(handle), "xid_events")
        return pynvml.nvmlEventTypeXidCriticalError if dev else 0

    def nvmlEventSetCreate(self) -> Obj:
        self._enter("nvmlEventSetCreate")
        return Obj(kind="eventset")

    def nvmlDeviceRegisterEvents(self, handle: Any, event_types: int, event_set: Any) -> None:
        dev = self._enter("nvmlDeviceRegisterEvents", self._dev(handle), "xid_events")
        if event_types & pynvml.nvmlEventTypeXidCriticalError:
            with self._lock:
                self._registered.add(dev.index)

    def nvmlEventSetWait(self, event_set: Any, timeout_ms: int) -> Obj:
        self._enter("nvmlEventSetWait")
        deadline = time.monotonic() + timeout_ms / 1000.0
        with self._lock:
            while not self._events:
                left = deadline - time.monotonic()
                if left <= 0 or self._released.is_set():
                    raise NVMLError(pynvml.NVML_ERROR_TIMEOUT)
                self._event_cv.wait(min(left, 0.02))
                self._advance()
            dev, xid = self._events.popleft()
        if dev.lost and xid != 79:
            raise NVMLError(pynvml.NVML_ERROR_GPU_IS_LOST)
        return Obj(device=dev, eventType=pynvml.nvmlEventTypeXidCriticalError, eventData=xid,
                    gpuInstanceId=0xFFFFFFFF, computeInstanceId=0xFFFFFFFF)

    nvmlEventSetWait_v2 = nvmlEventSetWait

    def nvmlEventSetFree(self, event_set: Any) -> None:
        self._enter("nvmlEventSetFree")
        with self._lock:
            self._registered.clear()


def load(name_or_path: str, clock: Callable[[], float] = time.monotonic) -> FakeNvml:
    """A fake NVML module for a built-in scenario name or a scenario file path."""
    return FakeNvml(simulate.load(name_or_path), clock)
