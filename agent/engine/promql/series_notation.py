"""promtool's input-series notation (``values: '0+10x5 _ stale 3x2'``) and a loader into a Store.

Expanding notation: ``a+bxn`` / ``a-bxn`` give n+1 values a, a+b, ... (accumulated as Go does, so
rounding matches); ``axn`` repeats a n+1 times; ``_`` is one missing sample and ``_xn`` n of them;
``stale`` is a staleness marker. Values are floats, ``Inf``/``-Inf``/``NaN`` included.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Literal

import promql_parser as pp

from agent.core.metrics import Sample
from agent.engine.promql.values import NAME, PromQLError
from agent.engine.store import ABSENT_NAN, Store

Value = float | None | Literal["stale"]

_NUM = (
    r"(?:[0-9]+(?:\.[0-9]*)?(?:[eE][-+]?[0-9]+)?|\.[0-9]+(?:[eE][-+]?[0-9]+)?"
    r"|[iI][nN][fF]|[nN][aA][nN])"
)
_ITEM = re.compile(
    rf"(?P<blank>_)(?:x(?P<bn>[0-9]+))?"
    rf"|(?P<stale>stale)"
    rf"|(?P<a>[-+]?{_NUM})(?:(?P<b>[-+]{_NUM})?x(?P<n>[0-9]+))?"
)


def _float(text: str) -> float:
    body = text.lstrip("+-")
    sign = -1.0 if text.startswith("-") else 1.0
    if body[:2] in ("0x", "0X"):
        return sign * float(int(body, 16))
    return float(text)


def parse_values(text: str) -> list[Value]:
    """Expand a promtool ``values`` string."""
    out: list[Value] = []
    for item in text.split():
        m = _ITEM.fullmatch(item)
        if m is None:
            raise PromQLError(f"invalid series value {item!r} (expected number, '_', 'stale', 'a+bxn' or 'axn')")
        if m["blank"]:
            out.extend([None] * (int(m["bn"]) if m["bn"] is not None else 1))
        elif m["stale"]:
            out.append("stale")
        else:
            a = _float(m["a"])
            if m["n"] is None:
                out.append(a)
                continue
            b = _float(m["b"]) if m["b"] else 0.0
            for _ in range(int(m["n"]) + 1):
                out.append(a)
                a += b
    return out


def parse_series_selector(text: str) -> tuple[str, dict[str, str]]:
    """``name{label="v",...}`` (or ``{__name__="name",...}``) -> (name, labels)."""
    try:
        node = pp.parse(text)
    except ValueError as err:
        raise PromQLError(f"invalid series {text!r}: {err}") from err
    if not isinstance(node, pp.VectorSelector) or node.offset is not None or node.at is not None:
        raise PromQLError(f"invalid series {text!r}: expected a metric with labels")
    name = node.name
    labels: dict[str, str] = {}
    for m in node.matchers.matchers:
        if str(m.op) != "MatchOp.Equal":
            raise PromQLError(f"invalid series {text!r}: only '=' label matchers are allowed")
        if m.name == NAME:
            name = m.value
        else:
            labels[m.name] = m.value
    if not name:
        raise PromQLError(f"invalid series {text!r}: no metric name")
    return name, labels


def parse_series(text: str, values: str | None = None) -> tuple[str, dict[str, str], list[Value]]:
    """Parse ``'name{l="v"} 1+1x3 _ stale'`` (or the selector and ``values`` separately)."""
    if values is None:
        m = re.match(r"\s*([^{\s]*(?:\{(?:[^}\"]|\"(?:[^\"\\]|\\.)*\")*\})?)\s*(.*)", text, re.S)
        if m is None:
            raise PromQLError(f"invalid series {text!r}")
        text, values = m.group(1), m.group(2)
    name, labels = parse_series_selector(text)
    return name, labels, parse_values(values)


def load_series(
    store_factory: Callable[[float, float], Store],
    input_series: Iterable[Mapping[str, Any]],
    interval: float,
    end: float | None = None,
) -> Store:
    """Build a Store holding promtool ``input_series`` (``{"series": ..., "values": ...}``) sampled every ``interval``.

    Sample i sits at ``i * interval``; ``_`` becomes ABSENT_NAN and ``stale`` an omitted sample (= staleness
    marker). A series that ends early is not stale afterwards (as in promtool). ``end`` extends the ticks
    (without samples) up to that time, for callers that keep writing into the store.
    """
    parsed = []
    for item in input_series:
        name, labels, values = parse_series(item["series"], item.get("values", ""))
        parsed.append((name, tuple(sorted(labels.items())), values))
    ticks = max((len(v) for _, _, v in parsed), default=0)
    if end is not None:
        ticks = max(ticks, math.floor(end / interval + 1e-9) + 1)
    store = store_factory(max(ticks, 1) * interval + interval, interval)
    for i in range(ticks):
        store.begin_tick(i * interval)
        samples = []
        for name, labels, values in parsed:
            v = values[i] if i < len(values) else None
            if v is None:
                samples.append(Sample(name, labels, ABSENT_NAN))
            elif v != "stale":
                samples.append(Sample(name, labels, v))
        store.add(samples)
    return store
