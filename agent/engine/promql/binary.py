"""Binary operators: arithmetic, comparisons and set operators with Prometheus' vector matching."""

from __future__ import annotations

import operator
from collections.abc import Callable
from typing import Any

from agent.engine.promql.gomath import go_atan2
from agent.engine.promql.nodes import Node, VectorT, check_unique, drop_name
from agent.engine.promql.values import (
    NAME,
    LabelDict,
    PromQLEvalError,
    format_labels,
    go_div,
    go_mod,
    go_pow,
    labels_key,
)

ARITH: dict[str, Callable[[float, float], float]] = {
    "+": operator.add,
    "-": operator.sub,
    "*": operator.mul,
    "/": go_div,
    "%": go_mod,
    "^": go_pow,
    "atan2": go_atan2,
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
        self.drop = self.arith is not None and op != "atan2"  # 2.42 keeps __name__ for atan2
        if self.drop or return_bool:
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
            drop = self.drop
            for labels, v in vec:
                value = arith(scalar, v) if swap else arith(v, scalar)
                out.append((drop_name(labels) if drop else labels, value))
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
        out = {k: v for k, v in lhs.items() if k != NAME} if self.drop else dict(lhs)
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
