"""absent and absent_over_time."""

from __future__ import annotations

from typing import Any

from agent.engine.promql.nodes import Call, VectorT


def call_absent(call: Call, store: Any, t: float) -> VectorT:
    if call.args[0].eval(store, t):
        return []
    return [(dict(call.extra), 1.0)]


def call_absent_over_time(call: Call, store: Any, t: float) -> VectorT:
    if call.args[0].eval_series(store, t):
        return []
    return [(dict(call.extra), 1.0)]
