"""Compile promql-parser ASTs into evaluation nodes, rejecting everything outside the supported subset."""

from __future__ import annotations

import contextlib
import re
from typing import Any, NamedTuple

import promql_parser as pp

from agent.engine.promql import aggregate, at242, binary, nodes
from agent.engine.promql.functions import FUNCTIONS
from agent.engine.promql.regex import RegexError, RegexUnsupported, compile_anchored
from agent.engine.promql.selectors import LOOKBACK, Matcher, MatrixSelector, VectorSelector
from agent.engine.promql.subquery import Subquery
from agent.engine.promql.values import NAME, PromQLError, PromQLEvalError, Scalar, Selector, Vector, valid_label_name

AGGREGATIONS = {
    "sum", "avg", "min", "max", "count", "stddev", "stdvar", "topk", "bottomk", "quantile", "count_values", "group",
}  # fmt: skip
# promql-parser's enums are not hashable: key by their str()
_CARD = {
    "VectorMatchCardinality.OneToOne": "one-to-one",
    "VectorMatchCardinality.ManyToOne": "many-to-one",
    "VectorMatchCardinality.OneToMany": "one-to-many",
    "VectorMatchCardinality.ManyToMany": "many-to-many",
}
_MATCH_OPS = {"MatchOp.Equal": "=", "MatchOp.NotEqual": "!=", "MatchOp.Re": "=~", "MatchOp.NotRe": "!~"}


class Span(NamedTuple):
    """One occurrence of a selector: its range (0 for an instant selector) and the subqueries around it as
    (range, offset, @), outermost first."""

    selector: VectorSelector
    eval_range: float
    around: tuple[tuple[float, float, Any], ...]


def _at_time(at: Any, t: float) -> float | None:
    return None if at is None else at if at.__class__ is float else t


def selector_ranges(spans: list[Span], t: float) -> dict[int, tuple[float, float]]:
    """The samples each selector loads from storage for an instant query at ``t``, by ``id(selector)``, as
    Prometheus 2.42 computes them (engine.go getTimeRangesForSelector / subqueryTimes; the TSDB trims every
    selector's series to its own range). A selector used at several places gets the union."""
    out: dict[int, tuple[float, float]] = {}
    for span in spans:
        start = end = t
        sub_offset = sub_range = 0.0
        sub_at = None
        for rng, off, at in span.around:
            sub_offset += off
            sub_range += rng
            if at is not None:  # @ on a subquery resets what the outer ones added
                sub_offset, sub_range, sub_at = off, rng, _at_time(at, t)
        if sub_at is not None:
            start = end = sub_at
        sel = span.selector
        sel_at = _at_time(sel.at, t)
        if sel_at is not None:
            start = end = sel_at
        else:
            start -= sub_offset + sub_range
            end -= sub_offset
        start -= span.eval_range if span.eval_range else LOOKBACK
        lo, hi = start - sel.offset, end - sel.offset
        got = out.get(id(sel))
        out[id(sel)] = (lo, hi) if got is None else (min(got[0], lo), max(got[1], hi))
    return out


class Query:
    """A compiled expression: ``eval(store, t)`` returns a :class:`Vector` or a :class:`Scalar`."""

    def __init__(
        self,
        text: str,
        root: nodes.Node,
        selectors: list[Selector],
        shared: list[MatrixSelector] | None = None,
        clock: nodes.Clock | None = None,
        nested: list[Subquery] | None = None,
        spans: list[Span] | None = None,
        plan: at242.Plan | None = None,
    ) -> None:
        self.text = text
        self.root = root
        self.selectors = selectors
        self._shared = shared or []  # range selectors used more than once: read once per evaluation
        self._clock = clock  # for @ start() / @ end() and the subquery step budget, when the query has them
        self._nested = nested or []  # nested subqueries: their inner results are shared across outer steps
        self._spans = spans  # set when the query's data range matters (timestamp(x @ t), @ in a subquery)
        self._plan = plan  # 2.42's evaluation of @ inside subqueries

    def eval(self, store: Any, t: float) -> Vector | Scalar:
        """Evaluate at time ``t`` (seconds) over ``store``; raises PromQLError when Prometheus would fail."""
        if self._clock is not None:
            self._clock.t = t
            self._clock.budget = nodes.Clock.STEPS
            if self._spans:
                self._clock.ranges = selector_ranges(self._spans, t)
            if self._plan is not None:
                at242.prepare(self._plan, self._clock, t)
        for m in self._shared:
            m.memo = {}
        for sub in self._nested:
            sub.steps_memo = {}
        try:
            value = self.root.eval(store, t)
        finally:
            for m in self._shared:
                m.memo = None
            for sub in self._nested:
                sub.steps_memo = None
        if self.root.kind == "scalar":
            return Scalar(value)
        return Vector((dict(labels), v) for labels, v in value)

    def __repr__(self) -> str:
        return f"Query({self.text!r})"


def _locate(text: str, pattern: str) -> int | None:
    m = re.search(pattern, text)
    return m.start() if m else None


class _Compiler:
    def __init__(self, text: str, subquery_step: float = 60.0, emulate_at: bool = False) -> None:
        self.text = text
        self.subquery_step = subquery_step
        self.clock: nodes.Clock | None = nodes.Clock() if emulate_at else None
        self.emu = emulate_at  # @ inside a subquery: build 2.42's evaluation of it (at242)
        self.path: list[at242.AtSubquery] = []  # the subqueries around the node being compiled (emu only)
        self.pinned: list[at242.Pinned] = []
        self.emu_selectors: list[VectorSelector] = []
        self.emu_subqueries: list[at242.AtSubquery] = []
        self.depth = 0  # subqueries around the node being compiled
        self.around: list[tuple[float, float, Any]] = []  # (range, offset, @) of those subqueries, outermost first
        self.spans: list[Span] = []  # every selector occurrence with its subqueries: the query's data range
        self.clip = False  # a timestamp(x @ t) reads at t within the query's data range (2.42)
        self.nested: list[Subquery] = []  # subqueries inside subqueries
        self.selectors: list[Selector] = []
        self.vectors: dict[tuple, VectorSelector] = {}
        self.matrices: dict[tuple, MatrixSelector] = {}
        self.shared: list[MatrixSelector] = []

    def fail(self, message: str, pattern: str | None = None) -> PromQLError:
        return PromQLError(message, _locate(self.text, pattern) if pattern else None)

    def compile(self, node: Any) -> nodes.Node:
        if isinstance(node, pp.ParenExpr):
            return self.compile(node.expr)
        if isinstance(node, pp.NumberLiteral):
            return nodes.Number(float(node.val))
        if isinstance(node, pp.StringLiteral):
            return nodes.String(node.val)
        if isinstance(node, pp.VectorSelector):
            return self.vector_selector(node)
        if isinstance(node, pp.MatrixSelector):
            vs = self.vector_selector(node.vector_selector, node.range.total_seconds())
            if self.emu:
                return MatrixSelector(vs, node.range.total_seconds())
            key = (id(vs), node.range.total_seconds())
            m = self.matrices.get(key)
            if m is None:
                m = self.matrices[key] = MatrixSelector(vs, node.range.total_seconds())
            elif m not in self.shared:
                self.shared.append(m)
            return m
        if isinstance(node, pp.SubqueryExpr):
            return self.subquery(node)
        if isinstance(node, pp.UnaryExpr):
            return nodes.Negate(self.compile(node.expr))
        if isinstance(node, pp.BinaryExpr):
            return self.binary(node)
        if isinstance(node, pp.AggregateExpr):
            return self.aggregate(node)
        if isinstance(node, pp.Call):
            return self.call(node)
        raise self.fail(f"expression {type(node).__name__} is not supported")

    def at(self, modifier: Any) -> tuple[float | nodes.Clock | None, Any]:
        """The ``@`` of a selector or subquery: (time in seconds, the query's Clock, or None; a hashable key)."""
        if modifier is None:
            return None, None
        kind = str(modifier.type)
        if kind == "AtModifierType.At":
            seconds = round(modifier.at.timestamp() * 1000) / 1000  # Prometheus keeps ms precision
            return seconds, seconds
        if self.clock is None:
            self.clock = nodes.Clock()
        return self.clock, "clock"  # start() and end() are both the evaluation time of an instant query

    def subquery(self, node: Any) -> nodes.Node:
        if self.emu:
            return self.at_subquery(node)
        self.depth += 1
        offset = node.offset.total_seconds() if node.offset is not None else 0.0
        self.around.append((node.range.total_seconds(), offset, self.at(node.at)[0]))
        try:
            expr = self.compile(node.expr)
        finally:
            self.depth -= 1
            self.around.pop()
        if expr.kind != "vector":
            raise self.fail(f"subquery is only allowed on instant vector, got {expr.kind}", r"\[[^\]]*:")
        step = node.step.total_seconds() if node.step is not None else 0.0
        if step <= 0:
            step = self.subquery_step
        offset = node.offset.total_seconds() if node.offset is not None else 0.0
        at, _ = self.at(node.at)
        if self.clock is None:
            self.clock = nodes.Clock()
        sub = Subquery(expr, node.range.total_seconds(), step, offset, self.clock, at)
        if self.depth > 0:
            self.nested.append(sub)
        return sub

    def at_subquery(self, node: Any) -> nodes.Node:
        """A subquery of a query with @ inside a subquery: 2.42's evaluation (at242.AtSubquery)."""
        step = node.step.total_seconds() if node.step is not None else 0.0
        offset = node.offset.total_seconds() if node.offset is not None else 0.0
        at, _ = self.at(node.at)
        sub = at242.AtSubquery(node.range.total_seconds(), step if step > 0 else self.subquery_step, offset,
                               self.clock, at)  # fmt: skip
        if at is not None:
            self.pinned.append(at242.Pinned(sub, tuple(self.path)))
        self.around.append((sub.range, offset, at))
        self.path.append(sub)
        try:
            expr = self.compile(node.expr)
        finally:
            self.path.pop()
            self.around.pop()
        if expr.kind != "vector":
            raise self.fail(f"subquery is only allowed on instant vector, got {expr.kind}", r"\[[^\]]*:")
        sub.expr = expr
        sub.single_name = expr.single_name
        self.emu_subqueries.append(sub)
        return sub

    def plan(self, root: nodes.Node) -> at242.Plan:
        """After compiling an emulated query: step-invariant wrappers, per-subquery pinned nodes, the plan."""
        at242.wrap_invariant(root, self.clock)
        for pinned in self.pinned:
            for i, sub in enumerate(pinned.path):
                sub.inner.append(at242.Pinned(pinned.node, pinned.path[i + 1 :]))
        invariants: list[at242.StepInvariant] = []
        at242.collect_invariants(root, invariants)
        return at242.Plan(self.emu_selectors, self.emu_subqueries, self.pinned, invariants)

    def vector_selector(self, vs: Any, eval_range: float = 0.0) -> VectorSelector:
        if vs.matchers.or_matchers:
            raise self.fail("'or' inside a selector is not supported", r"\bor\b")
        name = vs.name
        raw: list[tuple[str, str, str]] = []
        for m in vs.matchers.matchers:
            op = _MATCH_OPS.get(str(m.op))
            if op is None:
                raise self.fail(f"matcher operator {m.op} is not supported")
            raw.append((m.name, op, m.value))
        if name is None:
            for label, op, value in raw:
                if label == NAME and op == "=":
                    name = value
                    break
        lint = [m for m in raw if not (m[0] == NAME and m[1] == "=" and m[2] == name)]
        self.selectors.append(Selector(name, lint))
        matchers = []
        for label, op, value in lint:
            try:
                matchers.append(Matcher(label, op, value))
            except PromQLError as err:
                raise PromQLError(err.message, self.text.find(value)) from err
        offset = vs.offset.total_seconds() if vs.offset is not None else 0.0
        at, at_key = self.at(vs.at)
        key = (name, tuple(lint), offset, at_key)
        sel = self.vectors.get(key) if not self.emu else None
        if sel is None:
            sel = self.vectors[key] = VectorSelector(name, matchers, offset, at)
            sel.absent_labels = _absent_labels(raw)
        self.spans.append(Span(sel, eval_range, tuple(self.around)))
        if self.emu:
            self.emu_selectors.append(sel)
            if at is not None:
                self.pinned.append(at242.Pinned(sel, tuple(self.path)))
        return sel

    def binary(self, node: Any) -> nodes.Node:
        op = str(node.op)
        if op not in binary.ARITH and op not in binary.COMPARE and op not in binary.SET_OPS:
            raise self.fail(f"binary operator {op} is not supported", re.escape(op))
        lhs = self.compile(node.lhs)
        rhs = self.compile(node.rhs)
        mod = node.modifier
        return_bool = False
        card = "many-to-many" if op in binary.SET_OPS else "one-to-one"
        on = False
        matching: list[str] = []
        include: list[str] = []
        if mod is not None:
            fill = mod.fill_values
            if fill is not None and (fill.lhs is not None or fill.rhs is not None):
                raise self.fail("fill() modifier is not supported", r"\bfill")
            return_bool = bool(mod.return_bool)
            card = _CARD[str(mod.card)]
            if mod.matching is not None:
                on = str(mod.matching.type) == "LabelModifierType.Include"
                matching = list(mod.matching.labels)
            include = list(mod.group_labels or [])
        return binary.Binary(op, lhs, rhs, return_bool, card, on, matching, include)

    def aggregate(self, node: Any) -> nodes.Node:
        op = str(node.op)
        if op not in AGGREGATIONS:
            raise self.fail(f"aggregation {op} is not supported", re.escape(op))
        expr = self.compile(node.expr)
        param = self.compile(node.param) if node.param is not None else None
        grouping: list[str] = []
        without = False
        if node.modifier is not None:
            without = str(node.modifier.type) == "AggModifierType.Without"
            grouping = list(node.modifier.labels)
        return aggregate.Aggregate(op, expr, param, grouping, without)

    def call(self, node: Any) -> nodes.Node:
        name = node.func.name
        impl = FUNCTIONS.get(name)
        if impl is None:
            raise self.fail(f"function {name} not supported", re.escape(name) + r"\s*\(")
        args = [self.compile(a) for a in node.args]
        kind = {"scalar": "scalar", "time": "scalar", "pi": "scalar"}.get(name, "vector")
        call = nodes.Call(name, args, kind, impl)
        if name in ("absent", "absent_over_time"):
            arg = args[0]
            vs = arg.vs if isinstance(arg, MatrixSelector) else arg
            call.extra = getattr(vs, "absent_labels", {}) if isinstance(vs, VectorSelector) else {}
        elif name == "timestamp" and isinstance(args[0], VectorSelector) and args[0].at is not None:
            if self.clock is None:
                self.clock = nodes.Clock()
            call.extra = self.clock
            self.clip = True
        elif name == "label_replace":
            # Prometheus accepts these at load time and fails every evaluation: so do we (unsupported RE2
            # constructs are the exception: those we refuse to load rather than evaluate differently).
            dst, regex = args[1].value, args[4].value
            try:
                call.extra = compile_anchored(regex)
            except RegexUnsupported as err:
                raise self.fail(f"regular expression {regex!r} in label_replace() is not supported: {err}") from err
            except RegexError:
                call.extra = PromQLEvalError(f"invalid regular expression in label_replace(): {regex}")
            if not valid_label_name(dst):
                call.extra = PromQLEvalError(f"invalid destination label name in label_replace(): {dst}")
        elif name == "label_join":
            for a in args[3:]:
                if not valid_label_name(a.value):
                    call.extra = PromQLEvalError(f"invalid source label name in label_join(): {a.value}")
                    break
            else:
                if not valid_label_name(args[1].value):
                    call.extra = PromQLEvalError(f"invalid destination label name in label_join(): {args[1].value}")
        return call


def _absent_labels(raw: list[tuple[str, str, str]]) -> dict[str, str]:
    """Labels absent() reports: equality matchers, minus labels that have any other matcher."""
    labels: dict[str, str] = {}
    others: list[str] = []
    for label, op, value in raw:
        if label == NAME:
            continue
        if op == "=" and label not in labels:
            labels[label] = value
        else:
            others.append(label)
    for label in others:
        labels.pop(label, None)
    return {k: v for k, v in labels.items() if v != ""}


_UNITLESS = re.compile(r"(\[\s*|\boffset\s+-?\s*)(\d+(?:\.\d*)?)(?![\w.])")


def _prescan(text: str) -> None:
    """Reject syntax newer than Prometheus 2.42 that promql-parser accepts: quoted (UTF-8) metric/label
    names, and durations without a unit (``[5]``, ``offset 5``)."""
    code: list[str] = []  # the text with string literals and comments blanked, positions kept
    depth = 0
    prev = ""
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c in "\"'`":
            if depth > 0 and prev in ("{", ","):
                raise PromQLError("quoted metric or label names are not supported (Prometheus 2.42)", i)
            j = i + 1
            while j < n and text[j] != c:
                j += 2 if text[j] == "\\" and c != "`" else 1
            code.append(" " * (min(j, n - 1) - i + 1))
            i = j + 1
            prev = '"'
            continue
        if c == "#":
            j = text.find("\n", i)
            j = n if j < 0 else j
            code.append(" " * (j - i))
            i = j
            continue
        if c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
        if not c.isspace():
            prev = c
        code.append(c)
        i += 1
    m = _UNITLESS.search("".join(code))
    if m:
        raise PromQLError(f"duration {m.group(2)!r} has no unit (e.g. 5m); not valid in Prometheus 2.42", m.start(2))


_REGISTERED = False


def _register_functions() -> None:
    """Teach promql-parser (which follows Prometheus 3) the 2.42 functions it no longer knows."""
    global _REGISTERED
    if not _REGISTERED:
        vt = pp.ValueType
        with contextlib.suppress(ValueError):  # already registered (by another copy of this module)
            pp.register_extra_functions([pp.Function("holt_winters", [vt.Matrix, vt.Scalar, vt.Scalar], vt.Vector)])
        _REGISTERED = True


def compile_expr(text: str, subquery_step: float = 60.0) -> Query:
    """Parse and compile a PromQL expression; PromQLError names any construct outside Prometheus 2.42.

    ``subquery_step``: the step of subqueries written without one (``x[1h:]``), Prometheus' global
    ``evaluation_interval`` (default 1m)."""
    _prescan(text)
    _register_functions()
    try:
        ast = pp.parse(text)
    except ValueError as err:
        raise PromQLError(f"parse error: {err}") from err
    compiler = _Compiler(text, subquery_step, emulate_at=_at_inside_subquery(ast))
    root = compiler.compile(ast)
    plan = compiler.plan(root) if compiler.emu else None
    if root.kind == "string":
        raise PromQLError("expression of type string is not supported (expected instant vector or scalar)")
    if root.kind == "matrix":
        raise PromQLError("expression of type range vector is not supported (expected instant vector or scalar)")
    spans = compiler.spans if compiler.clip or compiler.emu else None
    return Query(text, root, compiler.selectors, compiler.shared, compiler.clock, compiler.nested, spans, plan)


def _at_inside_subquery(ast: Any) -> bool:
    """Whether a selector or subquery inside a subquery carries @ (2.42 evaluates those its own way)."""
    depth = 0
    found = False

    def pre(node: Any) -> None:
        nonlocal depth, found
        if isinstance(node, (pp.VectorSelector, pp.SubqueryExpr)) and depth > 0 and node.at is not None:
            found = True
        if isinstance(node, pp.SubqueryExpr):
            depth += 1

    def post(node: Any) -> None:
        nonlocal depth
        if isinstance(node, pp.SubqueryExpr):
            depth -= 1

    pp.walk(ast, pre_visit=pre, post_visit=post)
    return found
