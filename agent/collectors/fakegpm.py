"""GPM of the fake NVML, as on Hopper: a sample snapshots the time integrals of a device's activity fields, a
metric is the average between two samples."""

from __future__ import annotations

from typing import Any

import pynvml

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
