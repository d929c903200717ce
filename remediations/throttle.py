"""``throttle``: relieve network congestion by capping traffic classes with an HTB tree (Linux tc, netlink).

On the named interface it installs a root HTB qdisc with the recognisable handle ``4e57:`` ("NW"): a default
class ``4e57:ffff`` that is effectively unlimited (``unlimited_rate``, by default 1 Tbit/s) and one class
``4e57:10``, ``4e57:11``, ... per throttled selector, each capped at its rate (rate = ceil, no borrowing), fed
by u32 filters on protocol, source/destination port ranges, DSCP and destination CIDR (IPv4 and IPv6).

It owns only what it creates. A root qdisc is replaceable only while every egress qdisc on the interface is
a kernel default (handle ``0:``: pfifo_fast, noqueue, fq_codel, mq and its children...); anything else is
foreign and the plan is refused with the reason. ``revert`` deletes our root qdisc, the kernel reattaches
its default, and the qdiscs are compared with the snapshot taken before ``apply``.

Safety: the interface carrying a default route is refused unless ``allow_default_route: true``; rates are
raised to the ``min_rate`` floor; a throttle carries ``expires_after`` (its ``duration``, capped by
``max_duration``) and :meth:`Throttle.reconcile` reports the journal entries past it so they get reverted.

Pure planning (rate parsing, port-range prefixes, u32 keys, the tree, comparing trees) is separate from the
netlink I/O in :mod:`remediations.tc`.
"""

from __future__ import annotations

import ipaddress
import re
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from agent.core.alerts import Alert
from agent.core.durations import format_duration, parse_duration
from agent.core.errors import RemediationError
from agent.core.metrics import MetricSpec, Sample
from agent.core.paths import Paths
from agent.core.plugin import Entry, Outcome, ParamsModel, Plan
from remediations.tc import ClassSpec, FilterSpec, Netlink, Qdisc

NAME = "throttle"
MAJOR = 0x4E57                     # "NW": the major of every handle we create
ROOT = MAJOR << 16                 # 4e57:
DEFAULT_MINOR = 0xFFFF             # 4e57:ffff, the unlimited default class
FIRST_MINOR = 0x10                 # 4e57:10, 4e57:11, ... one per selector
TC_H_ROOT = 0xFFFFFFFF
TC_H_INGRESS = 0xFFFFFFF1          # ingress / clsact live here; egress shaping never touches them
ETH_P_IP, ETH_P_IPV6 = 0x0800, 0x86DD
PROTOCOLS = {"tcp": 6, "udp": 17}
MAX_CLASSES = 8
MAX_FILTERS = 64                   # per selector, after expanding port ranges into prefixes

IFNAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,14}$")  # IFNAMSIZ is 16 with the NUL
CLASS_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,31}$")
RATE_RE = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*(%|bit|kbit|mbit|gbit|tbit)?\s*$", re.IGNORECASE)
_UNITS = {None: 1, "bit": 1, "kbit": 10**3, "mbit": 10**6, "gbit": 10**9, "tbit": 10**12}


class Refused(RemediationError):
    """The plan is refused on purpose (foreign qdisc, default route, ...): ``reason`` is a short token."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason


# ---------------------------------------------------------------- pure helpers


def check_device(value: str) -> str:
    """An interface name safe for netlink and sysfs paths (1-15 of ``A-Za-z0-9_.-``); ValueError otherwise."""
    if not isinstance(value, str) or not IFNAME_RE.fullmatch(value) or value in (".", ".."):
        raise ValueError(f"not a valid interface name: {value!r}")
    return value


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


# ---------------------------------------------------------------- params and settings


class Selector(BaseModel):
    """One throttled traffic class: ``rate`` plus at least one of the match fields (all must hold)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

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


_FLAT = ("name", "rate", "protocol", "dport", "sport", "dscp", "dst")


class Params(ParamsModel):
    """A step's params: the interface and its throttled classes.

    ``classes`` is a list of selectors; for one class the selector's fields may be given at the top level
    instead (``device=eth0 rate=20Mbit dport=5001``, handy with ``nodewarden act``).
    """

    device: str = Field(description="interface to shape, e.g. {{ $labels.device }}")
    classes: list[Selector] = Field(min_length=1, max_length=MAX_CLASSES)
    duration: str | None = Field(None, description="how long at most (default: the plugin's default_duration)")
    allow_default_route: bool = Field(False, description="allow shaping the interface of a default route")

    @model_validator(mode="before")
    @classmethod
    def _flat(cls, data: Any) -> Any:
        if isinstance(data, Mapping) and "classes" not in data and not any(k in data for k in _FLAT):
            raise ValueError("nothing to throttle: give rate= and at least one of dport=, sport=, dscp=, dst=, "
                             "protocol= (or a classes list in a policy)")
        if isinstance(data, Mapping) and any(k in data for k in _FLAT):
            if "classes" in data:
                raise ValueError("give either classes or one class's fields at the top level, not both")
            data = dict(data)
            data["classes"] = [{k: data.pop(k) for k in _FLAT if k in data}]
        return data

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        return check_device(v)

    @field_validator("duration")
    @classmethod
    def _duration(cls, v: str | None) -> str | None:
        if v is not None and parse_duration(v) <= 0:
            raise ValueError("duration must be positive")
        return v

    @model_validator(mode="after")
    def _unique(self) -> Params:
        names = [c.name for c in self.classes]
        if len(set(names)) != len(names):
            raise ValueError(f"class names must be unique: {names}")
        return self


class Config(BaseModel):
    """The plugin's section (``plugins.throttle`` in the policy file)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    min_rate: str = Field("1Mbit", description="floor: a class is never capped below this")
    default_duration: str = Field("30m", description="how long a throttle lasts when the step gives none")
    max_duration: str = Field("2h", description="a throttle is reverted after this even while the alert fires")
    unlimited_rate: str = Field("1Tbit", description="rate of the default (unthrottled) class")

    @field_validator("min_rate", "unlimited_rate")
    @classmethod
    def _rate(cls, v: str) -> str:
        if parse_rate(v)[1]:
            raise ValueError("must be an absolute rate, not a percentage")
        return v

    @field_validator("default_duration", "max_duration")
    @classmethod
    def _dur(cls, v: str) -> str:
        if parse_duration(v) <= 0:
            raise ValueError("must be positive")
        return v


# ---------------------------------------------------------------- the tree (pure)


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


def _fmt_handle(h: int) -> str:
    return f"{h >> 16:x}:" + (f"{h & 0xFFFF:x}" if h & 0xFFFF else "")


# ---------------------------------------------------------------- the plugin

METRICS = [
    MetricSpec("nodewarden_throttle_active", "gauge", "1 while nodewarden throttles this class on the interface.",
               ("device", "class")),
    MetricSpec("nodewarden_throttle_rate_bits_per_second", "gauge",
               "Configured cap of a class throttled by nodewarden, in bits per second.", ("device", "class")),
]


@dataclass
class Reconciled:
    """What :meth:`Throttle.reconcile` found: devices kept, re-applied or cleaned, and expired entry ids."""

    kept: list[str] = field(default_factory=list)
    reapplied: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    expired: list[int] = field(default_factory=list)


class Throttle:
    """The plugin (see module docstring). ``netlink`` and ``paths`` are injectable; ``clock`` for expiry."""

    NAME = NAME
    Params = Params
    Config = Config
    metrics = METRICS

    def __init__(self, config: Config | None = None, paths: Paths | None = None, netlink: Netlink | None = None,
                 clock=time.time, **_: Any) -> None:
        self.name = NAME
        self.config = config or Config()
        self.paths = paths or Paths()
        self.nl = netlink or Netlink()
        self.clock = clock
        self.min_rate = parse_rate(self.config.min_rate)[0]
        self.unlimited = parse_rate(self.config.unlimited_rate)[0]
        self.max_duration = parse_duration(self.config.max_duration)
        self.default_duration = min(parse_duration(self.config.default_duration), self.max_duration)
        self._active: dict[str, Mapping[str, Any]] = {}     # device -> tree, for samples()
        self._lock = threading.Lock()

    # ---- I/O helpers

    def link_speed_bits(self, device: str) -> float | None:
        """Link speed from sysfs (node_network_speed_bytes * 8); None when unknown (virtual, down)."""
        try:
            with open(self.paths.sys("class", "net", check_device(device), "speed")) as f:
                mbit = int(f.read().strip())
        except (OSError, ValueError):
            return None
        return mbit * 1e6 if mbit > 0 else None

    def _index(self, device: str) -> int:
        for index, name in self.nl.links().items():
            if name == device:
                return index
        raise Refused("no_such_device", f"interface {device!r} does not exist")

    # ---- protocol

    def plan(self, alert: Alert | None, params: Params) -> Plan:
        """What would change (reads kernel state; changes nothing). Raises :class:`Refused` with the reason."""
        device = params.device
        index = self._index(device)
        if not params.allow_default_route:
            routed = self.nl.default_route_links() & ({index} | self.nl.related(index))
            if routed:
                via = "" if index in routed else " through a stacked interface (bond, bridge or VLAN)"
                raise Refused("default_route", f"{device} carries a default route{via} (management traffic); "
                              "set allow_default_route: true in the step's params to shape it anyway")
        qdiscs = [q for _, q in self.nl.qdiscs(index)]
        whose = owner(qdiscs)
        if whose == "foreign":
            root = next(q for q in qdiscs if q.parent == TC_H_ROOT)
            raise Refused("foreign_qdisc", f"{device} has a root qdisc {root.kind} {_fmt_handle(root.handle)} "
                          "that nodewarden did not create; left alone")
        if whose == "none":
            raise Refused("no_root_qdisc", f"{device} has no egress qdisc (is it up?)")
        tree, notes = build_tree(device, params.classes, self.link_speed_bits(device), self.min_rate, self.unlimited)
        duration = min(parse_duration(params.duration) if params.duration else self.default_duration,
                       self.max_duration)
        if params.duration and parse_duration(params.duration) > self.max_duration:
            notes.append(f"duration {params.duration} capped at max_duration {self.config.max_duration}")
        noop = False
        if whose == "ours":
            if self._kernel_signature(index) != tree_signature(tree):
                raise Refused("already_throttled", f"{device} is already throttled by nodewarden with other "
                              "classes; revert that first")
            noop = True
        changes = [f"{device}: replace the kernel default root qdisc with htb {_fmt_handle(ROOT)} "
                   f"(default class {_fmt_handle(ROOT | DEFAULT_MINOR)} at {format_rate(tree['default_rate_bits'])})"]
        changes += [f"{device}: class {c['name']} ({_fmt_handle(c['classid'])}) capped at "
                    f"{format_rate(c['rate_bits'])} for {c['match']} ({len(c['filters'])} u32 filters)"
                    for c in tree["classes"]]
        changes.append(f"revert after at most {format_duration(duration)} (deletes {_fmt_handle(ROOT)}; the "
                       "kernel default qdisc returns)")
        changes += notes
        if noop:
            changes = [f"{device}: already throttled exactly so by nodewarden; nothing to do"]
        return Plan(action=NAME, target=f"netdev/{device}", scope="local", reversible=True, noop=noop,
                    changes=changes, params={"device": device, "tree": tree, "expires_after": duration})

    def apply(self, plan: Plan) -> Outcome:
        """Install the tree (idempotent: an identical tree of ours is left as it is; a different one rebuilt)."""
        device, tree = plan.params["device"], plan.params["tree"]
        index = self._index(device)
        qdiscs = [q for _, q in self.nl.qdiscs(index)]
        whose = owner(qdiscs)
        if whose == "foreign":
            raise Refused("foreign_qdisc", f"{device}: a foreign root qdisc appeared since the plan; left alone")
        if whose == "none":
            raise Refused("no_root_qdisc", f"{device} has no egress qdisc")
        if whose == "ours":
            if self._kernel_signature(index) == tree_signature(tree):
                self._remember(device, tree)
                return Outcome(f"{device}: already in place", dict(plan.undo))
            self.nl.delete_root(index)  # ours but different (an interrupted apply): rebuild
            before = None
        else:
            before = snapshot(qdiscs)
        classes, filters = tree_specs(tree)
        self.nl.create_htb(index, ROOT, DEFAULT_MINOR, classes, filters)
        self._remember(device, tree)
        return Outcome(f"{device}: htb {_fmt_handle(ROOT)} with {len(tree['classes'])} capped classes and "
                       f"{len(filters)} filters", {"before": before} if before is not None else dict(plan.undo))

    def verify(self, plan: Plan) -> bool:
        """Our root qdisc is there with exactly the planned classes and filters."""
        device = plan.params["device"]
        index = self._index(device)
        if owner([q for _, q in self.nl.qdiscs(index)]) != "ours":
            return False
        return self._kernel_signature(index) == tree_signature(plan.params["tree"])

    def revert(self, plan: Plan) -> Outcome:
        """Delete our root qdisc (only ours) and check the interface is back as it was before apply."""
        device = plan.params["device"]
        try:
            index = self._index(device)
        except Refused:
            self._forget(device)
            return Outcome(f"{device} is gone; nothing to revert")
        whose = owner([q for _, q in self.nl.qdiscs(index)])
        if whose != "ours":
            self._forget(device)
            return Outcome(f"{device}: no nodewarden qdisc ({whose}); nothing to do")
        self.nl.delete_root(index)
        self._forget(device)
        after = [q for _, q in self.nl.qdiscs(index)]
        before = plan.undo.get("before")
        if before is not None and snapshot(after) != [list(x) for x in before]:
            raise RemediationError(f"{device}: qdiscs after revert {snapshot(after)} differ from before {before}")
        if before is None and owner(after) != "default":
            raise RemediationError(f"{device}: after revert the root qdisc is {owner(after)}, not the kernel default")
        return Outcome(f"{device}: removed htb {_fmt_handle(ROOT)}; qdiscs are back as before")

    def recover(self, entry: Entry) -> str:
        """An interrupted apply is finished (a journaled throttle stays); an interrupted revert is finished."""
        plan = entry.get_plan()
        if entry.op == "revert":
            self.revert(plan)
            return "reverted"
        if self.verify(plan):
            self._remember(plan.params["device"], plan.params["tree"])
            return "succeeded"
        self.apply(plan)
        return "succeeded" if self.verify(plan) else "failed"

    # ---- reconciliation, expiry and metrics

    def reconcile(self, active: Iterable[Entry], now: float | None = None) -> Reconciled:
        """Make the kernel match the journal's active throttles (call after the remediator's recover()).

        A nodewarden root qdisc with no active entry is removed; an active entry whose qdisc is missing is
        re-applied, unless it has expired; entries past ``expires_after`` are returned in ``expired`` for the
        caller to revert through the journal.
        """
        now = self.clock() if now is None else now
        out = Reconciled()
        wanted: dict[str, Entry] = {}
        for e in active:
            if e.action != NAME or not e.plan:
                continue
            plan = e.get_plan()
            if now >= e.ts + float(plan.params.get("expires_after", self.max_duration)):
                out.expired.append(e.id)
            wanted[plan.params["device"]] = e
        links = self.nl.links()
        for index, q in self.nl.qdiscs():
            if q.parent == TC_H_ROOT and q.handle == ROOT and q.kind == "htb":
                device = links.get(index, str(index))
                if device not in wanted:
                    self.nl.delete_root(index)
                    self._forget(device)
                    out.removed.append(device)
        for device, e in wanted.items():
            plan = e.get_plan()
            try:
                ok = self.verify(plan)
            except Refused:
                continue  # the interface is gone; the entry is reverted (as a no-op) when it expires or resolves
            if ok:
                self._remember(device, plan.params["tree"])
                out.kept.append(device)
            elif e.id not in out.expired:
                self.apply(plan)
                out.reapplied.append(device)
        return out

    def expired(self, active: Iterable[Entry], now: float | None = None) -> list[int]:
        """Ids of active throttle entries older than their ``expires_after``."""
        now = self.clock() if now is None else now
        return [e.id for e in active if e.action == NAME and e.plan
                and now >= e.ts + float(e.get_plan().params.get("expires_after", self.max_duration))]

    def samples(self) -> list[Sample]:
        """``nodewarden_throttle_active`` and the configured rate of every class this process installed."""
        out = []
        with self._lock:
            for device, tree in sorted(self._active.items()):
                for c in tree["classes"]:
                    labels = (("device", device), ("class", c["name"]))
                    out.append(Sample("nodewarden_throttle_active", labels, 1.0))
                    out.append(Sample("nodewarden_throttle_rate_bits_per_second", labels, float(c["rate_bits"])))
        return out

    def _remember(self, device: str, tree: Mapping[str, Any]) -> None:
        with self._lock:
            self._active[device] = tree

    def _forget(self, device: str) -> None:
        with self._lock:
            self._active.pop(device, None)

    def _kernel_signature(self, index: int) -> tuple[Any, ...]:
        classes = frozenset((c.classid, c.rate, c.ceil) for c in self.nl.htb_classes(index)
                            if c.classid >> 16 == MAJOR)
        filters = frozenset((f.prio, f.protocol, f.classid, key_bytes(f.keys))
                            for f in self.nl.u32_filters(index, ROOT))
        return classes, filters
