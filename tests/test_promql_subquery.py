"""Subquery evaluation: nested subqueries share inner steps within one evaluation (same answer as evaluating
each outer step alone), and a per-evaluation step budget bounds the time of any rule."""

from __future__ import annotations

import pytest

from agent.engine.promql import PromQLEvalError, compile_expr
from agent.engine.promql.nodes import Clock
from agent.engine.promql.series_notation import load_series
from agent.engine.store import Store

SERIES = [
    {"series": 'x{i="0"}', "values": "1 5 2 8 3 _ 9 4 stale 6 7 0 2 11 3 5 8 1 4 6 2 9 3 7 5 1"},
    {"series": 'x{i="1"}', "values": "0+3x12 40-2x12"},
]


def _store() -> Store:
    return load_series(Store, SERIES, 30)


@pytest.mark.parametrize("t", [300, 480, 610, 750])
def test_nested_subquery_equals_per_step_evaluation(t: float) -> None:
    store = _store()
    nested = compile_expr("max_over_time(sum_over_time(x[2m:30s])[5m:1m])").eval(store, t)
    inner = compile_expr("sum_over_time(x[2m:30s])")
    steps = [s for s in range(int(t - 300), int(t) + 1) if s % 60 == 0]
    expected: dict[str, float] = {}
    for s in steps:
        for labels, v in inner.eval(store, s):
            expected[labels["i"]] = max(expected.get(labels["i"], v), v)
    assert {labels["i"]: v for labels, v in nested} == expected


def test_step_budget_fails_like_prometheus_max_samples() -> None:
    store = _store()
    query = compile_expr("max_over_time(x[15m:5ms])")  # 180,001 steps
    with pytest.raises(PromQLEvalError, match="query processing would load too many samples into memory"):
        query.eval(store, 600)
    assert compile_expr("max_over_time(x[15m:10ms])").eval(store, 600)  # 90,001 steps: within the budget
    assert Clock.STEPS == 100_000


def test_budget_is_per_evaluation() -> None:
    store = _store()
    query = compile_expr("max_over_time(x[10m:10ms])")  # 60,001 steps, twice would exceed the budget
    assert query.eval(store, 600) == query.eval(store, 600)
