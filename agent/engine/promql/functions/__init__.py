"""PromQL's functions: the FUNCTIONS table, by name, of implementations ``impl(call, store, t)``.

One module per family: :mod:`rate` (rate increase delta irate idelta), :mod:`regression` (deriv
predict_linear), :mod:`over_time` (``*_over_time`` changes resets), :mod:`presence` (absent*),
:mod:`math` (element-wise math), :mod:`time` (time timestamp), :mod:`conversion` (vector scalar sort*),
:mod:`labels` (label_replace label_join); :mod:`kahan` holds the summation they share.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from agent.engine.promql.functions import conversion, labels, over_time, presence, rate, regression, time
from agent.engine.promql.functions import math as m
from agent.engine.promql.values import go_ceil, go_floor

FUNCTIONS: dict[str, Callable[[Any, Any, float], Any]] = {
    "rate": rate.rate_call(True, True),
    "increase": rate.rate_call(True, False),
    "delta": rate.rate_call(False, False),
    "irate": rate.instant_rate_call(True),
    "idelta": rate.instant_rate_call(False),
    "deriv": regression.call_deriv,
    "predict_linear": regression.call_predict_linear,
    "quantile_over_time": over_time.call_quantile_over_time,
    "absent": presence.call_absent,
    "absent_over_time": presence.call_absent_over_time,
    "abs": m.simple_call(abs),
    "ceil": m.simple_call(go_ceil),
    "floor": m.simple_call(go_floor),
    "round": m.call_round,
    "clamp": m.call_clamp,
    "clamp_min": m.call_clamp_min,
    "clamp_max": m.call_clamp_max,
    "time": time.call_time,
    "timestamp": time.call_timestamp,
    "vector": conversion.call_vector,
    "scalar": conversion.call_scalar,
    "sort": conversion.call_sort,
    "sort_desc": conversion.call_sort_desc,
    "label_replace": labels.call_label_replace,
    "label_join": labels.call_label_join,
    **{name: over_time.range_call(f, name == "last_over_time") for name, f in over_time.SIMPLE_RANGE.items()},
}
