"""Evaluation nodes: one class per PromQL construct of the supported subset (Prometheus 2.42 semantics).

Internally an instant vector is ``list[tuple[dict, float]]``. Label dicts are shared between nodes and
cached per selector, so they are never mutated: every change builds a new dict.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable
from typing import Any

from agent.engine.promql import functions as fn
from agent.engine.promql.regex import RegexError, RegexUnsupported, compile_anchored
from agent.engine.promql.values import (
    NAME,
    LabelDict,
    PromQLError,
    PromQLEvalError,
    format_float,
    go_ceil,
    go_div,
    go_floor,
    go_max,
    go_min,
    go_mod,
    go_pow,
    labels_key,
)
from agent.engine.store import is_absent, is_stale

LOOKBACK = 300.0
_EPS = 1e-4  # store timestamps are float seconds; Prometheus' windows are closed at the start (2.42)

VectorT = list[tuple[LabelDict, float]]


def drop_name(labels: LabelDict) -> LabelDict:
    if NAME not in labels:
        return labels
    out = dict(labels)
    del out[NAME]
    return out


def check_unique(vec: VectorT) -> VectorT:
    """Prometheus fails a query whose result has two samples with one label set."""
    if len(vec) > 1:
        seen = set()
        for labels, _ in vec:
            key = labels_key(labels)
            if key in seen:
                raise PromQLEvalError("vector cannot contain metrics with the same labelset")
            seen.add(key)
    return vec


class Node:
    """An expression node; ``kind`` is scalar, vector, matrix or string."""

    kind = "vector"
    single_name = False  # every output sample has the same __name__ (or none): dropping it keeps them unique

    def eval(self, store: Any, t: float) -> Any:
        raise NotImplementedError


class Number(Node):
    kind = "scalar"
    single_name = True

    def __init__(self, value: float) -> None:
        self.value = value

    def eval(self, store: Any, t: float) -> float:
        return self.value


class String(Node):
    kind = "string"
    single_name = True

    def __init__(self, value: str) -> None:
        self.value = value

    def eval(self, store: Any, t: float) -> str:
        return self.value


class Matcher:
    """A precompiled label matcher."""

    __slots__ = ("name", "op", "test", "value")

    def __init__(self, name: str, op: str, value: str) -> None:
        self.name = name
        self.op = op
        self.value = value
        if op in ("=~", "!~"):
            try:
                pattern = compile_anchored(value)
            except RegexUnsupported as err:
                raise PromQLError(f"regular expression {value!r} in matcher is not supported: {err}") from err
            except RegexError as err:
                raise PromQLError(f"invalid regular expression {value!r} in matcher: {err}") from err
            match = pattern.match
            self.test = (lambda s: match(s) is not None) if op == "=~" else (lambda s: match(s) is None)
        elif op == "=":
            self.test = value.__eq__
        else:
            self.test = value.__ne__


class VectorSelector(Node):
    """``name{matchers} offset d``: the newest sample within the lookback window, unless stale."""

    def __init__(self, name: str | None, matchers: list[Matcher], offset: float) -> None:
        self.name = name
        self.matchers = matchers
        self.offset = offset
        self.single_name = name is not None
        self._cache_store: Any = None
        self._cache_version: Any = None
        self._cache: list[tuple[Any, LabelDict]] = []

    def select(self, store: Any) -> list[tuple[Any, LabelDict]]:
        """Matching series with their label dicts, in Prometheus label order; cached per series-set version."""
        version = getattr(store, "version", None)
        if version is not None and self._cache_store is store and self._cache_version == version:
            return self._cache
        families = [(self.name, store.family(self.name))] if self.name is not None else list(store.by_name.items())
        matchers = self.matchers
        out = []
        for name, family in families:
            for labels_tuple, series in family.items():
                labels = {NAME: name}
                for k, v in labels_tuple:
                    if v != "":
                        labels[k] = v
                if all(m.test(labels.get(m.name, "")) for m in matchers):
                    out.append((series, labels))
        out.sort(key=lambda item: labels_key(item[1]))
        self._cache_store, self._cache_version, self._cache = store, version, out
        return out

    def _instants(self, store: Any, t: float) -> list[tuple[LabelDict, float, float]]:
        """(labels, sample time, value) of every matching series with a sample in the lookback window."""
        ref = t - self.offset
        lookback = LOOKBACK + _EPS
        selected = self.select(store)
        out = []
        tick_window = getattr(store, "tick_window", None)
        if tick_window is None:
            for series, labels in selected:
                s = store.instant(series, ref, lookback)
                if s is not None:
                    out.append((labels, s[0], s[1]))
            return out
        # Ticks are shared by all series: find the newest tick at or before ref once.
        first, k = tick_window(ref - lookback, ref)
        if k < first:
            return out
        slot = k % store.capacity
        tk = store.tick_times(k, k)[0]
        for series, labels in selected:
            if series.last_tick < k:
                continue  # the series missed tick k: a staleness marker
            v = series.values[slot]
            if v == v:
                out.append((labels, tk, v))
                continue
            s = store.instant(series, ref, lookback)  # NaN: stale, absent (look further back) or a real NaN
            if s is not None:
                out.append((labels, s[0], s[1]))
        return out

    def eval(self, store: Any, t: float) -> VectorT:
        return [(labels, v) for labels, _, v in self._instants(store, t)]

    def eval_timestamps(self, store: Any, t: float) -> VectorT:
        """Like eval, with the sample timestamps as values (for timestamp())."""
        return [(labels, fn.ms(ts) / 1000) for labels, ts, _ in self._instants(store, t)]


SeriesRange = tuple[LabelDict, list[float], list[float], bool]


class MatrixSelector(Node):
    """``selector[range]``: samples with ``end - range <= t <= end`` (closed in Prometheus 2.42)."""

    kind = "matrix"

    def __init__(self, vs: VectorSelector, range_s: float) -> None:
        self.vs = vs
        self.range = range_s
        self.single_name = vs.single_name
        self.memo: dict | None = None  # set by Query.eval when this selector occurs more than once

    def eval_series(self, store: Any, t: float) -> list[SeriesRange]:
        """(labels, times, values, clean) per matching series with samples in the window; clean: no NaN."""
        memo = self.memo
        if memo is None:
            return self._read(store, t)
        key = (id(store), t)
        got = memo.get(key)
        if got is None:
            got = memo[key] = self._read(store, t)
        return got

    def window(self, t: float) -> tuple[float, float]:
        end = t - self.vs.offset
        return end - self.range, end

    def _read(self, store: Any, t: float) -> list[SeriesRange]:
        start, end = self.window(t)
        out: list[SeriesRange] = []
        selected = self.vs.select(store)
        tick_window = getattr(store, "tick_window", None)
        if tick_window is None:
            for series, labels in selected:
                pts = store.points(series, start - _EPS, end)
                if pts:
                    vals = [v for _, v in pts]
                    out.append((labels, [p[0] for p in pts], vals, not any(v != v for v in vals)))
            return out
        k0, k1 = tick_window(start - _EPS, end)
        if k1 < k0:
            return out
        marks = getattr(store, "marks", None)
        times: list[float] | None = None
        for series, labels in selected:
            last = min(k1, series.last_tick)
            if last < k0:
                continue
            if times is None:
                times = store.tick_times(k0, k1)
            clean = marks is not None and marks(series)[0] < k0  # no NaN in the window: no scan needed
            got = ring_range(store, series, labels, k0, last, times, clean)
            if got is not None:
                out.append(got)
        return out

    def windows(self, store: Any, t: float) -> tuple[int, int] | None:
        """Ticks ``(k0, k1)`` of the window at ``t`` when the store supports :meth:`Store.marks`, else None."""
        if getattr(store, "marks", None) is None:
            return None
        start, end = self.window(t)
        return store.tick_window(start - _EPS, end)


def ring_range(
    store: Any, series: Any, labels: LabelDict, k0: int, last: int, times: list[float], clean: bool = False
) -> SeriesRange | None:
    """One series' samples of ticks ``k0..last`` from the store's ring, without staleness markers and absent
    slots (real NaN samples stay); ``times`` are the timestamps of ticks ``k0..``; ``clean``: known NaN-free."""
    cap = store.capacity
    a, b = k0 % cap, last % cap
    ring = series.values
    vals = ring[a : b + 1].tolist() if a <= b else ring[a:].tolist() + ring[: b + 1].tolist()
    ts = times if len(vals) == len(times) else times[: len(vals)]
    if clean:
        return labels, ts, vals, True
    total = sum(vals)
    if total == total:
        return labels, ts, vals, True
    # NaN somewhere: drop staleness markers and absent slots, keep real NaN samples
    keep_t, keep_v = [], []
    for tk, v in zip(ts, vals, strict=True):
        if v != v and (is_stale(v) or is_absent(v)):
            continue
        keep_t.append(tk)
        keep_v.append(v)
    if keep_v:
        return labels, keep_t, keep_v, not any(v != v for v in keep_v)
    return None


class Negate(Node):
    single_name = True

    def __init__(self, expr: Node) -> None:
        self.expr = expr
        self.kind = expr.kind

    def eval(self, store: Any, t: float) -> Any:
        v = self.expr.eval(store, t)
        if self.kind == "scalar":
            return -v
        out = [(drop_name(labels), -x) for labels, x in v]
        return out if self.expr.single_name else check_unique(out)


# -- binary operators ---------------------------------------------------------------------------

ARITH: dict[str, Callable[[float, float], float]] = {
    "+": operator.add,
    "-": operator.sub,
    "*": operator.mul,
    "/": go_div,
    "%": go_mod,
    "^": go_pow,
}
COMPARE: dict[str, Callable[[float, float], bool]] = {
    "==": operator.eq,
    "!=": operator.ne,
    ">": operator.gt,
    "<": operator.lt,
    ">=": operator.ge,
    "<=": operator.le,
}
SET_OPS = ("and", "or", "unless")


class Binary(Node):
    """Arithmetic, comparison and set operators with Prometheus' vector matching."""

    def __init__(
        self,
        op: str,
        lhs: Node,
        rhs: Node,
        return_bool: bool,
        card: str,
        on: bool,
        matching: list[str],
        include: list[str],
    ) -> None:
        self.op = op
        self.lhs = lhs
        self.rhs = rhs
        self.return_bool = return_bool
        self.card = card  # one-to-one, many-to-one, one-to-many, many-to-many
        self.on = on
        self.matching = matching
        self.matching_set = frozenset(matching)
        self.include = include
        self.kind = "scalar" if lhs.kind == "scalar" and rhs.kind == "scalar" else "vector"
        self.arith = ARITH.get(op)
        self.compare = COMPARE.get(op)
        vector_side = rhs if lhs.kind == "scalar" else lhs
        if self.arith is not None or return_bool:
            self.single_name = True
        elif op == "or":
            self.single_name = False
        elif op in SET_OPS or rhs.kind == "scalar" or lhs.kind == "scalar":
            self.single_name = vector_side.single_name
        else:
            self.single_name = (rhs if card == "one-to-many" else lhs).single_name
        self._vs_unique = vector_side.single_name  # vector-scalar results need no duplicate check

    def eval(self, store: Any, t: float) -> Any:
        lv = self.lhs.eval(store, t)
        rv = self.rhs.eval(store, t)
        if self.kind == "scalar":
            if self.arith is not None:
                return self.arith(lv, rv)
            return 1.0 if self.compare(lv, rv) else 0.0
        if self.lhs.kind == "scalar":
            out = self._vector_scalar(rv, lv, True)
            return out if self._vs_unique else check_unique(out)
        if self.rhs.kind == "scalar":
            out = self._vector_scalar(lv, rv, False)
            return out if self._vs_unique else check_unique(out)
        if self.op == "and":
            return check_unique(self._and(lv, rv))
        if self.op == "or":
            return check_unique(self._or(lv, rv))
        if self.op == "unless":
            return check_unique(self._unless(lv, rv))
        return check_unique(self._vector_vector(lv, rv))

    def _vector_scalar(self, vec: VectorT, scalar: float, swap: bool) -> VectorT:
        out = []
        arith = self.arith
        if arith is not None:
            for labels, v in vec:
                value = arith(scalar, v) if swap else arith(v, scalar)
                out.append((drop_name(labels), value))
            return out
        compare = self.compare
        for labels, v in vec:
            keep = compare(scalar, v) if swap else compare(v, scalar)
            if self.return_bool:
                out.append((drop_name(labels), 1.0 if keep else 0.0))
            elif keep:
                out.append((labels, v))
        return out

    def signature(self, labels: LabelDict) -> tuple:
        if self.on:
            return tuple(labels.get(name, "") for name in self.matching)
        excluded = self.matching_set
        return tuple(sorted((k, v) for k, v in labels.items() if k != NAME and k not in excluded))

    def _and(self, lhs: VectorT, rhs: VectorT) -> VectorT:
        if not lhs or not rhs:
            return []
        sigs = {self.signature(labels) for labels, _ in rhs}
        return [(labels, v) for labels, v in lhs if self.signature(labels) in sigs]

    def _or(self, lhs: VectorT, rhs: VectorT) -> VectorT:
        if not lhs:
            return rhs
        if not rhs:
            return lhs
        sigs = {self.signature(labels) for labels, _ in lhs}
        return lhs + [(labels, v) for labels, v in rhs if self.signature(labels) not in sigs]

    def _unless(self, lhs: VectorT, rhs: VectorT) -> VectorT:
        if not lhs or not rhs:
            return lhs
        sigs = {self.signature(labels) for labels, _ in rhs}
        return [(labels, v) for labels, v in lhs if self.signature(labels) not in sigs]

    def _match_labels_str(self, labels: LabelDict) -> str:
        if self.on:
            kept = {k: v for k, v in labels.items() if k in self.matching_set}
        else:
            kept = {k: v for k, v in labels.items() if k != NAME and k not in self.matching_set}
        return format_labels(kept)

    def _vector_vector(self, lhs: VectorT, rhs: VectorT) -> VectorT:
        if not lhs or not rhs:
            return []
        one_to_many = self.card == "one-to-many"
        if one_to_many:
            lhs, rhs = rhs, lhs
        right: dict[tuple, tuple[LabelDict, float]] = {}
        for labels, v in rhs:
            sig = self.signature(labels)
            dup = right.get(sig)
            if dup is not None:
                side = "left" if one_to_many else "right"
                raise PromQLEvalError(
                    f"found duplicate series for the match group {self._match_labels_str(labels)} on the {side} "
                    f"hand-side of the operation: [{format_labels(labels)}, {format_labels(dup[0])}];"
                    "many-to-many matching not allowed: matching labels must be unique on one side"
                )
            right[sig] = (labels, v)
        matched: dict[tuple, set | None] = {}
        out = []
        arith, compare, return_bool = self.arith, self.compare, self.return_bool
        for llabels, lval in lhs:
            sig = self.signature(llabels)
            found = right.get(sig)
            if found is None:
                continue
            rlabels, rval = found
            vl, vr = (rval, lval) if one_to_many else (lval, rval)
            if arith is not None:
                value, keep = arith(vl, vr), True
            else:
                value, keep = vl, compare(vl, vr)
            if return_bool:
                value = 1.0 if keep else 0.0
            elif not keep:
                continue
            metric = self._result_metric(llabels, rlabels)
            if return_bool:
                metric = drop_name(metric)
            if self.card == "one-to-one":
                if sig in matched:
                    raise PromQLEvalError(
                        "multiple matches for labels: many-to-one matching must be explicit (group_left/group_right)"
                    )
                matched[sig] = None
            else:
                inserted = matched.get(sig)
                if inserted is None:
                    inserted = matched[sig] = set()
                key = labels_key(metric)
                if key in inserted:
                    raise PromQLEvalError(
                        "multiple matches for matching labels: grouping labels must ensure unique results"
                    )
                inserted.add(key)
            out.append((metric, value))
        return out

    def _result_metric(self, lhs: LabelDict, rhs: LabelDict) -> LabelDict:
        out = {k: v for k, v in lhs.items() if k != NAME} if self.arith is not None else dict(lhs)
        if self.card == "one-to-one":
            if self.on:
                out = {k: v for k, v in out.items() if k in self.matching_set}
            else:
                for name in self.matching:
                    out.pop(name, None)
        for name in self.include:
            v = rhs.get(name, "")
            if v:
                out[name] = v
            else:
                out.pop(name, None)
        return out


def format_labels(labels: LabelDict) -> str:
    """Prometheus' labels.String(): ``{a="1", b="2"}`` in label order."""
    inner = ", ".join(f"{k}={_go_quote(v)}" for k, v in sorted(labels.items()))
    return "{" + inner + "}"


def _go_quote(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


# -- aggregations -------------------------------------------------------------------------------


class _Heap:
    """Go's container/heap over a list with a ``less(a, b)`` order (to pick the same topk ties)."""

    def __init__(self, less: Callable[[float, float], bool]) -> None:
        self.items: list[tuple[LabelDict, float]] = []
        self.less = less

    def _less(self, i: int, j: int) -> bool:
        return self.less(self.items[i][1], self.items[j][1])

    def _up(self, j: int) -> None:
        items = self.items
        while j > 0:
            i = (j - 1) // 2
            if not self._less(j, i):
                break
            items[i], items[j] = items[j], items[i]
            j = i

    def _down(self, i0: int, n: int) -> bool:
        items = self.items
        i = i0
        while True:
            j1 = 2 * i + 1
            if j1 >= n:
                break
            j = j1
            j2 = j1 + 1
            if j2 < n and self._less(j2, j1):
                j = j2
            if not self._less(j, i):
                break
            items[i], items[j] = items[j], items[i]
            i = j
        return i > i0

    def push(self, item: tuple[LabelDict, float]) -> None:
        self.items.append(item)
        self._up(len(self.items) - 1)

    def fix(self, i: int) -> None:
        if not self._down(i, len(self.items)):
            self._up(i)


def _nan_first_less(a: float, b: float) -> bool:
    return True if a != a else a < b


def _nan_first_greater(a: float, b: float) -> bool:
    return True if a != a else a > b


class Aggregate(Node):
    """sum avg min max count stddev stdvar group topk bottomk quantile count_values, with by/without."""

    def __init__(self, op: str, expr: Node, param: Node | None, grouping: list[str], without: bool) -> None:
        self.op = op
        self.expr = expr
        self.param = param
        self.without = without
        self.grouping = sorted(grouping)
        self.grouping_set = frozenset(grouping)
        if op in ("topk", "bottomk"):
            self.single_name = expr.single_name
        else:
            self.single_name = without or NAME not in self.grouping_set

    def _group_labels(self, labels: LabelDict, grouping: list[str] | frozenset) -> LabelDict:
        """The group's labels; with ``by`` (grouping sorted) in label order, so its items are the group key."""
        if self.without:
            return {k: v for k, v in labels.items() if k != NAME and k not in grouping}
        return {k: labels[k] for k in grouping if k in labels}

    def eval(self, store: Any, t: float) -> VectorT:
        vec = self.expr.eval(store, t)
        op = self.op
        param = self.param.eval(store, t) if self.param is not None else None
        grouping: list[str] | frozenset = self.grouping_set if self.without else self.grouping
        if op == "count_values":
            value_label = param
            if not valid_label_name(value_label):
                raise PromQLEvalError(f"invalid label name {_go_quote(value_label)}")
            if not self.without:
                grouping = sorted({*self.grouping, value_label})
            vec = [({**labels, value_label: format_float(v)}, v) for labels, v in vec]
        if op in ("topk", "bottomk"):
            if param != param or math.isinf(param) or abs(param) >= 2**63:
                raise PromQLEvalError(f"Scalar value {format_float(param)} overflows int64")
            k = int(param)
            if k < 1:
                return []
            return self._topk(vec, k, grouping, op == "topk")
        groups: dict[tuple, list] = {}
        keep_values = op == "quantile"
        for labels, v in vec:
            group_labels = self._group_labels(labels, grouping)
            key = tuple(group_labels.items()) if not self.without else labels_key(group_labels)
            group = groups.get(key)
            if group is None:
                value = 0.0 if op in ("stddev", "stdvar") else v
                groups[key] = [group_labels, value, v, 1, [v] if keep_values else None]  # value, mean, count
                continue
            group[3] += 1
            if op == "sum":
                group[1] += v
            elif op == "avg":
                count = group[3]
                mean = group[2]
                if math.isinf(mean):
                    if math.isinf(v) and (mean > 0) == (v > 0):
                        continue
                    if not math.isinf(v) and v == v:
                        continue
                group[2] = mean + (v / count - mean / count)
            elif op == "max":
                if group[1] < v or group[1] != group[1]:
                    group[1] = v
            elif op == "min":
                if group[1] > v or group[1] != group[1]:
                    group[1] = v
            elif op in ("stddev", "stdvar"):
                delta = v - group[2]
                group[2] += delta / group[3]
                group[1] += delta * (v - group[2])
            elif keep_values:
                group[4].append(v)
        out = []
        for labels, value, mean, count, values in groups.values():
            if op == "avg":
                value = mean
            elif op in ("count", "count_values"):
                value = float(count)
            elif op == "group":
                value = 1.0
            elif op == "stdvar":
                value = value / count
            elif op == "stddev":
                var = value / count
                value = math.sqrt(var) if var >= 0 else math.nan
            elif op == "quantile":
                value = fn.quantile(param, values)
            out.append((labels, value))
        return out

    def _topk(self, vec: VectorT, k: int, grouping: list[str] | frozenset, top: bool) -> VectorT:
        heaps: dict[tuple, _Heap] = {}
        less = _nan_first_less if top else _nan_first_greater
        for labels, v in vec:
            key = labels_key(self._group_labels(labels, grouping))
            heap = heaps.get(key)
            if heap is None:
                heap = heaps[key] = _Heap(less)
                heap.items.append((labels, v))
                continue
            if len(heap.items) < k:
                heap.push((labels, v))
                continue
            head = heap.items[0][1]
            better = head < v if top else head > v
            if better or (head != head and v == v):
                heap.items[0] = (labels, v)
                if k > 1:
                    heap.fix(0)
        out = []
        for heap in heaps.values():
            items = sorted(heap.items, key=lambda item: (item[1] == item[1], item[1]), reverse=top)
            out.extend(items)
        return out


def valid_label_name(name: str) -> bool:
    if not name or not (name[0].isascii() and (name[0].isalpha() or name[0] == "_")):
        return False
    return all(c.isascii() and (c.isalnum() or c == "_") for c in name)


# -- function calls ----------------------------------------------------------------------------


class Call(Node):
    """A function call; ``impl(node, store, t)`` does the work."""

    def __init__(self, name: str, args: list[Node], kind: str, impl: Callable[[Call, Any, float], Any]) -> None:
        self.name = name
        self.args = args
        self.kind = kind
        self.impl = impl
        self.extra: Any = None  # per-function precomputed data (regex, absent labels)
        source = next((a for a in args if a.kind in ("vector", "matrix")), None)
        source_single = source is None or source.single_name
        if name in ("label_replace", "label_join"):
            self.single_name, self._unique = False, False
        elif name in ("last_over_time", "sort", "sort_desc"):
            self.single_name, self._unique = source_single, True  # labels kept as they are
        else:
            self.single_name, self._unique = True, source_single  # __name__ dropped

    def eval(self, store: Any, t: float) -> Any:
        return self.impl(self, store, t)

    def check(self, vec: VectorT) -> VectorT:
        """Prometheus' duplicate-labelset check, skipped where the input makes duplicates impossible."""
        return vec if self._unique else check_unique(vec)


def _sorted_extreme(memo: dict, vals: fn.Values, clean: bool, lowest: bool) -> float:
    """min/max_over_time of a window shared within one query (``min_over_time(x) - max_over_time(x)``): each
    window is sorted once (C-speed float comparisons) and both ends are read from it. A stable sort puts the
    first of equal minima first, as min() returns it; for the maximum, equal values other than +-0 have the
    same bits, so only a zero maximum needs max() to return the first one."""
    if not clean:
        return fn.min_over_time(vals, clean) if lowest else fn.max_over_time(vals, clean)
    key = ("sorted", id(vals))  # the memo keeps vals alive, so the id is not reused
    ordered = memo.get(key)
    if ordered is None:
        ordered = memo[key] = sorted(vals)
    if lowest:
        return ordered[0]
    top = ordered[-1]
    return max(vals) if top == 0.0 else top


def _range_fn(f: Callable[[fn.Values, bool], float], keep_name: bool = False) -> Callable[[Call, Any, float], VectorT]:
    extreme = f is fn.min_over_time or f is fn.max_over_time
    lowest = f is fn.min_over_time

    def impl(call: Call, store: Any, t: float) -> VectorT:
        ranges = call.args[0].eval_series(store, t)
        memo = getattr(call.args[0], "memo", None)
        if extreme and memo is not None:
            return call.check([(drop_name(lb), _sorted_extreme(memo, v, c, lowest)) for lb, _, v, c in ranges])
        if keep_name:  # last_over_time keeps __name__ in 2.42
            return call.check([(labels, f(vals, clean)) for labels, _, vals, clean in ranges])
        return call.check([(drop_name(labels), f(vals, clean)) for labels, _, vals, clean in ranges])

    return impl


def _rate_fn(is_counter: bool, is_rate: bool) -> Callable[[Call, Any, float], VectorT]:
    def impl(call: Call, store: Any, t: float) -> VectorT:
        ms_node: MatrixSelector = call.args[0]
        start, end = ms_node.window(t)
        rng = ms_node.range
        out = []
        ticks = ms_node.windows(store, t)
        if ticks is None:
            for labels, times, vals, clean in ms_node.eval_series(store, t):
                v = fn.extrapolated_rate(times, vals, clean, start, end, rng, is_counter, is_rate)
                if v is not None:
                    out.append((drop_name(labels), v))
            return call.check(out)
        # Ring store: a window without NaN (and, for counters, without a decrease) needs only its first and
        # last samples; others are read and filtered as usual.
        k0, k1 = ticks
        if k1 < k0:
            return out
        cap = store.capacity
        marks = store.marks
        t0, t1 = fn.ms(store.tick_time(k0)), fn.ms(store.tick_time(k1))
        start_ms, end_ms = fn.ms(start), fn.ms(end)
        times: list[float] | None = None
        for series, labels in ms_node.vs.select(store):
            last = min(k1, series.last_tick)
            if last <= k0:
                continue  # fewer than two samples
            nan, drop = marks(series)
            if nan < k0 and (drop <= k0 or not is_counter):
                ring = series.values
                v = fn.rate_from(
                    t0, t1 if last == k1 else fn.ms(store.tick_time(last)), ring[k0 % cap], ring[last % cap],
                    last - k0 + 1, 0.0, start_ms, end_ms, rng, is_counter, is_rate,
                )  # fmt: skip
            else:
                if times is None:
                    times = store.tick_times(k0, k1)
                got = ring_range(store, series, labels, k0, last, times)
                if got is None:
                    continue
                _, ts, vals, clean = got
                v = fn.extrapolated_rate(ts, vals, clean, start, end, rng, is_counter, is_rate)
            if v is not None:
                out.append((drop_name(labels), v))
        return call.check(out)

    return impl


def _instant_rate_fn(is_rate: bool) -> Callable[[Call, Any, float], VectorT]:
    def impl(call: Call, store: Any, t: float) -> VectorT:
        ms_node: MatrixSelector = call.args[0]
        out = []
        ticks = ms_node.windows(store, t)
        if ticks is None:
            for labels, times, vals, _ in ms_node.eval_series(store, t):
                v = fn.instant_value(times, vals, is_rate)
                if v is not None:
                    out.append((drop_name(labels), v))
            return call.check(out)
        k0, k1 = ticks
        if k1 < k0:
            return out
        cap = store.capacity
        marks = store.marks
        tick_time = store.tick_time
        times: list[float] | None = None
        for series, labels in ms_node.vs.select(store):
            last = min(k1, series.last_tick)
            if last < k0:
                continue
            if last > k0 and marks(series)[0] < last - 1:  # the last two samples are numbers
                ring = series.values
                pv, lv = ring[(last - 1) % cap], ring[last % cap]
                v = fn.instant_from(tick_time(last - 1), tick_time(last), pv, lv, is_rate)
            else:
                if times is None:
                    times = store.tick_times(k0, k1)
                got = ring_range(store, series, labels, k0, last, times)
                if got is None:
                    continue
                v = fn.instant_value(got[1], got[2], is_rate)
            if v is not None:
                out.append((drop_name(labels), v))
        return call.check(out)

    return impl


_X_SUMS: dict[tuple, fn.XSums] = {}  # by (intercept, timestamps): rules over the same window share x sums
_X_SUMS_MAX = 32


def _shared_x(cache: dict, times: list[float], intercept_ms: int) -> fn.XSums:
    """x sums per timestamp list: series sampled on the same ticks share one list object in one evaluation,
    and evaluations of other rules over the same window (same timestamps, same intercept) reuse them."""
    got = cache.get(id(times))
    if got is None:
        key = (intercept_ms, tuple(times))
        got = _X_SUMS.get(key)
        if got is None:
            if len(_X_SUMS) >= _X_SUMS_MAX:
                _X_SUMS.clear()
            got = _X_SUMS[key] = fn.x_sums(times, intercept_ms)
        cache[id(times)] = got
    return got


def _deriv(call: Call, store: Any, t: float) -> VectorT:
    out = []
    ranges = call.args[0].eval_series(store, t)  # keeps every times list alive, so id() keys are safe
    cache: dict = {}
    for labels, times, vals, clean in ranges:
        v = fn.deriv(times, vals, _shared_x(cache, times, fn.ms(times[0])) if len(vals) > 1 else None, clean)
        if v is not None:
            out.append((drop_name(labels), v))
    return call.check(out)


def _predict_linear(call: Call, store: Any, t: float) -> VectorT:
    duration = call.args[1].eval(store, t)
    out = []
    ranges = call.args[0].eval_series(store, t)
    cache: dict = {}
    intercept = fn.ms(t)
    for labels, times, vals, clean in ranges:
        v = fn.predict_linear(times, vals, t, duration, _shared_x(cache, times, intercept), clean)
        if v is not None:
            out.append((drop_name(labels), v))
    return call.check(out)


def _quantile_over_time(call: Call, store: Any, t: float) -> VectorT:
    q = call.args[0].eval(store, t)
    return call.check(
        [(drop_name(labels), fn.quantile(q, vals)) for labels, _, vals, _ in call.args[1].eval_series(store, t)]
    )


def _absent(call: Call, store: Any, t: float) -> VectorT:
    if call.args[0].eval(store, t):
        return []
    return [(dict(call.extra), 1.0)]


def _absent_over_time(call: Call, store: Any, t: float) -> VectorT:
    if call.args[0].eval_series(store, t):
        return []
    return [(dict(call.extra), 1.0)]


def _simple(f: Callable[[float], float]) -> Callable[[Call, Any, float], VectorT]:
    def impl(call: Call, store: Any, t: float) -> VectorT:
        return call.check([(drop_name(labels), f(v)) for labels, v in call.args[0].eval(store, t)])

    return impl


def _round(call: Call, store: Any, t: float) -> VectorT:
    to_nearest = call.args[1].eval(store, t) if len(call.args) > 1 else 1.0
    inverse = go_div(1.0, to_nearest)
    return call.check(
        [(drop_name(labels), go_div(go_floor(v * inverse + 0.5), inverse)) for labels, v in call.args[0].eval(store, t)]
    )


def _clamp(call: Call, store: Any, t: float) -> VectorT:
    vec = call.args[0].eval(store, t)
    lo = call.args[1].eval(store, t)
    hi = call.args[2].eval(store, t)
    if hi < lo:
        return []
    return call.check([(drop_name(labels), go_max(lo, go_min(hi, v))) for labels, v in vec])


def _clamp_min(call: Call, store: Any, t: float) -> VectorT:
    vec = call.args[0].eval(store, t)
    lo = call.args[1].eval(store, t)
    return call.check([(drop_name(labels), go_max(v, lo)) for labels, v in vec])


def _clamp_max(call: Call, store: Any, t: float) -> VectorT:
    vec = call.args[0].eval(store, t)
    hi = call.args[1].eval(store, t)
    return call.check([(drop_name(labels), go_min(v, hi)) for labels, v in vec])


def _time(call: Call, store: Any, t: float) -> float:
    return fn.ms(t) / 1000


def _timestamp(call: Call, store: Any, t: float) -> VectorT:
    arg = call.args[0]
    if isinstance(arg, VectorSelector):
        vec = arg.eval_timestamps(store, t)
    else:
        now = fn.ms(t) / 1000
        vec = [(labels, now) for labels, _ in arg.eval(store, t)]
    return call.check([(drop_name(labels), v) for labels, v in vec])


def _vector(call: Call, store: Any, t: float) -> VectorT:
    return [({}, call.args[0].eval(store, t))]


def _scalar(call: Call, store: Any, t: float) -> float:
    vec = call.args[0].eval(store, t)
    return vec[0][1] if len(vec) == 1 else math.nan


def _sort(call: Call, store: Any, t: float) -> VectorT:
    vec = call.args[0].eval(store, t)
    nums = sorted((item for item in vec if item[1] == item[1]), key=lambda item: item[1])
    return call.check(nums + [item for item in vec if item[1] != item[1]])


def _sort_desc(call: Call, store: Any, t: float) -> VectorT:
    vec = call.args[0].eval(store, t)
    nums = sorted((item for item in vec if item[1] == item[1]), key=lambda item: item[1], reverse=True)
    return call.check(nums + [item for item in vec if item[1] != item[1]])


def go_expand(template: str, src: str, match: Any) -> str:
    """regexp.ExpandString: ``$1``, ``${1}``, ``$name``, ``${name}``, ``$$``; unknown groups expand to ''."""
    out: list[str] = []
    rest = template
    groups = match.re.groupindex
    while True:
        i = rest.find("$")
        if i < 0:
            break
        out.append(rest[:i])
        rest = rest[i + 1 :]
        if rest.startswith("$"):
            out.append("$")
            rest = rest[1:]
            continue
        brace = rest.startswith("{")
        body = rest[1:] if brace else rest
        j = 0
        while j < len(body) and (body[j].isalnum() or body[j] == "_"):
            j += 1
        if j == 0 or (brace and (j >= len(body) or body[j] != "}")):
            out.append("$")
            continue
        name = body[:j]
        rest = body[j + 1 :] if brace else body[j:]
        if name.isascii() and name.isdigit() and not (name[0] == "0" and len(name) > 1) and len(name) <= 8:
            num = int(name)
            if num <= match.re.groups and match.group(num) is not None:
                out.append(match.group(num))
        elif name in groups and match.group(name) is not None:
            out.append(match.group(name))
    out.append(rest)
    return "".join(out)


def _label_replace(call: Call, store: Any, t: float) -> VectorT:
    if isinstance(call.extra, PromQLEvalError):
        raise call.extra
    vec = call.args[0].eval(store, t)
    dst = call.args[1].value
    repl = call.args[2].value
    src = call.args[3].value
    regex = call.extra
    out = []
    for labels, v in vec:
        value = labels.get(src, "")
        m = regex.match(value)
        if m is None:
            out.append((labels, v))
            continue
        res = go_expand(repl, value, m)
        new = {k: x for k, x in labels.items() if k != dst}
        if res:
            new[dst] = res
        out.append((new, v))
    return call.check(out)


def _label_join(call: Call, store: Any, t: float) -> VectorT:
    if isinstance(call.extra, PromQLEvalError):
        raise call.extra
    vec = call.args[0].eval(store, t)
    dst = call.args[1].value
    sep = call.args[2].value
    srcs = [a.value for a in call.args[3:]]
    out = []
    for labels, v in vec:
        joined = sep.join(labels.get(s, "") for s in srcs)
        new = {k: x for k, x in labels.items() if k != dst}
        if joined:
            new[dst] = joined
        out.append((new, v))
    return call.check(out)


FUNCTIONS: dict[str, Callable[[Call, Any, float], Any]] = {
    "rate": _rate_fn(True, True),
    "increase": _rate_fn(True, False),
    "delta": _rate_fn(False, False),
    "irate": _instant_rate_fn(True),
    "idelta": _instant_rate_fn(False),
    "deriv": _deriv,
    "predict_linear": _predict_linear,
    "quantile_over_time": _quantile_over_time,
    "absent": _absent,
    "absent_over_time": _absent_over_time,
    "abs": _simple(abs),
    "ceil": _simple(go_ceil),
    "floor": _simple(go_floor),
    "round": _round,
    "clamp": _clamp,
    "clamp_min": _clamp_min,
    "clamp_max": _clamp_max,
    "time": _time,
    "timestamp": _timestamp,
    "vector": _vector,
    "scalar": _scalar,
    "sort": _sort,
    "sort_desc": _sort_desc,
    "label_replace": _label_replace,
    "label_join": _label_join,
    **{name: _range_fn(f, name == "last_over_time") for name, f in fn.SIMPLE_RANGE.items()},
}
