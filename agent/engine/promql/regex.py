"""Go RE2 regular expressions (as Prometheus uses them) translated to Python ``re``, fully anchored.

Prometheus anchors every matcher and label_replace regex as ``^(?:re)$``. Differences handled here:
``\\d \\w \\s \\b`` are ASCII in Go; ``$`` is end of text; ``\\z``; ``\\Q..\\E``; POSIX classes
``[[:alpha:]]``; octal escapes; flag groups ``(?i)`` in the middle of a pattern. Constructs RE2 does not
have (look-around, back-references, atomic groups) or that Python lacks (``\\p{..}``, ``(?U)``) are rejected.
"""

from __future__ import annotations

import re
from functools import lru_cache

_ASCII_CLASSES = {
    "d": "0-9",
    "w": "0-9A-Za-z_",
    "s": "\\t\\n\\f\\r ",
}
_POSIX = {
    "alnum": "0-9A-Za-z",
    "alpha": "A-Za-z",
    "ascii": "\\x00-\\x7f",
    "blank": "\\t ",
    "cntrl": "\\x00-\\x1f\\x7f",
    "digit": "0-9",
    "graph": "!-~",
    "lower": "a-z",
    "print": " -~",
    "punct": "!-/:-@\\[-`{-~",
    "space": "\\t\\n\\v\\f\\r ",
    "upper": "A-Z",
    "word": "0-9A-Za-z_",
    "xdigit": "0-9A-Fa-f",
}
_WORD = "[0-9A-Za-z_]"
_BOUNDARY = f"(?:(?<={_WORD})(?!{_WORD})|(?<!{_WORD})(?={_WORD}))"
_NOT_BOUNDARY = f"(?:(?<={_WORD})(?={_WORD})|(?<!{_WORD})(?!{_WORD}))"


class RegexError(ValueError):
    """The regex is invalid (Go's regexp rejects it too)."""


class RegexUnsupported(RegexError):
    """The regex is valid RE2 but uses a construct we cannot reproduce exactly with Python's re."""


def _escape_char(c: str) -> str:
    return re.escape(c) if c not in "-" else "\\-"


def _octal(p: str, i: int) -> tuple[str, int]:
    j = i
    while j < len(p) and j < i + 3 and p[j] in "01234567":
        j += 1
    return f"\\U{int(p[i:j], 8):08x}", j


def _escape(p: str, i: int, in_class: bool) -> tuple[str, int]:
    """Translate the escape starting at p[i] == '\\'; return (python text, next index)."""
    if i + 1 >= len(p):
        raise RegexError("trailing backslash at end of expression")
    c = p[i + 1]
    if c in "dws":
        return (f"[{_ASCII_CLASSES[c]}]" if not in_class else _ASCII_CLASSES[c]), i + 2
    if c in "DWS":
        if in_class:
            raise RegexUnsupported(f"\\{c} inside a character class is not supported")
        return f"[^{_ASCII_CLASSES[c.lower()]}]", i + 2
    if c in "pP":
        raise RegexUnsupported("Unicode classes (\\p) are not supported")
    if c in "123456789" and (i + 2 >= len(p) or p[i + 2] not in "01234567"):
        raise RegexError(f"invalid escape sequence: \\{c}")
    if c in "01234567":
        return _octal(p, i + 1)
    if c == "x":
        if i + 2 < len(p) and p[i + 2] == "{":
            end = p.find("}", i + 3)
            if end < 0:
                raise RegexError("invalid escape sequence: \\x{")
            return f"\\U{int(p[i + 3 : end], 16):08x}", end + 1
        return p[i : i + 4], i + 4
    if not in_class:
        if c == "z":
            return "\\Z", i + 2
        if c == "b":
            return _BOUNDARY, i + 2
        if c == "B":
            return _NOT_BOUNDARY, i + 2
        if c == "Z":
            raise RegexError("invalid escape sequence: \\Z")
    if c == "Q":
        end = p.find("\\E", i + 2)
        lit = p[i + 2 :] if end < 0 else p[i + 2 : end]
        nxt = len(p) if end < 0 else end + 2
        return "".join(_escape_char(ch) for ch in lit), nxt
    if c.isalnum() and c not in "afnrtvAbB":
        raise RegexError(f"invalid escape sequence: \\{c}")
    return p[i : i + 2], i + 2


def _char_class(p: str, i: int) -> tuple[str, int]:
    """Translate the class starting at p[i] == '['."""
    out = ["["]
    j = i + 1
    if j < len(p) and p[j] == "^":
        out.append("^")
        j += 1
    first = True
    while j < len(p):
        c = p[j]
        if c == "]" and not first:
            out.append("]")
            return "".join(out), j + 1
        first = False
        if c == "[" and p.startswith("[:", j):
            end = p.find(":]", j + 2)
            if end < 0:
                out.append("\\[")
                j += 1
                continue
            name = p[j + 2 : end]
            neg = name.startswith("^")
            name = name.lstrip("^")
            if name not in _POSIX or neg:
                raise RegexError(f"invalid character class range: [:{name}:]")
            out.append(_POSIX[name])
            j = end + 2
        elif c == "\\":
            text, j = _escape(p, j, True)
            out.append(text)
        elif c in "[&~|":
            out.append("\\" + c)
            j += 1
        else:
            out.append(c)
            j += 1
    raise RegexError("missing closing ]")


def translate(pattern: str) -> str:
    """Translate a Go RE2 pattern to an equivalent Python pattern (not anchored)."""
    out: list[str] = []
    closers: list[int] = [0]  # per open group: how many ')' to add when it closes (flag groups)
    multiline = False
    i = 0
    n = len(pattern)
    while i < n:
        c = pattern[i]
        if c == "\\":
            text, i = _escape(pattern, i, False)
            out.append(text)
        elif c == "[":
            text, i = _char_class(pattern, i)
            out.append(text)
        elif c == "(":
            if pattern.startswith("(?", i):
                m = re.match(r"\(\?([imsU]*(?:-[imsU]*)?)([:)])", pattern[i:])
                named = re.match(r"\(\?P<([A-Za-z_][A-Za-z0-9_]*)>", pattern[i:])
                if named:
                    out.append(named.group(0))
                    closers.append(0)
                    i += named.end()
                    continue
                if not m:
                    raise RegexError(f"invalid or unsupported Perl syntax: {pattern[i : i + 3]}")
                flags = m.group(1)
                if "U" in flags:
                    raise RegexUnsupported("the (?U) flag is not supported")
                if "m" in flags.split("-")[0]:
                    multiline = True
                if m.group(2) == ":":
                    out.append(f"(?{flags}:" if flags else "(?:")
                    closers.append(0)
                elif flags:
                    out.append(f"(?{flags}:")  # scope the flags to the rest of the enclosing group
                    closers[-1] += 1
                i += m.end()
            else:
                out.append("(")
                closers.append(0)
                i += 1
        elif c == ")":
            if len(closers) == 1:
                raise RegexError("unexpected )")
            out.append(")" * closers.pop() + ")")
            i += 1
        elif c == "$":
            out.append("$" if multiline else "\\Z")
            i += 1
        elif c in "*+?" and i + 1 < n and pattern[i + 1] in "*+":
            raise RegexError(f"invalid nested repetition operator: {pattern[i : i + 2]}")
        else:
            out.append(c)
            i += 1
    if len(closers) != 1:
        raise RegexError("missing closing )")
    out.append(")" * closers[0])
    return "".join(out)


@lru_cache(maxsize=4096)
def compile_anchored(pattern: str) -> re.Pattern[str]:
    """Compile ``^(?:pattern)$`` with Go semantics; use ``.fullmatch``/``.match`` on the result."""
    try:
        return re.compile(f"(?:{translate(pattern)})\\Z")
    except re.error as err:
        raise RegexError(str(err)) from err
