"""The simulated GPUs behind :class:`agent.collectors.fakenvml.FakeNvml`: each device's live state (scenario
values, clock reasons, processes, unsupported fields, lost, MIG instances, settable power limit and compute
mode) and the MIG devices it is split into; the file that keeps the settable state across agent restarts."""

from __future__ import annotations

import json
import os
from typing import Any

from agent.collectors import simulate
from agent.collectors.simulate import CLOCK_EVENT_REASONS, Step

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

    def integrate(self, t: float) -> None:
        """Advance the counters that integrate a rate (energy, NVLink bytes, GPM activity) to time ``t``."""
        if t > self.energy_t:
            dt = t - self.energy_t
            v = self.values
            for counter, (rate, scale) in simulate.INTEGRATED.items():
                v[counter] += (self.power() if rate == "power_w" else v[rate]) * scale * dt
            for key in self.gpm_acc:
                self.gpm_acc[key] += v[key] * dt
            self.energy_t = t

    def apply(self, step: Step, t: float, seed: int, n: int = 0) -> None:
        """Apply timeline step ``n`` at scenario time ``t`` to this GPU (its XID and hangs are the caller's)."""
        self.integrate(t)  # rates change below: integrate up to now with the old ones
        for key, (lo, hi) in step.uniform.items():
            self.values[key] = lo + (hi - lo) * simulate.draw(seed, n, t, f"{self.index}/{key}")
        for key, value in step.set.items():
            if key == "clocks_event_reasons":
                self.reasons = sum(CLOCK_EVENT_REASONS[r] for r in value or [])
            elif key == "processes":
                self.processes = [(int(p["pid"]), float(p.get("used_mib", 0))) for p in value or []]
            else:
                self.values[key] = float(value)
        for key, delta in step.add.items():
            self.values[key] += delta
        if step.not_supported:
            self.not_supported.update(step.not_supported)
        if step.supported:
            self.not_supported.difference_update(step.supported)
        if step.lost is not None:
            self.lost = step.lost

    def reset(self, t: float) -> None:
        """What a GPU reset does at scenario time ``t``: back if lost, settings to defaults, volatile ECC cleared."""
        self.integrate(t)
        self.lost = False
        self.values["power_limit_w"] = self.values["power_limit_default_w"]
        self.values["remap_pending"] = 0.0
        self.values["ecc_dbe_volatile"] = self.values["ecc_sbe_volatile"] = 0.0
        self.compute_mode = 0

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


class SettingsFile:
    """The settable state of the GPUs (power limit, compute mode) by UUID in a JSON file: it survives an agent
    restart or kill -9 as a real GPU's does until the driver reloads. No path: nothing is kept."""

    def __init__(self, path: str | None) -> None:
        self.path = path

    def load(self, devices: list[Device]) -> None:
        """Restore the saved settings onto ``devices`` (a missing or unreadable file restores nothing)."""
        if not self.path:
            return
        try:
            with open(self.path, encoding="utf-8") as f:
                saved = json.load(f)
        except (OSError, ValueError):
            return
        for dev in devices:
            d = saved.get(dev.spec.uuid) or {}
            if "power_limit_w" in d:
                dev.values["power_limit_w"] = float(d["power_limit_w"])
            if "compute_mode" in d:
                dev.compute_mode = int(d["compute_mode"])

    def save(self, devices: list[Device]) -> None:
        """Write the settings of ``devices`` atomically (temporary file, fsync, rename)."""
        if not self.path:
            return
        doc = {d.spec.uuid: {"power_limit_w": d.values["power_limit_w"], "compute_mode": d.compute_mode}
               for d in devices}
        tmp = f"{self.path}.tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(doc, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
