"""Result types, the error type, and Go-compatible float, time and label helpers shared by the evaluator."""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from typing import NamedTuple

from agent.core.errors import RuleError
from agent.core.formatting import go_float

NAME = "__name__"

LabelDict = dict[str, str]


class PromQLError(RuleError):
    """A PromQL expression cannot be compiled or evaluated. ``offset`` is a character offset or None."""

    def __init__(self, message: str, offset: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.offset = offset


class PromQLEvalError(PromQLError):
    """Evaluation failed (e.g. many-to-many matching, duplicate label sets), as Prometheus fails the query."""


class Vector(list):
    """An instant vector: ``list[tuple[dict[str, str], float]]``; labels include ``__name__`` when kept."""


@dataclass(frozen=True, slots=True)
class Scalar:
    """A scalar result."""

    value: float

    def __float__(self) -> float:
        return self.value


class Selector(NamedTuple):
    """A series selector in an expression: the metric name (``__name__="x"``) and the other matchers."""

    name: str | None
    matchers: list[tuple[str, str, str]]


# -- Go float semantics -----------------------------------------------------------------------


def go_div(a: float, b: float) -> float:
    """IEEE division as Go does it (no ZeroDivisionError)."""
    try:
        return a / b
    except ZeroDivisionError:
        if a != a or a == 0:
            return math.nan
        return math.copysign(math.inf, a) * math.copysign(1.0, b)


def go_mod(a: float, b: float) -> float:
    """Go's math.Mod."""
    if b == 0 or math.isinf(a) or a != a or b != b:
        return math.nan
    return math.fmod(a, b)


_SQRT2_HALF = 1.4142135623730951 / 2


def go_log(x: float) -> float:
    """Go's math.Log (the FreeBSD e_log.c algorithm Go implements; not the C library's)."""
    if x != x or x == math.inf:
        return x
    if x < 0:
        return math.nan
    if x == 0:
        return -math.inf
    f1, ki = math.frexp(x)
    if f1 < _SQRT2_HALF:
        f1 *= 2
        ki -= 1
    f = f1 - 1
    k = float(ki)
    s = f / (2 + f)
    s2 = s * s
    s4 = s2 * s2
    t1 = s2 * (
        6.666666666666735130e-01
        + s4 * (2.857142874366239149e-01 + s4 * (1.818357216161805012e-01 + s4 * 1.479819860511658591e-01))
    )
    t2 = s4 * (3.999999999940941908e-01 + s4 * (2.222219843214978396e-01 + s4 * 1.531383769920937332e-01))
    hfsq = 0.5 * f * f
    return k * 6.93147180369123816490e-01 - ((hfsq - (s * (hfsq + t1 + t2) + k * 1.90821492927058770002e-10)) - f)


def _fma(a: float, b: float, c: float) -> float:
    """a * b + c with one rounding: exact integer arithmetic on the mantissas, one correctly rounded conversion."""
    if not (math.isfinite(a) and math.isfinite(b) and math.isfinite(c)) or a == 0 or b == 0 or c == 0:
        return a * b + c  # at most one rounding happens here (or the result is not finite)
    ma, ea = math.frexp(a)
    mb, eb = math.frexp(b)
    mc, ec = math.frexp(c)
    pm, pe = int(ma * 2**53) * int(mb * 2**53), ea + eb - 106
    cm, ce = int(mc * 2**53), ec - 53
    e = min(pe, ce)
    n = (pm << (pe - e)) + (cm << (ce - e))
    try:
        result = math.ldexp(float(n), e)
    except OverflowError:
        return float(Fraction(a) * Fraction(b) + Fraction(c))
    if result != 0 and abs(result) < 2.2250738585072014e-308:  # subnormal: ldexp would round a second time
        return float(Fraction(a) * Fraction(b) + Fraction(c))
    return result


_fma = getattr(math, "fma", _fma)  # Python >= 3.13 has it natively
_EXP_TAYLOR = (
    1.9841269841269841270e-4, 1.3888888888888888889e-3, 8.3333333333333333333e-3, 4.1666666666666666667e-2,
    1.6666666666666666667e-1, 0.5, 1.0,
)  # fmt: skip


def go_exp(x: float) -> float:
    """Go's math.Exp on amd64 with AVX2+FMA (exp_amd64.s, after Shibata's SLEEF): the Exp inside Prometheus'
    math.Pow on the servers it runs on. Differs from the C library's exp in the last bit for some inputs."""
    if x != x or x == math.inf:
        return x
    if x == -math.inf:
        return 0.0
    if x > 7.09782712893384e02:
        return math.inf
    scaled = 1.4426950408889634073599246810018920 * x
    k = round(scaled) if abs(scaled) < 2.0**31 else -(2**31)  # CVTSD2SL: round half to even, else "indefinite"
    kf = float(k)
    r = _fma(-0.69314718055966295651160180568695068359375, kf, x)
    r = _fma(-0.28235290563031577122588448175013436025525412068e-12, kf, r)
    r *= 0.0625
    p = 2.4801587301587301587e-5
    for coefficient in _EXP_TAYLOR:
        p = _fma(p, r, coefficient)
    r *= p
    for _ in range(3):
        r *= r + 2.0
    r = _fma(r, r + 2.0, 1.0)
    if k + 1023 <= 0:
        return 0.0
    if k + 1023 >= 0x7FF:
        return math.inf
    return r * math.ldexp(1.0, k)


def _is_odd_int(v: float) -> bool:
    if abs(v) >= 2.0**53:
        return False
    i, f = math.modf(v)
    return f == 0 and int(i) & 1 == 1


def go_pow(x: float, y: float) -> float:
    """Go's math.Pow, step by step (it is not correctly rounded, and Prometheus answers with it).

    Integer exponents go through repeated squaring of frexp mantissas; a fractional part through
    Exp(yf * Log(x)) with Go's own Log and amd64 Exp (see :func:`go_exp`), so results match bit for bit.
    """
    if y == 0 or x == 1:
        return 1.0
    if y == 1:
        return x
    if x != x or y != y:
        return math.nan
    if x == 0:
        odd = math.copysign(1.0, x) < 0 and _is_odd_int(y)
        if y < 0:
            return -math.inf if odd else math.inf
        return x if odd else 0.0
    if math.isinf(y):
        if x == -1:
            return 1.0
        return 0.0 if (abs(x) < 1) == (y > 0) else math.inf
    if math.isinf(x):
        if x < 0:
            return go_pow(1 / x, -y)  # Pow(-0, -y)
        return 0.0 if y < 0 else math.inf
    if y == 0.5:
        return math.sqrt(x) if x >= 0 else math.nan
    if y == -0.5:
        return 1 / math.sqrt(x) if x >= 0 else math.nan
    yf, yi = math.modf(abs(y))
    if yf != 0 and x < 0:
        return math.nan
    if yi >= 2.0**63:
        if x == -1:
            return 1.0
        return 0.0 if (abs(x) < 1) == (y > 0) else math.inf
    a1 = 1.0
    ae = 0
    if yf != 0:
        if yf > 0.5:
            yf -= 1
            yi += 1
        a1 = go_exp(yf * go_log(x))
    x1, xe = math.frexp(x)
    i = int(yi)
    while i != 0:
        if xe < -(1 << 12) or xe > (1 << 12):
            ae += xe
            break
        if i & 1 == 1:
            a1 *= x1
            ae += xe
        x1 *= x1
        xe <<= 1
        if x1 < 0.5:
            x1 += x1
            xe -= 1
        i >>= 1
    if y < 0:
        a1 = 1 / a1
        ae = -ae
    return _go_ldexp(a1, ae)


def _go_ldexp(frac: float, exp: int) -> float:
    try:
        return math.ldexp(frac, exp)
    except OverflowError:
        return math.copysign(math.inf, frac)


def go_max(a: float, b: float) -> float:
    """Go's math.Max: +Inf wins over NaN, NaN wins over numbers."""
    if a == math.inf or b == math.inf:
        return math.inf
    if a != a or b != b:
        return math.nan
    if a == 0 and b == 0:
        return b if math.copysign(1.0, a) < 0 else a
    return a if a > b else b


def go_min(a: float, b: float) -> float:
    """Go's math.Min: -Inf wins over NaN, NaN wins over numbers."""
    if a == -math.inf or b == -math.inf:
        return -math.inf
    if a != a or b != b:
        return math.nan
    if a == 0 and b == 0:
        return a if math.copysign(1.0, a) < 0 else b
    return a if a < b else b


def go_floor(v: float) -> float:
    """math.Floor keeping NaN/Inf."""
    return v if v != v or math.isinf(v) else float(math.floor(v))


def go_ceil(v: float) -> float:
    """math.Ceil keeping NaN/Inf."""
    return v if v != v or math.isinf(v) else float(math.ceil(v))


def format_float(v: float) -> str:
    """strconv.FormatFloat(v, 'f', -1, 64): shortest round-trip digits, never an exponent (count_values)."""
    return go_float(v, "f")


def labels_key(labels: LabelDict) -> tuple[tuple[str, str], ...]:
    """A hashable identity of a label set, ordered as Prometheus orders labels."""
    return tuple(sorted(labels.items()))


def ms(t: float) -> int:
    """Seconds to Prometheus' integer milliseconds."""
    return round(t * 1000)


def format_labels(labels: LabelDict) -> str:
    """Prometheus' labels.String(): ``{a="1", b="2"}`` in label order."""
    inner = ", ".join(f"{k}={go_quote(v)}" for k, v in sorted(labels.items()))
    return "{" + inner + "}"


def go_quote(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def valid_label_name(name: str) -> bool:
    if not name or not (name[0].isascii() and (name[0].isalpha() or name[0] == "_")):
        return False
    return all(c.isascii() and (c.isalnum() or c == "_") for c in name)
