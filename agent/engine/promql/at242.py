"""Prometheus 2.42's evaluation of ``@`` inside subqueries, for the queries that have it.

2.42 turns every ``@ t`` into an offset relative to an evaluation time (engine.go setOffsetForAtModifier):
first the query's, then, whenever a subquery's first step differs from its evaluator's start, that first
step for everything inside the subquery. Step-invariant parts (preprocessExprHelper) are evaluated once, at
their evaluator's start, and repeated over its steps; every selector reads only the samples loaded for it
(getTimeRangesForSelector; the TSDB trims its series to that range). Inside subqueries that answers
differently from pinning the times as written (a pinned range under ``predict_linear`` slides with the
steps; a subquery with its own ``@`` around an ``@`` selector can read nothing). The compiler builds
queries with ``@`` inside a subquery from these nodes (unshared selectors, :class:`StepInvariant` wrappers,
:class:`AtSubquery`) and :func:`prepare` replays the offset rewriting at each evaluation; no other query
uses this module.
"""

from __future__ import annotations

import bisect
from typing import Any, NamedTuple

from agent.engine.promql.nodes import Call, Clock, Negate, Node, Number, String
from agent.engine.promql.selectors import MatrixSelector, SeriesRange, VectorSelector
from agent.engine.promql.subquery import Subquery
from agent.engine.promql.values import labels_key, ms

AT_MODIFIER_UNSAFE = frozenset(
    {"days_in_month", "day_of_month", "day_of_week", "day_of_year", "hour", "minute", "month", "year"}
    | {"predict_linear", "time", "timestamp"}
)


def at_time(at: Any, t: float) -> float:
    """An ``@`` value: a time, or the query's Clock (``start()``/``end()`` = the evaluation time ``t``)."""
    return at if at.__class__ is float else t


class Pinned(NamedTuple):
    """A selector or subquery with ``@`` and the subqueries around it, outermost first."""

    node: Any
    path: tuple[Any, ...]


def get_offset(at: Any, orig: float, path: tuple[Any, ...], eval_time: float, t: float) -> float:
    """engine.go setOffsetForAtModifier's getOffset: the offset that makes ``@ at`` hold at ``eval_time``."""
    sub_offset = 0.0
    sub_at = None
    for sub in path:
        sub_offset += sub.offset
        if sub.at is not None:  # @ on a subquery resets the offsets collected so far
            sub_offset = sub.offset
            sub_at = at_time(sub.at, t)
    if sub_at is not None:
        sub_offset += eval_time - sub_at
    return orig + (eval_time - at_time(at, t)) - sub_offset


class StepInvariant(Node):
    """A step-invariant part: evaluated once at its evaluator's start, the same answer at every step."""

    def __init__(self, expr: Node, clock: Clock) -> None:
        self.expr = expr
        self.kind = expr.kind
        self.single_name = expr.single_name
        self.clock = clock
        self.memo: dict[float, Any] = {}

    def eval(self, store: Any, t: float) -> Any:
        start = self.clock.ctx_start
        got = self.memo.get(start)
        if got is None:
            got = self.memo[start] = self.expr.eval(store, start)
        return got


class AtSubquery(Subquery):
    """A subquery evaluated as 2.42 does: once per evaluator range, over its own aligned steps, after the
    ``@`` offsets inside it were re-based on its first step; the function over it then reads windows of that
    matrix at each of the evaluator's steps."""

    def __init__(self, range_s: float, step_s: float, offset: float, clock: Clock, at: Any) -> None:
        self.expr = None  # type: ignore[assignment]  # set once the inner expression is compiled
        self.range = range_s
        self.step = step_s
        self.offset = offset
        self.clock = clock
        self.at = at
        self.single_name = False
        self.memo = None
        self.steps_memo = None
        self.eff = offset  # the offset 2.42 evaluates with (rewritten for @)
        self.inner: list[Pinned] = []  # pinned nodes inside, with their paths relative to this subquery
        self.ctx_memo: dict[tuple[float, float], list] = {}

    def _outer_offset(self) -> float:
        clock = self.clock
        if self.at is None:
            return self.eff
        return self.offset + (clock.ctx_start - at_time(self.at, clock.t))

    def window(self, t: float) -> tuple[float, float]:
        end = t - self._outer_offset()
        return end - self.range, end

    def _evaluate(self, store: Any, a: float, b: float) -> list[tuple[dict, list[int], list[float]]]:
        clock = self.clock
        step = ms(self.step)
        eff = ms(self.eff)
        end = ms(b) - eff
        start = -(-(ms(a) - eff - ms(self.range)) // step) * step
        if start != ms(a):
            for pinned in self.inner:
                node = pinned.node
                node.eff = get_offset(node.at, node.offset, pinned.path, start / 1000, clock.t)
        steps = range(start, end + 1, step)
        self._charge(len(steps))
        series: dict[tuple, tuple[dict, list[int], list[float]]] = {}
        saved = clock.ctx_start, clock.ctx_end
        clock.ctx_start, clock.ctx_end = start / 1000, end / 1000
        try:
            for ts_ms in steps:
                for labels, v in self.expr.eval(store, ts_ms / 1000):
                    got = series.get(labels_key(labels))
                    if got is None:
                        got = series[labels_key(labels)] = (labels, [], [])
                    got[1].append(ts_ms)
                    got[2].append(v)
        finally:
            clock.ctx_start, clock.ctx_end = saved
        return [series[k] for k in sorted(series)]

    def eval_series(self, store: Any, t: float) -> list[SeriesRange]:
        clock = self.clock
        key = (clock.ctx_start, clock.ctx_end)
        matrix = self.ctx_memo.get(key)
        if matrix is None:
            matrix = self.ctx_memo[key] = self._evaluate(store, *key)
        start, end = self.window(t)
        lo_ms, hi_ms = ms(start), ms(end)
        out: list[SeriesRange] = []
        for labels, times, vals in matrix:
            lo, hi = bisect.bisect_left(times, lo_ms), bisect.bisect_right(times, hi_ms)
            if lo < hi:
                vs = vals[lo:hi]
                out.append((labels, [x / 1000 for x in times[lo:hi]], vs, not any(v != v for v in vs)))
        return out


def wrap_invariant(node: Node, clock: Clock) -> bool:
    """preprocessExprHelper: whether ``node`` is step invariant, wrapping its invariant parts that are not."""
    if isinstance(node, (Number, String)):
        return True
    if isinstance(node, VectorSelector):
        return node.at is not None
    if isinstance(node, MatrixSelector):
        return node.vs.at is not None
    if isinstance(node, AtSubquery):
        if wrap_invariant(node.expr, clock):
            node.expr = StepInvariant(node.expr, clock)
        return node.at is not None
    if isinstance(node, Negate):
        return wrap_invariant(node.expr, clock)
    if isinstance(node, Call):
        flags = [wrap_invariant(a, clock) for a in node.args]
        if node.name not in AT_MODIFIER_UNSAFE and all(flags):
            return True
        for i, (arg, invariant) in enumerate(zip(node.args, flags, strict=True)):
            if not invariant or arg.kind == "matrix" or isinstance(arg, (Number, String)):
                continue  # matrix arguments are read step by step all the same
            if node.name == "timestamp" and isinstance(arg, VectorSelector):
                continue  # timestamp() reads its selector itself
            node.args[i] = StepInvariant(arg, clock)
        return False
    lhs, rhs = getattr(node, "lhs", None), getattr(node, "rhs", None)
    if lhs is not None and rhs is not None:
        left, right = wrap_invariant(lhs, clock), wrap_invariant(rhs, clock)
        if left and right:
            return True
        if left and not isinstance(lhs, (Number, String)):
            node.lhs = StepInvariant(lhs, clock)
        if right and not isinstance(rhs, (Number, String)):
            node.rhs = StepInvariant(rhs, clock)
        return False
    expr = getattr(node, "expr", None)  # aggregations (2.42 looks at the expression, not the parameter)
    return wrap_invariant(expr, clock) if isinstance(expr, Node) else False


class Plan(NamedTuple):
    """What :func:`prepare` resets per evaluation."""

    selectors: list[VectorSelector]
    subqueries: list[AtSubquery]
    pinned: list[Pinned]
    invariants: list[StepInvariant]


def collect_invariants(node: Node, out: list[StepInvariant]) -> None:
    if isinstance(node, StepInvariant):
        out.append(node)
    for attr in ("expr", "lhs", "rhs", "param", "vs"):
        child = getattr(node, attr, None)
        if isinstance(child, Node):
            collect_invariants(child, out)
    for arg in getattr(node, "args", None) or []:
        if isinstance(arg, Node):
            collect_invariants(arg, out)


def prepare(plan: Plan, clock: Clock, t: float) -> None:
    """Before an evaluation at ``t``: the query-level offset rewriting, each selector's data range (in
    ``clock.ranges``), fresh memos."""
    clock.ctx_start = clock.ctx_end = t
    for sel in plan.selectors:
        sel.eff = sel.offset
        sel.clip = clock.ranges[id(sel)]
    for sub in plan.subqueries:
        sub.eff = sub.offset
        sub.ctx_memo = {}
    for pinned in plan.pinned:
        node = pinned.node
        node.eff = get_offset(node.at, node.offset, pinned.path, t, t)
    for inv in plan.invariants:
        inv.memo = {}
