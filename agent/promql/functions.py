"""PromQL function implementations (Prometheus 2.42 semantics) over plain Python lists.

Range functions take the series' points ``[(t_seconds, value), ...]`` (oldest first, never empty) and
return a value or None (no output sample). Timestamps are converted to integer milliseconds where
Prometheus computes with them, so results match bit for bit.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from agent.promql.values import go_div

Points = list[tuple[float, float]]


def ms(t: float) -> int:
    """Seconds to Prometheus' integer milliseconds."""
    return round(t * 1000)


def extrapolated_rate(
    points: Points, range_start: float, range_end: float, range_s: float, is_counter: bool, is_rate: bool
) -> float | None:
    """rate / increase / delta (promql/functions.go extrapolatedRate as of 2.42)."""
    if len(points) < 2:
        return None
    first_v = points[0][1]
    last_v = points[-1][1]
    result = last_v - first_v
    if is_counter:
        prev = first_v
        for _, v in points:
            if v < prev:
                result += prev
            prev = v
    first_t = ms(points[0][0])
    last_t = ms(points[-1][0])
    duration_to_start = (first_t - ms(range_start)) / 1000
    duration_to_end = (ms(range_end) - last_t) / 1000
    sampled = (last_t - first_t) / 1000
    avg_between = sampled / (len(points) - 1)
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


def instant_value(points: Points, is_rate: bool) -> float | None:
    """irate / idelta."""
    if len(points) < 2:
        return None
    (pt, pv), (lt, lv) = points[-2], points[-1]
    result = lv if is_rate and lv < pv else lv - pv
    interval = ms(lt) - ms(pt)
    if interval == 0:
        return None
    if is_rate:
        result /= interval / 1000
    return result


def kahan_inc(inc: float, total: float, c: float) -> tuple[float, float]:
    """One step of Kahan-Neumaier summation (promql kahanSumInc)."""
    t = total + inc
    if abs(total) >= abs(inc):
        c += (total - t) + inc
    else:
        c += (inc - t) + total
    return t, c


def linear_regression(points: Points, intercept_ms: int) -> tuple[float, float]:
    """Least-squares slope and intercept with x in seconds relative to ``intercept_ms`` (Kahan sums)."""
    n = 0.0
    sum_x = c_x = sum_y = c_y = sum_xy = c_xy = sum_x2 = c_x2 = 0.0
    init_y = points[0][1]
    const_y = True
    for t, v in points:
        if const_y and v != init_y:
            const_y = False
        n += 1.0
        x = (ms(t) - intercept_ms) / 1e3
        sum_x, c_x = kahan_inc(x, sum_x, c_x)
        sum_y, c_y = kahan_inc(v, sum_y, c_y)
        sum_xy, c_xy = kahan_inc(x * v, sum_xy, c_xy)
        sum_x2, c_x2 = kahan_inc(x * x, sum_x2, c_x2)
    if const_y:
        if math.isinf(init_y):
            return math.nan, math.nan
        return 0.0, init_y
    sum_x += c_x
    sum_y += c_y
    sum_xy += c_xy
    sum_x2 += c_x2
    cov_xy = sum_xy - sum_x * sum_y / n
    var_x = sum_x2 - sum_x * sum_x / n
    slope = go_div(cov_xy, var_x)
    intercept = sum_y / n - slope * sum_x / n
    return slope, intercept


def deriv(points: Points) -> float | None:
    if len(points) < 2:
        return None
    return linear_regression(points, ms(points[0][0]))[0]


def predict_linear(points: Points, t: float, duration: float) -> float | None:
    if len(points) < 2:
        return None
    slope, intercept = linear_regression(points, ms(t))
    return slope * duration + intercept


def changes(points: Points) -> float:
    n = 0
    prev = points[0][1]
    for _, v in points[1:]:
        if not (v == prev or (v != v and prev != prev)):
            n += 1
        prev = v
    return float(n)


def resets(points: Points) -> float:
    n = 0
    prev = points[0][1]
    for _, v in points[1:]:
        if v < prev:
            n += 1
        prev = v
    return float(n)


def avg_over_time(points: Points) -> float:
    mean = c = count = 0.0
    for _, v in points:
        count += 1
        if math.isinf(mean):
            if math.isinf(v) and (mean > 0) == (v > 0):
                continue
            if not math.isinf(v) and v == v:
                continue
        mean, c = kahan_inc(v / count - mean / count, mean, c)
    return mean if math.isinf(mean) else mean + c


def sum_over_time(points: Points) -> float:
    total = c = 0.0
    for _, v in points:
        total, c = kahan_inc(v, total, c)
    return total if math.isinf(total) else total + c


def min_over_time(points: Points) -> float:
    m = points[0][1]
    for _, v in points:
        if v < m or m != m:
            m = v
    return m


def max_over_time(points: Points) -> float:
    m = points[0][1]
    for _, v in points:
        if v > m or m != m:
            m = v
    return m


def stdvar_over_time(points: Points) -> float:
    count = mean = c_mean = aux = c_aux = 0.0
    for _, v in points:
        count += 1
        delta = v - (mean + c_mean)
        mean, c_mean = kahan_inc(delta / count, mean, c_mean)
        aux, c_aux = kahan_inc(delta * (v - (mean + c_mean)), aux, c_aux)
    return (aux + c_aux) / count


def stddev_over_time(points: Points) -> float:
    var = stdvar_over_time(points)
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


SIMPLE_RANGE: dict[str, Callable[[Points], float]] = {
    "avg_over_time": avg_over_time,
    "sum_over_time": sum_over_time,
    "min_over_time": min_over_time,
    "max_over_time": max_over_time,
    "count_over_time": lambda pts: float(len(pts)),
    "last_over_time": lambda pts: pts[-1][1],
    "stddev_over_time": stddev_over_time,
    "stdvar_over_time": stdvar_over_time,
    "changes": changes,
    "resets": resets,
}
