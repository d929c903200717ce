"""node-problem-detector's kernel-monitor configs, loaded unchanged and applied as NPD applies them.

Pure code (no threads, no files but the one being loaded). A config is NPD's JSON: ``conditions`` (the
permanent problems, each a node condition with its default reason) and ``rules`` (``type`` temporary or
permanent, ``reason``, ``condition``, ``pattern``). As in NPD's log monitor, each config keeps the last
``bufferSize`` messages; after every new message each rule's pattern, with ``\\z`` appended, is searched in
those messages joined by newlines, so a pattern can span lines and must end at the newest one. A temporary
match is one problem event; a permanent one sets its condition (an event only when the condition changes).

Configs for NPD's ``custom`` plugin that run ``log-counter`` (``kernel-monitor-counter.json``) load too: the
rule becomes "``--count`` matches of ``--pattern`` within ``--lookback``" on the same kernel log.

Patterns are Go (RE2) regular expressions. They run on Python's ``re`` after a small translation (``\\z``,
``\\Q...\\E``, POSIX classes, ASCII-only ``\\d\\w\\s\\b`` as in Go); syntax RE2 rejects (look-around,
back-references, possessive quantifiers) is rejected here too, so a config that NPD refuses is refused.
"""

from __future__ import annotations

import json
import re
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple

from agent.core.durations import parse_duration
from agent.core.errors import ConfigError

ProblemType = Literal["temporary", "permanent"]

_POSIX = {
    "alnum": "0-9A-Za-z", "alpha": "A-Za-z", "ascii": "\\x00-\\x7f", "blank": "\\t ", "cntrl": "\\x00-\\x1f\\x7f",
    "digit": "0-9", "graph": "!-~", "lower": "a-z", "print": " -~", "punct": "!-/:-@\\[-`{-~",
    "space": "\\t\\n\\v\\f\\r ", "upper": "A-Z", "word": "0-9A-Za-z_", "xdigit": "0-9A-Fa-f",
}
_UNSUPPORTED = (
    (re.compile(r"\(\?<?[=!]"), "look-around assertions"),
    (re.compile(r"\\[1-9]"), "back-references"),
    (re.compile(r"(?:[*+?}])\+"), "possessive quantifiers"),
    (re.compile(r"\(\?>"), "atomic groups"),
)


def translate(expr: str) -> str:
    r"""A Go/RE2 regular expression as Python ``re`` syntax (ValueError for syntax RE2 does not have)."""
    out: list[str] = []
    i, n = 0, len(expr)
    in_class = False
    while i < n:
        c = expr[i]
        if c == "\\" and i + 1 < n:
            nxt = expr[i + 1]
            if nxt == "Q":  # \Q...\E: literal text
                end = expr.find("\\E", i + 2)
                lit = expr[i + 2 :] if end < 0 else expr[i + 2 : end]
                out.append("".join("\\" + ch if not ch.isalnum() else ch for ch in lit))
                i = n if end < 0 else end + 2
                continue
            if nxt == "z" and not in_class:
                out.append("\\Z")
            elif nxt == "Z":
                raise ValueError("invalid escape sequence \\Z (RE2 has only \\z)")
            elif nxt.isdigit() and nxt != "0" and not in_class:
                raise ValueError("back-references are not supported by RE2")
            elif nxt in "pP":
                raise ValueError("Unicode classes \\p{...} are not supported here")
            else:
                out.append(expr[i : i + 2])
            i += 2
            continue
        if in_class:
            if c == "[" and expr.startswith("[:", i):
                end = expr.find(":]", i + 2)
                name = expr[i + 2 : end] if end > 0 else ""
                negate = name.startswith("^")
                if negate:
                    raise ValueError("negated POSIX classes [[:^name:]] are not supported here")
                if name in _POSIX:
                    out.append(_POSIX[name])
                    i = end + 2
                    continue
                raise ValueError(f"invalid character class range [:{name}:]")
            if c == "]":
                in_class = False
            elif c == "[":  # Python warns about nested sets; a literal '[' in Go
                out.append("\\[")
                i += 1
                continue
            out.append(c)
            i += 1
            continue
        if c == "[":
            in_class = True
            out.append(c)
            i += 1
            if i < n and expr[i] == "^":
                out.append("^")
                i += 1
            if i < n and expr[i] == "]":  # a leading ']' is literal
                out.append("\\]")
                i += 1
            continue
        out.append(c)
        i += 1
    return "".join(out)


def compile_go(expr: str, suffix: str = "") -> re.Pattern[str]:
    """Compile a Go regular expression (plus ``suffix``, Go syntax) for Python; ValueError when invalid."""
    for bad, what in _UNSUPPORTED:
        if bad.search(expr):
            raise ValueError(f"{what} are not supported by RE2")
    try:
        return re.compile(translate(expr + suffix), re.ASCII)
    except re.error as err:
        raise ValueError(str(err)) from err


def _last_line_only(expr: str) -> bool:
    """True when the pattern can neither match a newline nor anchor at the start (NPD's lastLineOnly).

    Such a pattern, anchored at the end, can only match inside the newest line, so matching that line alone
    gives NPD's result without joining the buffer. Anything this cannot prove falls back to joining.
    """
    try:
        from re import _constants as c  # type: ignore[attr-defined]
        from re import _parser as sre_parse  # type: ignore[attr-defined]
    except ImportError:  # pragma: no cover - other Python versions: always join (exact, slower)
        return False
    text = translate(expr)
    if "(?" in text.replace("(?:", "").replace("(?P<", ""):
        return False  # inline flags ((?s), (?m)...): do not reason about them
    try:
        tree = sre_parse.parse(text, re.ASCII)
    except Exception:
        return False
    if len(tree.data) == 1 and tree.data[0][0] is c.BRANCH:
        return False  # "a|b" + \z anchors only the last branch: join like NPD
    newline_sets = {c.CATEGORY_SPACE, c.CATEGORY_NOT_DIGIT, c.CATEGORY_NOT_WORD}

    def safe(items: Any) -> bool:
        for op, av in items:
            if (op is c.LITERAL and av == 10) or (op is c.NOT_LITERAL and av != 10):
                return False
            if op is c.AT and av in (c.AT_BEGINNING, c.AT_BEGINNING_STRING):
                return False
            if op is c.IN:
                members = list(av)
                negated = any(o is c.NEGATE for o, _ in members)
                has_nl = any((o is c.LITERAL and a == 10) or (o is c.RANGE and a[0] <= 10 <= a[1])
                             or (o is c.CATEGORY and a in newline_sets) for o, a in members)
                if has_nl != negated:
                    return False
            elif op is c.SUBPATTERN:
                if not safe(av[-1]):
                    return False
            elif op in (c.MAX_REPEAT, c.MIN_REPEAT, getattr(c, "POSSESSIVE_REPEAT", None)):
                if not safe(av[2]):
                    return False
            elif op is c.BRANCH:
                if not all(safe(b) for b in av[1]):
                    return False
            elif op not in (c.LITERAL, c.NOT_LITERAL, c.ANY, c.AT):
                return False
        return True

    return safe(tree.data)


class Problem(NamedTuple):
    """What one new kernel-log message caused."""

    reason: str
    type: ProblemType
    condition: str  # "" for temporary problems
    message: str  # the matched log lines, joined


@dataclass
class Rule:
    """One NPD rule, compiled."""

    type: ProblemType
    reason: str
    condition: str
    pattern: str
    regex: re.Pattern[str]
    last_line: re.Pattern[str] | None = None  # set when the rule can only match in the newest line
    count: int = 1  # log-counter: matches needed within lookback
    lookback_us: int = 0
    hits: deque[int] = field(default_factory=deque)  # log-counter: timestamps of recent matches


@dataclass
class Condition:
    """A node condition of a config: its type, default (healthy) reason, and current state."""

    type: str
    default_reason: str
    message: str
    active: bool = False
    reason: str = ""


class LogMonitor:
    """One NPD config applied to a stream of kernel-log messages."""

    def __init__(self, source: str, buffer_size: int, conditions: list[Condition], rules: list[Rule],
                 name: str = "") -> None:
        self.name = name or source
        self.source = source
        self.conditions = {c.type: c for c in conditions}
        self.rules = rules
        self._buffer: deque[str] = deque(maxlen=max(1, buffer_size))
        self._needs_join = any(r.last_line is None for r in rules)

    def push(self, message: str, timestamp_us: int = 0) -> list[Problem]:
        """Add one message (NPD trims it and skips empty ones); the problems it completes."""
        message = message.strip()
        if not message:
            return []
        buf = self._buffer
        buf.append(message)
        # NPD joins its whole ring, empty slots included: a buffer not yet full starts with empty lines
        joined = "\n" * (buf.maxlen - len(buf)) + "\n".join(buf) if self._needs_join else message
        out: list[Problem] = []
        for rule in self.rules:
            if rule.last_line is not None:
                m = rule.last_line.search(message)
                text = message
            else:
                m = rule.regex.search(joined)
                text = joined
            if m is None:
                continue
            matched = _matched_lines(buf, len(text) - m.start())
            if rule.count > 1 or rule.lookback_us:
                hits = rule.hits
                hits.append(timestamp_us)
                while hits and timestamp_us - hits[0] > rule.lookback_us:
                    hits.popleft()
                if len(hits) < rule.count:
                    continue
            if rule.type == "temporary":
                out.append(Problem(rule.reason, "temporary", "", matched))
                continue
            cond = self.conditions.get(rule.condition)
            if cond is None:
                continue
            if not cond.active or cond.reason != rule.reason:  # NPD: an event only when the condition changes
                cond.active, cond.reason = True, rule.reason
                out.append(Problem(rule.reason, "permanent", cond.type, matched))
        return out

    def reasons(self) -> list[tuple[str, str]]:
        """(reason, condition) of every rule, in order (condition "" for temporary rules)."""
        return [(r.reason, r.condition if r.type == "permanent" else "") for r in self.rules]


def _matched_lines(buf: deque[str], from_end: int) -> str:
    """The newest buffered lines that the match covers (``from_end`` characters from the end)."""
    lines: list[str] = []
    total = 0
    for line in reversed(buf):
        lines.append(line)
        total += len(line) + 1
        if total >= from_end:
            break
    return "\n".join(reversed(lines))


def _log_counter_rule(raw: dict[str, Any], where: str) -> tuple[str, int, int]:
    """(pattern, count, lookback_us) from a custom-plugin rule that runs NPD's log-counter."""
    path = str(raw.get("path", ""))
    if not path.endswith("log-counter"):
        raise ValueError(f"{where}: custom plugin {path!r} is not log-counter (only log-counter rules can run here)")
    pattern, count, lookback = None, 1, 0.0
    for arg in raw.get("args") or []:
        key, _, value = str(arg).partition("=")
        if key == "--pattern":
            pattern = value
        elif key == "--count":
            count = int(value)
        elif key == "--lookback":
            lookback = parse_duration(value)
    if pattern is None:
        raise ValueError(f"{where}: log-counter rule has no --pattern")
    return pattern, count, int(lookback * 1e6)


def parse_config(text: str, filename: str = "<npd config>") -> LogMonitor:
    """An NPD kernel-monitor config (JSON text) as a :class:`LogMonitor`; ConfigError with the problem's place."""
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as err:
        raise ConfigError(f"{filename}:{err.lineno}:{err.colno}: invalid JSON: {err.msg}") from err
    if not isinstance(doc, dict):
        raise ConfigError(f"{filename}:1:1: an NPD monitor config is a JSON object")
    lines = text.splitlines()

    def where(needle: str) -> str:
        for no, line in enumerate(lines, 1):
            col = line.find(needle)
            if col >= 0:
                return f"{filename}:{no}:{col + 1}"
        return f"{filename}:1:1"

    plugin = doc.get("plugin", "kmsg")
    if plugin not in ("kmsg", "custom", "journald", "filelog"):
        raise ConfigError(f"{where('plugin')}: unknown plugin {plugin!r}")
    conditions = []
    for c in doc.get("conditions") or []:
        try:
            conditions.append(Condition(str(c["type"]), str(c["reason"]), str(c.get("message", ""))))
        except (KeyError, TypeError) as err:
            raise ConfigError(f"{where('conditions')}: a condition needs type and reason") from err
    known = {c.type for c in conditions}
    rules: list[Rule] = []
    for k, raw in enumerate(doc.get("rules") or []):
        if not isinstance(raw, dict):
            raise ConfigError(f"{where('rules')}: rule {k + 1} is not an object")
        reason = str(raw.get("reason", ""))
        at = where(f'"{reason}"') if reason else where("rules")
        kind = raw.get("type")
        if kind not in ("temporary", "permanent"):
            raise ConfigError(f"{at}: rule {reason!r}: type must be temporary or permanent, got {kind!r}")
        if not reason:
            raise ConfigError(f"{at}: rule {k + 1} has no reason")
        condition = str(raw.get("condition", ""))
        if kind == "permanent" and condition not in known:
            raise ConfigError(f"{at}: rule {reason!r}: condition {condition!r} is not declared in conditions")
        count, lookback_us = 1, 0
        try:
            if plugin == "custom":
                pattern, count, lookback_us = _log_counter_rule(raw, f"rule {reason!r}")
            else:
                pattern = str(raw["pattern"])
            regex = compile_go(pattern, "\\z")
            last = compile_go(pattern, "\\z") if _last_line_only(pattern) else None
        except KeyError as err:
            raise ConfigError(f"{at}: rule {reason!r} has no pattern") from err
        except ValueError as err:
            raise ConfigError(f"{at}: rule {reason!r}: bad pattern: {err}") from err
        rules.append(Rule(kind, reason, condition if kind == "permanent" else "", pattern, regex, last, count,
                          lookback_us))
    buffer_size = doc.get("bufferSize", 10)
    if not isinstance(buffer_size, int) or isinstance(buffer_size, bool) or not 1 <= buffer_size <= 1000:
        raise ConfigError(f"{where('bufferSize')}: bufferSize must be an integer 1-1000")
    return LogMonitor(str(doc.get("source", "kernel-monitor")), buffer_size, conditions, rules)


def load_config(path: str) -> LogMonitor:
    """Read and parse one NPD config file."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read(4 << 20)
    except OSError as err:
        raise ConfigError(f"{path}:1:1: cannot read: {err.strerror}") from err
    monitor = parse_config(text, path)
    monitor.name = path
    return monitor
