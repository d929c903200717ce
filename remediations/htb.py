"""The HTB tree the ``throttle`` plugin installs, as pure data: rates, port ranges, u32 match keys, one
:class:`Selector` per throttled class -> the tree (:func:`build_tree`, JSON-able, journaled in the plan), the
kernel objects it needs (:func:`tree_specs`), how to compare it with what the kernel shows
(:func:`tree_signature`, :func:`key_bytes`), and whose egress qdiscs an interface has (:func:`owner`).

No I/O here: the netlink side is :mod:`remediations.tc`, the plugin (params, state, kernel reads and writes,
expiry, metrics) is :mod:`remediations.throttle`.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from agent.core.plugin import ParamsModel, Refused
from remediations.tc import ClassSpec, FilterSpec, Qdisc

MAJOR = 0x4E57                     # "NW": the major of every handle we create
ROOT = MAJOR << 16                 # 4e57:
DEFAULT_MINOR = 0xFFFF             # 4e57:ffff, the unlimited default class
FIRST_MINOR = 0x10                 # 4e57:10, 4e57:11, ... one per selector
TC_H_ROOT = 0xFFFFFFFF
TC_H_INGRESS = 0xFFFFFFF1          # ingress / clsact live here; egress shaping never touches them
ETH_P_IP, ETH_P_IPV6 = 0x0800, 0x86DD
PROTOCOLS = {"tcp": 6, "udp": 17}
MAX_FILTERS = 64                   # per selector, after expanding port ranges into prefixes
CLASS_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,31}$")
RATE_RE = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*(%|bit|kbit|mbit|gbit|tbit)?\s*$", re.IGNORECASE)
_UNITS = {None: 1, "bit": 1, "kbit": 10**3, "mbit": 10**6, "gbit": 10**9, "tbit": 10**12}


def parse_rate(text: str | int | float) -> tuple[float, bool]:
    """``(value, is_percent)``: bits per second (``20Mbit``, ``1.5gbit``, ``20000000``) or a percentage."""
    if isinstance(text, bool):
        raise ValueError(f"not a rate: {text!r}")
    if isinstance(text, (int, float)):
        value, unit = float(text), None
    else:
        m = RATE_RE.fullmatch(text)
        if not m:
            raise ValueError(f"not a rate: {text!r} (use e.g. 20Mbit, 2Gbit, 500000000 or 25%)")
        value, unit = float(m.group(1)), (m.group(2) or "").lower() or None
    if value <= 0:
        raise ValueError(f"rate must be positive: {text!r}")
    if unit == "%":
        if value > 100:
            raise ValueError(f"a percentage rate must be at most 100%: {text!r}")
        return value, True
    return value * _UNITS[unit], False


def format_rate(bits: float) -> str:
    """Human bit rate, tc style (``20Mbit``)."""
    for unit, size in (("Tbit", 10**12), ("Gbit", 10**9), ("Mbit", 10**6), ("Kbit", 10**3)):
        if bits >= size:
            return f"{bits / size:g}{unit}"
    return f"{bits:g}bit"


def parse_ports(value: str | int | None) -> tuple[int, int] | None:
    """``"5001"`` or ``"5000-5100"`` to an inclusive range; ValueError when malformed."""
    if value is None or value == "":
        return None
    text = str(value).strip()
    lo_s, sep, hi_s = text.partition("-")
    if not lo_s.isdigit() or (sep and not hi_s.isdigit()):
        raise ValueError(f"not a port or port range: {value!r} (use 5001 or 5000-5100)")
    lo, hi = int(lo_s), int(hi_s) if sep else int(lo_s)
    if not 0 <= lo <= hi <= 65535:
        raise ValueError(f"port range out of order or above 65535: {value!r}")
    return lo, hi


def port_prefixes(lo: int, hi: int) -> list[tuple[int, int]]:
    """Cover ``lo..hi`` with the fewest (value, mask) 16-bit prefixes (what u32 can match)."""
    out = []
    while lo <= hi:
        size = lo & -lo if lo else 1 << 16
        while size > hi - lo + 1:
            size >>= 1
        out.append((lo, (0xFFFF & ~(size - 1))))
        lo += size
    return out


def key_bytes(keys: Iterable[tuple[int, int, int]]) -> tuple[tuple[int, int, int], ...]:
    """Normalise u32 keys (offset, 32-bit mask, 32-bit value) into sorted (byte offset, mask, value) triples.

    Two key lists match the same packets when their byte triples are equal, however they were split.
    """
    out: dict[int, tuple[int, int]] = {}
    for off, mask, val in keys:
        for i in range(4):
            shift = 24 - 8 * i
            bm = (mask >> shift) & 0xFF
            if bm:
                pm, pv = out.get(off + i, (0, 0))
                out[off + i] = (pm | bm, pv | ((val >> shift) & bm))
    return tuple((o, m, v) for o, (m, v) in sorted(out.items()))


def key_string(off: int, mask: int, val: int) -> str:
    """pyroute2's notation for one key."""
    return f"0x{val & mask:08x}/0x{mask:08x}+{off}"


class Selector(ParamsModel):
    """One throttled traffic class: ``rate`` plus at least one of the match fields (all must hold)."""

    name: str = Field("throttled", description="class label, e.g. checkpoint")
    rate: str | int | float = Field(description="cap: bit/s (20Mbit, 2Gbit, 500000000) or % of link speed")
    protocol: Literal["tcp", "udp", "any"] = "any"
    dport: str | int | None = Field(None, description="destination port or range, e.g. 5000-5100")
    sport: str | int | None = Field(None, description="source port or range")
    dscp: int | None = Field(None, ge=0, le=63, description="DSCP code point (0-63)")
    dst: str | None = Field(None, description="destination CIDR, IPv4 or IPv6")

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not CLASS_RE.fullmatch(v):
            raise ValueError(f"class name must be 1-32 of A-Za-z0-9_.- : {v!r}")
        return v

    @field_validator("rate")
    @classmethod
    def _rate(cls, v: str | int | float) -> str | int | float:
        parse_rate(v)
        return v

    @field_validator("dport", "sport")
    @classmethod
    def _ports(cls, v: str | int | None) -> str | None:
        r = parse_ports(v)
        return None if r is None else (f"{r[0]}" if r[0] == r[1] else f"{r[0]}-{r[1]}")

    @field_validator("dst")
    @classmethod
    def _dst(cls, v: str | None) -> str | None:
        if v in (None, ""):
            return None
        try:
            return str(ipaddress.ip_network(v.strip(), strict=False))
        except ValueError as err:
            raise ValueError(f"not a CIDR: {v!r}") from err

    @model_validator(mode="after")
    def _selective(self) -> Selector:
        if self.dport is None and self.sport is None and self.dscp is None and self.dst is None \
                and self.protocol == "any":
            raise ValueError("a class needs at least one of protocol, dport, sport, dscp, dst")
        return self


def selector_filters(sel: Selector) -> list[tuple[int, tuple[tuple[int, int, int], ...]]]:
    """(ethertype, keys) of the u32 filters that together match one selector (IPv4 and/or IPv6)."""
    families = [ETH_P_IP, ETH_P_IPV6]
    if sel.dst is not None:
        families = [ETH_P_IP if ipaddress.ip_network(sel.dst).version == 4 else ETH_P_IPV6]
    sports = port_prefixes(*parse_ports(sel.sport)) if sel.sport is not None else [None]
    dports = port_prefixes(*parse_ports(sel.dport)) if sel.dport is not None else [None]
    ported = sel.sport is not None or sel.dport is not None
    protos = [PROTOCOLS[sel.protocol]] if sel.protocol != "any" else (list(PROTOCOLS.values()) if ported else [None])
    out = []
    for family in families:
        v4 = family == ETH_P_IP
        base: list[tuple[int, int, int]] = []
        if sel.dscp is not None:
            base.append((0, 0x00FC0000, sel.dscp << 18) if v4 else (0, 0x0FC00000, sel.dscp << 22))
        if sel.dst is not None:
            net = ipaddress.ip_network(sel.dst)
            addr, mask = int(net.network_address), int(net.netmask)
            words = 1 if v4 else 4
            for i in range(words):
                shift = 32 * (words - 1 - i)
                m = (mask >> shift) & 0xFFFFFFFF
                if m:
                    base.append(((16 if v4 else 24) + 4 * i, m, (addr >> shift) & 0xFFFFFFFF))
        if ported and v4:
            base.append((0, 0x0F000000, 0x05000000))   # no IP options: ports at a fixed offset
            base.append((4, 0x00001FFF, 0))            # first fragment only (later ones carry no ports)
        l4 = 20 if v4 else 40
        for proto in protos:
            pkeys = list(base)
            if proto is not None:
                pkeys.append((8, 0x00FF0000, proto << 16) if v4 else (4, 0x0000FF00, proto << 8))
            for sp in sports:
                for dp in dports:
                    keys = list(pkeys)
                    if sp is not None and sp[1]:
                        keys.append((l4, sp[1] << 16, sp[0] << 16))
                    if dp is not None and dp[1]:
                        keys.append((l4, dp[1], dp[0]))
                    out.append((family, tuple(keys)))
    if len(out) > MAX_FILTERS:
        raise ValueError(f"class {sel.name!r} needs {len(out)} u32 filters (max {MAX_FILTERS}); use aligned "
                         "port ranges or fewer match fields")
    return out


def _burst(rate_bytes: int) -> int:
    return min(rate_bytes // 1000 + 1600, 4 << 20)        # about 1 ms at the rate plus one MTU, like tc


def _quantum(rate_bytes: int) -> int:
    return max(1600, min(200_000, rate_bytes // 10))     # what r2q=10 would give, kept in the kernel's bounds


def build_tree(device: str, selectors: Sequence[Selector], speed_bits: float | None, min_rate: float,
               unlimited: float) -> tuple[dict[str, Any], list[str]]:
    """The desired HTB tree (JSON-able, journaled in the plan) and notes about rates (floor, link speed)."""
    notes: list[str] = []
    classes = []
    for i, sel in enumerate(selectors):
        value, pct = parse_rate(sel.rate)
        if pct:
            if not speed_bits:
                raise Refused("link_speed_unknown", f"{device}: rate {sel.rate} is a percentage but the link "
                              "speed is unknown; give an absolute rate")
            bits = speed_bits * value / 100.0
        else:
            bits = value
        if bits < min_rate:
            notes.append(f"class {sel.name}: {format_rate(bits)} raised to the floor {format_rate(min_rate)}")
            bits = min_rate
        if speed_bits and bits >= speed_bits:
            notes.append(f"class {sel.name}: {format_rate(bits)} is not below the link speed "
                         f"{format_rate(speed_bits)}; it caps nothing")
        # the kernel keeps one protocol per filter priority: one priority per (class, address family)
        classes.append({"name": sel.name, "classid": ROOT | (FIRST_MINOR + i), "rate_bits": int(bits),
                        "match": _describe(sel),
                        "filters": [{"prio": 10 + 2 * i + (fam == ETH_P_IPV6), "protocol": fam,
                                     "keys": [list(k) for k in keys]} for fam, keys in selector_filters(sel)]})
    tree = {"device": device, "handle": ROOT, "default": ROOT | DEFAULT_MINOR,
            "default_rate_bits": int(max(unlimited, speed_bits or 0)), "classes": classes}
    return tree, notes


def _describe(sel: Selector) -> str:
    parts = [f"{k}={getattr(sel, k)}" for k in ("protocol", "sport", "dport", "dscp", "dst")
             if getattr(sel, k) is not None and not (k == "protocol" and sel.protocol == "any")]
    return " ".join(parts)


def tree_specs(tree: Mapping[str, Any]) -> tuple[list[ClassSpec], list[FilterSpec]]:
    """The classes and filters to create for a tree (rates converted to the kernel's bytes per second)."""
    d = int(tree["default_rate_bits"]) // 8
    classes = [ClassSpec(int(tree["default"]), d, d, _burst(d), _quantum(d))]
    filters = []
    for c in tree["classes"]:
        r = int(c["rate_bits"]) // 8
        classes.append(ClassSpec(int(c["classid"]), r, r, _burst(r), _quantum(r)))
        for f in c["filters"]:
            filters.append(FilterSpec(int(f["prio"]), int(f["protocol"]), int(c["classid"]),
                                      tuple(key_string(*k) for k in f["keys"])))
    return classes, filters


def tree_signature(tree: Mapping[str, Any]) -> tuple[Any, ...]:
    """What the kernel must show for ``tree``: classes (id, rate, ceil) and filters (prio, proto, class, bytes)."""
    classes, _ = tree_specs(tree)
    return (frozenset((c.classid, c.rate, c.ceil) for c in classes),
            frozenset((int(f["prio"]), int(f["protocol"]), int(c["classid"]), key_bytes(tuple(k) for k in f["keys"]))
                      for c in tree["classes"] for f in c["filters"]))


def owner(qdiscs: Sequence[Qdisc]) -> Literal["ours", "default", "foreign", "none"]:
    """Whose egress tree is this: ours (root 4e57:), the kernel default (every handle 0:), or foreign."""
    egress = [q for q in qdiscs if q.parent != TC_H_INGRESS and q.kind not in ("ingress", "clsact")]
    root = [q for q in egress if q.parent == TC_H_ROOT]
    if not root:
        return "none"
    if root[0].handle == ROOT and root[0].kind == "htb":
        return "ours"
    if all(q.handle & 0xFFFF0000 == 0 for q in egress):
        return "default"
    return "foreign"


def snapshot(qdiscs: Sequence[Qdisc]) -> list[list[Any]]:
    """A normalised, comparable dump of an interface's qdiscs (kind, handle, parent; no statistics)."""
    return sorted([q.kind, q.handle, q.parent] for q in qdiscs)


def fmt_handle(h: int) -> str:
    """A tc handle as tc prints it (``4e57:``, ``4e57:10``)."""
    return f"{h >> 16:x}:" + (f"{h & 0xFFFF:x}" if h & 0xFFFF else "")
