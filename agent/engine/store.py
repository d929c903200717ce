"""Recent history of every series: compressed chunks, and a decoded ring for the series readers use.

Ticks share one ring of timestamps. Each series writes into an open head of ``chunk`` ticks; when the head
is full it is sealed into a compressed chunk (:func:`encode_chunk`, lossless) and chunks older than the
retention window are dropped. Each tick seals about ``1/chunk`` of the series (a series' chunks start at its
own phase), so the cost is spread. A reader that asks for :attr:`Series.values` gets the whole ring
(``values[tick % capacity]``), decoded once and updated by every write while it is read; a ring nobody read
since the series' last seal is dropped again. Only the series rules, queries and pages read hold a ring;
the rest (most of a node's series) stay compressed. A series
that got no sample in a tick reads as a Prometheus staleness marker there (the series disappeared
from its collector's output, or the collector failed), which is what Prometheus itself records when a
series vanishes from a scrape. Series with no sample for a whole retention window are dropped.

A collector's series is stale in a tick it did not appear in. Test loaders that need "no sample, but
not stale" (promtool's ``_``) write :data:`ABSENT_NAN`, which readers skip.

Writes happen on the sampling thread and take :attr:`Store.lock`, as does decoding a ring; readers on other
threads (the status page) take it around what they read.
"""

from __future__ import annotations

import math
import struct
import threading
import zlib
from array import array
from collections.abc import Iterable, Iterator, Mapping
from typing import Protocol, runtime_checkable

from agent.core.metrics import Labels, Sample

STALE_NAN = struct.unpack("<d", struct.pack("<Q", 0x7FF0000000000002))[0]
ABSENT_NAN = struct.unpack("<d", struct.pack("<Q", 0x7FF0000000000003))[0]
_STALE_BITS = 0x7FF0000000000002
_ABSENT_BITS = 0x7FF0000000000003


def is_stale(value: float) -> bool:
    """True for the Prometheus staleness marker (a NaN with a specific payload)."""
    return math.isnan(value) and struct.unpack("<Q", struct.pack("<d", value))[0] == _STALE_BITS


def is_absent(value: float) -> bool:
    """True for ABSENT_NAN: "no sample at this tick" without staleness (promtool's ``_``)."""
    return math.isnan(value) and struct.unpack("<Q", struct.pack("<d", value))[0] == _ABSENT_BITS


def encode_chunk(vals: array) -> bytes:
    """A closed chunk's values, losslessly: 8 bytes when they are all equal, else each value XORed with the one
    before (similar numbers share their leading bytes), bytes grouped by significance, deflated; the raw
    ``8 * len(vals)`` bytes when that is no smaller. NaN payloads (staleness, absence) survive bit for bit."""
    raw = vals.tobytes()
    if raw == raw[:8] * len(vals):
        return raw[:8]
    n = len(raw)
    x = int.from_bytes(raw, "little")
    xored = ((x ^ (x << 64)) & ((1 << (8 * n)) - 1)).to_bytes(n, "little")
    data = zlib.compress(b"".join(xored[i::8] for i in range(8)), 1)
    return data if len(data) < n else raw  # a deflate stream of a non-empty chunk is never exactly 8 bytes


def decode_chunk(data: bytes, n: int) -> array:
    """The ``n`` values :func:`encode_chunk` stored in ``data``."""
    if len(data) == 8:
        return array("d", data) * n
    if len(data) == 8 * n:
        return array("d", data)
    grouped = zlib.decompress(data)
    xored = bytearray(8 * n)
    for i in range(8):
        xored[i::8] = grouped[i * n : (i + 1) * n]
    x = int.from_bytes(xored, "little")
    shift, bits = 64, 64 * n
    while shift < bits:  # prefix XOR by doubling: value i = xored 0 ^ ... ^ xored i
        x ^= x << shift
        shift *= 2
    return array("d", (x & ((1 << bits) - 1)).to_bytes(8 * n, "little"))


class Series:
    """One series: its identity, its history (closed chunks, compressed, and an open head), and the last tick
    that wrote it. :attr:`values` is the whole ring, decoded on first read and kept while readers use it."""

    __slots__ = ("chunk0", "chunks", "head", "labels", "last", "last_tick", "marks", "name", "phase", "prefix",
                 "read", "ring", "store")

    def __init__(self, name: str, labels: Labels, store: Store, phase: int) -> None:
        self.name = name
        self.labels = labels
        self.store = store
        self.phase = phase  # chunks start at ticks k with k % chunk == phase (spreads the sealing over ticks)
        self.head = array("d", store._stale_head)  # the open chunk, by (tick - phase) % chunk
        self.chunks: list[bytes | None] = []  # closed chunks, oldest first (None: no sample in it)
        self.chunk0 = 0  # first tick of chunks[0]
        self.ring: array | None = None  # decoded ring (slot = tick % capacity) while readers use it
        self.read = False  # :attr:`values` was read since the last seal
        self.last = STALE_NAN  # the value written at last_tick
        self.last_tick = -1
        self.prefix = ""  # exposition prefix ``name{l="v"} ``, filled by the exporter
        self.marks = (-1, -1, -1)  # readers' summary of closed ticks, see Store.marks()

    @property
    def values(self) -> array:
        """The ring of values, ``values[k % capacity]`` for retained tick ``k <= last_tick`` (decoded on demand)."""
        ring = self.ring
        if ring is None:
            with self.store.lock:  # a reader on another thread must not decode while the tick writes or seals
                ring = self.ring
                if ring is None:
                    ring = self.ring = self.store._materialize(self)
        self.read = True
        return ring


def chunk_size(capacity: int) -> int:
    """Ticks per compressed chunk for a ring of ``capacity`` ticks: about an eighth of it, 16 to 120."""
    return max(16, min(120, capacity // 8))


class Store:
    """Recent samples of every series seen within ``retention`` seconds (see the module docstring)."""

    def __init__(self, retention: float = 900.0, interval: float = 5.0, chunk: int | None = None) -> None:
        if retention <= 0 or interval <= 0:
            raise ValueError("retention and interval must be positive")
        self.retention = float(retention)
        self.interval = float(interval)
        self.capacity = math.ceil(retention / interval) + 1
        self.chunk = chunk or chunk_size(self.capacity)
        self._stale_head = array("d", [STALE_NAN]) * self.chunk
        self._stale_ring = array("d", [STALE_NAN]) * self.capacity
        self._phases: list[set[Series]] = [set() for _ in range(self.chunk)]
        self._next_phase = 0
        self._chunk_bytes = 0  # bytes held by closed chunks (payloads)
        self._chunk_count = 0
        self._rings = 0  # series with a decoded ring
        self._ts = array("d", [math.nan] * self.capacity)
        self.tick = -1  # index of the newest tick (monotonic; slot = tick % capacity)
        self.by_name: dict[str, dict[Labels, Series]] = {}
        self.version = 0  # bumped whenever a series is added or dropped (lets readers cache selections)
        self.lock = threading.RLock()

    # -- writing ---------------------------------------------------------------------------
    def begin_tick(self, t: float) -> int:
        """Open a new tick at wall-clock time ``t`` (seconds) and return its index."""
        with self.lock:
            if self.tick >= 0 and t <= self._ts[self.tick % self.capacity]:
                raise ValueError("tick timestamps must increase")
            self.tick += 1
            self._ts[self.tick % self.capacity] = t
            for series in self._phases[self.tick % self.chunk]:
                self._seal(series)
            return self.tick

    def add(self, samples: Iterable[Sample]) -> None:
        """Write samples into the current tick (call after :meth:`begin_tick`)."""
        with self.lock:
            self._add(samples)

    def _add(self, samples: Iterable[Sample]) -> None:
        tick = self.tick
        if tick < 0:
            raise ValueError("add() before begin_tick()")
        cap = self.capacity
        slot = tick % cap
        chunk = self.chunk
        by_name = self.by_name
        for name, labels, value in samples:
            family = by_name.get(name)
            if family is None:
                family = by_name[name] = {}
            series = family.get(labels)
            if series is None:
                series = family[labels] = self._new_series(name, labels)
            series.head[(tick - series.phase) % chunk] = value
            ring = series.ring
            if ring is not None:
                last = series.last_tick
                if last != tick - 1 and last != tick:
                    # Mark the ticks this series missed as stale (at most one full ring).
                    for k in range(max(last + 1, tick - cap + 1), tick):
                        ring[k % cap] = STALE_NAN
                ring[slot] = value
            series.last = value
            series.last_tick = tick

    def _new_series(self, name: str, labels: Labels) -> Series:
        phase = self._next_phase
        self._next_phase = (phase + 1) % self.chunk
        series = Series(name, labels, self, phase)
        self._phases[phase].add(series)
        self.version += 1
        return series

    def _seal(self, series: Series) -> None:
        """Close the series' head (the ``chunk`` ticks before this one): compress it onto its chunks, drop the
        chunks that left the retention window, and drop its decoded ring unless it was read since the last seal."""
        chunk = self.chunk
        start = self.tick - chunk
        data = encode_chunk(series.head) if series.last_tick >= start else None
        series.head[:] = self._stale_head
        chunks = series.chunks
        if not chunks:
            series.chunk0 = start
        chunks.append(data)
        self._chunk_count += 1
        self._chunk_bytes += len(data) if data is not None else 0
        first = self.tick - self.capacity + 1
        while series.chunk0 + chunk <= first:
            old = chunks.pop(0)
            series.chunk0 += chunk
            self._chunk_count -= 1
            self._chunk_bytes -= len(old) if old is not None else 0
        if series.ring is not None and not series.read:
            series.ring = None
            self._rings -= 1
        series.read = False

    def _materialize(self, series: Series) -> array:
        """Decode a series' retained history into a ring (slot ``tick % capacity``)."""
        ring = array("d", self._stale_ring)
        chunk = self.chunk
        first = max(0, self.tick - self.capacity + 1)
        k = series.chunk0
        for data in series.chunks:
            if data is not None and k + chunk > first:
                self._put(ring, k, decode_chunk(data, chunk), first)
            k += chunk
        start = self.tick - (self.tick - series.phase) % chunk  # the open head's first tick
        if series.last_tick >= max(start, first):
            self._put(ring, start, series.head, first)
        self._rings += 1
        return ring

    def _put(self, ring: array, k: int, vals: array, first: int) -> None:
        """Copy ``vals`` (ticks ``k..``) into ``ring``, only the retained ticks ``first..tick``."""
        cap = self.capacity
        lo, hi = max(k, first), min(k + len(vals) - 1, self.tick)
        if lo > hi:
            return
        src = vals[lo - k : hi - k + 1]
        a = lo % cap
        n = hi - lo + 1
        if a + n <= cap:
            ring[a : a + n] = src
        else:
            ring[a:] = src[: cap - a]
            ring[: n - (cap - a)] = src[cap - a :]

    def gc(self) -> int:
        """Drop series without a sample for a whole retention window; return how many."""
        horizon = self.tick - self.capacity + 1
        dropped = 0
        for name in list(self.by_name):
            family = self.by_name[name]
            for labels in [k for k, s in family.items() if s.last_tick < horizon]:
                series = family.pop(labels)
                self._phases[series.phase].discard(series)
                self._chunk_count -= len(series.chunks)
                self._chunk_bytes -= sum(len(c) for c in series.chunks if c is not None)
                if series.ring is not None:
                    self._rings -= 1
                dropped += 1
                self.version += 1
            if not family:
                del self.by_name[name]
        return dropped

    # -- reading ---------------------------------------------------------------------------
    @property
    def now(self) -> float:
        """Timestamp of the newest tick (NaN before the first)."""
        return self._ts[self.tick % self.capacity] if self.tick >= 0 else math.nan

    def series_count(self) -> int:
        """Number of live series."""
        return sum(len(f) for f in self.by_name.values())

    def nbytes(self) -> int:
        """Approximate memory held by the history: heads, compressed chunks, decoded rings, bookkeeping."""
        n = self.series_count()
        per_series = 8 * self.chunk + 64 + 56 + 176 + 480  # head array, chunk list, Series, dict entry and labels
        return (n * per_series + self._chunk_bytes + (33 + 8) * self._chunk_count
                + self._rings * (8 * self.capacity + 64) + 16 * self.capacity)

    def stats(self) -> dict[str, int]:
        """:meth:`nbytes` and the counts behind it: series, closed chunks, their payload bytes, decoded rings, ticks
        a chunk and a ring."""
        return {"bytes": self.nbytes(), "series": self.series_count(), "chunks": self._chunk_count,
                "chunk_bytes": self._chunk_bytes, "rings": self._rings, "chunk": self.chunk, "capacity": self.capacity}

    def family(self, name: str) -> dict[Labels, Series]:
        """All series of one metric name (empty dict when unknown)."""
        return self.by_name.get(name, {})

    def all_series(self) -> Iterator[Series]:
        """Every live series."""
        for family in self.by_name.values():
            yield from family.values()

    def latest(self, series: Series) -> float | None:
        """The series' value in the newest tick, or None when it was not sampled then."""
        if series.last_tick != self.tick:
            return None
        return series.last

    def points(self, series: Series, start: float, end: float) -> list[tuple[float, float]]:
        """Samples with ``start < t <= end``, oldest first, without stale markers or absent slots.

        (Range vectors in Prometheus never contain staleness markers.)
        """
        out: list[tuple[float, float]] = []
        if self.tick < 0:
            return out
        cap = self.capacity
        ts = self._ts
        first = max(0, self.tick - cap + 1)
        k = self.tick  # walk back from the newest tick; ticks after last_tick read as stale
        vals = series.values
        last = series.last_tick
        while k >= first:
            t = ts[k % cap]
            if t <= start:
                break
            if t <= end and k <= last:
                v = vals[k % cap]
                if v == v or not (is_stale(v) or is_absent(v)):
                    out.append((t, v))
            k -= 1
        out.reverse()
        return out

    def tick_window(self, start: float, end: float) -> tuple[int, int]:
        """Indices ``(first, last)`` of the retained ticks with ``start < t <= end`` (first > last: none).

        A series' value at tick ``k`` is ``series.values[k % capacity]`` when ``k <= series.last_tick``.
        """
        cap = self.capacity
        ts = self._ts
        lo, hi = max(0, self.tick - cap + 1), self.tick + 1
        while lo < hi:
            mid = (lo + hi) // 2
            if ts[mid % cap] <= start:
                lo = mid + 1
            else:
                hi = mid
        first = lo
        hi = self.tick + 1
        while lo < hi:
            mid = (lo + hi) // 2
            if ts[mid % cap] <= end:
                lo = mid + 1
            else:
                hi = mid
        return first, lo - 1

    def tick_times(self, first: int, last: int) -> list[float]:
        """Timestamps of ticks ``first..last`` (retained ticks only)."""
        if last < first:
            return []
        cap = self.capacity
        a, b = first % cap, last % cap
        if a <= b:
            return self._ts[a : b + 1].tolist()
        return self._ts[a:].tolist() + self._ts[: b + 1].tolist()

    def tick_time(self, k: int) -> float:
        """Timestamp of retained tick ``k``."""
        return self._ts[k % self.capacity]

    def marks(self, series: Series) -> tuple[int, int]:
        """``(nan, drop)``: the newest retained ticks, up to the series' last sample, whose value is a NaN (any:
        stale, absent or a real NaN) and whose value is below the previous tick's; -1 for none.

        A window of ticks ``first..last`` then holds only numbers when ``nan < first``, and never decreases
        when also ``drop <= first``. Closed ticks never change, so they are summarized once per series
        (cached on it); the open tick, which may still be written, is looked at on every call.
        """
        tick = self.tick
        last = series.last_tick
        done, nan, drop = series.marks
        end = min(last, tick - 1)
        if done < end:
            cap = self.capacity
            vals = series.values
            first = max(0, tick - cap + 1)  # oldest retained tick
            start = done + 1
            if start <= first:
                start, prev = first, math.nan  # a decrease from an unretained tick concerns no window
            else:
                prev = vals[(start - 1) % cap]
            a, b = start % cap, end % cap
            new = vals[a : b + 1].tolist() if a <= b else vals[a:].tolist() + vals[: b + 1].tolist()
            total = sum(new)
            # C-speed check first (no NaN, never decreasing); walk the ticks only when it fails
            if not (total == total and not new[0] < prev and new == sorted(new)):
                for k, v in enumerate(new, start):
                    if v != v:
                        nan = k
                    elif v < prev:
                        drop = k
                    prev = v
            series.marks = (end, nan, drop)
        if last == tick:
            cap = self.capacity
            v = series.values[tick % cap]
            if v != v:
                return tick, drop
            if v < series.values[(tick - 1) % cap]:
                return nan, tick
        return nan, drop

    def instant(self, series: Series, t: float, lookback: float = 300.0) -> tuple[float, float] | None:
        """Prometheus instant-vector lookup: the newest sample in ``(t - lookback, t]`` unless stale."""
        cap = self.capacity
        ts = self._ts
        first = max(0, self.tick - cap + 1)
        k = self.tick
        last = series.last_tick
        vals = series.values
        while k >= first:
            tk = ts[k % cap]
            if tk <= t - lookback:
                return None
            if tk <= t:
                if k > last:
                    return None  # newest sample at or before t is a staleness marker
                v = vals[k % cap]
                if v != v:
                    if is_stale(v):
                        return None
                    if is_absent(v):
                        k -= 1
                        continue
                return tk, v
            k -= 1
        return None


@runtime_checkable
class SeriesSource(Protocol):
    """Required: what the PromQL engine and the rule engine read from a store. :class:`Store` has it; a reader
    with only this (the tests' and the benchmark's ``PlainStore``) gets the generic, uncached paths."""

    by_name: Mapping[str, Mapping[Labels, Series]]

    def family(self, name: str) -> Mapping[Labels, Series]:
        """Required. The series of metric ``name`` by label tuple (empty when none)."""
        ...

    def points(self, series: Series, start: float, end: float) -> list[tuple[float, float]]:
        """Required. ``(t, v)`` of the series with ``start < t <= end``, staleness markers dropped."""
        ...

    def instant(self, series: Series, t: float, lookback: float = 300.0) -> tuple[float, float] | None:
        """Required. The newest sample in ``(t - lookback, t]`` unless it is stale."""
        ...


@runtime_checkable
class VersionedSource(SeriesSource, Protocol):
    """Optional: a series-set version, bumped whenever a series is added or dropped; PromQL selectors cache
    their selection per version (the tests' ``SampleStore`` has it without the ring fast paths)."""

    version: int


@runtime_checkable
class RingSource(VersionedSource, Protocol):
    """Optional fast paths of a store whose ticks are shared by every series (:class:`Store`): PromQL caches a
    selection per ``version``, finds a window's ticks once for all series (``tick_window``, ``tick_times``),
    skips NaN scans with ``marks``, and the rule engine writes ``ALERTS`` only into the open tick (``tick``,
    ``now``). Test for it with ``isinstance(store, RingSource)`` once per evaluation, not per series."""

    capacity: int
    tick: int

    @property
    def now(self) -> float:
        """Optional. Timestamp of the open tick."""
        ...

    def tick_window(self, start: float, end: float) -> tuple[int, int]:
        """Optional. Indices ``(first, last)`` of the retained ticks with ``start < t <= end``."""
        ...

    def tick_times(self, first: int, last: int) -> list[float]:
        """Optional. Timestamps of ticks ``first..last``."""
        ...

    def marks(self, series: Series) -> tuple[int, int]:
        """Optional. ``(nan, drop)``: the newest ticks holding a NaN and a decrease (-1 for none)."""
        ...


_KINDS: dict[type, tuple[bool, bool]] = {}


def source_kind(store: object) -> tuple[bool, bool]:
    """``(isinstance(store, VersionedSource), isinstance(store, RingSource))``, checked once per store class.

    An isinstance check against a runtime-checkable Protocol costs tens of microseconds (it looks up every
    member), too much per selector evaluation; the answer is cached by class, since every instance of a reader
    class has the same members (data members are set in ``__init__``)."""
    cls = store.__class__
    kind = _KINDS.get(cls)
    if kind is None:
        kind = _KINDS[cls] = (isinstance(store, VersionedSource), isinstance(store, RingSource))
    return kind


def is_ring(store: object) -> bool:
    """``isinstance(store, RingSource)``, cached per class (:func:`source_kind`)."""
    kind = _KINDS.get(store.__class__)
    return (kind if kind is not None else source_kind(store))[1]
