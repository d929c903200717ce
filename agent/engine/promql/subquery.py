"""Subqueries: ``expr[range:step] offset d @ t``, the inner expression evaluated at its own aligned steps."""

from __future__ import annotations

from typing import Any

from agent.engine.promql.nodes import Clock, Node
from agent.engine.promql.selectors import SeriesRange
from agent.engine.promql.values import PromQLEvalError, labels_key, ms


class Subquery(Node):
    """A range vector built by evaluating ``expr`` at every multiple of ``step`` (ms since the epoch) in
    ``[end - range, end]``, ``end`` being the ``@`` time (or the query's) minus the offset (Prometheus 2.42:
    the first step is the first multiple at or after the window's start; the window is closed)."""

    kind = "matrix"

    def __init__(
        self, expr: Node, range_s: float, step_s: float, offset: float, clock: Clock, at: float | Clock | None = None
    ) -> None:
        self.expr = expr
        self.clock = clock
        self.range = range_s
        self.step = step_s
        self.offset = offset
        self.at = at
        self.single_name = expr.single_name
        self.memo: dict | None = None
        self.steps_memo: dict[int, list] | None = None  # inner results by step, set by Query.eval when nested

    def window(self, t: float) -> tuple[float, float]:
        at = self.at
        end = (t if at is None else at if at.__class__ is float else at.t) - self.offset
        return end - self.range, end

    def windows(self, store: Any, t: float) -> None:
        """No ring-store tick windows: the points are computed, not stored."""
        return None

    def steps(self, t: float) -> range:
        """The evaluation times (ms) of the inner expression."""
        start, end = self.window(t)
        step = ms(self.step)
        first = ms(start)
        first = -(-first // step) * step  # ceil to a multiple of the step (Go: truncate, then add one step)
        return range(first, ms(end) + 1, step)

    def _charge(self, n: int) -> None:
        """Take ``n`` inner evaluations from the query's budget (Prometheus' max-samples error past it)."""
        clock = self.clock
        clock.budget -= n
        if clock.budget < 0:
            raise PromQLEvalError("query processing would load too many samples into memory in query execution")

    def eval_series(self, store: Any, t: float) -> list[SeriesRange]:
        """(labels, times, values, clean) per series the inner expression returned at any step."""
        memo = self.memo
        if memo is not None:
            got = memo.get((id(store), t))
            if got is not None:
                return got
        series: dict[tuple, tuple[dict, list[float], list[float]]] = {}
        expr = self.expr
        steps = self.steps(t)
        done = self.steps_memo  # a nested subquery: outer steps share most inner steps
        if done is None:
            self._charge(len(steps))
        for ts_ms in steps:
            ts = ts_ms / 1000
            if done is None:
                vec = expr.eval(store, ts)
            else:
                vec = done.get(ts_ms)
                if vec is None:
                    self._charge(1)
                    vec = done[ts_ms] = expr.eval(store, ts)
            for labels, v in vec:
                key = labels_key(labels)
                got = series.get(key)
                if got is None:
                    got = series[key] = (labels, [], [])
                got[1].append(ts)
                got[2].append(v)
        out = [
            (labels, times, vals, not any(v != v for v in vals))
            for _, (labels, times, vals) in sorted(series.items(), key=lambda item: item[0])
        ]
        if memo is not None:
            memo[(id(store), t)] = out
        return out
