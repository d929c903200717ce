"""MIG instances of one GPU: found through NVML once (with their dcgm-exporter labels), read each tick for the
framebuffer rows dcgm-exporter reports per instance."""

from __future__ import annotations

import math
from typing import Any, NamedTuple

from agent.collectors.gpu_catalogue import mig_labels
from agent.collectors.nvml import UNSUPPORTED, Nvml, text
from agent.core.metrics import Labels, Sample


class MigInstance(NamedTuple):
    """One MIG device: its NVML handle, its labels and its GPU instance id (-1 when NVML gave none)."""

    handle: Any
    labels: Labels
    gi: int


def mig_profile_name(slices: int, memory_mb: int) -> str:
    """NVIDIA's profile name from slice count and memory: ``1g.10gb`` (memory rounded up to 5 GB steps)."""
    return f"{slices}g.{math.ceil(memory_mb / 1024 / 5) * 5}gb"


def discover(nvml: Nvml, handle: Any, gpu: Labels) -> list[MigInstance]:
    """The MIG instances of the GPU ``handle`` (labels ``gpu``), none when MIG is off (runs in the NVML worker)."""
    nv = nvml.nv
    get = nvml.get
    mode = get(nv.nvmlDeviceGetMigMode, handle)
    if not isinstance(mode, (list, tuple)) or not mode[0]:
        return []
    out = []
    n = get(nv.nvmlDeviceGetMaxMigDeviceCount, handle) or 0
    for k in range(n if isinstance(n, int) else 0):
        mh = get(nv.nvmlDeviceGetMigDeviceHandleByIndex, handle, k)
        if mh is None or mh is UNSUPPORTED:
            continue
        gi = get(nv.nvmlDeviceGetGpuInstanceId, mh)
        profile = ""
        inst = get(nv.nvmlDeviceGetGpuInstanceById, handle, gi)
        info = get(nv.nvmlGpuInstanceGetInfo, inst) if inst not in (None, UNSUPPORTED) else None
        if info is not None and info is not UNSUPPORTED:
            pinfo = get(nv.nvmlDeviceGetGpuInstanceProfileInfoById, handle, info.profileId)
            if pinfo is not None and pinfo is not UNSUPPORTED:
                profile = text(pinfo.name).removeprefix("MIG ")
        if not profile:  # GPU-instance queries can need root: derive the name from the attributes
            attrs = get(nv.nvmlDeviceGetAttributes, mh)
            if attrs is not None and attrs is not UNSUPPORTED:
                profile = mig_profile_name(attrs.gpuInstanceSliceCount, attrs.memorySizeMB)
        out.append(MigInstance(mh, mig_labels(gpu, profile, gi), gi if isinstance(gi, int) else -1))
    return out


def sample_memory(nvml: Nvml, instances: list[MigInstance], out: list[Sample]) -> None:
    """Framebuffer used/free (MiB) of each instance (runs in the NVML worker)."""
    nv = nvml.nv
    for mig in instances:
        mm = nvml.get(nv.nvmlDeviceGetMemoryInfo, mig.handle)
        if mm is not None and mm is not UNSUPPORTED:
            out.append(Sample("DCGM_FI_DEV_FB_USED", mig.labels, mm.used / 1048576))
            out.append(Sample("DCGM_FI_DEV_FB_FREE", mig.labels, mm.free / 1048576))
