"""GPM of the fake NVML, as on Hopper: a sample snapshots the time integrals of a device's activity fields, a
metric is the average between two samples."""

from __future__ import annotations

from typing import Any

import pynvml

from agent.collectors import simulate
from agent.collectors.fakegpu import Device, Obj

# GPM metric ids -> scenario field (simulate.GPM_FIELDS gives the scale)
GPM_METRICS: dict[int, str] = {
    pynvml.NVML_GPM_METRIC_GRAPHICS_UTIL: "gr_engine_active",
    pynvml.NVML_GPM_METRIC_SM_UTIL: "sm_active",
    pynvml.NVML_GPM_METRIC_SM_OCCUPANCY: "sm_occupancy",
    pynvml.NVML_GPM_METRIC_ANY_TENSOR_UTIL: "tensor_active",
    pynvml.NVML_GPM_METRIC_DRAM_BW_UTIL: "dram_active",
    pynvml.NVML_GPM_METRIC_PCIE_TX_PER_SEC: "pcie_tx_kbps",
    pynvml.NVML_GPM_METRIC_PCIE_RX_PER_SEC: "pcie_rx_kbps",
    pynvml.NVML_GPM_METRIC_NVLINK_TOTAL_TX_PER_SEC: "nvlink_tx_kibps",
    pynvml.NVML_GPM_METRIC_NVLINK_TOTAL_RX_PER_SEC: "nvlink_rx_kibps",
}


class GpmSample:
    """An opaque GPM sample (nvmlGpmSample_t): which device / GPU instance, when, and the activity integrals."""

    def __init__(self) -> None:
        self.device: Device | None = None
        self.gi: int | None = None
        self.t = 0.0
        self.acc: dict[str, float] = {}

    def take(self, device: Device, gi: int | None, t: float, acc: dict[str, float]) -> None:
        self.device, self.gi, self.t, self.acc = device, gi, t, acc


class GpmMetricsGet:
    """The argument of nvmlGpmMetricsGet: two samples in, up to NVML_GPM_METRIC_MAX metrics out."""

    def __init__(self) -> None:
        self.version = 0
        self.numMetrics = 0
        self.sample1: Any = None
        self.sample2: Any = None
        self.metrics = [Obj(metricId=0, nvmlReturn=0, value=0.0) for _ in range(32)]


def metrics_between(mg: GpmMetricsGet) -> bool:
    """Fill ``mg.metrics`` with the averages between ``mg.sample1`` and ``mg.sample2`` (NOT_SUPPORTED per metric
    for what a sample lacks, e.g. PCIe/NVLink of a MIG instance); False when the two samples do not pair up."""
    s1, s2 = mg.sample1, mg.sample2
    if (not isinstance(s1, GpmSample) or not isinstance(s2, GpmSample) or s1.device is None
            or s1.device is not s2.device or s1.gi != s2.gi or mg.version != pynvml.NVML_GPM_METRICS_GET_VERSION):
        return False
    dt = s2.t - s1.t
    for m in mg.metrics[: mg.numMetrics]:
        key = GPM_METRICS.get(m.metricId)
        if key is None or key not in s1.acc or dt <= 0:
            m.nvmlReturn, m.value = pynvml.NVML_ERROR_NOT_SUPPORTED, 0.0
            continue
        m.nvmlReturn = pynvml.NVML_SUCCESS
        m.value = (s2.acc[key] - s1.acc[key]) / dt * simulate.GPM_FIELDS[key]
    return True
