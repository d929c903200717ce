"""Element-wise math on instant vectors: abs ceil floor round clamp clamp_min clamp_max sgn, exp sqrt ln
log2 log10, the trigonometric and hyperbolic functions, deg rad, and pi().

Go's math semantics, bit for bit: no exceptions (domain errors give NaN, overflow +-Inf); ``exp``, ``ln``,
``log2`` and ``log10`` follow Go's own algorithms (amd64 Exp, FreeBSD Log), the trigonometric and
hyperbolic functions Go's pure-Go code (:mod:`agent.engine.promql.gomath`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from decimal import Decimal, localcontext
from typing import Any

from agent.engine.promql import gomath
from agent.engine.promql.nodes import Call, VectorT, drop_name
from agent.engine.promql.values import go_div, go_exp, go_floor, go_log, go_max, go_min


def _go_const(digits: str) -> float:
    """1/x of a constant given with Go's digits, rounded once (Go folds constant expressions exactly)."""
    with localcontext() as ctx:
        ctx.prec = 60
        return float(Decimal(1) / Decimal(digits))


INV_LN2 = _go_const("0.693147180559945309417232121458176568075500134360255254120680009")
INV_LN10 = _go_const("2.30258509299404568401799145468436420760110148862877297603332790")


def go_log2(x: float) -> float:
    """Go's math.Log2: exact for powers of two, else Log(frac) * (1/Ln2) + exp."""
    frac, exp = math.frexp(x)
    if frac == 0.5:
        return float(exp - 1)
    return go_log(frac) * INV_LN2 + float(exp)


def go_log10(x: float) -> float:
    """Go's math.Log10: Log(x) * (1/Ln10)."""
    return go_log(x) * INV_LN10


def go_sqrt(x: float) -> float:
    return math.sqrt(x) if x >= 0 or x != x else math.nan


def sgn(v: float) -> float:
    if v < 0:
        return -1.0
    if v > 0:
        return 1.0
    return v  # zero (with its sign) and NaN


ELEMENTWISE: dict[str, Callable[[float], float]] = {
    "exp": go_exp,
    "sqrt": go_sqrt,
    "ln": go_log,
    "log2": go_log2,
    "log10": go_log10,
    "sin": gomath.go_sin,
    "cos": gomath.go_cos,
    "tan": gomath.go_tan,
    "asin": gomath.go_asin,
    "acos": gomath.go_acos,
    "atan": gomath.go_atan,
    "sinh": gomath.go_sinh,
    "cosh": gomath.go_cosh,
    "tanh": gomath.go_tanh,
    "asinh": gomath.go_asinh,
    "acosh": gomath.go_acosh,
    "atanh": gomath.go_atanh,
    "deg": lambda v: v * 180 / math.pi,
    "rad": lambda v: v * math.pi / 180,
    "sgn": sgn,
}


def call_pi(call: Call, store: Any, t: float) -> float:
    return math.pi


def simple_call(f: Callable[[float], float]) -> Callable[[Call, Any, float], VectorT]:
    def impl(call: Call, store: Any, t: float) -> VectorT:
        return call.check([(drop_name(labels), f(v)) for labels, v in call.args[0].eval(store, t)])

    return impl


def call_round(call: Call, store: Any, t: float) -> VectorT:
    to_nearest = call.args[1].eval(store, t) if len(call.args) > 1 else 1.0
    inverse = go_div(1.0, to_nearest)
    return call.check(
        [(drop_name(labels), go_div(go_floor(v * inverse + 0.5), inverse)) for labels, v in call.args[0].eval(store, t)]
    )


def call_clamp(call: Call, store: Any, t: float) -> VectorT:
    vec = call.args[0].eval(store, t)
    lo = call.args[1].eval(store, t)
    hi = call.args[2].eval(store, t)
    if hi < lo:
        return []
    return call.check([(drop_name(labels), go_max(lo, go_min(hi, v))) for labels, v in vec])


def call_clamp_min(call: Call, store: Any, t: float) -> VectorT:
    vec = call.args[0].eval(store, t)
    lo = call.args[1].eval(store, t)
    return call.check([(drop_name(labels), go_max(v, lo)) for labels, v in vec])


def call_clamp_max(call: Call, store: Any, t: float) -> VectorT:
    vec = call.args[0].eval(store, t)
    hi = call.args[1].eval(store, t)
    return call.check([(drop_name(labels), go_min(v, hi)) for labels, v in vec])
