"""Subqueries: ``expr[range:step] offset d @ t``, the inner expression evaluated at its own aligned steps."""

from __future__ import annotations

from typing import Any

from agent.engine.promql.nodes import Clock, Node
from agent.engine.promql.selectors import SeriesRange
from agent.engine.promql.values import labels_key, ms


class Subquery(Node):
    """A range vector built by evaluating ``expr`` at every multiple of ``step`` (ms since the epoch) in
    ``[end - range, end]``, ``end`` being the ``@`` time (or the query's) minus the offset (Prometheus 2.42:
    the first step is the first multiple at or after the window's start; the window is closed)."""

    kind = "matrix"

    def __init__(
        self, expr: Node, range_s: float, step_s: float, offset: float, at: float | Clock | None = None
    ) -> None:
        self.expr = expr
        self.range = range_s
        self.step = step_s
        self.offset = offset
        self.at = at
        self.single_name = expr.single_name
        self.memo: dict | None = None

    def window(self, t: float) -> tuple[float, float]:
        at = self.at
        end = (t if at is None else at if at.__class__ is float else at.t) - self.offset
        return end - self.range, end

    def windows(self, store: Any, t: float) -> None:
        """No ring-store tick windows: the points are computed, not stored."""
        return None

    def steps(self, t: float) -> list[int]:
        """The evaluation times (ms) of the inner expression."""
        start, end = self.window(t)
        step = ms(self.step)
        end_ms = ms(end)
        first = ms(start)
        first = -(-first // step) * step  # ceil to a multiple of the step (Go: truncate, then add one step)
        return list(range(first, end_ms + 1, step))

    def eval_series(self, store: Any, t: float) -> list[SeriesRange]:
        """(labels, times, values, clean) per series the inner expression returned at any step."""
        memo = self.memo
        if memo is not None:
            got = memo.get((id(store), t))
            if got is not None:
                return got
        series: dict[tuple, tuple[dict, list[float], list[float]]] = {}
        expr = self.expr
        for ts_ms in self.steps(t):
            ts = ts_ms / 1000
            for labels, v in expr.eval(store, ts):
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
