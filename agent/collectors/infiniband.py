"""InfiniBand / RoCE ports from ``/sys/class/infiniband`` (node_exporter infiniband names).

Per port: state, physical state, rate, the error/traffic counters in ``ports/N/counters`` and the RoCE
congestion counters in ``ports/N/hw_counters``. A counter whose read fails (EINVAL on some firmware,
node_exporter issue 3265) or reads "N/A (no PMA)" is left out of that round; the port and the other
counters stay. The directory layout is listed once and cached; it is listed again every ``relist_every``
rounds, or at once when a port's ``state`` file can no longer be read.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import NamedTuple

from agent.collectors.common import DeviceFilter, Reader, read_attr
from agent.core.config import DeviceFilterConfig
from agent.core.errors import CollectorError, NoData
from agent.core.metrics import Labels, MetricSpec, Sample
from agent.core.paths import Paths

NAME = "infiniband"
P = "node_infiniband_"

# file in ports/N/counters -> (metric, multiplier, help). The data counters count 4-octet words.
COUNTERS: dict[str, tuple[str, int, str]] = {
    "port_rcv_data": (P + "port_data_received_bytes_total", 4, "Number of data octets received on all links"),
    "port_xmit_data": (P + "port_data_transmitted_bytes_total", 4, "Number of data octets transmitted on all links"),
    "port_rcv_packets": (
        P + "port_packets_received_total",
        1,
        "Number of packets received on all VLs by this port (including errors)",
    ),
    "port_xmit_packets": (
        P + "port_packets_transmitted_total",
        1,
        "Number of packets transmitted on all VLs from this port (including errors)",
    ),
    "port_xmit_wait": (
        P + "port_transmit_wait_total",
        1,
        "Number of ticks during which the port had data to transmit but no data was sent during the entire tick",
    ),
    "link_downed": (
        P + "link_downed_total",
        1,
        "Number of times the link failed to recover from an error state and went down",
    ),
    "link_error_recovery": (
        P + "link_error_recovery_total",
        1,
        "Number of times the link successfully recovered from an error state",
    ),
    "symbol_error": (
        P + "symbol_error_total",
        1,
        "Number of minor link errors detected on one or more physical lanes.",
    ),
    "port_rcv_errors": (
        P + "port_errors_received_total",
        1,
        "Number of packets containing an error that were received on this port",
    ),
    "port_rcv_discards": (
        P + "port_discards_received_total",
        1,
        "Number of inbound packets discarded by the port because the port is down or congested",
    ),
    "port_xmit_discards": (
        P + "port_discards_transmitted_total",
        1,
        "Number of outbound packets discarded by the port because the port is down or congested",
    ),
}

# file in ports/N/hw_counters (mlx5 RoCE congestion control) -> (metric, multiplier, help)
HW_COUNTERS: dict[str, tuple[str, int, str]] = {
    "np_ecn_marked_roce_packets": (
        P + "np_ecn_marked_roce_packets_received_total",
        1,
        "RoCEv2 packets received by the notification point marked for congestion (ECN bits '11').",
    ),
    "rp_cnp_handled": (
        P + "rp_cnp_packets_handled_total",
        1,
        "CNP packets handled by the reaction point HCA to throttle the transmission rate.",
    ),
    "np_cnp_sent": (
        P + "np_cnp_packets_sent_total",
        1,
        "CNP packets sent by the notification point when it noticed congestion (ECN bits).",
    ),
    "out_of_buffer": (
        P + "out_of_buffer_drops_total",
        1,
        "The number of drops occurred due to lack of WQE for the associated QPs.",
    ),
}

INFO = P + "info"
STATE = P + "state_id"
PHYS_STATE = P + "physical_state_id"
RATE = P + "rate_bytes_per_second"
PORT_LABELS = ("device", "port")

METRICS: list[MetricSpec] = [
    MetricSpec(
        INFO,
        "gauge",
        "Non-numeric data from /sys/class/infiniband/<device>, value is always 1.",
        ("device", "board_id", "firmware_version", "hca_type"),
    ),
    MetricSpec(
        STATE,
        "gauge",
        "State of the InfiniBand port (0: no change, 1: down, 2: init, 3: armed, 4: active, 5: act defer)",
        PORT_LABELS,
    ),
    MetricSpec(
        PHYS_STATE,
        "gauge",
        "Physical state of the InfiniBand port (0: no change, 1: sleep, 2: polling, 3: disable, 4: shift, "
        "5: link up, 6: link error recover, 7: phytest)",
        PORT_LABELS,
    ),
    MetricSpec(RATE, "gauge", "Maximum signal transfer rate", PORT_LABELS),
    *(MetricSpec(name, "counter", help_, PORT_LABELS) for name, _, help_ in COUNTERS.values()),
    *(MetricSpec(name, "counter", help_, PORT_LABELS) for name, _, help_ in HW_COUNTERS.values()),
]


def parse_state(text: str) -> int:
    """``"4: ACTIVE"`` (state, phys_state) to 4; ValueError when malformed."""
    num, sep, _ = text.partition(":")
    if not sep:
        raise ValueError(f"expected 'ID: NAME', got {text!r}")
    return int(num)


def parse_rate(text: str) -> int:
    """``"400 Gb/sec (4X NDR)"`` to bytes/s (Gb/s x 125,000,000, as node_exporter); ValueError when malformed."""
    parts = text.split(None, 1)
    if len(parts) != 2:
        raise ValueError(f"expected '<N> Gb/sec ...', got {text!r}")
    return int(float(parts[0]) * 125_000_000)


def _parsed(parse: Callable[[str], int], data: bytes) -> int | None:
    try:
        return parse(data.decode("ascii", "replace"))
    except ValueError:
        return None


def _read_parsed(read: Reader, path: str, parse: Callable[[str], int]) -> int | None:
    try:
        data = read(path)
    except OSError:
        return None
    return _parsed(parse, data)


class _Port(NamedTuple):
    labels: Labels
    state: str
    phys_state: str
    rate: str
    counters: tuple[tuple[str, str, int], ...]  # (path, metric, multiplier)


class InfinibandConfig(DeviceFilterConfig):
    """InfiniBand / RoCE port counters from sysfs."""


class InfinibandCollector:
    """Port state, rate and counters of every InfiniBand / RoCE device."""

    NAME = NAME
    Config = InfinibandConfig
    metrics = METRICS

    def __init__(
        self,
        config: InfinibandConfig,
        paths: Paths,
        *,
        read: Reader = read_attr,
        relist_every: int = 12,
        **_deps: object,
    ) -> None:
        self.name = NAME
        self._root = paths.sys("class", "infiniband")
        self._read = read
        self._relist_every = max(1, relist_every)
        self._wanted = DeviceFilter(config.device_include, config.device_exclude)
        self._info: list[Sample] = []
        self._ports: list[_Port] | None = None
        self._calls = 0

    def _text(self, path: str) -> str:
        try:
            return self._read(path).decode("utf-8", "replace").strip()
        except OSError:
            return ""

    def _discover(self) -> None:
        try:
            names = sorted(os.listdir(self._root))
        except FileNotFoundError as err:
            raise NoData(f"no InfiniBand devices ({self._root} does not exist)") from err
        except OSError as err:
            raise CollectorError(f"cannot list {self._root}: {err.strerror}") from err
        info, ports = [], []
        for dev in names:
            if not self._wanted(dev):
                continue
            base = os.path.join(self._root, dev)
            try:
                port_names = sorted(os.listdir(os.path.join(base, "ports")), key=lambda p: (len(p), p))
            except OSError:
                continue  # not a device (or gone)
            labels = (
                ("device", dev),
                ("board_id", self._text(os.path.join(base, "board_id"))),
                ("firmware_version", self._text(os.path.join(base, "fw_ver"))),
                ("hca_type", self._text(os.path.join(base, "hca_type"))),
            )
            info.append(Sample(INFO, labels, 1.0))
            for port in port_names:
                ports.append(self._plan_port(dev, port, os.path.join(base, "ports", port)))
        self._info, self._ports = info, ports

    @staticmethod
    def _plan_port(dev: str, port: str, base: str) -> _Port:
        counters = []
        for sub, table in (("counters", COUNTERS), ("hw_counters", HW_COUNTERS)):
            directory = os.path.join(base, sub)
            try:
                files = sorted(os.listdir(directory))
            except OSError:
                continue
            for fname in files:
                spec = table.get(fname)
                if spec is not None:
                    counters.append((os.path.join(directory, fname), spec[0], spec[1]))
        return _Port(
            (("device", dev), ("port", port)),
            os.path.join(base, "state"),
            os.path.join(base, "phys_state"),
            os.path.join(base, "rate"),
            tuple(counters),
        )

    def collect(self) -> list[Sample]:
        """One round over the cached port plan; NoData when there is no InfiniBand device."""
        self._calls += 1
        if self._ports is None or self._calls % self._relist_every == 0:
            self._discover()
        if not self._info:
            raise NoData("no InfiniBand devices")
        out = list(self._info)
        read = self._read
        for port in self._ports or ():
            labels = port.labels
            try:
                state = read(port.state)
            except OSError:
                self._ports = None  # port or device went away: list again next round
                continue
            for name, value in (
                (STATE, _parsed(parse_state, state)),
                (PHYS_STATE, _read_parsed(read, port.phys_state, parse_state)),
                (RATE, _read_parsed(read, port.rate, parse_rate)),
            ):
                if value is not None:
                    out.append(Sample(name, labels, float(value)))
            for path, name, mult in port.counters:
                try:
                    value = int(read(path))  # "N/A (no PMA)" -> ValueError
                except (OSError, ValueError):
                    continue  # EINVAL and friends drop this counter only
                out.append(Sample(name, labels, float(value * mult)))
        return out
