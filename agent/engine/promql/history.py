"""How much history before its evaluation time a query reads, for the ``check rules`` retention warning.

A range selector ``x[r] offset o`` reads back ``r + o``; a subquery ``e[r:s] offset o`` reads ``r + o``
plus what ``e`` reads at its earliest step; an instant selector reads back its offset (its 5 m lookback is
not counted: a series sampled every tick always has a recent sample). ``@ <time>`` pins a selector to a
fixed time, which leaves any finite history once the clock has moved on: it is reported apart.
"""

from __future__ import annotations

from typing import NamedTuple

from agent.core.durations import format_duration
from agent.engine.promql.nodes import Clock, Node
from agent.engine.promql.selectors import MatrixSelector, VectorSelector
from agent.engine.promql.subquery import Subquery


class Reach(NamedTuple):
    """``seconds``: history read before the evaluation time; ``pinned``: an ``@ <time>`` is used."""

    seconds: float
    pinned: bool


def _children(node: Node) -> list[Node]:
    out = []
    for attr in ("expr", "lhs", "rhs", "param"):
        child = getattr(node, attr, None)
        if isinstance(child, Node):
            out.append(child)
    out.extend(a for a in getattr(node, "args", None) or [] if isinstance(a, Node))
    return out


def _pinned(at: object) -> bool:
    return at is not None and not isinstance(at, Clock)


def node_reach(node: Node) -> Reach:
    """The :class:`Reach` of an evaluation node."""
    if isinstance(node, VectorSelector):
        return Reach(max(0.0, node.offset), _pinned(node.at))
    if isinstance(node, MatrixSelector):
        return Reach(max(0.0, node.range + node.vs.offset), _pinned(node.vs.at))
    if isinstance(node, Subquery):
        inner = node_reach(node.expr)
        return Reach(max(0.0, node.range + node.offset + inner.seconds), inner.pinned or _pinned(node.at))
    seconds, pinned = 0.0, False
    for child in _children(node):
        r = node_reach(child)
        seconds, pinned = max(seconds, r.seconds), pinned or r.pinned
    return Reach(seconds, pinned)


def history_reach(query: object) -> Reach:
    """The :class:`Reach` of a compiled query (a ``Query`` from ``compile_expr``); zero for other objects."""
    root = getattr(query, "root", None)
    return node_reach(root) if isinstance(root, Node) else Reach(0.0, False)


def retention_warning(query: object, retention: float) -> str | None:
    """Why ``query`` sees less data on a node keeping ``retention`` seconds than Prometheus would, or None."""
    reach = history_reach(query)
    if reach.seconds > retention:
        return (
            f"reads {format_duration(reach.seconds)} of history (range + offset + subquery), more than the "
            f"node keeps (retention {format_duration(retention)}): it sees less data than Prometheus would"
        )
    if reach.pinned:
        return (
            "uses @ <time>: once that time is older than retention "
            f"({format_duration(retention)}) the node has no data for it"
        )
    return None

