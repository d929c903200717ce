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

This module is the plugin: params, settings, kernel reads and writes, reconciliation, expiry and metrics. The
tree itself (rate parsing, port-range prefixes, u32 keys, building and comparing trees) is pure data in
:mod:`remediations.htb`; the netlink I/O is :mod:`remediations.tc`.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import Field, field_validator, model_validator

from agent.core.alerts import Alert
from agent.core.durations import format_duration, parse_duration
from agent.core.errors import RemediationError
from agent.core.metrics import MetricSpec, Sample
from agent.core.paths import Paths
from agent.core.plugin import Entry, Outcome, ParamsModel, Plan, Refused
from remediations.htb import (
    DEFAULT_MINOR,
    MAJOR,
    ROOT,
    TC_H_ROOT,
    Selector,
    build_tree,
    fmt_handle,
    format_rate,
    key_bytes,
    owner,
    parse_rate,
    snapshot,
    tree_signature,
    tree_specs,
)
from remediations.tc import Netlink

NAME = "throttle"
MAX_CLASSES = 8

IFNAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,14}$")  # IFNAMSIZ is 16 with the NUL


def check_device(value: str) -> str:
    """An interface name safe for netlink and sysfs paths (1-15 of ``A-Za-z0-9_.-``); ValueError otherwise."""
    if not isinstance(value, str) or not IFNAME_RE.fullmatch(value) or value in (".", ".."):
        raise ValueError(f"not a valid interface name: {value!r}")
    return value


# ---------------------------------------------------------------- params and settings


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


class Config(ParamsModel):
    """The plugin's section (``plugins.throttle`` in the policy file)."""

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
            raise Refused("foreign_qdisc", f"{device} has a root qdisc {root.kind} {fmt_handle(root.handle)} "
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
        changes = [f"{device}: replace the kernel default root qdisc with htb {fmt_handle(ROOT)} "
                   f"(default class {fmt_handle(ROOT | DEFAULT_MINOR)} at {format_rate(tree['default_rate_bits'])})"]
        changes += [f"{device}: class {c['name']} ({fmt_handle(c['classid'])}) capped at "
                    f"{format_rate(c['rate_bits'])} for {c['match']} ({len(c['filters'])} u32 filters)"
                    for c in tree["classes"]]
        changes.append(f"revert after at most {format_duration(duration)} (deletes {fmt_handle(ROOT)}; the "
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
        return Outcome(f"{device}: htb {fmt_handle(ROOT)} with {len(tree['classes'])} capped classes and "
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
        return Outcome(f"{device}: removed htb {fmt_handle(ROOT)}; qdiscs are back as before")

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
