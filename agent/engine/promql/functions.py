"""PromQL function implementations (Prometheus 2.42 semantics) over plain Python lists.

Range functions take a series' samples in the window as parallel lists ``times`` (seconds) and ``vals``
(oldest first, never empty) and return a value or None (no output sample). ``clean`` says that ``vals``
holds no NaN, which enables C-speed shortcuts that give bit-identical results. Timestamps are converted to
integer milliseconds where Prometheus computes with them, so results match bit for bit.
"""

from __future__ import annotations

import bisect
import math
import operator
import sys
from collections.abc import Callable, Iterable

from agent.engine.promql.values import go_div

_EXACT = 2.0**53
Times = list[float]
Values = list[float]
Span = tuple[int, int] | None  # (e_max, e_min): 2**e_min <= |v| < 2**e_max for every nonzero v; None: all zero

# Since Python 3.12 sum() of floats runs exactly Prometheus' kahanSumInc loop (Neumaier's variant, same
# branch and operation order) and adds the compensation at the end only when it is non-zero and finite.
# When the result is finite, every input and partial sum was finite, so the compensation is finite too and
# (the running sum starting at +0.0, it is never -0.0) ``sum(vals, 0.0)`` equals ``total + c`` bit for bit.
NEUMAIER_SUM = sys.version_info >= (3, 12)
_SPAN_BITS = 51  # exact-sum certificate: e_max - e_min + 2 * bit_length(n) must not exceed this


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


def kahan_sum_loop(vals: Iterable[float]) -> float:
    """Prometheus' Kahan-Neumaier summation as it is written: kahanSumInc over vals, then total + c."""
    total = c = 0.0
    for v in vals:
        t = total + v
        if abs(total) >= abs(v):
            c += (total - t) + v
        else:
            c += (v - t) + total
        total = t
    return total + c


def span(vals: Values) -> Span:
    """Binary exponents bounding the magnitudes of the finite ``vals`` (see :data:`Span`)."""
    return sorted_span(sorted(vals))  # float sorting is C-speed (and fast on the runs real series have)


def sorted_span(s: Values) -> Span:
    """:func:`span` of finite values sorted ascending."""
    lo, hi = s[0], s[-1]
    if lo > 0.0:
        small, big = lo, hi
    elif hi < 0.0:
        small, big = -hi, -lo
    else:
        neg = bisect.bisect_left(s, 0.0)  # s[:neg] < 0 < s[pos:]
        pos = bisect.bisect_right(s, 0.0)
        if neg == 0 and pos == len(s):
            return None
        small = min(-s[neg - 1] if neg else math.inf, s[pos] if pos < len(s) else math.inf)
        big = max(hi, -lo)
    return math.frexp(big)[1], math.frexp(small)[1] - 1


def exact_kahan_sum(vals: Iterable[float], n: int, sp: Span) -> float | None:
    """Prometheus' Kahan-Neumaier sum of ``n`` finite values with magnitudes in ``sp``, at C speed; None: use the loop.

    Every value is a multiple of g = 2**(e_min - 52) and every partial sum is below 2n * 2**e_max, so each
    rounding error the loop adds to its compensation is a multiple of g below 2n * 2**e_max * 2**-53. When
    n * that bound stays below g * 2**53, the compensation accumulates these errors exactly, total + c is the
    exact sum rounded once, which is what math.fsum returns (the loop never yields -0.0, hence the + 0.0).
    """
    if sp is None:
        return 0.0  # all zeros
    e_max, e_min = sp
    if e_max - e_min + 2 * n.bit_length() > _SPAN_BITS or e_max > 900:
        return None
    return math.fsum(vals) + 0.0


def kahan_sum(vals: Values, clean: bool) -> float | None:
    """Prometheus' Kahan-Neumaier sum (total + c) of ``vals`` when it is finite, fast; None: use the loop."""
    if NEUMAIER_SUM:
        total = sum(vals, 0.0)
        return total if -math.inf < total < math.inf else None
    if not clean or not -math.inf < sum(vals) < math.inf:
        return None
    return exact_kahan_sum(vals, len(vals), span(vals))


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
    correction = counter_correction(vals, clean) if is_counter else 0.0
    return rate_from(
        ms(times[0]), ms(times[-1]), vals[0], vals[-1], len(vals), correction, ms(range_start), ms(range_end),
        range_s, is_counter, is_rate,
    )  # fmt: skip


def rate_from(
    first_t: int,
    last_t: int,
    first_v: float,
    last_v: float,
    n: int,
    correction: float,
    start_ms: int,
    end_ms: int,
    range_s: float,
    is_counter: bool,
    is_rate: bool,
) -> float:
    """extrapolatedRate from a window's first and last samples (times in ms), its sample count (>= 2) and
    counter correction; ``start_ms``/``end_ms``: the range's bounds in ms."""
    result = last_v - first_v
    if is_counter:
        result += correction
    duration_to_start = (first_t - start_ms) / 1000
    duration_to_end = (end_ms - last_t) / 1000
    sampled = (last_t - first_t) / 1000
    avg_between = sampled / (n - 1)
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
    return instant_from(times[-2], times[-1], vals[-2], vals[-1], is_rate)


def instant_from(prev_ts: float, last_ts: float, pv: float, lv: float, is_rate: bool) -> float | None:
    """irate / idelta from the window's last two samples."""
    result = lv if is_rate and lv < pv else lv - pv
    interval = ms(last_ts) - ms(prev_ts)
    if interval == 0:
        return None
    if is_rate:
        result /= interval / 1000
    return result


XSums = tuple[list[float], float, float, Span]


def x_sums(times: Times, intercept_ms: int) -> XSums:
    """x values (seconds from the intercept), their Kahan sums of x and x*x and their span, shared by series
    sampled on the same grid."""
    xs = [(round(t * 1000) - intercept_ms) / 1e3 for t in times]
    sx = kahan_sum(xs, True)
    if sx is None:
        sx = kahan_sum_loop(xs)
    squares = [x * x for x in xs]
    sx2 = kahan_sum(squares, True)
    if sx2 is None:
        sx2 = kahan_sum_loop(squares)
    return xs, sx, sx2, span(xs)


def _sum_products(xs: list[float], vals: Values, x_span: Span, y_span: Span) -> float:
    """Kahan sum of x*v over finite xs and vals with the given spans (Prometheus' sumXY + cXY)."""
    products = map(operator.mul, xs, vals)
    if NEUMAIER_SUM:
        total = sum(products, 0.0)
        if -math.inf < total < math.inf:
            return total
    elif x_span is None or y_span is None:
        return 0.0  # every product is zero
    else:
        # |x*v| < 2**(ex + ey + 1) after rounding; |x*v| >= 2**(ex' + ey') (rounding is monotonic)
        sp = (x_span[0] + y_span[0] + 1, x_span[1] + y_span[1])
        total = exact_kahan_sum(products, len(vals), sp)
        if total is not None:
            return total
    return kahan_sum_loop(map(operator.mul, xs, vals))


def linear_regression(
    times: Times, vals: Values, intercept_ms: int, xsums: XSums | None = None, clean: bool = False
) -> tuple[float, float]:
    """Least-squares slope and intercept with x in seconds from ``intercept_ms`` (Kahan sums, as Prometheus).
    ``clean``: ``vals`` holds no NaN (saves a pass)."""
    init_y = vals[0]
    ordered = None  # the values sorted, when they are all finite (the 3.11 fast path needs their span)
    if not NEUMAIER_SUM:
        if clean:
            ordered = sorted(vals)
            if not (-math.inf < ordered[0] and ordered[-1] < math.inf):
                ordered = None
        elif -math.inf < sum(vals) < math.inf:
            ordered = sorted(vals)
    # constant y? (a NaN never equals itself, as in Go)
    constant = ordered[0] == ordered[-1] if ordered is not None else vals.count(init_y) == len(vals)
    if constant:
        if math.isinf(init_y):
            return math.nan, math.nan
        return 0.0, init_y
    xs, sum_x, sum_x2, x_span = xsums if xsums is not None else x_sums(times, intercept_ms)
    n = float(len(vals))
    sum_y = None
    if NEUMAIER_SUM:
        sum_y = kahan_sum(vals, True)
        sum_xy = _sum_products(xs, vals, x_span, None) if sum_y is not None else 0.0
    elif ordered is not None:
        y_span = sorted_span(ordered)
        sum_y = exact_kahan_sum(vals, len(vals), y_span)
        sum_xy = _sum_products(xs, vals, x_span, y_span) if sum_y is not None else 0.0
    if sum_y is None:  # non-finite values, or a sum the fast paths cannot prove exact
        sum_y = kahan_sum_loop(vals)
        sum_xy = kahan_sum_loop(map(operator.mul, xs, vals))
    cov_xy = sum_xy - sum_x * sum_y / n
    var_x = sum_x2 - sum_x * sum_x / n
    slope = go_div(cov_xy, var_x)
    intercept = sum_y / n - slope * sum_x / n
    return slope, intercept


def deriv(times: Times, vals: Values, xsums: XSums | None = None, clean: bool = False) -> float | None:
    if len(vals) < 2:
        return None
    return linear_regression(times, vals, ms(times[0]), xsums, clean)[0]


def predict_linear(
    times: Times, vals: Values, t: float, duration: float, xsums: XSums | None = None, clean: bool = False
) -> float | None:
    if len(vals) < 2:
        return None
    slope, intercept = linear_regression(times, vals, ms(t), xsums, clean)
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
            if -mean <= inc <= mean or mean <= inc <= -mean:  # abs(mean) >= abs(inc) without the calls
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
    fast = kahan_sum(vals, clean)
    if fast is not None:
        return fast
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
    """Welford's variance with both sums Kahan-compensated (kahan_inc inlined; ``-a <= b <= a or a <= b <= -a``
    is ``abs(a) >= abs(b)``, NaN included, without the calls)."""
    count = mean = c_mean = aux = c_aux = 0.0
    for v in vals:
        count += 1
        delta = v - (mean + c_mean)
        inc = delta / count
        t = mean + inc
        if -mean <= inc <= mean or mean <= inc <= -mean:
            c_mean += (mean - t) + inc
        else:
            c_mean += (inc - t) + mean
        mean = t
        inc = delta * (v - (mean + c_mean))
        t = aux + inc
        if -aux <= inc <= aux or aux <= inc <= -aux:
            c_aux += (aux - t) + inc
        else:
            c_aux += (inc - t) + aux
        aux = t
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
