"""Loading and validation of Prometheus rule files (Prometheus 2.42 ``model/rulefmt``).

``groups[]`` with ``name, interval, limit, rules`` (plus ``labels``, which newer Prometheus releases
accept), alerting rules ``alert, expr, for, keep_firing_for, labels, annotations`` and recording rules
``record, expr, labels``. Every problem is reported as ``file:line:column: message``; a set of files
loads all-or-nothing.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from agent.core import yamlpos
from agent.core.durations import parse_prometheus_duration
from agent.core.errors import ConfigError, RuleError
from agent.engine import templates
from agent.engine.rules.model import Compiler, GroupDef, RuleDef

METRIC_NAME_RE = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
LABEL_NAME_RE = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
GROUP_KEYS = ("name", "interval", "limit", "labels", "rules")
RULE_KEYS = ("record", "alert", "expr", "for", "keep_firing_for", "labels", "annotations")


def _default_compiler(text: str) -> Any:
    from agent.engine.promql import compile_expr

    return compile_expr(text)



class _Problems:
    def __init__(self, filename: str, root: Any, text: str) -> None:
        self.filename = filename
        self.root = root
        self.lines = text.splitlines()
        self.items: list[str] = []

    def add(self, loc: list[str | int], msg: str, key: bool = False, offset: tuple[int, int] = (0, 0)) -> None:
        line, col = yamlpos.position(self.root, loc, key=key)
        self.items.append(f"{self.filename}:{line + offset[0]}:{col + offset[1]}: {msg}")


def _scalar_str(v: Any) -> str | None:
    """A YAML scalar as Go's yaml would decode it into a string (None for mappings/sequences)."""
    if isinstance(v, (dict, list)):
        return None
    if v is None:
        return ""
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)


def _value_offset(p: _Problems, loc: list[str | int], offset: int) -> tuple[int, int]:
    """(line, column) shift of character ``offset`` inside the scalar at ``loc`` (plain, quoted or block)."""
    line, col = yamlpos.position(p.root, loc)
    lines = p.lines
    if not 0 < line <= len(lines):
        return (0, 0)
    head = lines[line - 1][col - 1:col]
    node = p.root
    for part in loc:
        node = node[part]
    text = str(node)
    before = text[:offset]
    if head in ("|", ">"):
        first = line  # 0-based index of the first content line
        while first < len(lines) and not lines[first].strip():
            first += 1
        if first >= len(lines):
            return (0, 0)
        indent = len(lines[first]) - len(lines[first].lstrip())
        nl = before.count("\n")
        return (first + 1 + nl - line, indent + 1 + len(before) - (before.rfind("\n") + 1) - col)
    if "\n" in text:
        return (0, 0)
    return (0, offset + (1 if head in ('"', "'") else 0))


def parse_rule_text(text: str, filename: str, compiler: Compiler | None = None) -> tuple[list[GroupDef], list[str]]:
    """Parse and validate one rule file's text; returns (groups, problems)."""
    with yamlpos.paused_gc():
        return _parse_rule_text(text, filename, compiler)


def _parse_rule_text(text: str, filename: str, compiler: Compiler | None) -> tuple[list[GroupDef], list[str]]:
    compiler = compiler or _default_compiler
    try:
        root = yamlpos.load(text, filename)
    except ConfigError as err:
        return [], [str(err)]
    if root is None:
        return [], []
    p = _Problems(filename, root, text)
    if not isinstance(root, yamlpos.Map):
        p.add([], "rule file must be a mapping with a 'groups' list")
        return [], p.items
    for k in root:
        if k != "groups":
            p.add([k], f"field {k} not found in type rulefmt.RuleGroups", key=True)
    groups_node = root.get("groups")
    if groups_node is None:
        return [], p.items
    if not isinstance(groups_node, yamlpos.Seq):
        p.add(["groups"], "'groups' must be a list")
        return [], p.items
    groups: list[GroupDef] = []
    seen: set[str] = set()
    for gi, g in enumerate(groups_node):
        loc: list[str | int] = ["groups", gi]
        if not isinstance(g, yamlpos.Map):
            p.add(loc, "a group must be a mapping")
            continue
        for k in g:
            if k not in GROUP_KEYS:
                p.add([*loc, k], f"field {k} not found in type rulefmt.RuleGroup", key=True)
        name = _scalar_str(g.get("name", ""))
        if name is None:
            p.add([*loc, "name"], "group name must be a string")
            name = ""
        if name == "":
            p.add(loc, "Groupname must not be empty")
        if name in seen:
            p.add(loc, f'groupname: "{name}" is repeated in the same file')
        seen.add(name)
        interval = None
        if "interval" in g:
            interval = _duration(p, [*loc, "interval"], g["interval"])
            if interval == 0:
                interval = None
        limit = 0
        if "limit" in g:
            lv = g["limit"]
            if isinstance(lv, bool) or not isinstance(lv, int):
                p.add([*loc, "limit"], f"cannot unmarshal {lv!r} into limit (an integer)")
            else:
                limit = lv
        glabels = _labels(p, [*loc, "labels"], g.get("labels"), "label")
        rules: list[RuleDef] = []
        rules_node = g.get("rules")
        if rules_node is None:
            rules_node = []
        if not isinstance(rules_node, yamlpos.Seq):
            p.add([*loc, "rules"], "'rules' must be a list")
            rules_node = []
        for ri, r in enumerate(rules_node):
            rule = _parse_rule(p, [*loc, "rules", ri], r, name, ri + 1, compiler)
            if rule is not None:
                rules.append(rule)
        groups.append(GroupDef(name, filename, interval, limit, tuple(sorted(glabels.items())), tuple(rules)))
    return groups, p.items


def _duration(p: _Problems, loc: list[str | int], value: Any) -> float:
    try:
        return parse_prometheus_duration(_scalar_str(value))
    except ValueError as err:
        p.add(loc, str(err))
        return 0.0


def _labels(p: _Problems, loc: list[str | int], node: Any, what: str, prefix: str = "") -> dict[str, str]:
    if node is None:
        return {}
    if not isinstance(node, yamlpos.Map):
        p.add(loc, f"{prefix}{what}s must be a mapping of name: value")
        return {}
    out: dict[str, str] = {}
    for k, v in node.items():
        ks = str(k)
        if not LABEL_NAME_RE.match(ks) or (what == "label" and ks == "__name__"):
            p.add([*loc, k], f"{prefix}invalid {what} name: {ks}", key=True)
        sv = _scalar_str(v)
        if sv is None:
            p.add([*loc, k], f"{prefix}{what} {ks!r} must be a string")
            continue
        out[ks] = sv
    return out


def _parse_rule(p: _Problems, loc: list[str | int], r: Any, group: str, index: int,
                compiler: Compiler) -> RuleDef | None:
    if not isinstance(r, yamlpos.Map):
        p.add(loc, f'group "{group}", rule {index}: a rule must be a mapping')
        return None
    for k in r:
        if k not in RULE_KEYS:
            p.add([*loc, k], f"field {k} not found in type rulefmt.RuleNode", key=True)
    record = _scalar_str(r.get("record", "")) or ""
    alert = _scalar_str(r.get("alert", "")) or ""
    name = alert or record
    prefix = f'group "{group}", rule {index}, "{name}": '
    before = len(p.items)
    if record and alert:
        p.add([*loc, "record"], prefix + "only one of 'record' and 'alert' must be set")
    if not record and not alert:
        p.add(loc, prefix + "one of 'record' or 'alert' must be set")
    expr = _scalar_str(r.get("expr", ""))
    query = None
    if expr is None:
        p.add([*loc, "expr"], prefix + "'expr' must be a string")
    elif expr == "":
        p.add([*loc, "expr"] if "expr" in r else loc, prefix + "field 'expr' must be set in rule")
    else:
        query = _compile(p, [*loc, "expr"], expr, prefix, compiler)
    for_ = _duration(p, [*loc, "for"], r["for"]) if "for" in r else 0.0
    kff = _duration(p, [*loc, "keep_firing_for"], r["keep_firing_for"]) if "keep_firing_for" in r else 0.0
    label_tmpls: list[tuple[str, templates.Template]] = []
    ann_tmpls: list[tuple[str, templates.Template]] = []
    if record:
        if r.get("annotations"):
            p.add([*loc, "record"], prefix + "invalid field 'annotations' in recording rule")
        if for_:
            p.add([*loc, "record"], prefix + "invalid field 'for' in recording rule")
        if kff:
            p.add([*loc, "record"], prefix + "invalid field 'keep_firing_for' in recording rule")
        if not METRIC_NAME_RE.match(record):
            p.add([*loc, "record"], prefix + f"invalid recording rule name: {record}")
    labels = _labels(p, [*loc, "labels"], r.get("labels"), "label", prefix)
    annotations = _labels(p, [*loc, "annotations"], r.get("annotations"), "annotation", prefix)
    if alert and not record:
        for what, items, out in (("label", labels, label_tmpls), ("annotation", annotations, ann_tmpls)):
            for k, v in items.items():
                try:
                    out.append((k, templates.parse(v)))
                except templates.TemplateError as err:
                    shift = _value_offset(p, [*loc, what + "s", k], err.offset)
                    p.add([*loc, what + "s", k], prefix + f"{what} {k!r}: template: {err.message}", offset=shift)
    if len(p.items) > before or query is None:
        return None
    return RuleDef(
        kind="recording" if record else "alerting", name=name, expr=expr or "", query=query, for_=for_,
        keep_firing_for=kff, labels=tuple(sorted(labels.items())), annotations=tuple(sorted(annotations.items())),
        label_tmpls=tuple(sorted(label_tmpls, key=lambda kv: kv[0])),
        annotation_tmpls=tuple(sorted(ann_tmpls, key=lambda kv: kv[0])),
        expr_pos=yamlpos.position(p.root, [*loc, "expr"]),
    )


def _compile(p: _Problems, loc: list[str | int], expr: str, prefix: str, compiler: Compiler) -> Any:
    try:
        return compiler(expr)
    except Exception as err:  # PromQLError(message, offset); anything else is reported the same way
        offset = getattr(err, "offset", None)
        message = getattr(err, "message", None) or str(err)
        shift = _value_offset(p, loc, offset) if isinstance(offset, int) else (0, 0)
        p.add(loc, prefix + f"could not parse expression: {message}", offset=shift)
        return None


def load_files(files: Iterable[str], compiler: Compiler | None = None) -> list[GroupDef]:
    """Load and validate rule files; RuleError listing every problem when any file is bad."""
    groups: list[GroupDef] = []
    problems: list[str] = []
    for path in files:
        try:
            text = yamlpos.read_text(path, "rule file")
        except ConfigError as err:
            problems.extend(err.problems)
            continue
        g, errs = parse_rule_text(text, path, compiler)
        groups.extend(g)
        problems.extend(errs)
    if problems:
        raise RuleError("\n".join(problems), problems)
    return groups

