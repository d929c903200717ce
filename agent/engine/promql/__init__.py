"""A PromQL subset evaluated over :class:`agent.engine.store.Store` with Prometheus 2.42 semantics.

``compile_expr(text)`` parses (promql-parser) and compiles an expression, rejecting any construct outside
the subset with a :class:`PromQLError` naming it; ``Query.eval(store, t)`` returns a :class:`Vector`
(``list[tuple[dict, float]]``) or a :class:`Scalar`; ``Query.selectors`` lists its series selectors.
"""

from agent.engine.promql.compiler import Query, compile_expr
from agent.engine.promql.values import PromQLError, PromQLEvalError, Scalar, Selector, Vector

__all__ = ["PromQLError", "PromQLEvalError", "Query", "Scalar", "Selector", "Vector", "compile_expr"]
