"""One ``/dev/kmsg`` reader for every kernel-log consumer (GPU XIDs, the kernel problem detector).

The reader remembers the sequence number of the last record it handed out, per boot, in the state directory
(``kmsg.json``: ``{"boot_id": ..., "sequence": ...}``, written after each batch read, at most every 0.1 s).
After a restart it reads the whole ring buffer again and passes on only records newer than that, so a fault
logged while the agent was down (or in the first second after it started) is seen on the first tick, and a
record is never delivered twice (a ``kill -9`` within 0.1 s of a record excepted). Without a saved
position for this boot (first start, or after a reboot) it passes on records from the last ``lookback``
seconds, as node-problem-detector does.

Records that exist when :meth:`KmsgReader.start` is called are delivered before it returns (the buffer is
bounded by the kernel: ``log_buf_len``), so the first tick already sees them; later records arrive on the
reader's own thread. Consumers are called on that thread and must only queue work.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import select
import threading
import time
from collections.abc import Callable
from typing import NamedTuple, Protocol, runtime_checkable

import structlog

log = structlog.get_logger("nodewarden.kmsg")

STATE_FILE = "kmsg.json"
_PERSIST_EVERY = 0.1  # seconds: at most ten state writes per second while records flow (a flood)


class KmsgRecord(NamedTuple):
    """One ``/dev/kmsg`` record: ``priority,sequence,timestamp_us,flags[,...];message``."""

    priority: int  # syslog level (facility stripped)
    facility: int
    sequence: int
    timestamp_us: int  # microseconds since boot (the kernel's local clock)
    message: str


Consumer = Callable[[KmsgRecord], None]


def unescape(text: str) -> str:
    r"""Undo the kernel's ``\xNN`` escaping of non-printable bytes in a kmsg message."""
    if "\\x" not in text:
        return text
    out, i, n = [], 0, len(text)
    while i < n:
        if text.startswith("\\x", i) and i + 4 <= n:
            try:
                out.append(chr(int(text[i + 2 : i + 4], 16)))
                i += 4
                continue
            except ValueError:
                pass
        out.append(text[i])
        i += 1
    return "".join(out)


def parse_record(line: str) -> KmsgRecord | None:
    """One kmsg record line; None for continuation lines (`` KEY=value``) and junk."""
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
    return KmsgRecord(prio & 7, prio >> 3, seq, ts, unescape(message.rstrip("\n")))


def parse_state(text: str) -> tuple[str, int] | None:
    """``(boot_id, sequence)`` from the state file; None when unreadable or malformed."""
    try:
        doc = json.loads(text)
        boot, seq = doc["boot_id"], doc["sequence"]
    except (ValueError, KeyError, TypeError):
        return None
    if not isinstance(boot, str) or not isinstance(seq, int) or isinstance(seq, bool):
        return None
    return boot, seq


def _uptime() -> float:
    return time.clock_gettime(time.CLOCK_MONOTONIC)


class KmsgReader:
    """Tail ``/dev/kmsg`` once, fan records out to consumers, remember the position per boot.

    ``state_dir=None`` keeps no position (records from ``lookback`` only); ``persist=False`` reads a saved
    position but never writes one (``nodewarden sample`` must not move the daemon's position);
    ``start_at_end`` skips the history when there is no saved position.

    Consumers are counted: when the last one unsubscribes after :meth:`start`, the reader closes itself.
    """

    def __init__(self, path: str, state_dir: str | None = None, *,
                 boot_id_path: str = "/proc/sys/kernel/random/boot_id",
                 lookback: float = 300.0, persist: bool = True, start_at_end: bool = False,
                 uptime: Callable[[], float] = _uptime) -> None:
        self.path = path
        self._at_end = start_at_end
        self._state_path = os.path.join(state_dir, STATE_FILE) if state_dir else None
        self._boot_id_path = boot_id_path
        self._lookback = lookback
        self._persist = persist and self._state_path is not None
        self.persist = persist  # consumers keeping their own state follow this (sample writes nothing)
        self._uptime = uptime
        self._consumers: list[Consumer] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._fd: int | None = None
        self._buf = b""
        self._boot_id = ""
        self._after: int | None = None  # deliver records with a larger sequence number
        self._min_ts = 0  # ... or, without a saved position, records at least this recent (us)
        self._last_saved: int | None = None
        self._saved_at = 0.0
        self.last_sequence: int | None = None
        self.records = 0  # delivered records
        self.status = "not started"

    # -- consumers -------------------------------------------------------------------------------------
    def subscribe(self, consumer: Consumer) -> None:
        """Receive every new record (call before :meth:`start` to see the records found at start)."""
        with self._lock:
            if consumer not in self._consumers:
                self._consumers.append(consumer)

    def unsubscribe(self, consumer: Consumer) -> None:
        """Stop receiving records."""
        with self._lock:
            if consumer in self._consumers:
                self._consumers.remove(consumer)
            last = not self._consumers and self._thread is not None
        if last:
            self.close()

    @property
    def readable(self) -> bool:
        """True while the kernel log is open."""
        return self._fd is not None

    # -- lifecycle -------------------------------------------------------------------------------------
    def start(self) -> None:
        """Open the log, deliver what is new in the buffer now, then follow it on a thread."""
        if self._thread is not None or self._stop.is_set():
            return
        try:
            self._fd = os.open(self.path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as err:
            self.status = f"unavailable: {self.path}: {err.strerror}"
            log.info("kernel log not readable", path=self.path, error=err.strerror)
            return
        self._load_position()
        self.status = f"reading {self.path}"
        self._drain()  # the records present now, synchronously: the first tick sees them
        if self._after is None:  # the lookback applied to history only: every later record is new
            self._after = self.last_sequence if self.last_sequence is not None else -1
        self._save(force=True)
        self._thread = threading.Thread(target=self._follow, name="kmsg", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop following (bounded: about half a second) and save the position."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=2.0)
        if self._fd is not None and (self._thread is None or not self._thread.is_alive()):
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None
        self._save(force=True)

    # -- position --------------------------------------------------------------------------------------
    def _load_position(self) -> None:
        try:
            with open(self._boot_id_path, encoding="ascii") as f:
                self._boot_id = f.read().strip()
        except OSError:
            self._boot_id = ""
        saved = None
        if self._state_path:
            try:
                with open(self._state_path, encoding="utf-8") as f:
                    saved = parse_state(f.read())
            except OSError:
                saved = None
        if saved is not None and saved[0] == self._boot_id:
            self._after = saved[1]
            self._last_saved = saved[1]
        elif self._at_end and self._fd is not None:  # no history wanted: only records from now on
            self._after = None
            self._min_ts = 1 << 62
            with contextlib.suppress(OSError):
                os.lseek(self._fd, 0, os.SEEK_END)
        else:  # first start this boot: node-problem-detector's lookback
            self._after = None
            self._min_ts = int(max(0.0, self._uptime() - self._lookback) * 1e6)

    def _save(self, force: bool = False) -> None:
        seq = self.last_sequence
        if not self._persist or seq is None or seq == self._last_saved:
            return
        now = time.monotonic()
        if not force and now - self._saved_at < _PERSIST_EVERY:
            return
        tmp = f"{self._state_path}.tmp"
        try:
            os.makedirs(os.path.dirname(tmp) or ".", exist_ok=True)
            with open(tmp, "w", encoding="utf-8") as f:
                json.dump({"boot_id": self._boot_id, "sequence": seq}, f)
            os.replace(tmp, self._state_path)
        except OSError as err:
            log.warning("cannot save kernel log position", path=self._state_path, error=err.strerror)
            return
        self._last_saved = seq
        self._saved_at = now

    # -- reading ---------------------------------------------------------------------------------------
    def _drain(self) -> bool:
        """Read until the log has nothing more; False when reading must stop (error or EOF of a file)."""
        fd = self._fd
        while fd is not None and not self._stop.is_set():
            try:
                chunk = os.read(fd, 8192)  # /dev/kmsg: one record per read
            except BlockingIOError:
                return True
            except OSError as err:
                if err.errno == errno.EPIPE:  # records overwritten before we read them: go on
                    continue
                if err.errno == errno.EINTR:
                    continue
                self.status = f"read error: {err.strerror}"
                log.warning("kernel log read failed", path=self.path, error=err.strerror)
                return False
            if not chunk:  # a regular file at EOF (tests, replays): follow it like a tail
                return True
            self._buf += chunk
            *lines, self._buf = self._buf.split(b"\n")
            for raw in lines:
                self._handle(raw.decode("utf-8", "replace"))
        return False

    def _handle(self, line: str) -> None:
        rec = parse_record(line)
        if rec is None:
            return
        if self._after is not None:
            if rec.sequence <= self._after:
                return
        elif rec.timestamp_us < self._min_ts:
            self.last_sequence = rec.sequence  # old: not delivered, but the position moves past it
            return
        self._after = rec.sequence
        self.last_sequence = rec.sequence
        self.records += 1
        with self._lock:
            consumers = list(self._consumers)
        for consumer in consumers:
            try:
                consumer(rec)
            except Exception:  # one broken consumer must not stop the others or the reader
                log.exception("kernel log consumer failed", consumer=getattr(consumer, "__qualname__", "?"))

    def _follow(self) -> None:
        fd = self._fd
        if fd is None:
            return
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        regular = False
        with contextlib.suppress(OSError):
            import stat

            regular = stat.S_ISREG(os.fstat(fd).st_mode)
        while not self._stop.is_set():
            if not self._drain():
                break
            self._save()
            if regular:
                self._stop.wait(0.1)
            else:  # come back soon when a throttled save is still owed
                poller.poll(100 if self._persist and self.last_sequence != self._last_saved else 500)
        self._save(force=True)


@runtime_checkable
class ReadsKernelLog(Protocol):
    """Optional collector hook: the :class:`KmsgReader` it subscribed to (None when it reads no kernel log)."""

    kmsg_reader: KmsgReader | None


def start_readers(collectors: list[object]) -> None:
    """Start each distinct reader the collectors share (:class:`ReadsKernelLog`), after they all subscribed."""
    seen: set[int] = set()
    for coll in collectors:
        reader = coll.kmsg_reader if isinstance(coll, ReadsKernelLog) else None
        if isinstance(reader, KmsgReader) and id(reader) not in seen:
            seen.add(id(reader))
            reader.start()
