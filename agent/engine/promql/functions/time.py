"""time(), timestamp() and the date functions (year month day_of_month day_of_week day_of_year
days_in_month hour minute), in UTC, as Go's time package computes them for any int64 second."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from agent.engine.promql.nodes import Call, VectorT, drop_name
from agent.engine.promql.selectors import VectorSelector
from agent.engine.promql.values import ms


def call_time(call: Call, store: Any, t: float) -> float:
    return ms(t) / 1000


def call_timestamp(call: Call, store: Any, t: float) -> VectorT:
    arg = call.args[0]
    if isinstance(arg, VectorSelector):
        clock = call.extra  # the data range the selector loaded, for an @ selector
        vec = arg.eval_timestamps(store, t, clock.ranges[id(arg)] if clock is not None else None)
    else:
        now = ms(t) / 1000
        vec = [(labels, now) for labels, _ in arg.eval(store, t)]
    return call.check([(drop_name(labels), v) for labels, v in vec])


_INT64_MIN = -(2**63)


def _unix_seconds(v: float) -> int:
    """Go's int64(v) on amd64: truncation, and the "integer indefinite" value for NaN and out-of-range."""
    if v != v or not -(2.0**63) <= v < 2.0**63:
        return _INT64_MIN
    return int(v)


_UNIX_TO_ABSOLUTE = 9223372028683721448  # Go's unixToInternal + internalToAbsolute


def civil(seconds: int) -> tuple[int, int, int, int, int, int]:
    """(year, month, day, hour, minute, weekday with Sunday = 0) of a Unix time in UTC, proleptic Gregorian
    calendar (H. Hinnant's days-from-civil inverse), with the int64 wrap-around Go's time.Time.abs() does."""
    seconds = (seconds + _UNIX_TO_ABSOLUTE) % 2**64 - _UNIX_TO_ABSOLUTE
    days, rem = divmod(seconds, 86400)
    z = days + 719468
    era = z // 146097
    doe = z - era * 146097
    yoe = (doe - doe // 1460 + doe // 36524 - doe // 146096) // 365
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    day = doy - (153 * mp + 2) // 5 + 1
    month = mp + 3 if mp < 10 else mp - 9
    year = yoe + era * 400 + (1 if month <= 2 else 0)
    return year, month, day, rem // 3600, rem % 3600 // 60, (days + 4) % 7


def _leap(year: int) -> bool:
    return year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)


_CUM_DAYS = (0, 31, 59, 90, 120, 151, 181, 212, 243, 273, 304, 334)
_MONTH_DAYS = (31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)


def _day_of_year(c: tuple[int, int, int, int, int, int]) -> float:
    year, month, day = c[0], c[1], c[2]
    return float(_CUM_DAYS[month - 1] + day + (1 if month > 2 and _leap(year) else 0))


def _days_in_month(c: tuple[int, int, int, int, int, int]) -> float:
    year, month = c[0], c[1]
    return float(29 if month == 2 and _leap(year) else _MONTH_DAYS[month - 1])


DATE_PARTS: dict[str, Callable[[tuple[int, int, int, int, int, int]], float]] = {
    "year": lambda c: float(c[0]),
    "month": lambda c: float(c[1]),
    "day_of_month": lambda c: float(c[2]),
    "hour": lambda c: float(c[3]),
    "minute": lambda c: float(c[4]),
    "day_of_week": lambda c: float(c[5]),
    "day_of_year": _day_of_year,
    "days_in_month": _days_in_month,
}


def date_call(part: Callable[[tuple[int, int, int, int, int, int]], float]) -> Callable[[Call, Any, float], VectorT]:
    """``f(v=vector(time()))``: the date part of each sample's value taken as a Unix time (name dropped)."""

    def impl(call: Call, store: Any, t: float) -> VectorT:
        if not call.args:
            now = ms(t)
            return [({}, part(civil(now // 1000 if now >= 0 else -(-now // 1000))))]  # Go truncates
        vec = call.args[0].eval(store, t)
        return call.check([(drop_name(labels), part(civil(_unix_seconds(v)))) for labels, v in vec])

    return impl
