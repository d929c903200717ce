"""vector(), scalar(), sort() and sort_desc()."""

from __future__ import annotations

import math
from typing import Any

from agent.engine.promql.nodes import Call, VectorT


def call_vector(call: Call, store: Any, t: float) -> VectorT:
    return [({}, call.args[0].eval(store, t))]


def call_scalar(call: Call, store: Any, t: float) -> float:
    vec = call.args[0].eval(store, t)
    return vec[0][1] if len(vec) == 1 else math.nan


def call_sort(call: Call, store: Any, t: float) -> VectorT:
    vec = call.args[0].eval(store, t)
    nums = sorted((item for item in vec if item[1] == item[1]), key=lambda item: item[1])
    return call.check(nums + [item for item in vec if item[1] != item[1]])


def call_sort_desc(call: Call, store: Any, t: float) -> VectorT:
    vec = call.args[0].eval(store, t)
    nums = sorted((item for item in vec if item[1] == item[1]), key=lambda item: item[1], reverse=True)
    return call.check(nums + [item for item in vec if item[1] != item[1]])
