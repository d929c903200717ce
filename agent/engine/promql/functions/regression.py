"""deriv and predict_linear: least squares with Kahan sums, as Prometheus' linearRegression.

Owns the x-sums cache: series sampled on the same ticks share the x sums, within one evaluation and
across rules over the same window.
"""

from __future__ import annotations

import math
import operator
from typing import Any

from agent.engine.promql.functions.kahan import (
    NEUMAIER_SUM,
    Span,
    Times,
    Values,
    exact_kahan_sum,
    kahan_sum,
    kahan_sum_loop,
    sorted_span,
    span,
)
from agent.engine.promql.nodes import Call, VectorT, drop_name
from agent.engine.promql.values import go_div, ms

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
    # (list.count matches by identity first: one NaN object repeated would count as equal)
    constant = (
        ordered[0] == ordered[-1] if ordered is not None else init_y == init_y and vals.count(init_y) == len(vals)
    )
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


_X_SUMS: dict[tuple, XSums] = {}  # by (intercept, timestamps): rules over the same window share x sums


_X_SUMS_MAX = 32


def _shared_x(cache: dict, times: list[float], intercept_ms: int) -> XSums:
    """x sums per timestamp list: series sampled on the same ticks share one list object in one evaluation,
    and evaluations of other rules over the same window (same timestamps, same intercept) reuse them."""
    got = cache.get(id(times))
    if got is None:
        key = (intercept_ms, tuple(times))
        got = _X_SUMS.get(key)
        if got is None:
            if len(_X_SUMS) >= _X_SUMS_MAX:
                _X_SUMS.clear()
            got = _X_SUMS[key] = x_sums(times, intercept_ms)
        cache[id(times)] = got
    return got


def call_deriv(call: Call, store: Any, t: float) -> VectorT:
    out = []
    ranges = call.args[0].eval_series(store, t)  # keeps every times list alive, so id() keys are safe
    cache: dict = {}
    for labels, times, vals, clean in ranges:
        v = deriv(times, vals, _shared_x(cache, times, ms(times[0])) if len(vals) > 1 else None, clean)
        if v is not None:
            out.append((drop_name(labels), v))
    return call.check(out)


def call_predict_linear(call: Call, store: Any, t: float) -> VectorT:
    duration = call.args[1].eval(store, t)
    out = []
    ranges = call.args[0].eval_series(store, t)
    cache: dict = {}
    intercept = ms(t)
    for labels, times, vals, clean in ranges:
        v = predict_linear(times, vals, t, duration, _shared_x(cache, times, intercept), clean)
        if v is not None:
            out.append((drop_name(labels), v))
    return call.check(out)
