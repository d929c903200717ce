"""The function library of alert templates: ``humanize humanize1024 humanizeDuration humanizePercentage printf
toUpper toLower title eq ne lt le gt ge not`` (``and``/``or`` are special forms in the executor), with Go's value
formatting (``%v``, ``%.4g``, ``fmt.Sprintf`` verbs) and Go's comparison rules.

A function signals an execution error with :class:`ExecError`; the template renders it as
``<error expanding template: ...>`` where Prometheus would.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from typing import Any

from agent.core.formatting import go_float, special


class ExecError(Exception):
    """Raised while rendering; becomes ``<error expanding template: ...>``."""


def _g4(v: float) -> str:
    """Go's ``%.4g``."""
    return special(v) or format(v, ".4g")


def _to_float(v: Any) -> float:
    if isinstance(v, bool):
        raise ExecError(f"can't convert {v} to float")
    if isinstance(v, (int, float)):
        return float(v)
    if isinstance(v, str):
        try:
            return float(v)
        except ValueError as err:
            raise ExecError(f'strconv.ParseFloat: parsing "{v}": invalid syntax') from err
    raise ExecError(f"can't convert {v!r} to float")


def humanize(v: Any) -> str:
    """SI prefixes (k M G ... and m u n ...), 4 significant digits."""
    v = _to_float(v)
    if v == 0 or math.isnan(v) or math.isinf(v):
        return _g4(v)
    prefix = ""
    if abs(v) >= 1:
        for p in ("k", "M", "G", "T", "P", "E", "Z", "Y"):
            if abs(v) < 1000:
                break
            prefix = p
            v /= 1000
        return _g4(v) + prefix
    for p in ("m", "u", "n", "p", "f", "a", "z", "y"):
        if abs(v) >= 1:
            break
        prefix = p
        v *= 1000
    return _g4(v) + prefix


def humanize1024(v: Any) -> str:
    """Binary prefixes (ki Mi Gi ...), 4 significant digits."""
    v = _to_float(v)
    if abs(v) <= 1 or math.isnan(v) or math.isinf(v):
        return _g4(v)
    prefix = ""
    for p in ("ki", "Mi", "Gi", "Ti", "Pi", "Ei", "Zi", "Yi"):
        if abs(v) < 1024:
            break
        prefix = p
        v /= 1024
    return _g4(v) + prefix


def humanize_duration(v: Any) -> str:
    """Seconds as ``1d 2h 3m 4s`` (or ``3.142s``, ``500ms`` below a minute/second)."""
    v = _to_float(v)
    if math.isnan(v) or math.isinf(v):
        return _g4(v)
    if v == 0:
        return _g4(v) + "s"
    if abs(v) >= 1:
        sign = ""
        if v < 0:
            sign, v = "-", -v
        d = int(v) if v < 2**63 else -(2**63)  # Go's int64(v) overflows to MinInt64

        def quo(a: int, b: int) -> int:  # Go's truncated division
            return -(-a // b) if a < 0 else a // b

        def rem(a: int, b: int) -> int:
            return a - b * quo(a, b)

        seconds, minutes = rem(d, 60), rem(quo(d, 60), 60)
        hours, days = rem(quo(d, 3600), 24), quo(d, 86400)
        if days:
            return f"{sign}{days}d {hours}h {minutes}m {seconds}s"
        if hours:
            return f"{sign}{hours}h {minutes}m {seconds}s"
        if minutes:
            return f"{sign}{minutes}m {seconds}s"
        return f"{sign}{_g4(v)}s"
    prefix = ""
    for p in ("m", "u", "n", "p", "f", "a", "z", "y"):
        if abs(v) >= 1:
            break
        prefix = p
        v *= 1000
    return f"{_g4(v)}{prefix}s"


def humanize_percentage(v: Any) -> str:
    """Ratio as a percentage, 4 significant digits."""
    return _g4(_to_float(v) * 100) + "%"


def go_print(v: Any) -> str:
    """How ``{{ x }}`` prints a value."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return go_float(v)
    if isinstance(v, Mapping):
        return "map[" + " ".join(f"{k}:{go_print(v[k])}" for k in sorted(v)) + "]"
    if v is None:
        return "<no value>"
    return str(v)


_VERB = re.compile(r"%([-+# 0]*)(\d+)?(?:\.(\d+))?([a-zA-Z%])")


def _go_type(v: Any) -> str:
    return {bool: "bool", int: "int", float: "float64", str: "string"}.get(type(v), "map[string]string")


def printf(fmt: Any, *args: Any) -> str:
    """Go's ``fmt.Sprintf`` for the common verbs (%s %v %d %f %e %g %x %q %t %%)."""
    if not isinstance(fmt, str):
        raise ExecError("printf: format must be a string")
    out: list[str] = []
    pos = 0
    argi = 0
    for m in _VERB.finditer(fmt):
        out.append(fmt[pos:m.start()])
        pos = m.end()
        flags, width, prec, verb = m.groups()
        if verb == "%":
            out.append("%")
            continue
        if argi >= len(args):
            out.append(f"%!{verb}(MISSING)")
            continue
        a = args[argi]
        argi += 1
        spec = flags + (width or "") + (f".{prec}" if prec is not None else "")
        out.append(_format_one(a, verb, spec, flags, width, prec))
    out.append(fmt[pos:])
    if argi < len(args):
        extra = ", ".join(f"{_go_type(a)}={go_print(a)}" for a in args[argi:])
        out.append(f"%!(EXTRA {extra})")
    return "".join(out)


def _pad(s: str, flags: str, width: str | None) -> str:
    if not width:
        return s
    return s.ljust(int(width)) if "-" in flags else s.rjust(int(width))


def _format_one(a: Any, verb: str, spec: str, flags: str, width: str | None, prec: str | None) -> str:
    bad = f"%!{verb}({_go_type(a)}={go_print(a)})"
    if verb in "vs":
        if verb == "s" and not isinstance(a, str):
            return bad
        return _pad(go_print(a), flags, width)
    if verb == "q":
        return _pad('"' + str(a).replace("\\", "\\\\").replace('"', '\\"') + '"', flags, width) \
            if isinstance(a, str) else bad
    if verb == "t":
        return _pad(go_print(a), flags, width) if isinstance(a, bool) else bad
    if verb in "dxXob":
        if not isinstance(a, int) or isinstance(a, bool):
            return bad
        if verb == "b":
            return _pad(format(a, "b"), flags, width)
        return ("%" + spec + verb) % a
    if verb in "feEgG":
        if not isinstance(a, float):
            return bad
        sp = special(a)
        if sp is not None:
            return _pad(sp, flags, width)
        if verb in "gG" and prec is None:
            return _pad(go_float(a), flags, width)
        return ("%" + spec + verb) % a
    return f"%!{verb}({_go_type(a)}={go_print(a)})"


def _kind(v: Any) -> str:
    if isinstance(v, bool):
        return "bool"
    if isinstance(v, int):
        return "int"
    if isinstance(v, float):
        return "float"
    if isinstance(v, str):
        return "string"
    return "other"


def _compare(name: str, a: Any, b: Any) -> bool:
    ka, kb = _kind(a), _kind(b)
    if ka != kb or ka == "other":
        raise ExecError(f"error calling {name}: incompatible types for comparison")
    if name in ("eq", "ne"):
        return (a == b) if name == "eq" else (a != b)
    if ka == "bool":
        raise ExecError(f"error calling {name}: invalid type for comparison")
    # Go: le = lt || eq, gt = !le, ge = !lt (so comparisons with NaN differ from Python's).
    lt, eq = a < b, a == b
    return {"lt": lt, "le": lt or eq, "gt": not (lt or eq), "ge": not lt}[name]


def truth(v: Any) -> bool:
    """Go template truth: false, 0, \"\", nil and empty maps are false; NaN is true."""
    if isinstance(v, float):
        return v != 0  # NaN is true, as in Go
    return bool(v)


def _eq(a: Any, *bs: Any) -> bool:
    if not bs:
        raise ExecError("wrong number of args for eq: want at least 1 got 0")
    return any(_compare("eq", a, b) for b in bs)


FUNCS: dict[str, Callable[..., Any]] = {
    "humanize": humanize,
    "humanize1024": humanize1024,
    "humanizeDuration": humanize_duration,
    "humanizePercentage": humanize_percentage,
    "printf": printf,
    "toUpper": lambda s: str(s).upper(),
    "toLower": lambda s: str(s).lower(),
    "title": lambda s: re.sub(r"\b\w", lambda m: m.group(0).upper(), str(s)),
    "eq": _eq,
    "ne": lambda a, b: _compare("ne", a, b),
    "lt": lambda a, b: _compare("lt", a, b),
    "le": lambda a, b: _compare("le", a, b),
    "gt": lambda a, b: _compare("gt", a, b),
    "ge": lambda a, b: _compare("ge", a, b),
    "not": lambda a: not truth(a),
}
ARITY = {"humanize": 1, "humanize1024": 1, "humanizeDuration": 1, "humanizePercentage": 1, "toUpper": 1,
          "toLower": 1, "title": 1, "ne": 2, "lt": 2, "le": 2, "gt": 2, "ge": 2, "not": 1}

# Prometheus functions we deliberately do not offer (they need a query engine or do I/O).
UNSUPPORTED = {"query", "first", "label", "value", "strvalue", "args", "safeHtml", "match", "reReplaceAll",
                      "graphLink", "tableLink", "sortByLabel", "pathPrefix", "externalURL", "humanizeTimestamp",
                      "toTime", "parseDuration", "stripPort", "stripDomain", "index", "slice", "len", "html",
                      "js", "urlquery", "print", "println", "call"}
