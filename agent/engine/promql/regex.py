"""PromQL's regular expressions: Go RE2 semantics, fully anchored, linear time (see :mod:`agent.core.regex`).

Label matchers (``=~``, ``!~``) and ``label_replace`` use :func:`compile_anchored`; the result's ``match``
succeeds only on a whole-string match and returns a match object with ``group``/``re.groupindex``.
"""

from __future__ import annotations

from agent.core.regex import Anchored, RegexError, RegexUnsupported, compile_anchored

__all__ = ["Anchored", "RegexError", "RegexUnsupported", "compile_anchored"]
