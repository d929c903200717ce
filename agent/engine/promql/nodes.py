"""Evaluation nodes shared by every construct: the Node base, literals, unary minus and function calls.

Internally an instant vector is ``list[tuple[dict, float]]``. Label dicts are shared between nodes and
cached per selector, so they are never mutated: every change builds a new dict. Selectors live in
:mod:`selectors`, operators in :mod:`binary` and :mod:`aggregate`, function bodies in :mod:`functions`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from agent.engine.promql.values import NAME, LabelDict, PromQLEvalError, labels_key

VectorT = list[tuple[LabelDict, float]]


class Clock:
    """Per-query evaluation state shared by its nodes: ``t``, the evaluation time of the query (what
    ``@ start()`` and ``@ end()`` mean: an instant query, as a rule evaluation is, starts and ends at it), and
    ``budget``, the subquery steps the evaluation may still take. One per query, reset by ``Query.eval``."""

    __slots__ = ("budget", "ctx_end", "ctx_start", "ranges", "t")

    STEPS = 100_000  # subquery steps per evaluation (nested ones multiply): bounds the time of any rule

    def __init__(self) -> None:
        self.t = 0.0
        self.budget = self.STEPS
        self.ranges: dict[int, tuple[float, float]] = {}  # what each selector loaded (timestamp(x @ t), at242)
        self.ctx_start = self.ctx_end = 0.0  # the evaluator range of 2.42's @-in-subquery evaluation (at242)


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
