"""``*_over_time`` range functions, changes, resets, holt_winters, and the quantile they share with the
aggregation."""

from __future__ import annotations

import math
import operator
from collections.abc import Callable
from typing import Any

from agent.engine.promql.functions.kahan import _EXACT, Values, kahan_sum
from agent.engine.promql.nodes import Call, VectorT, drop_name
from agent.engine.promql.values import PromQLEvalError


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
    if not values or q != q:
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
    "present_over_time": lambda vals, clean: 1.0,
}


def _sorted_extreme(memo: dict, vals: Values, clean: bool, lowest: bool) -> float:
    """min/max_over_time of a window shared within one query (``min_over_time(x) - max_over_time(x)``): each
    window is sorted once (C-speed float comparisons) and both ends are read from it. A stable sort puts the
    first of equal minima first, as min() returns it; for the maximum, equal values other than +-0 have the
    same bits, so only a zero maximum needs max() to return the first one."""
    if not clean:
        return min_over_time(vals, clean) if lowest else max_over_time(vals, clean)
    key = ("sorted", id(vals))  # the memo keeps vals alive, so the id is not reused
    ordered = memo.get(key)
    if ordered is None:
        ordered = memo[key] = sorted(vals)
    if lowest:
        return ordered[0]
    top = ordered[-1]
    return max(vals) if top == 0.0 else top


def range_call(f: Callable[[Values, bool], float], keep_name: bool = False) -> Callable[[Call, Any, float], VectorT]:
    extreme = f is min_over_time or f is max_over_time
    lowest = f is min_over_time

    def impl(call: Call, store: Any, t: float) -> VectorT:
        ranges = call.args[0].eval_series(store, t)
        memo = getattr(call.args[0], "memo", None)
        if extreme and memo is not None:
            return call.check([(drop_name(lb), _sorted_extreme(memo, v, c, lowest)) for lb, _, v, c in ranges])
        if keep_name:  # last_over_time keeps __name__ in 2.42
            return call.check([(labels, f(vals, clean)) for labels, _, vals, clean in ranges])
        return call.check([(drop_name(labels), f(vals, clean)) for labels, _, vals, clean in ranges])

    return impl


def call_quantile_over_time(call: Call, store: Any, t: float) -> VectorT:
    q = call.args[0].eval(store, t)
    return call.check(
        [(drop_name(labels), quantile(q, vals)) for labels, _, vals, _ in call.args[1].eval_series(store, t)]
    )


def holt_winters(vals: Values, sf: float, tf: float) -> float | None:
    """Double exponential smoothing as 2.42's funcHoltWinters (None: fewer than two samples)."""
    if len(vals) < 2:
        return None
    s0 = 0.0
    s1 = vals[0]
    b = vals[1] - vals[0]
    for i in range(1, len(vals)):
        x = sf * vals[i]
        if i > 1:  # calcTrendValue(i - 1, ...): the initial trend for the first step
            b = tf * (s1 - s0) + (1 - tf) * b
        y = (1 - sf) * (s1 + b)
        s0, s1 = s1, x + y
    return s1


def go_fmt_f(v: float) -> str:
    """Go's %f."""
    if v != v:
        return "NaN"
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    return f"{v:f}"


def call_holt_winters(call: Call, store: Any, t: float) -> VectorT:
    ranges = call.args[0].eval_series(store, t)
    sf = call.args[1].eval(store, t)
    tf = call.args[2].eval(store, t)
    out = []
    for labels, _, vals, _ in ranges:  # 2.42 checks the factors only when a series has samples
        if sf <= 0 or sf >= 1:  # (NaN passes, as in Go)
            raise PromQLEvalError(f"invalid smoothing factor. Expected: 0 < sf < 1, got: {go_fmt_f(sf)}")
        if tf <= 0 or tf >= 1:
            raise PromQLEvalError(f"invalid trend factor. Expected: 0 < tf < 1, got: {go_fmt_f(tf)}")
        v = holt_winters(vals, sf, tf)
        if v is not None:
            out.append((drop_name(labels), v))
    return call.check(out)
