"""NVIDIA XID errors: kernel-log parsing, PCI bus ids, the catalog, and cross-source de-duplication.

Pure code: no threads, no files except the packaged catalog. The GPU collector feeds it lines from
``/dev/kmsg`` and events from NVML.
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Iterable, Iterator
from functools import cache
from importlib import resources
from typing import NamedTuple

# "NVRM: Xid (PCI:0000:9b:00): 119, pid=..., name=..., message" (older drivers omit "PCI:").
_XID_RE = re.compile(
    r"NVRM: Xid \((?:PCI:)?(?P<bus>[0-9A-Fa-f]{1,8}:[0-9A-Fa-f]{1,2}:[0-9A-Fa-f]{1,2})(?:\.[0-7])?\): "
    r"(?P<xid>\d{1,4})(?:,\s*(?P<rest>.*))?"
)
_PID_RE = re.compile(r"pid=(?:'?)(?P<pid>\d+|<unknown>)'?,\s*name=(?P<name>[^,]*),\s*")
_BUS_RE = re.compile(
    r"^(?:(?P<dom>[0-9A-Fa-f]{1,8}):)?(?P<bus>[0-9A-Fa-f]{1,2}):(?P<dev>[0-9A-Fa-f]{1,2})(?:\.(?P<fn>[0-7]))?$"
)

ACTIONS = ("restart_app", "reset_gpu", "drain_node", "contact_support", "none")


class XidEvent(NamedTuple):
    """One ``NVRM: Xid`` line."""

    xid: int
    bus_id: str  # normalized "dddd:bb:dd"
    pid: int | None
    process: str
    message: str


class KmsgRecord(NamedTuple):
    """One ``/dev/kmsg`` record: ``priority,sequence,timestamp_us,flags;message``."""

    priority: int
    sequence: int
    timestamp_us: int
    message: str


class XidInfo(NamedTuple):
    """Catalog entry: short name and suggested action bucket."""

    name: str
    action: str


def normalize_bus_id(text: str) -> str:
    """PCI address in any NVML or kernel spelling to ``dddd:bb:dd`` (lower case, function dropped).

    ``00000000:9B:00.0`` (NVML), ``0000:9b:00`` (NVRM), ``9b:00.0`` all give ``0000:9b:00``.
    """
    m = _BUS_RE.match(text.strip().lower())
    if not m:
        raise ValueError(f"not a PCI bus id: {text!r}")
    return f"{int(m['dom'] or '0', 16):04x}:{int(m['bus'], 16):02x}:{int(m['dev'], 16):02x}"


def parse_kmsg_record(line: str) -> KmsgRecord | None:
    """Split a ``/dev/kmsg`` record; None for continuation lines (`` KEY=value``) and junk."""
    head, sep, message = line.partition(";")
    if not sep or line.startswith(" "):
        return None
    fields = head.split(",")
    if len(fields) < 3:
        return None
    try:
        prio, seq, ts = int(fields[0]), int(fields[1]), int(fields[2])
    except ValueError:
        return None
    return KmsgRecord(prio & 7, seq, ts, message.rstrip("\n"))


def parse_xid(line: str) -> XidEvent | None:
    """The XID event in one kernel-log line (dmesg, journal or kmsg format), or None."""
    m = _XID_RE.search(line)
    if m is None:
        return None
    rest = (m["rest"] or "").strip()
    pid: int | None = None
    process = ""
    pm = _PID_RE.match(rest)
    if pm:
        pid = int(pm["pid"]) if pm["pid"].isdigit() else None
        process = pm["name"].strip()
        rest = rest[pm.end() :]
    return XidEvent(int(m["xid"]), normalize_bus_id(m["bus"]), pid, process, rest)


def parse_log(lines: Iterable[str]) -> Iterator[XidEvent]:
    """Every XID event in a kernel log (dmesg text or raw kmsg records)."""
    for line in lines:
        if "Xid" not in line:
            continue
        event = parse_xid(line)
        if event is not None:
            yield event


@cache
def catalog() -> dict[int, XidInfo]:
    """The packaged XID catalog (``agent/data/xid_catalog.yml``)."""
    from agent.core import yamlpos

    text = resources.files("agent").joinpath("data", "xid_catalog.yml").read_text(encoding="utf-8")
    data = yamlpos.plain(yamlpos.load(text, "xid_catalog.yml"))
    out = {}
    for xid, entry in data["xids"].items():
        if entry["action"] not in ACTIONS:
            raise ValueError(f"xid_catalog.yml: xid {xid}: unknown action {entry['action']!r}")
        out[int(xid)] = XidInfo(str(entry["name"]), str(entry["action"]))
    return out


def describe(xid: int) -> XidInfo:
    """Catalog entry for ``xid``; ``unknown`` / ``contact_support`` when it is not in the catalog."""
    return catalog().get(xid, XidInfo("unknown", "contact_support"))


class Dedup:
    """Counts each XID once when NVML events and the kernel log both report it.

    An event from one source is matched against a not-yet-matched event with the same (gpu, xid) from
    the *other* source seen within ``window`` seconds; a match is the same event and is not counted
    again. Repeats from the same source always count (a GPU can raise the same XID every few seconds).
    """

    def __init__(self, window: float = 10.0) -> None:
        self.window = window
        self._pending: dict[tuple[str, int], deque[tuple[float, str]]] = {}

    def observe(self, gpu: str, xid: int, source: str, now: float) -> bool:
        """Record an event at ``now``; True when it is new and must be counted."""
        key = (gpu, xid)
        pending = self._pending.get(key)
        if pending is None:
            pending = self._pending[key] = deque()
        while pending and now - pending[0][0] > self.window:
            pending.popleft()
        for i, (_, src) in enumerate(pending):
            if src != source:
                del pending[i]
                return False
        pending.append((now, source))
        return True

    def expire(self, now: float) -> None:
        """Forget events older than the window (call once per tick to bound memory)."""
        for key in list(self._pending):
            pending = self._pending[key]
            while pending and now - pending[0][0] > self.window:
                pending.popleft()
            if not pending:
                del self._pending[key]
