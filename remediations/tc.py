"""Thin netlink I/O for the ``throttle`` plugin: read and write traffic-control objects through pyroute2.

Everything here talks to the kernel of the network namespace the process runs in; every failure is a
:class:`RemediationError`. Decisions live in :mod:`remediations.throttle`; this module only moves data.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from agent.core.errors import RemediationError

TC_H_ROOT = 0xFFFFFFFF


@dataclass(frozen=True, slots=True)
class Qdisc:
    """One qdisc as the kernel reports it."""

    kind: str
    handle: int
    parent: int


@dataclass(frozen=True, slots=True)
class HtbClass:
    """One HTB class: rates in bytes per second (the kernel's unit)."""

    classid: int
    parent: int
    rate: int
    ceil: int


@dataclass(frozen=True, slots=True)
class U32Filter:
    """One u32 filter: ``keys`` are (offset, mask, value) as the kernel stores them."""

    prio: int
    protocol: int
    classid: int
    keys: tuple[tuple[int, int, int], ...]


@dataclass(frozen=True, slots=True)
class ClassSpec:
    """An HTB class to create (rates in bytes per second)."""

    classid: int
    rate: int
    ceil: int
    burst: int
    quantum: int


@dataclass(frozen=True, slots=True)
class FilterSpec:
    """A u32 filter to create: keys in pyroute2's ``"0xVALUE/0xMASK+OFFSET"`` notation."""

    prio: int
    protocol: int
    classid: int
    keys: tuple[str, ...]


def _u32_keys(sel: Any) -> tuple[tuple[int, int, int], ...]:
    """(offset, mask, value) of a dumped ``struct tc_u32_sel``, read from its raw bytes.

    pyroute2 0.9 decodes the keys 4 bytes early (it skips the 16-byte selector but not the 4-byte attribute
    header), so they are unpacked here: after the header come ``nkeys`` keys of mask, val (big endian), off,
    offmask (host order).
    """
    start = sel.offset + 4 + 16
    out = []
    for i in range(sel["nkeys"]):
        mask, val = struct.unpack_from(">II", sel.data, start + 16 * i)
        (off,) = struct.unpack_from("=i", sel.data, start + 16 * i + 8)
        out.append((off, mask, val))
    return tuple(out)


def _iproute() -> Any:
    from pyroute2 import IPRoute  # imported lazily: plan-only users (check rules) never open a socket

    return IPRoute()


class Netlink:
    """The few rtnetlink calls the plugin needs. ``factory`` makes an IPRoute-like object (injectable)."""

    def __init__(self, factory=_iproute) -> None:
        self._factory = factory

    @contextmanager
    def _ipr(self, what: str) -> Iterator[Any]:
        try:
            ipr = self._factory()
        except OSError as err:
            raise RemediationError(f"netlink: cannot open a socket: {err}") from err
        try:
            yield ipr
        except RemediationError:
            raise
        except Exception as err:  # NetlinkError is an OSError subclass in some releases, not in others
            raise RemediationError(f"netlink: {what}: {err}") from err
        finally:
            ipr.close()

    # ---------------------------------------------------------------- reads

    def links(self) -> dict[int, str]:
        """ifindex -> interface name."""
        with self._ipr("list links") as ipr:
            return {m["index"]: m.get_attr("IFLA_IFNAME") for m in ipr.get_links()}

    def related(self, index: int) -> set[int]:
        """Interfaces stacked with ``index`` in this namespace: its bond/bridge master, the link a VLAN or
        macvlan sits on, and the interfaces enslaved to it or sitting on it."""
        out: set[int] = set()
        with self._ipr("list links") as ipr:
            for m in ipr.get_links():
                master = m.get_attr("IFLA_MASTER")
                lower = m.get_attr("IFLA_LINK") if m.get_attr("IFLA_LINK_NETNSID") is None else None
                if m["index"] == index:
                    out.update(x for x in (master, lower) if x and x != index)
                elif index in (master, lower):
                    out.add(m["index"])
        return out

    def qdiscs(self, index: int | None = None) -> list[tuple[int, Qdisc]]:
        """(ifindex, qdisc) of one interface, or of all with ``index=None``."""
        with self._ipr("dump qdiscs") as ipr:
            msgs = ipr.get_qdiscs(index) if index is not None else ipr.get_qdiscs()
            return [(m["index"], Qdisc(m.get_attr("TCA_KIND") or "", m["handle"], m["parent"])) for m in msgs
                    if index is None or m["index"] == index]

    def htb_classes(self, index: int) -> list[HtbClass]:
        """HTB classes of one interface."""
        out = []
        with self._ipr("dump classes") as ipr:
            for m in ipr.get_classes(index):
                if m["index"] != index or m.get_attr("TCA_KIND") != "htb":
                    continue
                opts = m.get_attr("TCA_OPTIONS")
                parms = opts.get_attr("TCA_HTB_PARMS") if opts else None
                if parms is None:
                    continue
                rate = opts.get_attr("TCA_HTB_RATE64") or parms["rate"]
                ceil = opts.get_attr("TCA_HTB_CEIL64") or parms["ceil"]
                out.append(HtbClass(m["handle"], m["parent"], int(rate), int(ceil)))
        return out

    def u32_filters(self, index: int, parent: int) -> list[U32Filter]:
        """u32 filter entries (not hash-table nodes) attached to ``parent``."""
        out = []
        with self._ipr("dump filters") as ipr:
            for m in ipr.get_filters(index=index, parent=parent):
                opts = m.get_attr("TCA_OPTIONS")
                if m.get_attr("TCA_KIND") != "u32" or opts is None:
                    continue
                classid, sel = opts.get_attr("TCA_U32_CLASSID"), opts.get_attr("TCA_U32_SEL")
                if classid is None or sel is None:
                    continue
                keys = _u32_keys(sel)
                out.append(U32Filter(m["info"] >> 16, socket.ntohs(m["info"] & 0xFFFF), classid, keys))
        return out

    def default_route_links(self) -> set[int]:
        """Interfaces (ifindex) that carry a default route (IPv4 or IPv6, any table, multipath included)."""
        out: set[int] = set()
        with self._ipr("dump routes") as ipr:
            for family in (socket.AF_INET, socket.AF_INET6):
                for r in ipr.get_routes(family=family):
                    if r["dst_len"] != 0 or r.get_attr("RTA_DST") is not None:
                        continue
                    if r.get_attr("RTA_OIF") is not None:
                        out.add(r.get_attr("RTA_OIF"))
                    for hop in r.get_attr("RTA_MULTIPATH") or ():
                        out.add(hop["oif"])
        return out

    # ---------------------------------------------------------------- writes

    def create_htb(self, index: int, handle: int, default_minor: int, classes: Sequence[ClassSpec],
                   filters: Sequence[FilterSpec]) -> None:
        """Root HTB qdisc ``handle`` with its classes and filters; on any failure the root is removed again."""
        with self._ipr("add htb root qdisc") as ipr:
            ipr.tc("add", "htb", index, handle, parent=TC_H_ROOT, default=default_minor)
        try:
            with self._ipr("add htb class") as ipr:
                for c in classes:
                    ipr.tc("add-class", "htb", index, c.classid, parent=handle, rate=c.rate, ceil=c.ceil,
                           burst=c.burst, cburst=c.burst, quantum=c.quantum)
            with self._ipr("add u32 filter") as ipr:
                for f in filters:
                    ipr.tc("add-filter", "u32", index, parent=handle, prio=f.prio, protocol=f.protocol,
                           target=f.classid, keys=list(f.keys))
        except RemediationError:
            self.delete_root(index)
            raise

    def delete_root(self, index: int) -> None:
        """Delete the root qdisc of an interface (the kernel puts its default back)."""
        with self._ipr("delete root qdisc") as ipr:
            ipr.tc("del", index=index, parent=TC_H_ROOT)
