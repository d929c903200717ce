"""Prometheus' Kahan-Neumaier summation, with C-speed paths proven bit-identical to its loop.

Range functions take a series' samples in the window as parallel lists ``times`` (seconds) and ``vals``
(oldest first, never empty). ``clean`` says that ``vals`` holds no NaN, which enables C-speed shortcuts
that give bit-identical results.
"""

from __future__ import annotations

import bisect
import math
import sys
from collections.abc import Iterable

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
