"""PromQL's functions: the FUNCTIONS table, by name, of implementations ``impl(call, store, t)``.

Every function of Prometheus 2.42 (promql/parser/functions.go). One module per family: :mod:`rate` (rate
increase delta irate idelta), :mod:`regression` (deriv predict_linear), :mod:`over_time` (``*_over_time``
changes resets holt_winters), :mod:`presence` (absent absent_over_time), :mod:`math` (element-wise math,
trigonometry, pi), :mod:`time` (time timestamp and the date functions), :mod:`conversion` (vector scalar
sort sort_desc), :mod:`labels` (label_replace label_join), :mod:`histogram` (histogram_*); :mod:`kahan`
holds the summation they share.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from agent.engine.promql.functions import conversion, histogram, labels, over_time, presence, rate, regression, time
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
    "holt_winters": over_time.call_holt_winters,
    "pi": m.call_pi,
    "histogram_quantile": histogram.call_histogram_quantile,
    "histogram_count": histogram.call_native_only,
    "histogram_sum": histogram.call_native_only,
    "histogram_fraction": histogram.call_native_only,
    **{name: m.simple_call(f) for name, f in m.ELEMENTWISE.items()},
    **{name: time.date_call(part) for name, part in time.DATE_PARTS.items()},
    **{name: over_time.range_call(f, name == "last_over_time") for name, f in over_time.SIMPLE_RANGE.items()},
}
