"""rate, increase, delta (2.42's extrapolatedRate) and irate, idelta.

Timestamps are converted to integer milliseconds where Prometheus computes with them, so results match
bit for bit. On the ring Store, windows without NaN (and, for counters, without a decrease) are read from
their first and last samples only.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from agent.engine.promql.functions.kahan import Times, Values
from agent.engine.promql.nodes import Call, VectorT, drop_name
from agent.engine.promql.selectors import MatrixSelector, ring_range
from agent.engine.promql.values import go_div, ms


def counter_increase(vals: Values, clean: bool) -> float:
    """``last - first`` plus the value before each counter reset (a decrease), added one by one in Prometheus'
    order (2.42 adds each into the running result). ``clean``: no NaN in ``vals``."""
    result = vals[-1] - vals[0]
    if clean and vals == sorted(vals):
        return result  # non-decreasing: no reset (sorting a sorted list is a linear C loop)
    prev = vals[0]
    for v in vals:
        if v < prev:
            result += prev
        prev = v
    return result


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
    result = counter_increase(vals, clean) if is_counter else vals[-1] - vals[0]
    return rate_from(
        ms(times[0]), ms(times[-1]), vals[0], result, len(vals), ms(range_start), ms(range_end), range_s,
        is_counter, is_rate,
    )  # fmt: skip


def rate_from(
    first_t: int,
    last_t: int,
    first_v: float,
    result: float,
    n: int,
    start_ms: int,
    end_ms: int,
    range_s: float,
    is_counter: bool,
    is_rate: bool,
) -> float:
    """extrapolatedRate from a window's first and last sample times (ms), its first value, its increase
    (``last - first``, plus resets for counters), its sample count (>= 2); ``start_ms``/``end_ms``: the range's
    bounds in ms."""
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


def rate_call(is_counter: bool, is_rate: bool) -> Callable[[Call, Any, float], VectorT]:
    def impl(call: Call, store: Any, t: float) -> VectorT:
        ms_node: MatrixSelector = call.args[0]
        start, end = ms_node.window(t)
        rng = ms_node.range
        out = []
        ticks = ms_node.windows(store, t)
        if ticks is None:
            for labels, times, vals, clean in ms_node.eval_series(store, t):
                v = extrapolated_rate(times, vals, clean, start, end, rng, is_counter, is_rate)
                if v is not None:
                    out.append((drop_name(labels), v))
            return call.check(out)
        # Ring store: a window without NaN (and, for counters, without a decrease) needs only its first and
        # last samples; others are read and filtered as usual.
        k0, k1 = ticks
        if k1 < k0:
            return out
        cap = store.capacity
        marks = store.marks
        t0, t1 = ms(store.tick_time(k0)), ms(store.tick_time(k1))
        start_ms, end_ms = ms(start), ms(end)
        times: list[float] | None = None
        for series, labels in ms_node.vs.select(store):
            last = min(k1, series.last_tick)
            if last <= k0:
                continue  # fewer than two samples
            nan, drop = marks(series)
            if nan < k0 and (drop <= k0 or not is_counter):
                ring = series.values
                first_v = ring[k0 % cap]
                v = rate_from(
                    t0, t1 if last == k1 else ms(store.tick_time(last)), first_v, ring[last % cap] - first_v,
                    last - k0 + 1, start_ms, end_ms, rng, is_counter, is_rate,
                )  # fmt: skip
            else:
                if times is None:
                    times = store.tick_times(k0, k1)
                got = ring_range(store, series, labels, k0, last, times)
                if got is None:
                    continue
                _, ts, vals, clean = got
                v = extrapolated_rate(ts, vals, clean, start, end, rng, is_counter, is_rate)
            if v is not None:
                out.append((drop_name(labels), v))
        return call.check(out)

    return impl


def instant_rate_call(is_rate: bool) -> Callable[[Call, Any, float], VectorT]:
    def impl(call: Call, store: Any, t: float) -> VectorT:
        ms_node: MatrixSelector = call.args[0]
        out = []
        ticks = ms_node.windows(store, t)
        if ticks is None:
            for labels, times, vals, _ in ms_node.eval_series(store, t):
                v = instant_value(times, vals, is_rate)
                if v is not None:
                    out.append((drop_name(labels), v))
            return call.check(out)
        k0, k1 = ticks
        if k1 < k0:
            return out
        cap = store.capacity
        marks = store.marks
        tick_time = store.tick_time
        times: list[float] | None = None
        for series, labels in ms_node.vs.select(store):
            last = min(k1, series.last_tick)
            if last < k0:
                continue
            if last > k0 and marks(series)[0] < last - 1:  # the last two samples are numbers
                ring = series.values
                pv, lv = ring[(last - 1) % cap], ring[last % cap]
                v = instant_from(tick_time(last - 1), tick_time(last), pv, lv, is_rate)
            else:
                if times is None:
                    times = store.tick_times(k0, k1)
                got = ring_range(store, series, labels, k0, last, times)
                if got is None:
                    continue
                v = instant_value(got[1], got[2], is_rate)
            if v is not None:
                out.append((drop_name(labels), v))
        return call.check(out)

    return impl
