"""A runner for Prometheus' own PromQL test format (``promql/testdata/*.test``, ``promql/test.go`` at v2.42).

Commands: ``load <interval>`` followed by series lines in the expanding notation, ``clear``,
``eval[_fail|_ordered] instant at <duration> <expr>`` followed by the expected result lines (a series with
one value, or a bare number for a scalar). Values compare with test.go's ``almostEqual`` (relative error
1e-6, both NaN counts as equal). Series are held in :class:`SampleStore`, which keeps arbitrary sample
timestamps per series (a ``load 1ms`` and a ``load 10s`` block can feed one test), and which the engine
reads through the generic Store API (``family``, ``instant``, ``points``).
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import promql_parser as pp

from agent.core.durations import parse_duration
from agent.engine.promql import PromQLError, Scalar, compile_expr
from agent.engine.promql.series_notation import parse_series
from agent.engine.promql.values import NAME, labels_key, ms
from agent.engine.store import STALE_NAN, is_stale

EPSILON = 0.000001
MIN_NORMAL = 2.2250738585072014e-308

_LOAD = re.compile(r"^load\s+(.+?)$")
_EVAL = re.compile(r"^eval(?:_(fail|ordered))?\s+instant\s+(?:at\s+(.+?))?\s+(.+)$")


class SeriesSamples:
    """One series: sorted sample times (seconds) and values (staleness markers included)."""

    __slots__ = ("labels", "name", "times", "values")

    def __init__(self, name: str, labels: tuple[tuple[str, str], ...]) -> None:
        self.name = name
        self.labels = labels
        self.times: list[float] = []
        self.values: list[float] = []

    def append(self, t: float, v: float) -> None:
        i = bisect.bisect_left(self.times, t)
        if i < len(self.times) and self.times[i] == t:
            self.values[i] = v  # a later load overwrites the sample (as the TSDB ignores or errors: tests never mix)
            return
        self.times.insert(i, t)
        self.values.insert(i, v)


class SampleStore:
    """Samples at arbitrary times per series, read through the Store API the engine's generic path uses."""

    def __init__(self) -> None:
        self.by_name: dict[str, dict[tuple[tuple[str, str], ...], SeriesSamples]] = {}
        self.version = 0

    def add(self, name: str, labels: dict[str, str], t: float, v: float) -> None:
        key = tuple(sorted(labels.items()))
        family = self.by_name.setdefault(name, {})
        series = family.get(key)
        if series is None:
            series = family[key] = SeriesSamples(name, key)
            self.version += 1
        series.append(t, v)

    def family(self, name: str) -> dict[tuple[tuple[str, str], ...], SeriesSamples]:
        return self.by_name.get(name, {})

    def instant(self, series: SeriesSamples, t: float, lookback: float = 300.0) -> tuple[float, float] | None:
        """The newest sample in ``(t - lookback, t]`` unless it is a staleness marker."""
        i = bisect.bisect_right(series.times, t) - 1
        if i < 0 or series.times[i] <= t - lookback:
            return None
        v = series.values[i]
        if is_stale(v):
            return None
        return series.times[i], v

    def points(self, series: SeriesSamples, start: float, end: float) -> list[tuple[float, float]]:
        """Samples with ``start < t <= end``, without staleness markers."""
        lo = bisect.bisect_right(series.times, start)
        hi = bisect.bisect_right(series.times, end)
        return [(t, v) for t, v in zip(series.times[lo:hi], series.values[lo:hi], strict=True) if not is_stale(v)]


@dataclass
class Load:
    line: int
    interval: float
    series: list[tuple[str, dict[str, str], list]]


@dataclass
class Clear:
    line: int


@dataclass
class Eval:
    line: int
    expr: str
    at: float
    fail: bool = False
    ordered: bool = False
    scalar: float | None = None
    expected: list[tuple[dict[str, str], float]] = field(default_factory=list)


Command = Load | Clear | Eval


def _lines(text: str) -> list[str]:
    out = []
    for line in text.split("\n"):
        line = line.strip()
        out.append("" if line.startswith("#") else line)
    return out


def parse_number(text: str) -> float | None:
    """test.go parseNumber: strconv.ParseInt(s, 0, 64), else ParseFloat."""
    try:
        return float(int(text, 0))
    except ValueError:
        pass
    if re.fullmatch(r"[-+]?(?:inf(?:inity)?|nan|(?:\d+\.?\d*|\.\d+)(?:e[-+]?\d+)?)", text, re.I) is None:
        return None
    return float(text)


def _series_line(text: str, lineno: int) -> tuple[str | None, dict[str, str], list]:
    text = text.strip()
    if text.startswith("{") and not re.match(r"\{\s*__name__\s*=", text):
        # a line without a metric name: give the parser one and take it back off
        _, labels, values = parse_series("x" + text)
        return None, labels, values
    name, labels, values = parse_series(text)
    return name, labels, values


def parse(text: str) -> list[Command]:
    """Parse a ``.test`` file into commands (line numbers 1-based)."""
    lines = _lines(text)
    cmds: list[Command] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        if not line:
            i += 1
            continue
        word = re.split(r"[\t ]+", line, maxsplit=1)[0].lower()
        if word == "clear":
            cmds.append(Clear(i + 1))
            i += 1
        elif word == "load":
            m = _LOAD.match(line)
            if m is None:
                raise ValueError(f"line {i + 1}: invalid load command")
            cmd = Load(i + 1, parse_duration(m.group(1)), [])
            i += 1
            while i < len(lines) and lines[i]:
                name, labels, values = _series_line(lines[i], i + 1)
                cmd.series.append((name, labels, values))
                i += 1
            cmds.append(cmd)
        elif word.startswith("eval"):
            m = _EVAL.match(line)
            if m is None:
                raise ValueError(f"line {i + 1}: invalid eval command")
            mod, at, expr = m.groups()
            ev = Eval(i + 1, expr, parse_duration(at), fail=mod == "fail", ordered=mod == "ordered")
            i += 1
            while i < len(lines) and lines[i]:
                number = parse_number(lines[i])
                if number is not None:
                    ev.scalar = number
                    i += 1
                    break
                name, labels, values = _series_line(lines[i], i + 1)
                if len(values) != 1:
                    raise ValueError(f"line {i + 1}: expected one value")
                full = {NAME: name, **labels} if name else labels
                ev.expected.append((full, values[0]))
                i += 1
            cmds.append(ev)
        else:
            raise ValueError(f"line {i + 1}: invalid command {line!r}")
    return cmds


def almost_equal(a: float, b: float) -> bool:
    """test.go almostEqual."""
    if a != a and b != b:
        return True
    if a == b:
        return True
    diff = abs(a - b)
    if a == 0 or b == 0 or diff < MIN_NORMAL:
        return diff < EPSILON * MIN_NORMAL
    return diff / (abs(a) + abs(b)) < EPSILON


def load(store: SampleStore, cmd: Load) -> None:
    for name, labels, values in cmd.series:
        for k, v in enumerate(values):
            if v is None:
                continue  # '_': no sample
            value = STALE_NAN if v == "stale" else v
            store.add(name, labels, round(k * cmd.interval * 1000) / 1000, value)


def check(cmd: Eval, store: SampleStore) -> str | None:
    """Run one eval; None when it agrees with the expectation, else what differs."""
    try:
        query = compile_expr(cmd.expr)
        result = query.eval(store, cmd.at)
    except (PromQLError, ValueError) as err:
        if cmd.fail:
            return None
        return f"error: {err}"
    if cmd.fail:
        return "expected an error, got a result"
    if isinstance(result, Scalar):
        if cmd.scalar is None:
            return f"got scalar {result.value}, expected a vector"
        if not almost_equal(cmd.scalar, result.value):
            return f"expected scalar {cmd.scalar}, got {result.value}"
        return None
    if cmd.scalar is not None:
        return f"expected scalar {cmd.scalar}, got a vector of {len(result)}"
    expected = {labels_key(labels): (pos, labels, v) for pos, (labels, v) in enumerate(cmd.expected)}
    seen = set()
    for pos, (labels, v) in enumerate(result):
        key = labels_key(labels)
        if key not in expected:
            return f"unexpected series {labels} {v} in result"
        exp_pos, _, exp_v = expected[key]
        if cmd.ordered and exp_pos != pos:
            return f"series {labels} at position {pos + 1}, expected at {exp_pos + 1}"
        if not almost_equal(exp_v, v):
            return f"expected {exp_v} for {labels}, got {v}"
        seen.add(key)
    missing = [labels for key, (_, labels, _) in expected.items() if key not in seen]
    if missing:
        return f"expected series {missing[0]} not in result ({len(result)} series)"
    return None


@dataclass
class Outcome:
    file: str
    line: int
    expr: str
    problem: str | None


# Functions whose result depends on the evaluation time even when their arguments do not (engine.go).
AT_MODIFIER_UNSAFE = {
    "days_in_month", "day_of_month", "day_of_week", "day_of_year", "hour", "minute", "month", "year",
    "predict_linear", "time", "timestamp",
}  # fmt: skip


def _duration(d: timedelta) -> str:
    return pp.display_duration(d) if d >= timedelta(0) else "-" + pp.display_duration(-d)


def _subquery_text(node: pp.SubqueryExpr) -> str:
    """str() of a subquery; promql-parser prints ``x[5m:]`` as ``x[5m]``, so the harness' default step (1m)
    is written out."""
    step = _duration(node.step) if node.step is not None else "1m"
    text = f"{node.expr}[{_duration(node.range)}:{step}]"
    if node.offset is not None:
        text += f" offset {_duration(node.offset)}"
    if node.at is not None:
        text += f" {node.at}"
    return text


def at_variants(expr: str, t: float) -> list[tuple[str, float]]:
    """test.go atModifierTestCases: ``@ t`` on every selector and subquery not inside a subquery (nor
    already carrying one), evaluated at other times; none when a time-dependent function is used."""
    ast = pp.parse(expr)
    unsafe = []
    pp.walk(
        ast, pre_visit=lambda n: unsafe.append(n.func.name in AT_MODIFIER_UNSAFE) if isinstance(n, pp.Call) else None
    )
    if any(unsafe):
        return []
    at = f" @ {t:.3f}"
    depth = 0

    def pre(node: pp.Expr) -> pp.Expr | None:
        nonlocal depth
        if isinstance(node, pp.SubqueryExpr):
            depth += 1
            if depth == 1 and node.at is None:
                return pp.parse(_subquery_text(node) + at)
            if node.step is None:
                return pp.parse(_subquery_text(node))
        elif isinstance(node, pp.VectorSelector) and depth == 0 and node.at is None:
            return pp.parse(str(node) + at)
        return None

    def post(node: pp.Expr) -> None:
        nonlocal depth
        if isinstance(node, pp.SubqueryExpr):
            depth -= 1

    text = str(pp.transform(ast, pre_visit=pre, post_visit=post))
    ts = ms(t)
    times = [-1000, 0, 1000] if ts == 0 else [-10 * ts, 0, ts // 5, ts, 10 * ts]
    return [(text, x / 1000) for x in times]


def run_file(path: Path, at_variants: bool = False) -> Iterator[Outcome]:
    """Every eval of one file, in order; with ``at_variants``, also the harness' ``@`` variants of each."""
    store = SampleStore()
    for cmd in parse(path.read_text()):
        if isinstance(cmd, Clear):
            store = SampleStore()
        elif isinstance(cmd, Load):
            load(store, cmd)
        elif not at_variants:
            yield Outcome(path.name, cmd.line, cmd.expr, check(cmd, store))
        else:
            compile_expr(cmd.expr)  # registers 2.42's functions with the parser before parsing here
            for text, t in globals()["at_variants"](cmd.expr, cmd.at):
                variant = Eval(cmd.line, text, t, cmd.fail, cmd.ordered, cmd.scalar, cmd.expected)
                yield Outcome(path.name, cmd.line, f"{text} (at {t:g}s)", check(variant, store))
