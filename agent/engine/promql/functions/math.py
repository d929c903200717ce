"""Element-wise math on instant vectors: abs, ceil, floor, round, clamp, clamp_min, clamp_max."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from agent.engine.promql.nodes import Call, VectorT, drop_name
from agent.engine.promql.values import go_div, go_floor, go_max, go_min


def simple_call(f: Callable[[float], float]) -> Callable[[Call, Any, float], VectorT]:
    def impl(call: Call, store: Any, t: float) -> VectorT:
        return call.check([(drop_name(labels), f(v)) for labels, v in call.args[0].eval(store, t)])

    return impl


def call_round(call: Call, store: Any, t: float) -> VectorT:
    to_nearest = call.args[1].eval(store, t) if len(call.args) > 1 else 1.0
    inverse = go_div(1.0, to_nearest)
    return call.check(
        [(drop_name(labels), go_div(go_floor(v * inverse + 0.5), inverse)) for labels, v in call.args[0].eval(store, t)]
    )


def call_clamp(call: Call, store: Any, t: float) -> VectorT:
    vec = call.args[0].eval(store, t)
    lo = call.args[1].eval(store, t)
    hi = call.args[2].eval(store, t)
    if hi < lo:
        return []
    return call.check([(drop_name(labels), go_max(lo, go_min(hi, v))) for labels, v in vec])


def call_clamp_min(call: Call, store: Any, t: float) -> VectorT:
    vec = call.args[0].eval(store, t)
    lo = call.args[1].eval(store, t)
    return call.check([(drop_name(labels), go_max(v, lo)) for labels, v in vec])


def call_clamp_max(call: Call, store: Any, t: float) -> VectorT:
    vec = call.args[0].eval(store, t)
    hi = call.args[1].eval(store, t)
    return call.check([(drop_name(labels), go_min(v, hi)) for labels, v in vec])
