"""How numbers and times print: Go's float formats, the exposition's float, RFC 3339 timestamps.

Prometheus is written in Go, so wherever our output must match its output byte for byte (PromQL label values,
``promtool test rules`` messages, the alerts API, template ``{{ $value }}``) floats print through
:func:`go_float`, which is ``strconv.FormatFloat(v, fmt, -1, 64)``: the shortest digits that read back to the
same float, in Go's spelling (``1e+06``, ``+Inf``, ``NaN``).
"""

from __future__ import annotations

import math
from datetime import UTC, datetime

__all__ = ["format_value", "go_float", "rfc3339", "special"]


def special(v: float) -> str | None:
    """Go's spelling of NaN and the infinities; None for a finite value."""
    if v != v:
        return "NaN"
    if v in (math.inf, -math.inf):
        return "+Inf" if v > 0 else "-Inf"
    return None


def _digits(v: float) -> tuple[str, int]:
    """The shortest round-trip decimal digits of ``abs(v)`` (no leading or trailing zeros; ``"0"`` for zero)
    and the decimal exponent of the first digit: 1234.5 -> ("12345", 3), 0.00125 -> ("125", -3)."""
    mant, _, exp = repr(abs(float(v))).partition("e")
    whole, _, frac = mant.partition(".")
    joined = whole + frac
    digits = joined.lstrip("0")
    if not digits.rstrip("0"):
        return "0", 0
    return digits.rstrip("0"), len(whole) - 1 - (len(joined) - len(digits)) + int(exp or 0)


def go_float(v: float, fmt: str = "g") -> str:
    """``strconv.FormatFloat(v, fmt, -1, 64)`` for ``fmt`` in ``e E f g G``; ``g`` is also Go's ``%v``.

    ``e``: ``1.5e+06``; ``f``: ``1500000`` (never an exponent); ``g``: ``%e`` below 1e-4 and from 1e+06 on,
    ``%f`` otherwise. Negative zero keeps its sign (``-0``), as in Go.
    """
    spelled = special(v)
    if spelled is not None:
        return spelled
    if fmt == "f" or (fmt in "gG" and (v == 0 or 1e-4 <= abs(v) < 1e6)):
        r = repr(float(v))  # fixed notation already from 1e-4 up to 1e16: the same digits, Go's spelling
        if "e" not in r:
            return r[:-2] if r.endswith(".0") else r
    sign = "-" if math.copysign(1.0, v) < 0 else ""
    digits, exp = _digits(v)
    lower = fmt.lower()
    if lower == "g":
        lower = "e" if exp < -4 or exp >= 6 else "f"
    if lower == "e":
        mant = digits[0] + ("." + digits[1:] if len(digits) > 1 else "")
        e = "E" if fmt in "EG" else "e"
        return f"{sign}{mant}{e}{'-' if exp < 0 else '+'}{abs(exp):02d}"
    if lower != "f":
        raise ValueError(f"unsupported float format {fmt!r}")
    if exp < 0:
        return f"{sign}0.{'0' * (-exp - 1)}{digits}"
    whole, frac = digits[:exp + 1].ljust(exp + 1, "0"), digits[exp + 1:]
    return f"{sign}{whole}.{frac}" if frac else f"{sign}{whole}"


def format_value(v: float) -> str:
    """A sample value in the text exposition: integers without exponent noise (below 1e15), otherwise Python's
    shortest round-trip repr; ``+Inf``/``-Inf``/``NaN`` spelled as Prometheus parses them. Hot path: one call
    per exported series per tick."""
    if v != v:
        return "NaN"
    if v in (math.inf, -math.inf):
        return "+Inf" if v > 0 else "-Inf"
    if v == int(v) and abs(v) < 1e15:
        return str(int(v))
    return repr(v)


def rfc3339(t: float | None) -> str:
    """Unix seconds as RFC 3339 UTC with microseconds (``2024-01-02T03:04:05.000000Z``), as the Prometheus and
    Alertmanager APIs print times; None is Go's zero time."""
    if t is None:
        return "0001-01-01T00:00:00Z"
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")
