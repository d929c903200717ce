"""time() and timestamp()."""

from __future__ import annotations

from typing import Any

from agent.engine.promql.nodes import Call, VectorT, drop_name
from agent.engine.promql.selectors import VectorSelector
from agent.engine.promql.values import ms


def call_time(call: Call, store: Any, t: float) -> float:
    return ms(t) / 1000


def call_timestamp(call: Call, store: Any, t: float) -> VectorT:
    arg = call.args[0]
    if isinstance(arg, VectorSelector):
        vec = arg.eval_timestamps(store, t)
    else:
        now = ms(t) / 1000
        vec = [(labels, now) for labels, _ in arg.eval(store, t)]
    return call.check([(drop_name(labels), v) for labels, v in vec])
