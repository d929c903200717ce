"""Store: ring buffers, staleness, lookback."""

from agent.core.metrics import Sample
from agent.engine.store import ABSENT_NAN, Store

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
