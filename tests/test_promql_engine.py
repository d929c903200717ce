"""Engine properties not covered by the promtool corpus: the Store fast paths (ring wrap-around, selection
cache invalidation) agree with the generic path over the public Store API, and results are fresh objects."""

from __future__ import annotations

import math
from typing import Any

import pytest

from agent.core.metrics import Sample
from agent.engine.promql import Scalar, Vector, compile_expr
from agent.engine.store import ABSENT_NAN, Store

EXPRS = [
    "m",
    "m offset 7s",
    "rate(m[30s])",
    "increase(c[45s])",
    "irate(c[20s])",
    "delta(m[30s])",
    "idelta(m[10s])",
    "deriv(m[40s])",
    "predict_linear(m[40s], 60)",
    "changes(m[50s])",
    "resets(c[50s])",
    "avg_over_time(m[30s])",
    "sum_over_time(c[30s])",
    "min_over_time(m[30s])",
    "max_over_time(m[30s])",
    "count_over_time(m[59s])",
    "last_over_time(m[30s])",
    "quantile_over_time(0.3, m[30s])",
    "stddev_over_time(m[30s])",
    "stdvar_over_time(m[30s])",
    "absent_over_time(m[5s])",
    "timestamp(m)",
    "max_over_time(m[30s]) - min_over_time(m[30s])",
    "m @ 1150.5",
    "m offset -3s @ end()",
    "rate(c[30s] @ 1170)",
    "irate(c[20s] @ start())",
    "timestamp(m @ 1160.25)",
    "max_over_time(rate(c[20s])[40s:5s])",
    "avg_over_time(m[30s:3s] offset 2s)",
    "sum_over_time(deriv(m[10s])[20s:] @ 1180)",
    "present_over_time(m[3s:1s])",
    "holt_winters(m[30s], 0.3, 0.6)",
    "max_over_time(predict_linear(m[10s] @ 1150, 5)[30s:5s])",
    "sum_over_time((m @ 1160)[20s:2s] @ 1180)",
    "count_over_time((rate(c[10s] @ end()) + m)[20s:3s] offset 2s)",
    'histogram_quantile(0.9, label_replace(m, "le", "$1", "i", "(.*)"))',
]


class PlainStore:
    """Only Store's documented reading API: forces the engine's generic (uncached, unshortcut) path."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self.by_name = store.by_name

    def family(self, name: str) -> Any:
        return self._store.family(name)

    def points(self, series: Any, start: float, end: float) -> Any:
        return self._store.points(series, start, end)

    def instant(self, series: Any, t: float, lookback: float = 300.0) -> Any:
        return self._store.instant(series, t, lookback)


def _build() -> Store:
    """60 s of 1 s ring, 200 ticks (so windows wrap the ring), with gaps, resets, NaN and absent slots."""
    store = Store(retention=60, interval=1)
    for k in range(200):
        store.begin_tick(1000.0 + k + (0.25 if k % 3 == 0 else 0.0))
        samples = []
        for i in range(4):
            labels = (("i", str(i)),)
            if i == 1 and 80 <= k % 100 < 90:
                continue  # disappears: stale
            v = (k * (i + 1)) % 37 if i != 2 else 5.0 * math.sin(k / 7)
            if i == 3 and k % 11 == 0:
                v = math.nan
            if i == 0 and k % 13 == 0:
                v = ABSENT_NAN
            samples.append(Sample("m", labels, float(v)))
            samples.append(Sample("c", labels, float((k * 3 + i) % 50)))  # counter with resets
        store.add(samples)
    return store


def _canon(result: Vector | Scalar) -> list:
    if isinstance(result, Scalar):
        return [((), "nan" if math.isnan(result.value) else result.value)]
    return sorted((tuple(sorted(labels.items())), "nan" if v != v else v) for labels, v in result)


@pytest.mark.parametrize("expr", EXPRS)
def test_fast_paths_match_generic_path(expr: str) -> None:
    store = _build()
    plain = PlainStore(store)
    fast_q, slow_q = compile_expr(expr), compile_expr(expr)
    for t in (store.now, store.now - 0.5, store.now - 17, store.now - 40.25, store.now + 3):
        assert _canon(fast_q.eval(store, t)) == _canon(slow_q.eval(plain, t)), (expr, t)


def test_selection_cache_follows_series_set() -> None:
    store = Store(retention=30, interval=1)
    q = compile_expr('m{i=~"a|b"}')
    store.begin_tick(1.0)
    store.add([Sample("m", (("i", "a"),), 1.0)])
    assert [lb["i"] for lb, _ in q.eval(store, 1.0)] == ["a"]
    store.begin_tick(2.0)
    store.add([Sample("m", (("i", "a"),), 1.0), Sample("m", (("i", "b"),), 2.0)])
    assert sorted(lb["i"] for lb, _ in q.eval(store, 2.0)) == ["a", "b"]
    for k in range(3, 40):
        store.begin_tick(float(k))
        store.add([Sample("m", (("i", "b"),), 2.0)])
    assert store.gc() == 1
    assert [lb["i"] for lb, _ in q.eval(store, 39.0)] == ["b"]


def test_results_are_fresh_objects() -> None:
    store = Store(retention=30, interval=1)
    store.begin_tick(1.0)
    store.add([Sample("m", (("i", "a"),), 1.0)])
    q = compile_expr("m")
    first = q.eval(store, 1.0)
    first[0][0]["i"] = "mutated"
    assert q.eval(store, 1.0) == [({"__name__": "m", "i": "a"}, 1.0)]
    assert isinstance(first, Vector) and isinstance(first, list)
    assert compile_expr("scalar(m) * 2").eval(store, 1.0) == Scalar(2.0)


def test_fused_multiply_add_rounds_once() -> None:
    import random
    from fractions import Fraction

    from agent.engine.promql.values import _fma

    rng = random.Random(7)
    for _ in range(3000):
        a = rng.uniform(-10, 10) * 10 ** rng.randint(-30, 30)
        b = rng.uniform(-10, 10) * 10 ** rng.randint(-30, 30)
        c = rng.choice([rng.uniform(-10, 10) * 10 ** rng.randint(-60, 60), -a * b, a * b * (1 + 2**-52)])
        assert _fma(a, b, c) == float(Fraction(a) * Fraction(b) + Fraction(c)), (a, b, c)


def test_empty_store() -> None:
    store = Store(retention=60, interval=1)
    assert compile_expr("x").eval(store, 100.0) == []
    assert compile_expr("rate(x[5m])").eval(store, 100.0) == []
    assert compile_expr("absent(x)").eval(store, 100.0) == [({}, 1.0)]
    assert compile_expr("absent_over_time(x[1m])").eval(store, 100.0) == [({}, 1.0)]
    assert compile_expr("count(x) or vector(0)").eval(store, 100.0) == [({}, 0.0)]
    assert math.isnan(compile_expr("scalar(x)").eval(store, 100.0).value)


def test_fast_paths_match_generic_path_while_ticking() -> None:
    """Evaluating every tick (the store's per-series summaries grow incrementally) and re-evaluating after a
    later write into the open tick (a NaN, a counter decrease) gives the generic path's results."""
    store = Store(retention=40, interval=1)
    plain = PlainStore(store)
    exprs = [
        "rate(c[20s])",
        "increase(c[35s])",
        "delta(m[15s])",
        "irate(c[9s])",
        "idelta(m[5s])",
        "sum_over_time(m[9s])",
    ]
    pairs = [(compile_expr(e), compile_expr(e)) for e in exprs]
    for k in range(130):
        t = 500.0 + k + (0.5 if k % 4 == 0 else 0.0)
        store.begin_tick(t)
        samples = []
        for i in range(3):
            labels = (("i", str(i)),)
            if i == 1 and 50 <= k < 57:
                continue  # gap: stale
            samples.append(Sample("c", labels, float((k * (i + 2)) % 41)))
            samples.append(Sample("m", labels, math.nan if i == 2 and k % 17 == 0 else float(k % 9 - i)))
        store.add(samples)
        if k % 7 in (2, 3):
            continue  # not evaluated every tick: summaries then catch up over several ticks
        for fast_q, slow_q in pairs:
            assert _canon(fast_q.eval(store, t)) == _canon(slow_q.eval(plain, t)), (fast_q, k)
        if k % 10 == 4:  # a later write into the open tick: a decrease, a NaN, an absent slot
            store.add([Sample("c", (("i", "0"),), -1.0), Sample("m", (("i", "0"),), math.nan)])
            store.add([Sample("c", (("i", "2"),), ABSENT_NAN)])
            for fast_q, slow_q in pairs:
                assert _canon(fast_q.eval(store, t)) == _canon(slow_q.eval(plain, t)), (fast_q, k, "rewritten")


@pytest.mark.parametrize(
    "values",
    [[-0.0, 0.0, -1.0], [0.0, -0.0, -1.0], [0.0, -0.0, 1.0], [-0.0, 0.0, 1.0], [3.0, 1.0, 3.0], [2.0, math.nan, 5.0]],
)
def test_min_max_of_a_shared_window_keep_the_first_extreme(values: list[float]) -> None:
    """min/max_over_time over a selector used twice in one query (sorted once) return the same bits as alone."""
    store = Store(retention=60, interval=1)
    for k, v in enumerate(values):
        store.begin_tick(100.0 + k)
        store.add([Sample("m", (("i", "a"),), v)])
    t = store.now
    for fn_name in ("max_over_time", "min_over_time"):
        alone = compile_expr(f"{fn_name}(m[1m])").eval(store, t)
        shared = compile_expr(f"{fn_name}(m[1m]) or max_over_time(m[1m]) - min_over_time(m[1m])").eval(store, t)
        (_, want), (_, got) = alone[0], shared[0]
        assert math.copysign(1.0, got) == math.copysign(1.0, want) and (got == want or (got != got and want != want))
