"""Regular expressions with Go RE2 semantics and linear cost, fully anchored (as Prometheus and node_exporter).

Prometheus compiles every label matcher and ``label_replace`` regex as ``^(?:re)$`` with Go's regexp, an RE2
engine: match time is linear in the input, whatever the pattern. Python's ``re`` backtracks (``(a+)+b``
against 28 ``a``s took 7.6 s, doubling per character), and label values come from the host (mount points,
device names), so the match runs on RE2 itself (the ``google-re2`` binding). Go's syntax and RE2's are the
same language (classes, ``\\pL``, ``(?U)``, ``\\Q..\\E``, POSIX classes, no look-around or back-references);
the one RE2 construct Go rejects, ``\\C`` (any byte), is rejected here too.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import re2

_OPTIONS = re2.Options()
_OPTIONS.log_errors = False     # errors are raised, not also printed to stderr


class RegexError(ValueError):
    """The regex is invalid (Go's regexp rejects it too)."""


class RegexUnsupported(RegexError):
    """Valid in Go but not reproducible here (kept for callers; RE2 covers Go's syntax, so nothing raises it)."""


def _check_go_only(pattern: str) -> None:
    i, n = 0, len(pattern)
    while i < n:
        if pattern[i] != "\\":
            i += 1
            continue
        nxt = pattern[i + 1 : i + 2]
        if nxt == "Q":                       # literal text up to \E
            end = pattern.find("\\E", i + 2)
            i = n if end < 0 else end + 2
            continue
        if nxt == "C":
            raise RegexError("invalid escape sequence: \\C")
        i += 2


class Anchored:
    """A compiled, fully anchored regex: :meth:`match` succeeds only when the whole string matches."""

    __slots__ = ("match", "pattern", "regex")

    def __init__(self, pattern: str, regex: Any) -> None:
        self.pattern = pattern
        self.regex = regex
        self.match = regex.fullmatch        # (string) -> match object (group, groups, re.groupindex) or None

    @property
    def groups(self) -> int:
        """Number of capturing groups."""
        return int(self.regex.groups)

    @property
    def groupindex(self) -> dict[str, int]:
        """Named groups -> numbers."""
        return dict(self.regex.groupindex)


@lru_cache(maxsize=4096)
def compile_anchored(pattern: str) -> Anchored:
    """Compile ``pattern`` with Go RE2 semantics, anchored at both ends; RegexError when invalid."""
    _check_go_only(pattern)
    try:
        return Anchored(pattern, re2.compile(pattern, _OPTIONS))
    except re2.error as err:
        msg = err.args[0] if err.args else "invalid regular expression"
        raise RegexError(msg.decode(errors="replace") if isinstance(msg, bytes) else str(msg)) from err


@lru_cache(maxsize=1024)
def compile_unanchored(pattern: str) -> Any:
    """Compile ``pattern`` with Go RE2 semantics, not anchored (Go's ``MatchString``: use ``.search``)."""
    return compile_anchored(pattern).regex


def fullmatch(pattern: str, text: str) -> bool:
    """True when all of ``text`` matches ``pattern`` (compiled once, cached)."""
    return compile_anchored(pattern).match(text) is not None
