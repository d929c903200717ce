"""Simulation scenarios: YAML files describing a node (GPUs and host), its state over time, injected faults, and
what must happen (``expect``).

GPUs drive :mod:`agent.collectors.fakenvml`; the host part (``node:`` objects, timeline ``host:`` / ``kmsg:`` /
``files:`` entries) drives :mod:`agent.collectors.nodesim`, which renders procfs/sysfs/dev trees that the real
collectors read. Built-in scenarios ship in ``agent/data/scenarios/NAME.yml``;
any other path to a ``.yml`` file works too. Problems are reported as ``file:line:column: message``.
See docs/gpu.md for the format.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from agent.core import yamlpos
from agent.core.durations import parse_duration
from agent.core.errors import ConfigError

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

BUILTIN_DIR = ("data", "scenarios")
# Bus ids of the eight GPUs of a typical HGX H100 node.
DEFAULT_BUS_IDS = ("18", "2a", "3a", "5d", "9a", "ab", "ba", "db")


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


def _seconds(value: Any) -> float:
    if isinstance(value, bool):
        raise ValueError("expected seconds or a duration like 30s")
    if isinstance(value, (int, float)):
        if value < 0:
            raise ValueError("must not be negative")
        return float(value)
    return parse_duration(value)


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
        return _check_support(v)


def _check_support(v: list[str]) -> list[str]:
    for f in v:
        if f not in SUPPORT_FIELDS:
            raise ValueError(f"unknown field {f!r} (known: {', '.join(sorted(SUPPORT_FIELDS))})")
    return v


# Host objects (``node:`` keys ``KIND/NAME``; InfiniBand ``ib/DEVICE/PORT``; TCP is the single object ``tcp``):
# kind -> {field: default}. Counters are floats the simulator integrates from ``rate`` (per second).
HOST_KINDS: dict[str, dict[str, Any]] = {
    "nic": {"rx_bytes": 0, "rx_packets": 0, "rx_errs": 0, "rx_drop": 0, "tx_bytes": 0, "tx_packets": 0,
            "tx_errs": 0, "tx_drop": 0, "up": 1, "carrier_changes": 2, "speed_mbps": 100000},
    "tcp": {"in_segs": 0, "out_segs": 0, "retrans_segs": 0},
    "disk": {"reads": 0, "read_sectors": 0, "read_ms": 0, "writes": 0, "write_sectors": 0, "write_ms": 0,
             "io_now": 0, "io_ms": 0, "weighted_ms": 0, "major": 259, "minor": 0},
    "fs": {"device": "/dev/nvme0n1p1", "fstype": "ext4", "size_bytes": 1 << 40, "avail_bytes": 1 << 39,
           "files": 1 << 26, "files_free": 1 << 25, "readonly": 0, "hang": 0},
    "clock": {"synced": 1, "offset_ns": 20000, "maxerror_us": 150000, "esterror_us": 50},
    "ib": {"state": 4, "phys_state": 5, "rate_gbps": 400, "port_rcv_data": 0, "port_xmit_data": 0,
           "port_rcv_packets": 0, "port_xmit_packets": 0, "port_xmit_wait": 0, "link_downed": 0,
           "link_error_recovery": 0, "symbol_error": 0, "port_rcv_errors": 0, "port_rcv_discards": 0,
           "port_xmit_discards": 0, "np_ecn_marked_roce_packets": 0, "rp_cnp_handled": 0, "np_cnp_sent": 0,
           "out_of_buffer": 0},
}
_TEXT_FIELDS = {"device", "fstype"}


def host_kind(key: str) -> str:
    """The kind of a host object key (``nic/eth0`` -> ``nic``); ValueError when malformed."""
    kind, _, rest = key.partition("/")
    if kind not in HOST_KINDS:
        raise ValueError(f"unknown host object {key!r} (kinds: {', '.join(HOST_KINDS)}; e.g. nic/eth0, "
                         "disk/nvme0n1, fs//data, ib/mlx5_0/1, tcp)")
    parts = rest.split("/") if rest else []
    if kind in ("tcp", "clock"):
        ok = not parts
    elif kind == "ib":
        ok = len(parts) == 2 and all(parts) and parts[1].isdigit()
    elif kind == "fs":
        ok = rest.startswith("/")
    else:
        ok = len(parts) == 1 and bool(parts[0]) and parts[0] not in (".", "..")
    if not ok:
        raise ValueError(f"malformed host object name {key!r}")
    return kind


def _check_fields(kind: str, fields: dict[str, Any], where: str) -> None:
    for name, value in fields.items():
        if name not in HOST_KINDS[kind]:
            raise ValueError(f"{where}: unknown {kind} field {name!r} (known: {', '.join(HOST_KINDS[kind])})")
        if name in _TEXT_FIELDS:
            if not isinstance(value, str):
                raise ValueError(f"{where}.{name}: expected text")
        elif isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{where}.{name}: expected a number")


class HostChange(_Model):
    """What a step does to one host object: ``set`` values, ``add`` to counters, change counter ``rate``s
    (per second), or ``uniform`` [low, high] draws (deterministic per seed, step and time)."""

    set: dict[str, Any] = {}
    add: dict[str, float] = {}
    rate: dict[str, float] = {}
    uniform: dict[str, tuple[float, float]] = {}


class Dataset(_Model):
    """A protected dataset on the simulated host (``root`` relative to the host root), with its files; the
    scenario runner writes them, builds the manifest and configures the ``restore`` plugin's scrubber."""

    root: str
    files: dict[str, str]
    scrub_every: float = 60.0

    @field_validator("root")
    @classmethod
    def _root(cls, v: str) -> str:
        return check_sim_path(v)

    @field_validator("scrub_every", mode="before")
    @classmethod
    def _every(cls, v: Any) -> float:
        return _seconds(v)


class Expect(_Model):
    """What must happen in a scenario run: ``alert`` fires (within ``within``), or never (``never: true``);
    ``action`` is journaled (planned, in observe mode) within ``within``, or never. ``labels`` narrow which
    firing alerts count (alerts only)."""

    alert: str | None = None
    action: str | None = None
    within: float | None = None
    never: bool = False
    labels: dict[str, str] = {}

    @field_validator("within", mode="before")
    @classmethod
    def _within(cls, v: Any) -> Any:
        return None if v is None else _seconds(v)

    @model_validator(mode="after")
    def _one(self) -> Expect:
        if (self.alert is None) == (self.action is None):
            raise ValueError("an expectation names exactly one of alert or action")
        return self


class Step(_Model):
    """A timeline entry: at ``at`` seconds (repeating ``every`` until ``until``), change the target GPUs and the
    host objects, log kernel lines, write files. ``chance`` applies each repetition with that probability."""

    at: float
    every: float | None = None
    until: float | None = None
    gpu: int | list[int] | Literal["all"] = "all"
    set: dict[str, Any] = {}
    add: dict[str, float] = {}
    xid: int | None = Field(None, ge=1, le=9999)
    lost: bool | None = None
    not_supported: list[str] | None = None
    supported: list[str] | None = None
    hang: list[str] | None = None
    uniform: dict[str, tuple[float, float]] = {}
    chance: float = Field(1.0, gt=0, le=1)
    host: dict[str, HostChange] = {}
    kmsg: list[str] = []
    files: dict[str, str] = {}

    @field_validator("uniform")
    @classmethod
    def _uniform(cls, v: dict[str, tuple[float, float]]) -> dict[str, tuple[float, float]]:
        for key, (lo, hi) in v.items():
            if key not in NUMERIC_FIELDS:
                raise ValueError(f"uniform: unknown field {key!r}")
            if hi < lo:
                raise ValueError(f"uniform.{key}: high below low")
        return v

    @field_validator("host")
    @classmethod
    def _host(cls, v: dict[str, HostChange]) -> dict[str, HostChange]:
        for key, change in v.items():
            kind = host_kind(key)
            _check_fields(kind, change.set, f"host.{key}.set")
            for part in ("add", "rate", "uniform"):
                _check_fields(kind, dict.fromkeys(getattr(change, part), 0), f"host.{key}.{part}")
        return v

    @field_validator("files")
    @classmethod
    def _files(cls, v: dict[str, str]) -> dict[str, str]:
        for path in v:
            check_sim_path(path)
        return v

    def occurs(self, seed: int, index: int, t: float) -> bool:
        """Whether this repetition happens (``chance``), the same answer for every simulator part."""
        return self.chance >= 1.0 or draw(seed, index, t, "chance") < self.chance

    @field_validator("at", "every", "until", mode="before")
    @classmethod
    def _time(cls, v: Any) -> Any:
        return None if v is None else _seconds(v)

    @field_validator("set")
    @classmethod
    def _set(cls, v: dict[str, Any]) -> dict[str, Any]:
        for key, value in v.items():
            if key in NUMERIC_FIELDS:
                if isinstance(value, bool) or not isinstance(value, (int, float)):
                    raise ValueError(f"set.{key}: expected a number")
            elif key == "clocks_event_reasons":
                GpuSpec._reasons(list(value or []))
            elif key == "processes":
                [Process.model_validate(p) for p in value or []]
            else:
                raise ValueError(f"set: unknown field {key!r}")
        return v

    @field_validator("add")
    @classmethod
    def _add(cls, v: dict[str, float]) -> dict[str, float]:
        for key in v:
            if key not in NUMERIC_FIELDS:
                raise ValueError(f"add: unknown field {key!r}")
        return v

    @field_validator("not_supported", "supported")
    @classmethod
    def _sup(cls, v: list[str] | None) -> list[str] | None:
        return None if v is None else _check_support(v)

    @field_validator("hang")
    @classmethod
    def _hang(cls, v: list[str] | None) -> list[str] | None:
        for fn in v or []:
            if fn != "all" and fn not in HANGABLE:
                raise ValueError(f"hang: unknown NVML function {fn!r} (use 'all' or one of {sorted(HANGABLE)})")
        return v

    @model_validator(mode="after")
    def _repeat(self) -> Step:
        if self.every is not None and self.every <= 0:
            raise ValueError("every must be positive")
        if self.until is not None and self.until < self.at:
            raise ValueError("until must not be before at")
        return self

    def times(self, horizon: float) -> list[float]:
        """The moments this step applies (``every`` repeats up to ``until`` or ``horizon``, 10,000 at most)."""
        if self.every is None:
            return [self.at]
        end = self.until if self.until is not None else horizon
        out, t = [], self.at
        while t <= end + 1e-9 and len(out) < 10_000:
            out.append(t)
            t += self.every
        return out


def check_sim_path(path: str) -> str:
    """A file path inside the simulated roots: ``proc/...``, ``sys/...``, ``dev/...`` or a host path; no ``..``."""
    parts = path.strip("/").split("/")
    if not path or path.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise ValueError(f"files: {path!r}: give a relative path like proc/loadavg or sys/class/... (no ..)")
    return path


def draw(seed: int, index: int, t: float, what: str) -> float:
    """A deterministic number in [0, 1) for (seed, step index, time, what): the same in every simulator part."""
    import hashlib

    digest = hashlib.blake2b(f"{seed}/{index}/{t:.6f}/{what}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


class Scenario(_Model):
    """A simulated node: GPUs (``gpu``/``gpus``), optionally the host (``node``), a timeline, expectations."""

    name: str
    description: str
    extends: str | None = Field(None, description="a built-in scenario whose node, GPUs and timeline this one "
                                "starts from (expectations and healthy are not inherited)")
    seed: int = 0
    healthy: bool = Field(False, description="no default rule may fire and no action be planned")
    node: dict[str, dict[str, Any]] | None = None
    datasets: dict[str, Dataset] = {}
    expect: list[Expect] = []
    duration: float = 3600.0
    nvml: Literal["ok", "library_not_found", "driver_not_loaded", "no_permission"] = "ok"
    driver_version: str = "550.54.15"
    cuda_version: int = 12040
    nvml_version: str = "12.550.54.15"
    gpu_count: int = Field(8, ge=0, le=64)
    gpu: GpuSpec = GpuSpec()
    gpus: dict[int, GpuSpec] = {}
    timeline: list[Step] = []
    # Filled by the validator: the merged, validated spec of every GPU.
    devices: list[GpuSpec] = []

    @field_validator("duration", mode="before")
    @classmethod
    def _dur(cls, v: Any) -> float:
        return _seconds(v)

    @field_validator("node")
    @classmethod
    def _node(cls, v: dict[str, dict[str, Any]] | None) -> dict[str, dict[str, Any]] | None:
        for key, fields in (v or {}).items():
            kind = host_kind(key)
            fields = dict(fields or {})
            rate = fields.pop("rate", {}) or {}
            if not isinstance(rate, dict):
                raise ValueError(f"node.{key}.rate: expected a mapping of counter: per-second rate")
            _check_fields(kind, fields, f"node.{key}")
            _check_fields(kind, rate, f"node.{key}.rate")
        return v

    @model_validator(mode="after")
    def _build(self) -> Scenario:
        for idx in self.gpus:
            if not 0 <= idx < self.gpu_count:
                raise ValueError(f"gpus: index {idx} out of range (gpu_count is {self.gpu_count})")
        for step in self.timeline:
            targets = [] if step.gpu == "all" else [step.gpu] if isinstance(step.gpu, int) else step.gpu
            for idx in targets:
                if not 0 <= idx < self.gpu_count:
                    raise ValueError(f"timeline: gpu {idx} out of range (gpu_count is {self.gpu_count})")
        devices = []
        for i in range(self.gpu_count):
            spec = self.gpu
            if i in self.gpus:
                over = self.gpus[i]
                spec = spec.model_copy(update={k: getattr(over, k) for k in over.model_fields_set})
            bus = DEFAULT_BUS_IDS[i] if i < len(DEFAULT_BUS_IDS) else f"{0x20 + i:02x}"
            spec = spec.model_copy(
                update={
                    "uuid": spec.uuid or f"GPU-{_h(self.name, i, 8)}-{_h(self.name, i, 4, 1)}-"
                    f"{_h(self.name, i, 4, 2)}-{_h(self.name, i, 4, 3)}-{_h(self.name, i, 12, 4)}",
                    "pci_bus_id": spec.pci_bus_id or f"00000000:{bus.upper()}:00.0",
                }
            )
            devices.append(spec)
        object.__setattr__(self, "devices", devices)
        return self


def _h(name: str, i: int, n: int, salt: int = 0) -> str:
    import hashlib

    return hashlib.sha256(f"{name}/{i}/{salt}".encode()).hexdigest()[:n]


def mig_profile(profile: str) -> tuple[int, int, int]:
    """(profile id, slice count, memory MiB) of a MIG profile name."""
    slices, mib = MIG_PROFILES[profile]
    return _MIG_PROFILE_IDS[profile], slices, mib


def load_text(text: str, filename: str = "<scenario>", _depth: int = 0) -> Scenario:
    """Parse and validate a scenario; ConfigError lists every problem as ``file:line:column: message``."""
    sc = yamlpos.load_model(Scenario, text, filename, "a scenario")[0]
    if sc.extends is None:
        return sc
    if _depth >= 4:
        raise ConfigError(f"{filename}:1:1: extends: more than 4 levels (a loop?)")
    base = load_text(builtin_text(sc.extends), f"{sc.extends}.yml", _depth + 1)
    return merge(base, sc, filename)


def merge(base: Scenario, child: Scenario, filename: str = "<scenario>") -> Scenario:
    """``child`` on top of ``base``: node objects and GPU templates merged field by field, timelines
    concatenated (base first), datasets merged; expectations, healthy and the rest from the child."""
    skip = {"devices", "extends"}
    data = base.model_dump(exclude=skip | {"expect", "healthy"})
    own = child.model_dump(exclude=skip, exclude_unset=True)
    node = {k: dict(v) for k, v in (base.node or {}).items()}
    for key, fields in (child.node or {}).items():
        merged = {**node.get(key, {}), **fields}
        if "rate" in fields and "rate" in node.get(key, {}):
            merged["rate"] = {**node[key]["rate"], **fields["rate"]}
        node[key] = merged
    data.update({k: v for k, v in own.items() if k not in ("node", "gpu", "gpus", "timeline", "datasets")})
    data["node"] = node or None
    data["gpu"] = {**base.gpu.model_dump(exclude_unset=True), **child.gpu.model_dump(exclude_unset=True)}
    gpus = {i: g.model_dump(exclude_unset=True) for i, g in base.gpus.items()}
    for i, g in child.gpus.items():
        gpus[i] = {**gpus.get(i, {}), **g.model_dump(exclude_unset=True)}
    data["gpus"] = gpus
    data["timeline"] = [s.model_dump(exclude_unset=True) for s in base.timeline] + \
        [s.model_dump(exclude_unset=True) for s in child.timeline]
    data["datasets"] = {**data.get("datasets", {}), **own.get("datasets", {})}
    try:
        return Scenario.model_validate(data)
    except ValueError as err:
        raise ConfigError(f"{filename}:1:1: extends {base.name}: {err}") from err


def builtin_names() -> list[str]:
    """Names of the scenarios shipped with nodewarden."""
    folder = resources.files("agent").joinpath(*BUILTIN_DIR)
    return sorted(p.name.removesuffix(".yml") for p in folder.iterdir() if p.name.endswith(".yml"))


def builtin_text(name: str) -> str:
    """YAML text of a built-in scenario (ConfigError when unknown)."""
    if name not in builtin_names():
        raise ConfigError(f"unknown scenario {name!r}; built-in: {', '.join(builtin_names())} (or give a .yml path)")
    return resources.files("agent").joinpath(*BUILTIN_DIR, f"{name}.yml").read_text(encoding="utf-8")


def load(name_or_path: str) -> Scenario:
    """A built-in scenario by name, or a scenario file by path."""
    if name_or_path.endswith((".yml", ".yaml")) or "/" in name_or_path:
        path = Path(name_or_path)
        text = yamlpos.read_text(path, "scenario")
        return load_text(text, str(path))
    return load_text(builtin_text(name_or_path), f"{name_or_path}.yml")
