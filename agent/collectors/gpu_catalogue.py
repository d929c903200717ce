"""The GPU collector's catalogue: dcgm-exporter's label sets, the NVML field and GPM metric tables, and every
metric the collector exports (name, type, help, labels), which tests check completely against what is emitted.

Pure data and label building; no NVML calls.
"""

from __future__ import annotations

from agent.core.metrics import Labels, MetricSpec

# dcgm-exporter's order: identity, [MIG instance], hostname, then label-type fields (DCGM_FI_DRIVER_VERSION).
GPU_LABELS = ("gpu", "UUID", "pci_bus_id", "device", "modelName", "hostname", "DCGM_FI_DRIVER_VERSION")
# MIG rows insert GPU_I_PROFILE and GPU_I_ID before hostname (whole-GPU rows of the same family omit them).
MIG_LABELS = ("gpu", "UUID", "pci_bus_id", "device", "modelName", "GPU_I_PROFILE", "GPU_I_ID", "hostname",
              "DCGM_FI_DRIVER_VERSION")
JOB_LABELS = ("gpu", "UUID", "job_id", "namespace", "pod", "pod_uid")
NVLINK_ALL = 0xFFFFFFFF  # scopeId for "all NVLinks" (what DCGM passes for DCGM_FI_DEV_NVLINK_BANDWIDTH_TOTAL)
XID_LABELS = ("gpu", "UUID", "xid")

CLOCK_EVENT_REASONS: tuple[tuple[str, int], ...] = (  # nvml.h nvmlClocksEventReason*
    ("gpu_idle", 0x1),
    ("applications_clocks_setting", 0x2),
    ("sw_power_cap", 0x4),
    ("hw_slowdown", 0x8),
    ("sync_boost", 0x10),
    ("sw_thermal_slowdown", 0x20),
    ("hw_thermal_slowdown", 0x40),
    ("hw_power_brake", 0x80),
    ("display_clock_setting", 0x100),
)

# nvmlDeviceGetFieldValues: (NVML field id, metric, scale to exported unit)
FIELDS: tuple[tuple[int, str, float], ...] = (
    (82, "DCGM_FI_DEV_MEMORY_TEMP", 1.0),
    (83, "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION", 1.0),
    (74, "DCGM_FI_DEV_POWER_VIOLATION", 1e-3),  # NVML ns -> us
    (75, "DCGM_FI_DEV_THERMAL_VIOLATION", 1e-3),
    (3, "DCGM_FI_DEV_ECC_SBE_VOL_TOTAL", 1.0),
    (4, "DCGM_FI_DEV_ECC_DBE_VOL_TOTAL", 1.0),
    (5, "DCGM_FI_DEV_ECC_SBE_AGG_TOTAL", 1.0),
    (6, "DCGM_FI_DEV_ECC_DBE_AGG_TOTAL", 1.0),
    (29, "DCGM_FI_DEV_RETIRED_SBE", 1.0),
    (30, "DCGM_FI_DEV_RETIRED_DBE", 1.0),
    (31, "DCGM_FI_DEV_RETIRED_PENDING", 1.0),
    (142, "DCGM_FI_DEV_CORRECTABLE_REMAPPED_ROWS", 1.0),
    (143, "DCGM_FI_DEV_UNCORRECTABLE_REMAPPED_ROWS", 1.0),
    (144, "nodewarden_gpu_row_remap_pending", 1.0),
    (145, "DCGM_FI_DEV_ROW_REMAP_FAILURE", 1.0),
    (94, "DCGM_FI_DEV_PCIE_REPLAY_COUNTER", 1.0),
    (38, "DCGM_FI_DEV_NVLINK_CRC_FLIT_ERROR_COUNT_TOTAL", 1.0),
    (45, "DCGM_FI_DEV_NVLINK_CRC_DATA_ERROR_COUNT_TOTAL", 1.0),
    (52, "DCGM_FI_DEV_NVLINK_REPLAY_ERROR_COUNT_TOTAL", 1.0),
    (59, "DCGM_FI_DEV_NVLINK_RECOVERY_ERROR_COUNT_TOTAL", 1.0),
    # DCGM's NVLINK_BANDWIDTH_TOTAL is RX + TX data throughput over all links (KiB): fields with one name add up.
    ((139, NVLINK_ALL), "DCGM_FI_DEV_NVLINK_BANDWIDTH_TOTAL", 1.0),  # NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_RX
    ((138, NVLINK_ALL), "DCGM_FI_DEV_NVLINK_BANDWIDTH_TOTAL", 1.0),  # NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_TX
)
# nvmlGpmMetricsGet metric ids (nvml.h NVML_GPM_METRIC_*) -> (metric, scale), as DCGM maps its profiling fields
# (dcgm_fields.cpp DcgmFieldIdToNvmlGpmMetricId: percentages / 100; PCIe/NVLink MiB/s -> bytes/s here).
GPM_METRICS: tuple[tuple[int, str, float], ...] = (
    (1, "DCGM_FI_PROF_GR_ENGINE_ACTIVE", 0.01),     # GRAPHICS_UTIL
    (2, "DCGM_FI_PROF_SM_ACTIVE", 0.01),            # SM_UTIL
    (3, "DCGM_FI_PROF_SM_OCCUPANCY", 0.01),         # SM_OCCUPANCY
    (5, "DCGM_FI_PROF_PIPE_TENSOR_ACTIVE", 0.01),   # ANY_TENSOR_UTIL
    (10, "DCGM_FI_PROF_DRAM_ACTIVE", 0.01),         # DRAM_BW_UTIL
    (20, "DCGM_FI_PROF_PCIE_TX_BYTES", 1048576.0),  # PCIE_TX_PER_SEC (MiB/s)
    (21, "DCGM_FI_PROF_PCIE_RX_BYTES", 1048576.0),  # PCIE_RX_PER_SEC
    (61, "DCGM_FI_PROF_NVLINK_TX_BYTES", 1048576.0),  # NVLINK_TOTAL_TX_PER_SEC
    (60, "DCGM_FI_PROF_NVLINK_RX_BYTES", 1048576.0),  # NVLINK_TOTAL_RX_PER_SEC
)
GPM_METRICS_GET_VERSION = 1
# (metric, help) of the power-limit family, in W (NVML reports mW).
POWER_LIMITS: tuple[tuple[str, str], ...] = (
    ("DCGM_FI_DEV_POWER_MGMT_LIMIT", "Current power limit for the device (in W)."),
    ("DCGM_FI_DEV_ENFORCED_POWER_LIMIT", "Effective power limit that the driver enforces after taking into "
                                         "account all limiters (in W)."),
)
POWER_CONSTRAINTS: tuple[tuple[str, str], ...] = (
    ("DCGM_FI_DEV_POWER_MGMT_LIMIT_MIN", "Minimum power management limit for the device (in W)."),
    ("DCGM_FI_DEV_POWER_MGMT_LIMIT_MAX", "Maximum power management limit for the device (in W)."),
    ("DCGM_FI_DEV_POWER_MGMT_LIMIT_DEF", "Default power management limit for the device (in W)."),
)
VALUE_ATTR = ("dVal", "uiVal", "ulVal", "ullVal", "sllVal", "siVal", "usVal")  # by nvmlValueType_t

_G, _C = "gauge", "counter"
METRICS: list[MetricSpec] = [
    MetricSpec("DCGM_FI_DEV_GPU_UTIL", _G, "GPU utilization (in %).", GPU_LABELS),
    MetricSpec("DCGM_FI_DEV_MEM_COPY_UTIL", _G, "Memory utilization (in %).", GPU_LABELS),
    MetricSpec("DCGM_FI_DEV_FB_USED", _G, "Framebuffer memory used (in MiB).", MIG_LABELS),
    MetricSpec("DCGM_FI_DEV_FB_FREE", _G, "Framebuffer memory free (in MiB).", MIG_LABELS),
    MetricSpec("DCGM_FI_DEV_FB_RESERVED", _G, "Framebuffer memory reserved (in MiB).", GPU_LABELS),
    MetricSpec("DCGM_FI_DEV_SM_CLOCK", _G, "SM clock frequency (in MHz).", GPU_LABELS),
    MetricSpec("DCGM_FI_DEV_MEM_CLOCK", _G, "Memory clock frequency (in MHz).", GPU_LABELS),
    MetricSpec("DCGM_FI_DEV_PCIE_TX_THROUGHPUT", _G, "PCIe TX throughput (in KB/s).", GPU_LABELS),
    MetricSpec("DCGM_FI_DEV_PCIE_RX_THROUGHPUT", _G, "PCIe RX throughput (in KB/s).", GPU_LABELS),
    MetricSpec("DCGM_FI_DEV_GPU_TEMP", _G, "GPU temperature (in C).", GPU_LABELS),
    MetricSpec("DCGM_FI_DEV_MEMORY_TEMP", _G, "Memory temperature (in C).", GPU_LABELS),
    MetricSpec("DCGM_FI_DEV_POWER_USAGE", _G, "Power draw (in W).", GPU_LABELS),
    MetricSpec("DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION", _C, "Total energy consumption since boot (in mJ).", GPU_LABELS),
    MetricSpec("DCGM_FI_DEV_CLOCKS_EVENT_REASONS", _G, "Current clock event reasons (bitmask of nvml.h "
               "nvmlClocksEventReason*).", GPU_LABELS),
    MetricSpec("nodewarden_gpu_clocks_event_active", _G, "1 while the clock event reason is active.",
               (*GPU_LABELS, "reason")),
    MetricSpec("DCGM_FI_DEV_POWER_VIOLATION", _C, "Throttling duration due to power constraints (in us).", GPU_LABELS),
    MetricSpec("DCGM_FI_DEV_THERMAL_VIOLATION", _C, "Throttling duration due to thermal constraints (in us).",
               GPU_LABELS),
    MetricSpec("DCGM_FI_DEV_ECC_SBE_VOL_TOTAL", _C, "Total number of single-bit volatile ECC errors.", GPU_LABELS),
    MetricSpec("DCGM_FI_DEV_ECC_DBE_VOL_TOTAL", _C, "Total number of double-bit volatile ECC errors.", GPU_LABELS),
    MetricSpec("DCGM_FI_DEV_ECC_SBE_AGG_TOTAL", _C, "Total number of single-bit persistent ECC errors.", GPU_LABELS),
    MetricSpec("DCGM_FI_DEV_ECC_DBE_AGG_TOTAL", _C, "Total number of double-bit persistent ECC errors.", GPU_LABELS),
    MetricSpec("DCGM_FI_DEV_RETIRED_SBE", _C, "Total number of retired pages due to single-bit errors.", GPU_LABELS),
    MetricSpec("DCGM_FI_DEV_RETIRED_DBE", _C, "Total number of retired pages due to double-bit errors.", GPU_LABELS),
    MetricSpec("DCGM_FI_DEV_RETIRED_PENDING", _G, "1 when pages are pending retirement.", GPU_LABELS),
    MetricSpec("DCGM_FI_DEV_CORRECTABLE_REMAPPED_ROWS", _C, "Number of remapped rows for correctable errors",
               GPU_LABELS),
    MetricSpec("DCGM_FI_DEV_UNCORRECTABLE_REMAPPED_ROWS", _C, "Number of remapped rows for uncorrectable errors",
               GPU_LABELS),
    MetricSpec("DCGM_FI_DEV_ROW_REMAP_FAILURE", _G, "Whether remapping of rows has failed", GPU_LABELS),
    MetricSpec("nodewarden_gpu_row_remap_pending", _G, "1 when a row remap is pending (GPU reset needed).",
               GPU_LABELS),
    MetricSpec("DCGM_FI_DEV_PCIE_REPLAY_COUNTER", _C, "Total number of PCIe retries.", GPU_LABELS),
    MetricSpec("DCGM_FI_DEV_NVLINK_CRC_FLIT_ERROR_COUNT_TOTAL", _C, "Total number of NVLink flow-control CRC errors.",
               GPU_LABELS),
    MetricSpec("DCGM_FI_DEV_NVLINK_CRC_DATA_ERROR_COUNT_TOTAL", _C, "Total number of NVLink data CRC errors.",
               GPU_LABELS),
    MetricSpec("DCGM_FI_DEV_NVLINK_REPLAY_ERROR_COUNT_TOTAL", _C, "Total number of NVLink retries.", GPU_LABELS),
    MetricSpec("DCGM_FI_DEV_NVLINK_RECOVERY_ERROR_COUNT_TOTAL", _C, "Total number of NVLink recovery errors.",
               GPU_LABELS),
    MetricSpec("DCGM_FI_DEV_ENC_UTIL", _G, "Encoder utilization (in %).", GPU_LABELS),
    MetricSpec("DCGM_FI_DEV_DEC_UTIL", _G, "Decoder utilization (in %).", GPU_LABELS),
    MetricSpec("DCGM_FI_DEV_NVLINK_BANDWIDTH_TOTAL", _C, "Total number of NVLink bandwidth counters for all lanes "
               "(data received + transmitted over all links, in KiB).", GPU_LABELS),
    MetricSpec("DCGM_FI_DEV_VGPU_LICENSE_STATUS", _G, "vGPU License status (1 licensed, 0 not licensed or no "
               "vGPU licensing).", GPU_LABELS),
    *(MetricSpec(name, _G, help_, GPU_LABELS) for name, help_ in POWER_LIMITS + POWER_CONSTRAINTS),
    MetricSpec("nodewarden_gpu_power_management_enabled", _G, "1 when power management (settable limit) is "
               "enabled.", GPU_LABELS),
    MetricSpec("DCGM_FI_DEV_PCIE_LINK_GEN", _G, "PCIe current link generation.", GPU_LABELS),
    MetricSpec("DCGM_FI_DEV_PCIE_LINK_WIDTH", _G, "PCIe current link width (lanes).", GPU_LABELS),
    MetricSpec("DCGM_FI_DEV_PCIE_MAX_LINK_GEN", _G, "PCIe maximum link generation (GPU and slot).", GPU_LABELS),
    MetricSpec("DCGM_FI_DEV_PCIE_MAX_LINK_WIDTH", _G, "PCIe maximum link width (lanes).", GPU_LABELS),
    MetricSpec("DCGM_FI_PROF_GR_ENGINE_ACTIVE", _G, "Ratio of time the graphics engine is active (NVML GPM).",
               MIG_LABELS),
    MetricSpec("DCGM_FI_PROF_SM_ACTIVE", _G, "The ratio of cycles an SM has at least 1 warp assigned (NVML GPM).",
               MIG_LABELS),
    MetricSpec("DCGM_FI_PROF_SM_OCCUPANCY", _G, "The ratio of number of warps resident on an SM (NVML GPM).",
               MIG_LABELS),
    MetricSpec("DCGM_FI_PROF_PIPE_TENSOR_ACTIVE", _G, "Ratio of cycles any tensor pipe is active (NVML GPM).",
               MIG_LABELS),
    MetricSpec("DCGM_FI_PROF_DRAM_ACTIVE", _G, "Ratio of cycles the device memory interface is active sending or "
               "receiving data (NVML GPM).", MIG_LABELS),
    MetricSpec("DCGM_FI_PROF_PCIE_TX_BYTES", _G, "The rate of data transmitted over the PCIe bus - including both "
               "protocol headers and data payloads - in bytes per second (NVML GPM).", MIG_LABELS),
    MetricSpec("DCGM_FI_PROF_PCIE_RX_BYTES", _G, "The rate of data received over the PCIe bus - including both "
               "protocol headers and data payloads - in bytes per second (NVML GPM).", MIG_LABELS),
    MetricSpec("DCGM_FI_PROF_NVLINK_TX_BYTES", _G, "The rate of data transmitted over NVLink, in bytes per second "
               "(NVML GPM).", MIG_LABELS),
    MetricSpec("DCGM_FI_PROF_NVLINK_RX_BYTES", _G, "The rate of data received over NVLink, in bytes per second "
               "(NVML GPM).", MIG_LABELS),
    MetricSpec("nodewarden_gpu_job_info", _G, "1 per GPU and the Slurm job (job_id) or Kubernetes pod (namespace, "
               "pod, pod_uid) of a process using it.", JOB_LABELS),
    MetricSpec("DCGM_FI_DEV_XID_ERRORS", _G, "Value of the last XID error encountered.", GPU_LABELS),
    MetricSpec("DCGM_FI_DEV_COUNT", _G, "Number of Devices on the node.", ("hostname",)),
    MetricSpec("nodewarden_gpu_xid_errors_total", _C, "XID errors (NVML events and kernel log, each event once).",
               XID_LABELS),
    MetricSpec("nodewarden_gpu_xid_info", _G, "Catalog entry of each XID seen: name and suggested action.",
               ("xid", "name", "action")),
    MetricSpec("nodewarden_gpu_xid_events_seen_total", _C, "XID reports per source, before de-duplication.",
               ("source",)),
    MetricSpec("nodewarden_gpu_up", _G, "1 when the GPU answers NVML, 0 when it is lost.", GPU_LABELS),
    MetricSpec("nodewarden_gpu_processes", _G, "Compute processes running on the GPU.", GPU_LABELS),
    MetricSpec("nodewarden_gpu_process_memory_used_bytes", _G, "GPU memory used per process (export_process_memory).",
               ("gpu", "UUID", "pid")),
    MetricSpec("nodewarden_gpu_driver_info", _G, "NVIDIA driver, CUDA driver and NVML versions.",
               ("driver_version", "cuda_version", "nvml_version")),
    MetricSpec("nodewarden_gpu_collector_hung", _G, "1 while NVML calls are hung (driver wedged).", ()),
    MetricSpec("nodewarden_gpu_abandoned_calls", _G, "NVML worker threads stuck in a call (bounded).", ()),
]

CLOCK_REASONS_NAME = "DCGM_FI_DEV_CLOCKS_EVENT_REASONS"
SUMMED = frozenset(name for _, name, _ in FIELDS if sum(1 for f in FIELDS if f[1] == name) > 1)


def gpu_labels(index: int, uuid: str, bus: str, minor: int, model: str, host: str, driver: str) -> Labels:
    """One GPU's identity labels, in dcgm-exporter's order (:data:`GPU_LABELS`)."""
    return (("gpu", str(index)), ("UUID", uuid), ("pci_bus_id", bus), ("device", f"nvidia{minor}"),
            ("modelName", model), ("hostname", host), ("DCGM_FI_DRIVER_VERSION", driver))


def mig_labels(gpu: Labels, profile: str, gi: int | str) -> Labels:
    """A MIG instance's labels: its GPU's with GPU_I_PROFILE and GPU_I_ID before hostname (:data:`MIG_LABELS`)."""
    return (*gpu[:5], ("GPU_I_PROFILE", profile), ("GPU_I_ID", str(gi)), *gpu[5:])
