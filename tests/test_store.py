"""Store: ring buffers, staleness, lookback, compressed chunks."""

import math
import struct
from array import array

from hypothesis import given, settings
from hypothesis import strategies as st

from agent.core.metrics import Sample
from agent.engine.store import ABSENT_NAN, STALE_NAN, Store, decode_chunk, encode_chunk

L = (("device", "sda"),)


def fill(store: Store, rows: list[tuple[float, float | None]]) -> None:
    for t, v in rows:
        store.begin_tick(t)
        if v is not None:
            store.add([Sample("m", L, v)])


def test_instant_lookback_and_staleness():
    s = Store(retention=600, interval=10)
    fill(s, [(10, 1.0), (20, 2.0), (30, None), (40, 4.0)])
    series = s.family("m")[L]
    assert s.instant(series, 20) == (20, 2.0)
    assert s.instant(series, 25) == (20, 2.0)
    assert s.instant(series, 30) is None  # disappeared at 30: stale
    assert s.instant(series, 40) == (40, 4.0)
    assert s.points(series, 0, 40) == [(10, 1.0), (20, 2.0), (40, 4.0)]
    assert s.points(series, 10, 30) == [(20, 2.0)]


def test_absent_is_skipped_not_stale():
    s = Store(retention=600, interval=10)
    fill(s, [(10, 1.0), (20, ABSENT_NAN)])
    series = s.family("m")[L]
    assert s.instant(series, 20) == (10, 1.0)
    assert s.points(series, 0, 20) == [(10, 1.0)]


def test_lookback_limit_and_ring_wrap():
    s = Store(retention=60, interval=10)  # capacity 7 ticks
    fill(s, [(10 * i, float(i)) for i in range(1, 30)])
    series = s.family("m")[L]
    assert s.points(series, 0, 290) == [(10.0 * i, float(i)) for i in range(23, 30)]
    assert s.instant(series, 290, lookback=5) == (290, 29.0)
    assert s.latest(series) == 29.0


def test_new_series_has_no_history_and_gc_drops_old():
    s = Store(retention=60, interval=10)
    fill(s, [(10, 1.0), (20, 2.0)])
    s.begin_tick(30)
    s.add([Sample("n", L, 5.0)])
    assert s.points(s.family("n")[L], 0, 30) == [(30, 5.0)]
    for t in range(40, 200, 10):
        s.begin_tick(t)
        s.add([Sample("n", L, 5.0)])
    assert s.gc() == 1
    assert "m" not in s.by_name and s.series_count() == 1


# -- compressed chunks: the store must read back exactly what a plain ring would hold ---------------------------

def bits(v: float) -> int:
    return struct.unpack("<Q", struct.pack("<d", v))[0]


VALUES = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(-(2**53), 2**53).map(float),
    st.sampled_from([0.0, -0.0, 1.0, 65.0, STALE_NAN, ABSENT_NAN, math.nan, 1e300]),
)


@given(st.lists(VALUES, min_size=16, max_size=16) | st.just([7.5] * 16) | st.just([STALE_NAN] * 16))
def test_chunk_codec_is_bit_exact(vals):
    data = encode_chunk(array("d", vals))
    assert len(data) <= 8 * len(vals)
    assert [bits(v) for v in decode_chunk(data, len(vals))] == [bits(v) for v in vals]


def test_chunks_compress_what_repeats_and_keep_what_does_not():
    assert len(encode_chunk(array("d", [3.0] * 120))) == 8  # constant: one value
    assert len(encode_chunk(array("d", [1e6 + k for k in range(120)]))) < 120  # a counter going up by one
    noise = array("d", [math.sin(k * 1.7) * 1e-3 + k / 7 for k in range(120)])
    assert len(encode_chunk(noise)) <= 960  # never larger than raw


# A write pattern: per tick, for each of 3 series, a value or None (no sample that tick).
PATTERN = st.lists(st.lists(st.one_of(st.none(), VALUES), min_size=3, max_size=3), min_size=1, max_size=120)


@settings(max_examples=200, deadline=None)
@given(PATTERN, st.sampled_from([4, 5, 8]), st.lists(st.integers(0, 119), max_size=6))
def test_compressed_store_reads_like_a_plain_ring(ticks, chunk, read_at):
    """Every read (instant, points, the ring, latest) equals a reference history kept in plain lists, whatever
    the chunk size, the gaps, the NaN payloads, and whether a series' ring was decoded early (then kept current
    by writes), dropped for lack of readers, or decoded again from the chunks."""
    store = Store(retention=20, interval=1, chunk=chunk)  # capacity 21: rings wrap, chunks expire
    names = [(("s", str(i)),) for i in range(3)]
    history: dict[tuple, dict[int, float]] = {n: {} for n in names}
    markers = (bits(STALE_NAN), bits(ABSENT_NAN))
    for k, row in enumerate(ticks):
        t = 100.0 + k
        store.begin_tick(t)
        store.add([Sample("m", n, v) for n, v in zip(names, row, strict=True) if v is not None])
        for n, v in zip(names, row, strict=True):
            if v is not None:
                history[n][k] = v
        first = max(0, k - store.capacity + 1)
        for n, s in store.family("m").items():
            h = history[n]
            got_latest = store.latest(s)
            assert (got_latest is None) == (k not in h)
            if got_latest is not None:
                assert bits(got_latest) == bits(h[k])
            if k not in read_at and k != len(ticks) - 1:
                continue  # unread: the ring (if any) goes at the series' next seal
            ring = s.values
            for j in range(first, min(k, s.last_tick) + 1):
                assert bits(ring[j % store.capacity]) == bits(h.get(j, STALE_NAN)), (j, k)
            pts = store.points(s, 99.0, t)
            want_pts = [(100.0 + j, v) for j, v in sorted(h.items()) if j >= first and bits(v) not in markers]
            assert [(a, bits(b)) for a, b in pts] == [(a, bits(b)) for a, b in want_pts]


def test_unread_series_stay_compressed_and_read_rings_are_dropped_when_unused():
    store = Store(retention=900, interval=1)  # capacity 901, chunks of 112 ticks
    for k in range(600):
        store.begin_tick(1000.0 + k)
        store.add([Sample("m", (("i", str(i)),), float(k + i)) for i in range(50)])
    plain = 50 * (901 * 8 + 480)  # what one uncompressed ring per series held
    assert store.stats()["rings"] == 0
    assert store.nbytes() < plain / 2
    s = store.family("m")[(("i", "3"),)]
    assert store.points(s, 1000.0 + 500, 1000.0 + 599) == [(1000.0 + k, float(k + 3)) for k in range(501, 600)]
    assert store.stats()["rings"] == 1
    for k in range(600, 600 + 2 * store.chunk + 1):  # nobody reads it for two seals: the ring goes
        store.begin_tick(1000.0 + k)
        store.add([Sample("m", (("i", str(i)),), float(k + i)) for i in range(50)])
    assert store.stats()["rings"] == 0
    assert store.instant(s, 1000.0 + k) == (1000.0 + k, float(k + 3))
