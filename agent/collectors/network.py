"""Network interfaces: ``/proc/net/dev`` counters and ``/sys/class/net`` state.

The node_exporter ``netdev`` + ``netclass`` equivalent, with its metric names: every ``/proc/net/dev``
counter per device (bytes, packets, errs, drop, fifo, frame, compressed, multicast; colls, carrier),
``node_network_up`` (operstate "up"), and the ``/sys/class/net/<dev>`` attributes node_exporter exports
(carrier and its up/down changes, speed, mtu, flags, ifindex, link mode, tx queue length, ...,
``node_network_info`` with address, duplex, operstate, adminstate, ifalias). Attributes a device lacks or
that fail to read (carrier on a down link: EINVAL) are left out, as node_exporter does.
``netclass_attributes: false`` keeps only up, carrier changes and speed (fewer reads per tick). Attributes
fixed for a device's life (ifindex, iflink, dev_id, type, assign types, group, address, broadcast) are read
when devices are listed (every ``relist_every`` ticks and whenever /proc/net/dev's device set changes).
``node_network_receive_nohandler_total`` (netlink in node_exporter, not in /proc/net/dev) is read from
``/sys/class/net/<dev>/statistics/rx_nohandler`` where the kernel has it (with the netclass attributes).
"""

from __future__ import annotations

import os
from collections.abc import Callable

from pydantic import Field

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
    ("node_network_receive_fifo_total", 4, "Receive FIFO buffer errors."),
    ("node_network_receive_frame_total", 5, "Receive frame alignment errors."),
    ("node_network_receive_compressed_total", 6, "Compressed packets received."),
    ("node_network_receive_multicast_total", 7, "Multicast packets received."),
    ("node_network_transmit_bytes_total", 8, "Bytes transmitted."),
    ("node_network_transmit_packets_total", 9, "Packets transmitted."),
    ("node_network_transmit_errs_total", 10, "Transmit errors."),
    ("node_network_transmit_drop_total", 11, "Transmitted packets dropped."),
    ("node_network_transmit_fifo_total", 12, "Transmit FIFO buffer errors."),
    ("node_network_transmit_colls_total", 13, "Collisions detected while transmitting."),
    ("node_network_transmit_carrier_total", 14, "Carrier losses while transmitting."),
    ("node_network_transmit_compressed_total", 15, "Compressed packets transmitted."),
)
# /sys/class/net/<dev>/<file> -> node_network_<name> (node_exporter netclass; integers, hex allowed)
CLASS_ATTRS: tuple[tuple[str, str, str], ...] = (
    ("addr_assign_type", "node_network_address_assign_type", "gauge"),
    ("carrier", "node_network_carrier", "gauge"),
    ("carrier_up_count", "node_network_carrier_up_changes_total", "counter"),
    ("carrier_down_count", "node_network_carrier_down_changes_total", "counter"),
    ("dev_id", "node_network_device_id", "gauge"),
    ("dormant", "node_network_dormant", "gauge"),
    ("flags", "node_network_flags", "gauge"),
    ("ifindex", "node_network_iface_id", "gauge"),
    ("iflink", "node_network_iface_link", "gauge"),
    ("link_mode", "node_network_iface_link_mode", "gauge"),
    ("mtu", "node_network_mtu_bytes", "gauge"),
    ("name_assign_type", "node_network_name_assign_type", "gauge"),
    ("netdev_group", "node_network_net_dev_group", "gauge"),
    ("tx_queue_len", "node_network_transmit_queue_length", "gauge"),
    ("type", "node_network_protocol_type", "gauge"),
)
# Attributes fixed for the life of a device: read when devices are listed (every relist_every ticks), not per tick.
STATIC_ATTRS = frozenset(("addr_assign_type", "dev_id", "ifindex", "iflink", "name_assign_type", "netdev_group",
                          "type"))
NOHANDLER = "node_network_receive_nohandler_total"
INFO = "node_network_info"
INFO_LABELS = ("device", "address", "broadcast", "duplex", "operstate", "adminstate", "ifalias")
UP = "node_network_up"
CARRIER_CHANGES = "node_network_carrier_changes_total"
SPEED = "node_network_speed_bytes"

METRICS: list[MetricSpec] = [
    *(MetricSpec(name, "counter", help_, ("device",)) for name, _, help_ in DEV_COUNTERS),
    MetricSpec(UP, "gauge", "Value is 1 if operstate is 'up', 0 otherwise.", ("device",)),
    MetricSpec(CARRIER_CHANGES, "counter", "Number of carrier (link) state changes.", ("device",)),
    MetricSpec(SPEED, "gauge", "Link speed in bytes per second (absent when unknown).", ("device",)),
    *(MetricSpec(name, mtype, f"Network device property: {name[len('node_network_'):]}", ("device",))  # type: ignore[arg-type]
      for _, name, mtype in CLASS_ATTRS),
    MetricSpec(NOHANDLER, "counter", "Received packets dropped because no protocol handler wanted them.",
               ("device",)),
    MetricSpec(INFO, "gauge", "Non-numeric data from /sys/class/net/<iface>, value is always 1.", INFO_LABELS),
]


def parse_int(text: str | bytes) -> int:
    """A sysfs integer in any base Go's ParseInt(s, 0, 64) accepts (``0x1303``, ``32``); ValueError otherwise."""
    return int(text.strip(), 0) if not isinstance(text, bytes) else int(text.decode().strip(), 0)


def admin_state(flags: int | None) -> str:
    """node_exporter's adminstate label from the IFF_UP bit of ``flags``."""
    if flags is None:
        return "unknown"
    return "up" if flags & 1 else "down"


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

    netclass_attributes: bool = Field(True, description="export every /sys/class/net attribute node_exporter does "
                                      "(false: only up, carrier changes and speed)")


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
        self._attrs = config.netclass_attributes
        self._labels: dict[str, Labels] = {}
        # (labels, operstate, carrier_changes, speed, device dir) per wanted sysfs device; None = list again
        self._sys: list[tuple[Labels, str, str, str, str]] | None = None
        self._proc_names: frozenset[str] = frozenset()
        self._static: dict[str, tuple[list[tuple[str, float]], str, str]] = {}
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
                        base,
                    )
                )
        self._sys = devices
        self._static = {base: self._read_static(base) for *_, base in devices}

    def _read_static(self, base: str) -> tuple[list[tuple[str, float]], str, str]:
        values = []
        for fname, name, _ in CLASS_ATTRS:
            if fname in STATIC_ATTRS:
                value = _read_parsed(self._read, os.path.join(base, fname), parse_int)
                if value is not None:
                    values.append((name, float(value)))
        return values, self._text(base, "address"), self._text(base, "broadcast")

    def _text(self, base: str, fname: str) -> str:
        try:
            return self._read(os.path.join(base, fname)).decode("utf-8", "replace").strip()
        except OSError:
            return ""

    def _collect_sys(self, out: list[Sample]) -> None:
        read = self._read
        for labels, operstate, carrier, speed, base in self._sys or ():
            try:
                state = read(operstate).strip()
            except OSError:
                self._sys = None  # the device went away: list again next round
                continue
            out.append(Sample(UP, labels, 1.0 if state == b"up" else 0.0))
            if self._attrs:
                self._class_attrs(labels, base, state.decode("utf-8", "replace"), out)
            changes = _read_parsed(read, carrier, int)
            if changes is not None:
                out.append(Sample(CARRIER_CHANGES, labels, float(changes)))
            bytes_per_s = _read_parsed(read, speed, parse_speed)  # EINVAL while the link is down
            if bytes_per_s is not None:
                out.append(Sample(SPEED, labels, float(bytes_per_s)))

    def _class_attrs(self, labels: Labels, base: str, operstate: str, out: list[Sample]) -> None:
        read = self._read
        static = self._static.get(base)
        if static is None:
            static = self._static[base] = self._read_static(base)
        values, address, broadcast = static
        flags = None
        for fname, name, _ in CLASS_ATTRS:
            if fname in STATIC_ATTRS:
                continue
            value = _read_parsed(read, os.path.join(base, fname), parse_int)
            if value is not None:
                out.append(Sample(name, labels, float(value)))
                if fname == "flags":
                    flags = value
        out.extend(Sample(name, labels, value) for name, value in values)
        nohandler = _read_parsed(read, os.path.join(base, "statistics", "rx_nohandler"), parse_int)
        if nohandler is not None:
            out.append(Sample(NOHANDLER, labels, float(nohandler)))
        out.append(Sample(INFO, (*labels, ("address", address), ("broadcast", broadcast),
                                 ("duplex", self._text(base, "duplex")), ("operstate", operstate),
                                 ("adminstate", admin_state(flags)), ("ifalias", self._text(base, "ifalias"))), 1.0))
