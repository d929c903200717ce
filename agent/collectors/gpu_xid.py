"""XIDs of the GPU collector, from two sources: NVML critical-XID events (a listener thread) and ``NVRM: Xid``
kernel-log lines (a :class:`~agent.collectors.kmsg.KmsgReader` consumer). Reports land in one inbox from any
thread and are counted on the ``collect()`` thread, each event once (:class:`agent.collectors.xid.Dedup`)."""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import structlog

from agent.collectors import xid as xidlib
from agent.collectors.kmsg import KmsgRecord
from agent.collectors.nvml import UNSUPPORTED, GpuLost, Nvml, handle_key
from agent.core.metrics import Labels, Sample

log = structlog.get_logger("nodewarden.gpu")


class XidTarget(Protocol):
    """Required: what the tracker needs of a GPU (:class:`agent.collectors.gpu_device.GpuDevice` has it)."""

    index: int
    uuid: str
    labels: Labels
    last_xid: float


class XidTracker:
    """The inbox of XID reports and their counts (per GPU and XID, per source before de-duplication)."""

    def __init__(self, dedup_window: float, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._inbox: deque[tuple[str, Any, int, float]] = deque(maxlen=10_000)
        self._dedup = xidlib.Dedup(dedup_window)
        self._counts: dict[Labels, float] = {}
        self._seen: dict[str, float] = {"nvml": 0.0, "kmsg": 0.0}
        self._known: set[int] = set()

    # -- sources (any thread) -------------------------------------------------------------------
    def nvml_event(self, handle: Any, xid: int) -> None:
        """An NVML critical-XID event on the device ``handle``."""
        self._inbox.append(("nvml", handle_key(handle), xid, self._clock()))

    def kmsg_record(self, rec: KmsgRecord) -> None:
        """A kernel-log record (the shared reader's consumer callback): counts ``NVRM: Xid`` lines."""
        self.kmsg_line(rec.message)

    def kmsg_line(self, line: str) -> None:
        """One kernel-log line, with or without its ``/dev/kmsg`` prefix."""
        if "Xid" not in line:
            return
        rec = xidlib.parse_kmsg_record(line)
        event = xidlib.parse_xid(rec.message if rec else line)
        if event is not None:
            self._inbox.append(("kmsg", event.bus_id, event.xid, self._clock()))

    # -- counting (the collect() thread) ----------------------------------------------------------
    def drain(self, now: float, by_handle: Mapping[Any, XidTarget], by_bus: Mapping[str, XidTarget]) -> None:
        """Count the reports received since the last call; set each GPU's ``last_xid``."""
        inbox = self._inbox
        while inbox:
            source, where, xid, t = inbox.popleft()
            g = by_handle.get(where) if source == "nvml" else by_bus.get(where)
            self._seen[source] = self._seen.get(source, 0.0) + 1
            gpu_id = str(g.index) if g is not None else f"unknown:{where}"
            if not self._dedup.observe(gpu_id, xid, source, t):
                continue
            labels = (("gpu", str(g.index)), ("UUID", g.uuid)) if g is not None else (("gpu", ""), ("UUID", ""))
            key = (*labels, ("xid", str(xid)))
            self._counts[key] = self._counts.get(key, 0.0) + 1
            self._known.add(xid)
            if g is not None:
                g.last_xid = float(xid)
            info = xidlib.describe(xid)
            log.warning("gpu xid", gpu=labels[0][1], uuid=labels[1][1], xid=xid, name=info.name,
                        action=info.action, source=source)
        self._dedup.expire(now)

    def samples(self, out: list[Sample]) -> None:
        """The XID counters and the catalogue entry of every XID seen."""
        append = out.append
        for labels, count in self._counts.items():
            append(Sample("nodewarden_gpu_xid_errors_total", labels, count))
        for xid in self._known:
            info = xidlib.describe(xid)
            append(Sample("nodewarden_gpu_xid_info", (("xid", str(xid)), ("name", info.name),
                                                      ("action", info.action)), 1.0))
        for source, count in self._seen.items():
            append(Sample("nodewarden_gpu_xid_events_seen_total", (("source", source),), count))


class XidEventListener:
    """NVML's critical-XID event set and the thread that waits on it, feeding an :class:`XidTracker`."""

    def __init__(self, tracker: XidTracker) -> None:
        self.tracker = tracker
        self._event_set: Any = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def register(self, nvml: Nvml, gpus: list[Any]) -> None:
        """Create the event set and register every GPU that answers (runs in the NVML worker).

        A GPU without XID events gets ``note_unsupported("xid_events")``; one lost meanwhile is marked lost."""
        nv = nvml.nv
        get = nvml.get
        self._event_set = None
        if not gpus:
            return
        es = get(nv.nvmlEventSetCreate)
        if es is None or es is UNSUPPORTED:
            return
        for g in gpus:
            if g.handle is None or g.lost:
                continue
            try:
                if get(nv.nvmlDeviceRegisterEvents, g.handle, nv.nvmlEventTypeXidCriticalError, es) is UNSUPPORTED:
                    g.note_unsupported("xid_events")
            except GpuLost:
                g.lost = True
        self._event_set = es

    def start(self, nvml: Nvml) -> None:
        """Start the waiting thread unless it runs already."""
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._loop, args=(nvml,), name="gpu-xid-events", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 1.0) -> None:
        """Ask the thread to end and wait for it (bounded: one NVML wait is 0.5 s)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=timeout)

    def _loop(self, nvml: Nvml) -> None:
        """Wait for NVML critical-XID events (own thread; a blocking wait is its job)."""
        nv = nvml.nv
        es = self._event_set
        if es is None:
            return
        xid_type = nv.nvmlEventTypeXidCriticalError
        while not self._stop.is_set():
            try:
                data = nv.nvmlEventSetWait(es, 500)
            except nv.NVMLError as err:
                code = nvml.code(err)
                if code in (1, 9, 12):  # uninitialized / driver gone: stop listening
                    return
                if code != 10:  # anything but a timeout: back off a little
                    self._stop.wait(1.0)
                continue
            except Exception:  # a broken driver binding must not kill the thread silently
                log.exception("nvml event wait failed")
                self._stop.wait(1.0)
                continue
            if data.eventType & xid_type:
                self.tracker.nvml_event(data.device, int(data.eventData))
