"""histogram_quantile over classic ``_bucket`` series (``le`` labels), and histogram_count, histogram_sum,
histogram_fraction, which in 2.42 act on native histograms only: a node's float series give no output."""

from __future__ import annotations

import math
import re
from typing import Any

from agent.engine.promql.nodes import Call, VectorT
from agent.engine.promql.values import NAME

_DECIMAL = re.compile(r"[+-]?(?:\d+(?:_\d+)*\.?(?:\d+(?:_\d+)*)?|\.\d+(?:_\d+)*)(?:[eE][+-]?\d+(?:_\d+)*)?")
_SPECIAL = re.compile(r"[+-]?(?:inf|infinity|nan)", re.I)
_HEX = re.compile(r"[+-]?0[xX](?:[0-9a-fA-F_]+\.?[0-9a-fA-F_]*|\.[0-9a-fA-F_]+)[pP][+-]?\d+")


def go_parse_float(text: str) -> float | None:
    """strconv.ParseFloat(text, 64), None where Go fails (out-of-range values are +-Inf, as Go returns them
    with an error that histogram_quantile treats as a failure: None too)."""
    if _SPECIAL.fullmatch(text):
        return float(text.lower().replace("infinity", "inf"))
    if _HEX.fullmatch(text):
        if "_" in text:
            return None  # underscores need a base prefix *and* digits around them; rare enough to refuse
        v = float.fromhex(text)
    elif _DECIMAL.fullmatch(text) and "_" not in text:  # underscores only with a base prefix
        v = float(text)
    else:
        return None
    return None if math.isinf(v) else v


def bucket_quantile(q: float, buckets: list[list[float]]) -> float:
    """2.42's bucketQuantile over [upper bound, count] pairs (coalesced, made monotonic, interpolated)."""
    if q != q:
        return math.nan
    if q < 0:
        return -math.inf
    if q > 1:
        return math.inf
    buckets.sort(key=lambda b: b[0])
    if buckets[-1][0] != math.inf:
        return math.nan
    merged = [buckets[0]]
    for b in buckets[1:]:
        if b[0] == merged[-1][0]:
            merged[-1] = [b[0], merged[-1][1] + b[1]]
        else:
            merged.append(b)
    top = merged[0][1]  # ensureMonotonic: the envelope of the counts
    for b in merged[1:]:
        if b[1] > top:
            top = b[1]
        elif b[1] < top:
            b[1] = top
    if len(merged) < 2:
        return math.nan
    observations = merged[-1][1]
    if observations == 0:
        return math.nan
    rank = q * observations
    b = len(merged) - 1  # sort.Search over all but the +Inf bucket
    for i in range(len(merged) - 1):
        if merged[i][1] >= rank:
            b = i
            break
    if b == len(merged) - 1:
        return merged[-2][0]
    if b == 0 and merged[0][0] <= 0:
        return merged[0][0]
    start = 0.0
    end, count = merged[b]
    if b > 0:
        start = merged[b - 1][0]
        count -= merged[b - 1][1]
        rank -= merged[b - 1][1]
    return start + (end - start) * (rank / count)


def call_histogram_quantile(call: Call, store: Any, t: float) -> VectorT:
    q = call.args[0].eval(store, t)
    groups: dict[tuple, tuple[dict, list[list[float]]]] = {}
    for labels, v in call.args[1].eval(store, t):
        le = labels.get("le")
        upper = go_parse_float(le) if le is not None else None
        if upper is None:
            continue  # no or malformed bucket label: skipped
        key = tuple(sorted((k, x) for k, x in labels.items() if k != "le"))  # __name__ included, as 2.42
        group = groups.get(key)
        if group is None:
            group = groups[key] = ({k: x for k, x in labels.items() if k not in (NAME, "le")}, [])
        group[1].append([upper, v])
    return call.check([(labels, bucket_quantile(q, buckets)) for labels, buckets in groups.values()])


def call_native_only(call: Call, store: Any, t: float) -> VectorT:
    """histogram_count / histogram_sum / histogram_fraction: arguments are evaluated (errors surface), float
    samples are skipped."""
    for arg in call.args:
        arg.eval(store, t)
    return []
