"""PromQL function implementations (Prometheus 2.42 semantics) over plain Python lists.

Range functions take a series' samples in the window as parallel lists ``times`` (seconds) and ``vals``
(oldest first, never empty) and return a value or None (no output sample). ``clean`` says that ``vals``
holds no NaN, which enables C-speed shortcuts that give bit-identical results. Timestamps are converted to
integer milliseconds where Prometheus computes with them, so results match bit for bit.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable

from agent.promql.values import go_div

_EXACT = 2.0**53
Times = list[float]
Values = list[float]


def ms(t: float) -> int:
    """Seconds to Prometheus' integer milliseconds."""
    return round(t * 1000)


def kahan_inc(inc: float, total: float, c: float) -> tuple[float, float]:
    """One step of Kahan-Neumaier summation (promql kahanSumInc)."""
    t = total + inc
    if abs(total) >= abs(inc):
        c += (total - t) + inc
    else:
        c += (inc - t) + total
    return t, c


def counter_correction(vals: Values, clean: bool) -> float:
    """Sum of the values before each counter reset (a decrease). ``clean``: no NaN in ``vals``."""
    if clean and vals == sorted(vals):
        return 0.0  # non-decreasing: no reset (sorting a sorted list is a linear C loop)
    correction = 0.0
    prev = vals[0]
    for v in vals:
        if v < prev:
            correction += prev
        prev = v
    return correction


def extrapolated_rate(
    times: Times,
    vals: Values,
    clean: bool,
    range_start: float,
    range_end: float,
    range_s: float,
    is_counter: bool,
    is_rate: bool,
) -> float | None:
    """rate / increase / delta (promql/functions.go extrapolatedRate as of 2.42)."""
    if len(vals) < 2:
        return None
    first_v = vals[0]
    result = vals[-1] - first_v
    if is_counter:
        result += counter_correction(vals, clean)
    first_t = ms(times[0])
    last_t = ms(times[-1])
    duration_to_start = (first_t - ms(range_start)) / 1000
    duration_to_end = (ms(range_end) - last_t) / 1000
    sampled = (last_t - first_t) / 1000
    avg_between = sampled / (len(vals) - 1)
    if is_counter and result > 0 and first_v >= 0:
        duration_to_zero = sampled * (first_v / result)
        if duration_to_zero < duration_to_start:
            duration_to_start = duration_to_zero
    threshold = avg_between * 1.1
    interval = sampled
    interval += duration_to_start if duration_to_start < threshold else avg_between / 2
    interval += duration_to_end if duration_to_end < threshold else avg_between / 2
    factor = go_div(interval, sampled)
    if is_rate:
        factor /= range_s
    return result * factor


def instant_value(times: Times, vals: Values, is_rate: bool) -> float | None:
    """irate / idelta."""
    if len(vals) < 2:
        return None
    pv, lv = vals[-2], vals[-1]
    result = lv if is_rate and lv < pv else lv - pv
    interval = ms(times[-1]) - ms(times[-2])
    if interval == 0:
        return None
    if is_rate:
        result /= interval / 1000
    return result


def x_sums(times: Times, intercept_ms: int) -> tuple[list[float], float, float]:
    """x values (seconds from the intercept) and their Kahan sums of x and x*x, shared by series on one grid."""
    xs = [(round(t * 1000) - intercept_ms) / 1e3 for t in times]
    sx = cx = sx2 = cx2 = 0.0
    for x in xs:
        sx, cx = kahan_inc(x, sx, cx)
        sx2, cx2 = kahan_inc(x * x, sx2, cx2)
    return xs, sx + cx, sx2 + cx2


def linear_regression(
    times: Times, vals: Values, intercept_ms: int, xsums: tuple[list[float], float, float] | None = None
) -> tuple[float, float]:
    """Least-squares slope and intercept with x in seconds from ``intercept_ms`` (Kahan sums, as Prometheus)."""
    init_y = vals[0]
    if vals.count(init_y) == len(vals):  # constant y (a NaN never equals itself, as in Go)
        if math.isinf(init_y):
            return math.nan, math.nan
        return 0.0, init_y
    xs, sum_x, sum_x2 = xsums if xsums is not None else x_sums(times, intercept_ms)
    n = float(len(vals))
    sy = cy = sxy = cxy = 0.0
    for x, v in zip(xs, vals, strict=True):
        t = sy + v
        if abs(sy) >= abs(v):
            cy += (sy - t) + v
        else:
            cy += (v - t) + sy
        sy = t
        p = x * v
        t = sxy + p
        if abs(sxy) >= abs(p):
            cxy += (sxy - t) + p
        else:
            cxy += (p - t) + sxy
        sxy = t
    sum_y = sy + cy
    sum_xy = sxy + cxy
    cov_xy = sum_xy - sum_x * sum_y / n
    var_x = sum_x2 - sum_x * sum_x / n
    slope = go_div(cov_xy, var_x)
    intercept = sum_y / n - slope * sum_x / n
    return slope, intercept


def deriv(times: Times, vals: Values, xsums: tuple[list[float], float, float] | None = None) -> float | None:
    if len(vals) < 2:
        return None
    return linear_regression(times, vals, ms(times[0]), xsums)[0]


def predict_linear(
    times: Times, vals: Values, t: float, duration: float, xsums: tuple[list[float], float, float] | None = None
) -> float | None:
    if len(vals) < 2:
        return None
    slope, intercept = linear_regression(times, vals, ms(t), xsums)
    return slope * duration + intercept


def changes(vals: Values, clean: bool) -> float:
    if clean:
        return float(sum(map(operator.ne, vals[1:], vals)))
    n = 0
    prev = vals[0]
    for v in vals[1:]:
        if not (v == prev or (v != v and prev != prev)):
            n += 1
        prev = v
    return float(n)


def resets(vals: Values, clean: bool) -> float:
    return float(sum(map(operator.lt, vals[1:], vals)))


def avg_over_time(vals: Values, clean: bool) -> float:
    """Prometheus' incremental mean with Kahan compensation."""
    mean = c = count = 0.0
    if clean and -math.inf < sum(vals) < math.inf:
        # finite values only: the Inf branches below cannot trigger unless the mean overflows
        for v in vals:
            count += 1.0
            inc = v / count - mean / count
            t = mean + inc
            if abs(mean) >= abs(inc):
                c += (mean - t) + inc
            else:
                c += (inc - t) + mean
            mean = t
        if not math.isinf(mean):
            return mean + c
        mean = c = count = 0.0
    inf = math.inf
    for v in vals:
        count += 1
        if mean == inf or mean == -inf:
            if (v == inf or v == -inf) and (mean > 0) == (v > 0):
                continue
            if v != inf and v != -inf and v == v:
                continue
        inc = v / count - mean / count
        t = mean + inc
        if abs(mean) >= abs(inc):
            c += (mean - t) + inc
        else:
            c += (inc - t) + mean
        mean = t
    return mean if math.isinf(mean) else mean + c


def sum_over_time(vals: Values, clean: bool) -> float:
    if clean and len(vals) * max(map(abs, vals)) < _EXACT and all(map(float.is_integer, vals)):
        return float(sum(vals))  # integer sums below 2**53 are exact: Kahan's compensation stays 0
    total = c = 0.0
    for v in vals:
        t = total + v
        if abs(total) >= abs(v):
            c += (total - t) + v
        else:
            c += (v - t) + total
        total = t
    return total if math.isinf(total) else total + c


def min_over_time(vals: Values, clean: bool) -> float:
    if clean:
        return min(vals)
    m = vals[0]
    for v in vals:
        if v < m or m != m:
            m = v
    return m


def max_over_time(vals: Values, clean: bool) -> float:
    if clean:
        return max(vals)
    m = vals[0]
    for v in vals:
        if v > m or m != m:
            m = v
    return m


def stdvar_over_time(vals: Values, clean: bool) -> float:
    count = mean = c_mean = aux = c_aux = 0.0
    for v in vals:
        count += 1
        delta = v - (mean + c_mean)
        mean, c_mean = kahan_inc(delta / count, mean, c_mean)
        aux, c_aux = kahan_inc(delta * (v - (mean + c_mean)), aux, c_aux)
    return (aux + c_aux) / count


def stddev_over_time(vals: Values, clean: bool) -> float:
    var = stdvar_over_time(vals, clean)
    return math.sqrt(var) if var >= 0 else math.nan


def quantile(q: float, values: list[float]) -> float:
    """promql quantile(): NaN sorts first; linear interpolation between neighbours."""
    if not values:
        return math.nan
    if q < 0:
        return -math.inf
    if q > 1:
        return math.inf
    vals = sorted(values, key=lambda v: (v == v, v if v == v else 0.0))
    n = float(len(vals))
    rank = q * (n - 1)
    lower = max(0.0, math.floor(rank))
    upper = min(n - 1, lower + 1)
    weight = rank - math.floor(rank)
    return vals[int(lower)] * (1 - weight) + vals[int(upper)] * weight


SIMPLE_RANGE: dict[str, Callable[[Values, bool], float]] = {
    "avg_over_time": avg_over_time,
    "sum_over_time": sum_over_time,
    "min_over_time": min_over_time,
    "max_over_time": max_over_time,
    "count_over_time": lambda vals, clean: float(len(vals)),
    "last_over_time": lambda vals, clean: vals[-1],
    "stddev_over_time": stddev_over_time,
    "stdvar_over_time": stdvar_over_time,
    "changes": changes,
    "resets": resets,
}
