"""The simulated GPUs behind :class:`agent.collectors.fakenvml.FakeNvml`: each device's live state (scenario
values, clock reasons, processes, unsupported fields, lost, MIG instances, settable power limit and compute
mode) and the MIG devices it is split into."""

from __future__ import annotations

from typing import Any

from agent.collectors import simulate
from agent.collectors.simulate import CLOCK_EVENT_REASONS

_MIG_GPM = ("gr_engine_active", "sm_active", "sm_occupancy", "tensor_active", "dram_active")


class Obj:
    """A plain attribute bag standing in for NVML's ctypes structures."""

    def __init__(self, **kw: Any) -> None:
        self.__dict__.update(kw)


class Device:
    """A fake GPU handle and its live state."""

    def __init__(self, index: int, spec: simulate.GpuSpec) -> None:
        self.index = index
        self.spec = spec
        self.values: dict[str, float] = {k: float(getattr(spec, k)) for k in simulate.NUMERIC_FIELDS}
        self.reasons = sum(CLOCK_EVENT_REASONS[r] for r in spec.clocks_event_reasons)
        self.processes = [(p.pid, p.used_mib) for p in spec.processes]
        self.not_supported = set(spec.not_supported)
        self.lost = False
        self.energy_t = 0.0  # scenario time of the last integration (energy, NVLink bytes, GPM integrals)
        self.gpm_acc: dict[str, float] = dict.fromkeys(simulate.GPM_FIELDS, 0.0)
        self.mig = [MigDevice(self, i, inst) for i, inst in enumerate(spec.mig or [])]
        self.mig_enabled = spec.mig is not None
        self.compute_mode = 0  # NVML_COMPUTEMODE_DEFAULT

    def power(self) -> float:
        """Power draw in W: the demand, held at the power limit."""
        return min(self.values["power_w"], self.values["power_limit_w"])

    def capped(self) -> float:
        """Watts the power limit takes off the demand (0 when it does not bite)."""
        return max(0.0, self.values["power_w"] - self.values["power_limit_w"])

    def __repr__(self) -> str:
        return f"<fake nvmlDevice {self.index}>"


class MigDevice:
    """A fake MIG device handle (one GPU instance with one compute instance)."""

    def __init__(self, parent: Device, slot: int, inst: simulate.MigInstance) -> None:
        self.parent = parent
        self.profile = inst.profile
        self.profile_id, self.slices, self.memory_mib = simulate.mig_profile(inst.profile)
        self.gi_id = slot + 1
        self.fb_used_mib = inst.fb_used_mib
        self.activity = {k: float(getattr(inst, k)) for k in _MIG_GPM}
        self.uuid = f"MIG-{parent.spec.uuid.removeprefix('GPU-')[:8]}-{slot:04d}-4000-8000-{parent.index:012d}"
