"""The GPU part of a simulation scenario: per-GPU fields (in nodewarden's units), the starting state of a GPU
(:class:`GpuSpec`), its processes and MIG instances, the NVML functions the fake can hang, MIG profiles.

:mod:`agent.collectors.fakenvml` serves these to the GPU collector; :mod:`agent.collectors.simulate` (the
scenario and timeline format) validates timeline steps against them.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator

# Numeric per-GPU fields, in the units nodewarden exports (the fake converts to NVML's units).
NUMERIC_FIELDS: dict[str, str] = {
    "gpu_util": "GPU utilization, %",
    "mem_copy_util": "memory copy utilization, %",
    "fb_total_mib": "framebuffer total, MiB",
    "fb_reserved_mib": "framebuffer reserved by the driver, MiB",
    "fb_used_mib": "framebuffer used, MiB (free = total - reserved - used)",
    "sm_clock": "SM clock, MHz",
    "mem_clock": "memory clock, MHz",
    "pcie_tx_kbps": "PCIe TX throughput, KB/s",
    "pcie_rx_kbps": "PCIe RX throughput, KB/s",
    "temperature": "GPU temperature, C",
    "memory_temperature": "HBM temperature, C",
    "power_w": "power draw, W (energy integrates it)",
    "energy_mj": "total energy at scenario start, mJ",
    "power_violation_us": "time throttled by power, us",
    "thermal_violation_us": "time throttled by temperature, us",
    "ecc_sbe_volatile": "single-bit ECC errors since driver load",
    "ecc_dbe_volatile": "double-bit ECC errors since driver load",
    "ecc_sbe_aggregate": "single-bit ECC errors, lifetime",
    "ecc_dbe_aggregate": "double-bit ECC errors, lifetime",
    "retired_sbe": "pages retired for single-bit errors",
    "retired_dbe": "pages retired for double-bit errors",
    "retired_pending": "1 when pages are pending retirement",
    "remapped_correctable": "rows remapped for correctable errors",
    "remapped_uncorrectable": "rows remapped for uncorrectable errors",
    "remap_pending": "1 when a row remap is pending (reset the GPU)",
    "remap_failure": "1 when a row remap failed",
    "pcie_replay": "PCIe replay counter",
    "nvlink_crc_flit": "NVLink flow-control CRC errors",
    "nvlink_crc_data": "NVLink data CRC errors",
    "nvlink_replay": "NVLink replay errors",
    "nvlink_recovery": "NVLink recovery errors",
    "enc_util": "encoder utilization, %",
    "dec_util": "decoder utilization, %",
    "nvlink_tx_kibps": "NVLink data transmitted, KiB/s (the all-links TX counter integrates it)",
    "nvlink_rx_kibps": "NVLink data received, KiB/s (the all-links RX counter integrates it)",
    "nvlink_tx_kib": "NVLink data transmitted at scenario start, KiB",
    "nvlink_rx_kib": "NVLink data received at scenario start, KiB",
    "gr_engine_active": "GPM: fraction of time the graphics/compute engine was active, 0-1",
    "sm_active": "GPM: fraction of SMs busy, 0-1",
    "sm_occupancy": "GPM: fraction of resident warps vs the maximum, 0-1",
    "tensor_active": "GPM: fraction of time any tensor pipe was active, 0-1",
    "dram_active": "GPM: fraction of DRAM bandwidth used, 0-1",
    "power_limit_w": "power management limit, W (power draw is held at or below it)",
    "power_limit_default_w": "default power limit, W",
    "power_limit_min_w": "lowest settable power limit, W",
    "power_limit_max_w": "highest settable power limit, W",
    "pcie_link_gen": "current PCIe link generation",
    "pcie_link_width": "current PCIe link width (lanes)",
    "pcie_max_link_gen": "maximum PCIe link generation (GPU and slot)",
    "pcie_max_link_width": "maximum PCIe link width",
    "vgpu_license_status": "1 when the vGPU license feature is licensed (with grid_license_supported)",
}
# Fields NVML reports as counters the fake integrates from a rate field: counter -> (rate field, scale per second).
INTEGRATED: dict[str, tuple[str, float]] = {
    "energy_mj": ("power_w", 1000.0),
    "nvlink_tx_kib": ("nvlink_tx_kibps", 1.0),
    "nvlink_rx_kib": ("nvlink_rx_kibps", 1.0),
}
# GPM (nvmlGpmMetricsGet) quantities the fake averages between two samples: scenario field -> scale to NVML's unit.
GPM_FIELDS: dict[str, float] = {
    "gr_engine_active": 100.0,            # ratio -> %
    "sm_active": 100.0,
    "sm_occupancy": 100.0,
    "tensor_active": 100.0,
    "dram_active": 100.0,
    "pcie_tx_kbps": 1000.0 / 1048576.0,   # KB/s -> MiB/s
    "pcie_rx_kbps": 1000.0 / 1048576.0,
    "nvlink_tx_kibps": 1.0 / 1024.0,      # KiB/s -> MiB/s
    "nvlink_rx_kibps": 1.0 / 1024.0,
}
# Fields that can be marked NotSupported (numeric ones plus these groups).
SUPPORT_FIELDS = frozenset(NUMERIC_FIELDS) | {"clocks_event_reasons", "processes", "mig", "xid_events", "utilization",
                                              "gpm", "power_management", "set_power_limit"}

CLOCK_EVENT_REASONS: dict[str, int] = {
    "gpu_idle": 0x1,
    "applications_clocks_setting": 0x2,
    "sw_power_cap": 0x4,
    "hw_slowdown": 0x8,
    "sync_boost": 0x10,
    "sw_thermal_slowdown": 0x20,
    "hw_thermal_slowdown": 0x40,
    "hw_power_brake": 0x80,
    "display_clock_setting": 0x100,
}

# NVML functions the fake implements (names accepted in ``hang:``).
HANGABLE = frozenset(
    {
        "nvmlInit",
        "nvmlDeviceGetCount",
        "nvmlDeviceGetHandleByIndex",
        "nvmlDeviceGetUtilizationRates",
        "nvmlDeviceGetMemoryInfo",
        "nvmlDeviceGetClockInfo",
        "nvmlDeviceGetPcieThroughput",
        "nvmlDeviceGetTemperature",
        "nvmlDeviceGetPowerUsage",
        "nvmlDeviceGetCurrentClocksEventReasons",
        "nvmlDeviceGetFieldValues",
        "nvmlDeviceGetComputeRunningProcesses",
        "nvmlDeviceGetMigMode",
        "nvmlDeviceGetMigDeviceHandleByIndex",
        "nvmlDeviceGetEncoderUtilization",
        "nvmlDeviceGetPowerManagementLimit",
        "nvmlDeviceSetPowerManagementLimit",
        "nvmlGpmSampleGet",
        "nvmlGpmMetricsGet",
    }
)

MIG_PROFILES: dict[str, tuple[int, int]] = {  # H100 80GB: profile -> (slices, MiB)
    "1g.10gb": (1, 9856),
    "1g.20gb": (1, 19968),
    "2g.20gb": (2, 19968),
    "3g.40gb": (3, 40192),
    "4g.40gb": (4, 40192),
    "7g.80gb": (7, 80896),
}
_MIG_PROFILE_IDS = {"1g.10gb": 0, "2g.20gb": 1, "3g.40gb": 2, "4g.40gb": 3, "7g.80gb": 4, "1g.20gb": 15}

# Bus ids of the eight GPUs of a typical HGX H100 node.
DEFAULT_BUS_IDS = ("18", "2a", "3a", "5d", "9a", "ab", "ba", "db")


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Process(_Model):
    """A compute process on a GPU (``cgroup``: its /proc/PID/cgroup text, written by the node simulator)."""

    pid: int = Field(ge=1)
    used_mib: float = Field(0, ge=0)
    cgroup: str | None = None


class MigInstance(_Model):
    """A MIG GPU instance."""

    profile: str
    fb_used_mib: float = Field(0, ge=0)
    gr_engine_active: float = Field(0, ge=0, le=1)
    sm_active: float = Field(0, ge=0, le=1)
    sm_occupancy: float = Field(0, ge=0, le=1)
    tensor_active: float = Field(0, ge=0, le=1)
    dram_active: float = Field(0, ge=0, le=1)

    @field_validator("profile")
    @classmethod
    def _known(cls, v: str) -> str:
        if v not in MIG_PROFILES:
            raise ValueError(f"unknown MIG profile {v!r} (known: {', '.join(MIG_PROFILES)})")
        return v


class GpuSpec(_Model):
    """One GPU's starting state (the ``gpu:`` template merged with its ``gpus: {INDEX: ...}`` entry)."""

    name: str = "NVIDIA H100 80GB HBM3"
    uuid: str | None = None
    pci_bus_id: str | None = None
    gpu_util: float = 0
    mem_copy_util: float = 0
    fb_total_mib: float = 81559
    fb_reserved_mib: float = 329
    fb_used_mib: float = 0
    sm_clock: float = 1980
    mem_clock: float = 2619
    pcie_tx_kbps: float = 0
    pcie_rx_kbps: float = 0
    temperature: float = 35
    memory_temperature: float = 40
    power_w: float = 70
    energy_mj: float = 0
    power_violation_us: float = 0
    thermal_violation_us: float = 0
    ecc_sbe_volatile: float = 0
    ecc_dbe_volatile: float = 0
    ecc_sbe_aggregate: float = 0
    ecc_dbe_aggregate: float = 0
    retired_sbe: float = 0
    retired_dbe: float = 0
    retired_pending: float = 0
    remapped_correctable: float = 0
    remapped_uncorrectable: float = 0
    remap_pending: float = 0
    remap_failure: float = 0
    pcie_replay: float = 0
    nvlink_crc_flit: float = 0
    nvlink_crc_data: float = 0
    nvlink_replay: float = 0
    nvlink_recovery: float = 0
    enc_util: float = 0
    dec_util: float = 0
    nvlink_tx_kibps: float = 0
    nvlink_rx_kibps: float = 0
    nvlink_tx_kib: float = 0
    nvlink_rx_kib: float = 0
    gr_engine_active: float = 0
    sm_active: float = 0
    sm_occupancy: float = 0
    tensor_active: float = 0
    dram_active: float = 0
    power_limit_w: float = 700
    power_limit_default_w: float = 700
    power_limit_min_w: float = 200
    power_limit_max_w: float = 700
    pcie_link_gen: float = 5
    pcie_link_width: float = 16
    pcie_max_link_gen: float = 5
    pcie_max_link_width: float = 16
    vgpu_license_status: float = 0
    grid_license_supported: bool = False
    clocks_event_reasons: list[str] = []
    processes: list[Process] = []
    mig: list[MigInstance] | None = None
    not_supported: list[str] = []

    @field_validator("clocks_event_reasons")
    @classmethod
    def _reasons(cls, v: list[str]) -> list[str]:
        for r in v:
            if r not in CLOCK_EVENT_REASONS:
                raise ValueError(f"unknown clock event reason {r!r} (known: {', '.join(CLOCK_EVENT_REASONS)})")
        return v

    @field_validator("not_supported")
    @classmethod
    def _support(cls, v: list[str]) -> list[str]:
        return check_support(v)


def check_support(v: list[str]) -> list[str]:
    for f in v:
        if f not in SUPPORT_FIELDS:
            raise ValueError(f"unknown field {f!r} (known: {', '.join(sorted(SUPPORT_FIELDS))})")
    return v



def mig_profile(profile: str) -> tuple[int, int, int]:
    """(profile id, slice count, memory MiB) of a MIG profile name."""
    slices, mib = MIG_PROFILES[profile]
    return _MIG_PROFILE_IDS[profile], slices, mib

