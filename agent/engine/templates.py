"""The Go-template subset Prometheus alert labels and annotations use.

Supported: ``{{ $labels.x }}``, ``{{ $value }}``, ``{{ $externalLabels.x }}``, ``{{ $externalURL }}`` and the
``.Labels.x`` / ``.Value`` / ``.ExternalLabels.x`` / ``.ExternalURL`` forms; pipelines (``$value | humanize``);
the functions of :mod:`agent.engine.template_funcs` plus ``and`` / ``or``; ``if`` / ``else if`` / ``else`` /
``end``; ``{{-``/``-}}`` trimming and comments.
Anything else (``range``, ``with``, ``define``, ``query``, variables ...) is rejected by :func:`parse` with
the offset of the construct, so an unsupported template fails when the rule file is loaded.

Output follows Go's formatting: ``{{ $value }}`` prints like Go's ``%v`` (``1e+06``, ``+Inf``, ``NaN``) and an
execution error renders as ``<error expanding template: ...>`` exactly where Prometheus would.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from agent.engine.template_funcs import ARITY, FUNCS, UNSUPPORTED, ExecError, go_print, truth


class TemplateError(Exception):
    """A template that cannot be parsed; ``offset`` is the character position in the template text."""

    def __init__(self, message: str, offset: int) -> None:
        super().__init__(message)
        self.message = message
        self.offset = offset


# ---------------------------------------------------------------------------------------------
# Parsing
# ---------------------------------------------------------------------------------------------
@dataclass
class _Field:
    root: str  # "labels" | "externalLabels" | "value" | "externalURL"
    key: str | None
    offset: int
    text: str = ""  # as written: "$labels.gpu", ".Labels.gpu", "$value"


@dataclass
class _Lit:
    value: Any


@dataclass
class _Cmd:
    func: str | None  # None: a bare operand
    args: list[Any]
    offset: int


@dataclass
class _Pipe:
    cmds: list[_Cmd]


@dataclass
class _If:
    branches: list[tuple[_Pipe, list[Any]]] = field(default_factory=list)
    otherwise: list[Any] = field(default_factory=list)


_TOKEN = re.compile(
    r"""\s*(?:
      (?P<str>"(?:[^"\\]|\\.)*")
    | (?P<raw>`[^`]*`)
    | (?P<num>[-+]?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][-+]?\d+)?)
    | (?P<var>\$[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*|\$(?![\w]))
    | (?P<dot>(?:\.[A-Za-z_]\w*)+|\.(?![\w]))
    | (?P<ident>[A-Za-z_]\w*)
    | (?P<pipe>\|)
    | (?P<lp>\()
    | (?P<rp>\))
    | (?P<assign>:?=)
    | (?P<other>\S)
    )""",
    re.VERBOSE,
)

_ROOTS = {"$labels": "labels", ".Labels": "labels", "$externalLabels": "externalLabels",
          ".ExternalLabels": "externalLabels", "$value": "value", ".Value": "value",
          "$externalURL": "externalURL", ".ExternalURL": "externalURL"}


def _unquote(s: str, off: int) -> str:
    body = s[1:-1]
    out = []
    i = 0
    esc = {"n": "\n", "t": "\t", "\\": "\\", '"': '"', "r": "\r", "'": "'"}
    while i < len(body):
        c = body[i]
        if c == "\\":
            if i + 1 >= len(body) or body[i + 1] not in esc:
                raise TemplateError("unsupported escape sequence in string", off + i + 1)
            out.append(esc[body[i + 1]])
            i += 2
        else:
            out.append(c)
            i += 1
    return "".join(out)


class _ActionParser:
    """Parses the inside of one ``{{ ... }}``."""

    def __init__(self, text: str, base: int) -> None:
        self.toks: list[tuple[str, str, int]] = []
        pos = 0
        while pos < len(text):
            m = _TOKEN.match(text, pos)
            if m is None or m.end() == pos:
                break
            kind = m.lastgroup or ""
            self.toks.append((kind, m.group(kind), base + m.start(kind)))
            pos = m.end()
        self.i = 0
        self.end = base + len(text)

    def peek(self) -> tuple[str, str, int] | None:
        return self.toks[self.i] if self.i < len(self.toks) else None

    def pipeline(self) -> _Pipe:
        cmds = [self.command()]
        while (t := self.peek()) is not None and t[0] == "pipe":
            self.i += 1
            cmd = self.command()
            if cmd.func is None:
                raise TemplateError("non-function in pipeline", cmd.offset)
            cmds.append(cmd)
        return _Pipe(cmds)

    def command(self) -> _Cmd:
        t = self.peek()
        if t is None or t[0] in ("pipe", "rp"):
            raise TemplateError("missing value for command", t[2] if t else self.end)
        if t[0] == "ident" and t[1] not in ("true", "false", "nil"):
            name, off = t[1], t[2]
            if name in ("range", "with", "define", "template", "block", "break", "continue"):
                raise TemplateError(f"unsupported template action {name!r}", off)
            if name in UNSUPPORTED:
                raise TemplateError(f"unsupported template function {name!r}", off)
            if name not in FUNCS and name not in ("and", "or"):
                raise TemplateError(f'function "{name}" not defined', off)
            self.i += 1
            args = []
            while (n := self.peek()) is not None and n[0] not in ("pipe", "rp"):
                args.append(self.operand())
            return _Cmd(name, args, off)
        op = self.operand()
        n = self.peek()
        if n is not None and n[0] not in ("pipe", "rp"):
            raise TemplateError("can't give argument to non-function", n[2])
        return _Cmd(None, [op], t[2])

    def operand(self) -> Any:
        t = self.peek()
        if t is None:
            raise TemplateError("unexpected end of action", self.end)
        kind, text, off = t
        self.i += 1
        if kind == "str":
            return _Lit(_unquote(text, off))
        if kind == "raw":
            return _Lit(text[1:-1])
        if kind == "num":
            if re.fullmatch(r"[-+]?\d+", text):
                return _Lit(int(text))
            return _Lit(float(text))
        if kind == "ident":
            if text in ("true", "false"):
                return _Lit(text == "true")
            raise TemplateError(f"function {text!r} used as an argument: wrap it in parentheses", off)
        if kind in ("var", "dot"):
            return self._field(text, off)
        if kind == "lp":
            pipe = self.pipeline()
            close = self.peek()
            if close is None or close[0] != "rp":
                raise TemplateError("unclosed left paren", off)
            self.i += 1
            return pipe
        if kind == "assign":
            raise TemplateError("unsupported template syntax: variable assignment", off)
        raise TemplateError(f"unexpected {text!r} in template action", off)

    def _field(self, text: str, off: int) -> _Field:
        parts = text.split(".")
        if text.startswith("$"):
            root, rest = parts[0], parts[1:]
        else:
            root, rest = "." + parts[1], parts[2:]
        if root not in _ROOTS:
            raise TemplateError(f"unsupported template variable or field {text!r}", off)
        kind = _ROOTS[root]
        if kind in ("value", "externalURL"):
            if rest:
                raise TemplateError(f"can't evaluate field {rest[0]} of {root}", off)
            return _Field(kind, None, off, text)
        if len(rest) > 1:
            raise TemplateError(f"can't evaluate field {rest[1]} of a label value", off)
        return _Field(kind, rest[0] if rest else None, off, text)


_ACTION = re.compile(r"\{\{(-\s)?(.*?)(\s-)?\}\}", re.DOTALL)


class Template:
    """A parsed template; :meth:`render` expands it."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.nodes = _parse(text)
        self.is_static = len(self.nodes) <= 1 and all(isinstance(n, str) for n in self.nodes)

    def references(self) -> list[str] | None:
        """The field references as written (``$labels.gpu``, ``$value``) when the template is nothing but text
        and bare references (no function, pipeline, literal or ``if``); None otherwise."""
        out = []
        for node in self.nodes:
            if isinstance(node, str):
                continue
            if not isinstance(node, _Pipe) or len(node.cmds) != 1 or node.cmds[0].func is not None \
                    or not isinstance(node.cmds[0].args[0], _Field):
                return None
            out.append(node.cmds[0].args[0].text)
        return out

    def render(self, labels: Mapping[str, str], value: float, external_labels: Mapping[str, str] | None = None,
               external_url: str = "") -> str:
        """Expand with the alert's labels and value; execution errors render as Prometheus does."""
        if self.is_static:
            return self.nodes[0] if self.nodes else ""
        data = {"labels": labels, "value": value, "externalLabels": external_labels or {},
                "externalURL": external_url}
        out: list[str] = []
        try:
            _exec(self.nodes, data, out)
        except ExecError as err:
            return f"<error expanding template: {err}>"
        return "".join(out)


def parse(text: str) -> Template:
    """Parse template text; TemplateError (with offset) for syntax Prometheus rejects or we do not support."""
    return Template(text)


def _parse(text: str) -> list[Any]:
    # Split into literal text and actions, applying {{- and -}} trimming.
    pieces: list[tuple[str, Any, int]] = []
    pos = 0
    for m in _ACTION.finditer(text):
        lit = text[pos:m.start()]
        if m.group(1):
            lit = lit.rstrip()
        pieces.append(("text", lit, pos))
        pieces.append(("action", m.group(2), m.start(2)))
        pos = m.end()
        if m.group(3):
            while pos < len(text) and text[pos].isspace():
                pos += 1
    rest = text[pos:]
    if "{{" in rest:
        raise TemplateError("unclosed action", pos + rest.index("{{"))
    pieces.append(("text", rest, pos))

    root: list[Any] = []
    stack: list[tuple[_If, list[Any], int]] = []
    cur = root
    for kind, body, off in pieces:
        if kind == "text":
            if body:
                cur.append(body)
            continue
        stripped = body.strip()
        lead = len(body) - len(body.lstrip())
        aoff = off + lead
        if stripped.startswith("/*"):
            if not stripped.endswith("*/"):
                raise TemplateError("unclosed comment", aoff)
            continue
        if not stripped:
            raise TemplateError("missing value for command", aoff)
        word = stripped.split(None, 1)[0]
        if word == "if":
            node = _If()
            p = _ActionParser(body[lead + 2:], aoff + 2)
            pipe = _check_end(p, p.pipeline())
            node.branches.append((pipe, []))
            cur.append(node)
            stack.append((node, cur, aoff))
            cur = node.branches[-1][1]
        elif word == "else":
            if not stack:
                raise TemplateError("unexpected {{else}}", aoff)
            node = stack[-1][0]
            if cur is node.otherwise:
                raise TemplateError("expected end; found {{else}}", aoff)
            rest2 = stripped[4:].strip()
            if rest2.startswith("if"):
                start = body.index("if", lead + 4)
                p = _ActionParser(body[start + 2:], off + start + 2)
                pipe = _check_end(p, p.pipeline())
                node.branches.append((pipe, []))
                cur = node.branches[-1][1]
            elif rest2:
                raise TemplateError(f"unsupported template syntax: else {rest2.split()[0]}", aoff)
            else:
                cur = node.otherwise
        elif word == "end":
            if not stack or stripped != "end":
                raise TemplateError("unexpected {{end}}", aoff)
            _, cur, _ = stack.pop()
        else:
            p = _ActionParser(body, off)
            cur.append(_check_end(p, p.pipeline()))
    if stack:
        raise TemplateError("unexpected EOF: missing {{end}}", stack[-1][2])
    return root


def _check_end(p: _ActionParser, pipe: _Pipe) -> _Pipe:
    t = p.peek()
    if t is not None:
        if t[0] == "assign":
            raise TemplateError("unsupported template syntax: variable assignment", t[2])
        raise TemplateError(f"unexpected {t[1]!r} in template action", t[2])
    return pipe


# ---------------------------------------------------------------------------------------------
# Execution
# ---------------------------------------------------------------------------------------------
def _exec(nodes: list[Any], data: dict[str, Any], out: list[str]) -> None:
    for node in nodes:
        if isinstance(node, str):
            out.append(node)
        elif isinstance(node, _Pipe):
            out.append(go_print(_pipe(node, data)))
        else:
            for cond, body in node.branches:
                if truth(_pipe(cond, data)):
                    _exec(body, data, out)
                    break
            else:
                _exec(node.otherwise, data, out)


def _pipe(pipe: _Pipe, data: dict[str, Any]) -> Any:
    value: Any = None
    for i, cmd in enumerate(pipe.cmds):
        if cmd.func is None:
            value = _arg(cmd.args[0], data)
            continue
        args = [_arg(a, data) for a in cmd.args]
        if i > 0:
            args.append(value)
        value = _call(cmd.func, args)
    return value


def _call(name: str, args: list[Any]) -> Any:
    if name == "and":
        if not args:
            raise ExecError("wrong number of args for and")
        for a in args:
            if not truth(a):
                return a
        return args[-1]
    if name == "or":
        if not args:
            raise ExecError("wrong number of args for or")
        for a in args:
            if truth(a):
                return a
        return args[-1]
    want = ARITY.get(name)
    if want is not None and len(args) != want:
        raise ExecError(f"wrong number of args for {name}: want {want} got {len(args)}")
    if name == "printf" and not args:
        raise ExecError("wrong number of args for printf: want at least 1 got 0")
    try:
        return FUNCS[name](*args)
    except ExecError as err:
        if str(err).startswith("error calling"):
            raise
        raise ExecError(f"error calling {name}: {err}") from err


def _arg(a: Any, data: dict[str, Any]) -> Any:
    if isinstance(a, _Lit):
        return a.value
    if isinstance(a, _Pipe):
        return _pipe(a, data)
    root = data[a.root]
    if a.key is None:
        return root
    return root.get(a.key, "")
