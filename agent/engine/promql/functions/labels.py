"""label_replace (with Go's template expansion) and label_join."""

from __future__ import annotations

from typing import Any

from agent.engine.promql.nodes import Call, VectorT
from agent.engine.promql.values import PromQLEvalError


def go_expand(template: str, src: str, match: Any) -> str:
    """regexp.ExpandString: ``$1``, ``${1}``, ``$name``, ``${name}``, ``$$``; unknown groups expand to ''."""
    out: list[str] = []
    rest = template
    groups = match.re.groupindex
    while True:
        i = rest.find("$")
        if i < 0:
            break
        out.append(rest[:i])
        rest = rest[i + 1 :]
        if rest.startswith("$"):
            out.append("$")
            rest = rest[1:]
            continue
        brace = rest.startswith("{")
        body = rest[1:] if brace else rest
        j = 0
        while j < len(body) and (body[j].isalnum() or body[j] == "_"):
            j += 1
        if j == 0 or (brace and (j >= len(body) or body[j] != "}")):
            out.append("$")
            continue
        name = body[:j]
        rest = body[j + 1 :] if brace else body[j:]
        if name.isascii() and name.isdigit() and not (name[0] == "0" and len(name) > 1) and len(name) <= 8:
            num = int(name)
            if num <= match.re.groups and match.group(num) is not None:
                out.append(match.group(num))
        elif name in groups and match.group(name) is not None:
            out.append(match.group(name))
    out.append(rest)
    return "".join(out)


def call_label_replace(call: Call, store: Any, t: float) -> VectorT:
    if isinstance(call.extra, PromQLEvalError):
        raise call.extra
    vec = call.args[0].eval(store, t)
    dst = call.args[1].value
    repl = call.args[2].value
    src = call.args[3].value
    regex = call.extra
    out = []
    for labels, v in vec:
        value = labels.get(src, "")
        m = regex.match(value)
        if m is None:
            out.append((labels, v))
            continue
        res = go_expand(repl, value, m)
        new = {k: x for k, x in labels.items() if k != dst}
        if res:
            new[dst] = res
        out.append((new, v))
    return call.check(out)


def call_label_join(call: Call, store: Any, t: float) -> VectorT:
    if isinstance(call.extra, PromQLEvalError):
        raise call.extra
    vec = call.args[0].eval(store, t)
    dst = call.args[1].value
    sep = call.args[2].value
    srcs = [a.value for a in call.args[3:]]
    out = []
    for labels, v in vec:
        joined = sep.join(labels.get(s, "") for s in srcs)
        new = {k: x for k, x in labels.items() if k != dst}
        if joined:
            new[dst] = joined
        out.append((new, v))
    return call.check(out)
