"""Result types, the error type and Go-compatible float helpers shared by the evaluator."""

from __future__ import annotations

import math
from dataclasses import dataclass
from decimal import Decimal
from typing import NamedTuple

from agent.errors import RuleError

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


def go_pow(a: float, b: float) -> float:
    """Go's math.Pow, including its special cases."""
    try:
        return math.pow(a, b)
    except (ValueError, OverflowError):
        pass
    if a != a or b != b:
        return math.nan
    if a == 0:
        # b < 0 here (math.pow raises only then): odd integer exponents keep the zero's sign.
        if b == int(b) and int(b) % 2 == 1:
            return math.copysign(math.inf, a)
        return math.inf
    if a < 0 and b != int(b):
        return math.nan
    # overflow: magnitude is infinite; sign from an odd integer exponent of a negative base
    sign = -1.0 if a < 0 and b == int(b) and int(b) % 2 == 1 else 1.0
    return sign * math.inf if abs(a) > 1 or b < 0 else 0.0


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
    """strconv.FormatFloat(v, 'f', -1, 64): shortest round-trip digits, never an exponent."""
    if v != v:
        return "NaN"
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    return format(Decimal(repr(v)).normalize(), "f")


def labels_key(labels: LabelDict) -> tuple[tuple[str, str], ...]:
    """A hashable identity of a label set, ordered as Prometheus orders labels."""
    return tuple(sorted(labels.items()))
