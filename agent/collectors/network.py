"""Network interfaces: ``/proc/net/dev`` counters and ``/sys/class/net`` state.

The node_exporter ``netdev`` + ``netclass`` equivalent, with its metric names: traffic, error and drop
counters per device, ``node_network_up`` (operstate "up"), carrier changes and link speed.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from agent.collectors.common import DeviceFilter, Reader, read_all, read_attr
from agent.core.config import DeviceFilterConfig
from agent.core.errors import CollectorError
from agent.core.metrics import Labels, MetricSpec, Sample
from agent.core.paths import Paths

NAME = "network"
DEFAULT_EXCLUDE = "lo"  # fully anchored, i.e. node_exporter's ^lo$

# (metric, column of /proc/net/dev after the "iface:" prefix)
DEV_COUNTERS: tuple[tuple[str, int, str], ...] = (
    ("node_network_receive_bytes_total", 0, "Bytes received."),
    ("node_network_receive_packets_total", 1, "Packets received."),
    ("node_network_receive_errs_total", 2, "Receive errors."),
    ("node_network_receive_drop_total", 3, "Received packets dropped."),
    ("node_network_transmit_bytes_total", 8, "Bytes transmitted."),
    ("node_network_transmit_packets_total", 9, "Packets transmitted."),
    ("node_network_transmit_errs_total", 10, "Transmit errors."),
    ("node_network_transmit_drop_total", 11, "Transmitted packets dropped."),
)
UP = "node_network_up"
CARRIER_CHANGES = "node_network_carrier_changes_total"
SPEED = "node_network_speed_bytes"

METRICS: list[MetricSpec] = [
    *(MetricSpec(name, "counter", help_, ("device",)) for name, _, help_ in DEV_COUNTERS),
    MetricSpec(UP, "gauge", "Value is 1 if operstate is 'up', 0 otherwise.", ("device",)),
    MetricSpec(CARRIER_CHANGES, "counter", "Number of carrier (link) state changes.", ("device",)),
    MetricSpec(SPEED, "gauge", "Link speed in bytes per second (absent when unknown).", ("device",)),
]


def parse_net_dev(text: str) -> dict[str, list[int]]:
    """``/proc/net/dev`` to {device: [16 counters]}; ValueError on a malformed device line."""
    out: dict[str, list[int]] = {}
    for line in text.split("\n"):  # not splitlines(): a device name may hold \x1c-\x1e
        name, sep, rest = line.partition(":")
        if not sep:  # the two header lines
            continue
        fields = rest.split()
        if len(fields) < 16:
            raise ValueError(f"/proc/net/dev: short line {line!r}")
        out[name.strip()] = [int(f) for f in fields[:16]]
    return out


def parse_speed(text: str | bytes) -> int | None:
    """``/sys/class/net/*/speed`` (Mbit/s) to bytes/s; None for -1 (unknown). ValueError when garbled."""
    mbits = int(text)
    return None if mbits < 0 else mbits * 125_000


def _read_parsed(read: Reader, path: str, parse: Callable[[bytes], int | None]) -> int | None:
    """``parse(read(path))``, or None when the file cannot be read or parsed."""
    try:
        return parse(read(path))
    except (OSError, ValueError):
        return None


class NetworkConfig(DeviceFilterConfig):
    """node_exporter netdev + netclass equivalent."""


class NetworkCollector:
    """Per-device counters from procfs plus operstate/carrier/speed from sysfs."""

    NAME = NAME
    Config = NetworkConfig
    metrics = METRICS

    def __init__(
        self, config: NetworkConfig, paths: Paths, *, read: Reader = read_attr, relist_every: int = 12, **_deps: object
    ) -> None:
        self.name = NAME
        self._read = read
        self._relist_every = max(1, relist_every)
        self._wanted = DeviceFilter(config.device_include, config.device_exclude, DEFAULT_EXCLUDE)
        self._net_dev = paths.proc("net", "dev")
        self._class_net = paths.sys("class", "net")
        self._labels: dict[str, Labels] = {}
        # (labels, operstate, carrier_changes, speed) per wanted sysfs device; None = list again
        self._sys: list[tuple[Labels, str, str, str]] | None = None
        self._proc_names: frozenset[str] = frozenset()
        self._calls = 0

    def _device_labels(self, dev: str) -> Labels:
        labels = self._labels.get(dev)
        if labels is None:
            if len(self._labels) > 4096:
                self._labels.clear()
            labels = self._labels[dev] = (("device", dev),)
        return labels

    def collect(self) -> list[Sample]:
        """One round: procfs counters, then sysfs state for the wanted devices."""
        try:
            text = read_all(self._net_dev).decode("ascii", "replace")
        except OSError as err:
            raise CollectorError(f"cannot read {self._net_dev}: {err.strerror}") from err
        try:
            stats = parse_net_dev(text)
        except ValueError as err:
            raise CollectorError(str(err)) from err

        out: list[Sample] = []
        wanted = self._wanted
        for dev, fields in stats.items():
            if not wanted(dev):
                continue
            labels = self._device_labels(dev)
            out.extend(Sample(name, labels, float(fields[col])) for name, col, _ in DEV_COUNTERS)

        self._calls += 1
        names = frozenset(stats)
        if self._sys is None or self._calls % self._relist_every == 0 or names != self._proc_names:
            self._proc_names = names
            self._list_sys()
        self._collect_sys(out)
        return out

    def _list_sys(self) -> None:
        devices = []
        try:
            with os.scandir(self._class_net) as it:
                entries = sorted((e for e in it if e.is_dir()), key=lambda e: e.name)  # is_dir follows links
        except OSError:
            entries = []
        for entry in entries:
            if self._wanted(entry.name):
                base = entry.path
                devices.append(
                    (
                        self._device_labels(entry.name),
                        os.path.join(base, "operstate"),
                        os.path.join(base, "carrier_changes"),
                        os.path.join(base, "speed"),
                    )
                )
        self._sys = devices

    def _collect_sys(self, out: list[Sample]) -> None:
        read = self._read
        for labels, operstate, carrier, speed in self._sys or ():
            try:
                up = read(operstate).strip() == b"up"
            except OSError:
                self._sys = None  # the device went away: list again next round
                continue
            out.append(Sample(UP, labels, 1.0 if up else 0.0))
            changes = _read_parsed(read, carrier, int)
            if changes is not None:
                out.append(Sample(CARRIER_CHANGES, labels, float(changes)))
            bytes_per_s = _read_parsed(read, speed, parse_speed)  # EINVAL while the link is down
            if bytes_per_s is not None:
                out.append(Sample(SPEED, labels, float(bytes_per_s)))
