"""Aggregation operators (``sum by (x) (...)`` and the others), with Go's heap for topk/bottomk ties."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from agent.engine.promql.functions.over_time import quantile
from agent.engine.promql.nodes import Node, VectorT
from agent.engine.promql.values import (
    NAME,
    LabelDict,
    PromQLEvalError,
    format_float,
    go_quote,
    labels_key,
    valid_label_name,
)


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
                raise PromQLEvalError(f"invalid label name {go_quote(value_label)}")
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
                value = quantile(param, values)
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
            if top:  # numbers descending, NaN last (sort.Reverse of the heap order)
                items = sorted(heap.items, key=lambda item: (item[1] == item[1], item[1]), reverse=True)
            else:  # numbers ascending, NaN last
                items = sorted(heap.items, key=lambda item: (item[1] != item[1], item[1]))
            out.extend(items)
        return out
