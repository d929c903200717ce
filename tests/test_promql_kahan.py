"""The fast Kahan-sum paths of agent.engine.promql.functions equal Prometheus' loops bit for bit.

The reference below is promql/functions.go (2.42) kahanSumInc / linearRegression transcribed literally; the
engine's fast paths (sum() on Python >= 3.12, an exactness certificate + math.fsum on 3.11) must return the
same bits on seeded random and adversarial inputs, including those where math.fsum alone would differ.
"""

from __future__ import annotations

import math
import random
import struct

import pytest

from agent.engine.promql.functions import kahan, over_time, regression
from agent.engine.promql.values import go_div, ms


def kahan_inc(inc: float, total: float, c: float) -> tuple[float, float]:
    t = total + inc
    if abs(total) >= abs(inc):
        c += (total - t) + inc
    else:
        c += (inc - t) + total
    return t, c


def ref_sum_over_time(vals: list[float]) -> float:
    total = c = 0.0
    for v in vals:
        total, c = kahan_inc(v, total, c)
    return total if math.isinf(total) else total + c


def ref_linear_regression(times: list[float], vals: list[float], intercept_ms: int) -> tuple[float, float]:
    n = sum_x = c_x = sum_y = c_y = sum_xy = c_xy = sum_x2 = c_x2 = 0.0
    init_y = vals[0]
    const_y = True
    for i, (t, v) in enumerate(zip(times, vals, strict=True)):
        if const_y and i > 0 and v != init_y:
            const_y = False
        n += 1.0
        x = (round(t * 1000) - intercept_ms) / 1e3
        sum_x, c_x = kahan_inc(x, sum_x, c_x)
        sum_y, c_y = kahan_inc(v, sum_y, c_y)
        sum_xy, c_xy = kahan_inc(x * v, sum_xy, c_xy)
        sum_x2, c_x2 = kahan_inc(x * x, sum_x2, c_x2)
    if const_y:
        return (math.nan, math.nan) if math.isinf(init_y) else (0.0, init_y)
    sum_x, sum_y, sum_xy, sum_x2 = sum_x + c_x, sum_y + c_y, sum_xy + c_xy, sum_x2 + c_x2
    cov_xy = sum_xy - sum_x * sum_y / n
    var_x = sum_x2 - sum_x * sum_x / n
    slope = go_div(cov_xy, var_x)  # IEEE division
    return slope, sum_y / n - slope * sum_x / n


def ref_stdvar_over_time(vals: list[float]) -> float:
    count = mean = c_mean = aux = c_aux = 0.0
    for v in vals:
        count += 1
        delta = v - (mean + c_mean)
        mean, c_mean = kahan_inc(delta / count, mean, c_mean)
        aux, c_aux = kahan_inc(delta * (v - (mean + c_mean)), aux, c_aux)
    return (aux + c_aux) / count


def ref_avg_over_time(vals: list[float]) -> float:
    mean = count = c = 0.0
    for v in vals:
        count += 1
        if math.isinf(mean):
            if math.isinf(v) and (mean > 0) == (v > 0):
                continue
            if not math.isinf(v) and not math.isnan(v):
                continue
        mean, c = kahan_inc(v / count - mean / count, mean, c)
    return mean if math.isinf(mean) else mean + c


def bits(v: float) -> int:
    return struct.unpack("<Q", struct.pack("<d", v))[0] if v == v else -1  # every NaN alike


def values(rng: random.Random, n: int) -> list[float]:
    vals = _values(rng, n)
    return [v if v == v else float("nan") for v in vals]  # distinct NaN objects, as the store's reads give


def _values(rng: random.Random, n: int) -> list[float]:
    kind = rng.randrange(11)
    if kind == 0:
        return [rng.uniform(-1e6, 1e6) for _ in range(n)]
    if kind == 1:
        phase = rng.random()
        return [50 + 40 * math.sin(k / 60 + phase) for k in range(n)]
    if kind == 2:
        return [float(rng.randint(0, 2**40)) for _ in range(n)]
    if kind == 3:
        return [rng.choice([1e16, -1e16, 1.0, -1.0, 3.5, 1e-3, 0.0, -0.0]) for _ in range(n)]
    if kind == 4:
        return [rng.uniform(0, 1) * 10 ** rng.randint(-30, 30) for _ in range(n)]
    if kind == 5:
        return [2e12 - k * 1e6 + rng.randint(-5000, 5000) for k in range(n)]
    if kind == 6:
        return [rng.choice([1e308, -1e308, 1.7e308, math.inf, -math.inf, math.nan, 1.0, 5e-324]) for _ in range(n)]
    if kind == 7:
        return [rng.choice([0.1, 0.2, 0.3, 0.7]) * rng.choice([1, -1]) for _ in range(n)]
    if kind == 8:
        return [k * 0.001 * (1 + rng.random()) for k in range(n)]
    if kind == 9:
        return [rng.choice([1.0, 2.0**-60, -(2.0**-61), 2.0**53, 3.0 * 2.0**-100]) for _ in range(n)]
    return [float(k // 7) for k in range(n)]


@pytest.mark.parametrize("seed", range(6))
def test_fast_paths_equal_prometheus_loops(seed: int) -> None:
    rng = random.Random(seed)
    for _ in range(400):
        n = rng.choice([2, 3, 5, 30, 61, 301, 601, 1000])
        vals = values(rng, n)
        clean = not any(v != v for v in vals)
        assert bits(over_time.sum_over_time(vals, clean)) == bits(ref_sum_over_time(vals)), vals
        assert bits(over_time.stdvar_over_time(vals, clean)) == bits(ref_stdvar_over_time(vals)), vals
        assert bits(over_time.avg_over_time(vals, clean)) == bits(ref_avg_over_time(vals)), vals
        t0 = 1.7e9 + rng.choice([0, 0.001, 0.123])
        step = rng.choice([1.0, 5.0, 15.0, 1.001])
        times = [round(t0 + k * step + rng.choice([0, 0, 0.001, -0.002]), 3) for k in range(n)]
        t = times[-1] + rng.choice([0, 0.5, 17.25])
        want = ref_linear_regression(times, vals, ms(t))
        got = regression.linear_regression(times, vals, ms(t), regression.x_sums(times, ms(t)))
        assert [bits(v) for v in got] == [bits(v) for v in want], (vals, times, t)
        got = regression.linear_regression(times, vals, ms(t), regression.x_sums(times, ms(t)), clean)
        assert [bits(v) for v in got] == [bits(v) for v in want], (vals, times, t, clean)
        want = ref_linear_regression(times, vals, ms(times[0]))
        assert bits(regression.deriv(times, vals)) == bits(want[0]), (vals, times)


def test_certificate_declines_where_fsum_differs() -> None:
    """Inputs whose Kahan result is not the correctly rounded sum: the fast path must still match the loop."""
    rng = random.Random(7)
    found = 0
    for _ in range(5000):
        vals = [
            rng.choice([2.0**60, -(2.0**60), 1.0, 3.0, 2.0**-45 * 3, 0.1, 1e-20, 7e-10])
            * rng.choice([1, 1.5, 1.25, 1.0000001])
            for _ in range(rng.randint(2, 40))
        ]
        want = ref_sum_over_time(vals)
        if bits(math.fsum(vals) + 0.0) == bits(want):
            continue
        found += 1
        assert bits(over_time.sum_over_time(vals, True)) == bits(want)
        if not kahan.NEUMAIER_SUM:
            assert kahan.exact_kahan_sum(vals, len(vals), kahan.span(vals)) is None
    assert found > 0


def test_certificate_accepts_typical_series() -> None:
    """The fast path covers the usual shapes (bytes, temperatures, a 10 m window of 1 s samples)."""
    n = 601
    for vals in ([2e12 - k * 1e6 for k in range(n)], [50 + 40 * math.sin(k / 60) for k in range(n)]):
        assert kahan.exact_kahan_sum(vals, n, kahan.span(vals)) == ref_sum_over_time(vals)
    assert kahan.span([0.0, -0.0]) is None
    assert kahan.span([-3.0, 0.0, 0.25, 8.0]) == (4, -2)
