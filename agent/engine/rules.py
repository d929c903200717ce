"""Prometheus rule files on the node: loading and validation, evaluation, the alert state machine.

Loading follows Prometheus 2.42 (``model/rulefmt``): ``groups[]`` with ``name, interval, limit, rules``
(plus ``labels``, which newer Prometheus releases accept), alerting rules ``alert, expr, for,
keep_firing_for, labels, annotations`` and recording rules ``record, expr, labels``. Every problem is
reported as ``file:line:column: message``; a set of files loads all-or-nothing.

Evaluation follows ``rules/alerting.go`` and ``rules/recording.go``: alerts go inactive -> pending ->
firing (once active for ``for``), stay firing for ``keep_firing_for`` after the expression stops
returning them, and are remembered as resolved for 15 minutes. Rule outputs (recording series, ``ALERTS``,
``ALERTS_FOR_STATE``) are written into the store's current tick as each rule finishes, so a later rule of
the same group sees them, exactly like Prometheus. Pending/firing state is persisted to a JSON file
(atomic replace) and restored at start, so a restart neither resets ``for`` timers nor fires again.
"""

from __future__ import annotations

import json
import math
import os
import re
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ruamel.yaml.comments import CommentedMap, CommentedSeq

from agent.core import yamlpos
from agent.core.alerts import Alert
from agent.core.durations import parse_prometheus_duration
from agent.core.errors import ConfigError, RuleError
from agent.core.formatting import go_float, rfc3339
from agent.core.metrics import Labels, MetricSpec, Sample
from agent.engine import templates
from agent.engine.store import ABSENT_NAN

RESOLVED_RETENTION = 15 * 60.0  # Prometheus keeps resolved alerts this long (rules/alerting.go)
METRIC_NAME_RE = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
LABEL_NAME_RE = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
GROUP_KEYS = ("name", "interval", "limit", "labels", "rules")
RULE_KEYS = ("record", "alert", "expr", "for", "keep_firing_for", "labels", "annotations")
STATE_VERSION = 1

Compiler = Callable[[str], Any]


def _default_compiler(text: str) -> Any:
    from agent.engine.promql import compile_expr

    return compile_expr(text)


# ---------------------------------------------------------------------------------------------
# Rule definitions (immutable, the result of loading)
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RuleDef:
    """One alerting or recording rule as loaded."""

    kind: str  # "alerting" | "recording"
    name: str
    expr: str
    query: Any
    for_: float = 0.0
    keep_firing_for: float = 0.0
    labels: tuple[tuple[str, str], ...] = ()
    annotations: tuple[tuple[str, str], ...] = ()
    label_tmpls: tuple[tuple[str, templates.Template], ...] = ()
    annotation_tmpls: tuple[tuple[str, templates.Template], ...] = ()

    @property
    def identity(self) -> tuple:
        """What must be equal for state to carry over a reload."""
        return (self.kind, self.name, self.expr, self.for_, self.keep_firing_for, self.labels, self.annotations)


@dataclass(frozen=True)
class GroupDef:
    """One rule group as loaded."""

    name: str
    file: str
    interval: float | None
    limit: int
    labels: tuple[tuple[str, str], ...]
    rules: tuple[RuleDef, ...]

    @property
    def key(self) -> str:
        """Prometheus's group key ``file;name`` (the ``rule_group`` label)."""
        return f"{self.file};{self.name}"


# ---------------------------------------------------------------------------------------------
# Loading and validation
# ---------------------------------------------------------------------------------------------
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
    compiler = compiler or _default_compiler
    try:
        root = yamlpos.load(text, filename)
    except ConfigError as err:
        return [], [str(err)]
    if root is None:
        return [], []
    p = _Problems(filename, root, text)
    if not isinstance(root, CommentedMap):
        p.add([], "rule file must be a mapping with a 'groups' list")
        return [], p.items
    for k in root:
        if k != "groups":
            p.add([k], f"field {k} not found in type rulefmt.RuleGroups", key=True)
    groups_node = root.get("groups")
    if groups_node is None:
        return [], p.items
    if not isinstance(groups_node, CommentedSeq):
        p.add(["groups"], "'groups' must be a list")
        return [], p.items
    groups: list[GroupDef] = []
    seen: set[str] = set()
    for gi, g in enumerate(groups_node):
        loc: list[str | int] = ["groups", gi]
        if not isinstance(g, CommentedMap):
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
        if not isinstance(rules_node, CommentedSeq):
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
    if not isinstance(node, CommentedMap):
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
    if not isinstance(r, CommentedMap):
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
            with open(path, encoding="utf-8") as fh:
                text = fh.read()
        except OSError as err:
            problems.append(f"{path}:1:1: cannot read rule file: {err.strerror}")
            continue
        except UnicodeDecodeError as err:
            problems.append(f"{path}:1:1: rule file is not UTF-8: {err.reason}")
            continue
        g, errs = parse_rule_text(text, path, compiler)
        groups.extend(g)
        problems.extend(errs)
    if problems:
        raise RuleError("\n".join(problems), problems)
    return groups


# ---------------------------------------------------------------------------------------------
# Runtime state
# ---------------------------------------------------------------------------------------------
@dataclass
class _Active:
    """One alert instance (Prometheus's rules.Alert)."""

    labels: dict[str, str]
    annotations: dict[str, str]
    state: str  # pending | firing | inactive
    active_at: float
    value: float
    fired_at: float | None = None
    resolved_at: float | None = None
    keep_firing_since: float | None = None


@dataclass
class _RuleState:
    rule: RuleDef
    active: dict[tuple, _Active] = field(default_factory=dict)
    health: str = "unknown"  # ok | err | nodata | unknown
    last_error: str = ""
    last_eval: float | None = None
    eval_duration: float = 0.0
    outputs: list[tuple[str, Labels]] = field(default_factory=list)  # series written last evaluation
    check_no_data: bool = True


@dataclass
class _GroupState:
    group: GroupDef
    rules: list[_RuleState]
    last_eval: float | None = None
    duration: float = 0.0
    evaluations: float = 0.0
    failures: dict[str, float] = field(default_factory=lambda: {"error": 0.0, "no_data": 0.0})


def _label_key(labels: Mapping[str, str]) -> tuple:
    return tuple(sorted(labels.items()))


METRICS = [
    MetricSpec("ALERTS", "gauge", "Pending and firing alerts of the alerting rules (value 1).",
               ("alertname", "alertstate")),
    MetricSpec("ALERTS_FOR_STATE", "gauge", "Unix time since which each pending/firing alert is active.",
               ("alertname",)),
    MetricSpec("nodewarden_rule_group_last_evaluation_timestamp_seconds", "gauge",
               "Unix time of the rule group's last evaluation.", ("rule_group",)),
    MetricSpec("nodewarden_rule_group_last_duration_seconds", "gauge",
               "Duration of the rule group's last evaluation.", ("rule_group",)),
    MetricSpec("nodewarden_rule_group_interval_seconds", "gauge",
               "Evaluation interval of the rule group (0: every tick).", ("rule_group",)),
    MetricSpec("nodewarden_rule_group_rules", "gauge", "Number of rules in the group.", ("rule_group",)),
    MetricSpec("nodewarden_rule_evaluations_total", "counter", "Rule evaluations.", ("rule_group",)),
    MetricSpec("nodewarden_rule_evaluation_failures_total", "counter",
               "Rule evaluations that failed (reason=error) or found none of the metrics the rule reads "
               "(reason=no_data).", ("rule_group", "reason")),
    MetricSpec("nodewarden_alerts", "gauge", "Active alerts by state.", ("state",)),
    MetricSpec("nodewarden_rules_last_reload_successful", "gauge",
               "Whether the last rule load succeeded (1) or kept the previous rules (0).", ()),
    MetricSpec("nodewarden_rules_last_reload_success_timestamp_seconds", "gauge",
               "Unix time of the last successful rule reload.", ()),
]


# ---------------------------------------------------------------------------------------------
# The engine
# ---------------------------------------------------------------------------------------------
class RuleEngine:
    """Loads rule files, evaluates due groups over the store each tick and keeps alert state."""

    metrics: list[MetricSpec] = METRICS

    def __init__(self, state_path: str | None, external_labels: dict[str, str] | None = None,
                 clock: Callable[[], float] = time.time, *, compiler: Compiler | None = None,
                 check_no_data: bool = True) -> None:
        self.state_path = state_path
        self.external_labels = dict(external_labels or {})
        self.external_url = ""  # {{ $externalURL }} in templates
        self.clock = clock
        self.compiler = compiler
        self.check_no_data = check_no_data
        self.groups: list[_GroupState] = []
        self.files: list[str] = []
        self.reload_ok = 1.0
        self.reload_time = 0.0
        self.lock = threading.RLock()
        self._restored: dict[tuple, list[dict[str, Any]]] = {}
        self._dirty = False
        self._last_persisted: Any = None

    # -- loading ---------------------------------------------------------------------------
    def load(self, files: list[str]) -> None:
        """Load rule files all-or-nothing; unchanged rules keep their pending/firing state."""
        try:
            defs = load_files(files, self.compiler)
        except RuleError:
            self.reload_ok = 0.0
            raise
        with self.lock:
            old: dict[tuple, list[_RuleState]] = {}
            for gs in self.groups:
                for rs in gs.rules:
                    old.setdefault((gs.group.file, gs.group.name, rs.rule.identity), []).append(rs)
            new_groups = []
            for g in defs:
                states = []
                for r in g.rules:
                    key = (g.file, g.name, r.identity)
                    prev = old.get(key)
                    rs = _RuleState(r, check_no_data=self.check_no_data)
                    if prev:
                        p = prev.pop(0)
                        rs.active, rs.health, rs.last_error = p.active, p.health, p.last_error
                        rs.last_eval, rs.eval_duration, rs.outputs = p.last_eval, p.eval_duration, p.outputs
                    elif key in self._restored:
                        rs.active = self._restore_alerts(self._restored.pop(key))
                    states.append(rs)
                gs = _GroupState(g, states)
                for ogs in self.groups:
                    if ogs.group.key == g.key:
                        gs.last_eval, gs.duration = ogs.last_eval, ogs.duration
                        gs.evaluations, gs.failures = ogs.evaluations, ogs.failures
                new_groups.append(gs)
            self.groups = new_groups
            self.files = list(files)
            self.reload_ok = 1.0
            self.reload_time = self.clock()

    # -- evaluation ------------------------------------------------------------------------
    def evaluate(self, store: Any, t: float, force: bool | None = None) -> list[Sample]:
        """Evaluate the groups due at ``t``; return their samples plus the engine's own metrics.

        Outputs are also written into the store's open tick when its time is ``t`` (so later rules see
        earlier ones); series of groups not due this tick are kept alive there with ABSENT_NAN.
        ``force=True`` evaluates every group, ``force=False`` none (promtool's unit-test loop uses both).
        """
        out: list[Sample] = []
        write = getattr(store, "tick", -1) >= 0 and getattr(store, "now", None) == t
        with self.lock:
            for gs in self.groups:
                due = force if force is not None else self._due(gs, t)
                if due:
                    self._eval_group(gs, store, t, out, write)
                elif write:
                    keep = [Sample(n, lb, ABSENT_NAN) for rs in gs.rules for n, lb in rs.outputs]
                    if keep:
                        store.add(keep)
            out.extend(self._self_metrics())
            self._maybe_persist()
        return out

    def _due(self, gs: _GroupState, t: float) -> bool:
        if gs.last_eval is None or gs.group.interval is None:
            return True
        return t - gs.last_eval >= gs.group.interval * 0.99

    def _eval_group(self, gs: _GroupState, store: Any, t: float, out: list[Sample], write: bool) -> None:
        start = time.perf_counter()
        for rs in gs.rules:
            r0 = time.perf_counter()
            try:
                samples = self._eval_rule(rs, gs.group, store, t)
            except Exception as err:  # a rule failure is data: the rule is inactive and counted
                rs.health, rs.last_error = "err", str(err) or type(err).__name__
                gs.failures["error"] += 1
                if rs.rule.kind == "alerting":
                    self._deactivate(rs, t)
                    rs.outputs = []  # ALERTS series go stale with the alerts
                elif write and rs.outputs:  # like Prometheus: no new samples, old ones age out via lookback
                    store.add([Sample(n, lb, ABSENT_NAN) for n, lb in rs.outputs])
            else:
                rs.outputs = [(s.name, s.labels) for s in samples]
                if write and samples:
                    store.add(samples)
                out.extend(samples)
                if rs.check_no_data and self._no_data(rs, store):
                    rs.health, rs.last_error = "nodata", "no data: none of the metrics this rule reads exist"
                    gs.failures["no_data"] += 1
                else:
                    rs.health, rs.last_error = "ok", ""
            rs.last_eval = t
            rs.eval_duration = time.perf_counter() - r0
        gs.evaluations += 1
        gs.last_eval = t
        gs.duration = time.perf_counter() - start

    def _deactivate(self, rs: _RuleState, t: float) -> None:
        """A failed evaluation never leaves an alert pending or firing: pending ones go, firing ones resolve."""
        for key in list(rs.active):
            a = rs.active[key]
            if a.state == "pending":
                del rs.active[key]
                self._dirty = True
            elif a.state == "firing":
                a.state, a.resolved_at, a.keep_firing_since = "inactive", t, None
                self._dirty = True

    @staticmethod
    def _no_data(rs: _RuleState, store: Any) -> bool:
        if "absent" in rs.rule.expr:
            return False
        names = [s.name for s in getattr(rs.rule.query, "selectors", ()) or ()
                 if s.name and s.name not in ("ALERTS", "ALERTS_FOR_STATE")]
        return bool(names) and all(not store.family(n) for n in names)

    def _query(self, rule: RuleDef, store: Any, t: float) -> list[tuple[dict[str, str], float]]:
        res = rule.query.eval(store, t)
        if isinstance(res, list):
            return res
        value = getattr(res, "value", res)
        return [({}, float(value))]

    def _eval_rule(self, rs: _RuleState, group: GroupDef, store: Any, t: float) -> list[Sample]:
        rule = rs.rule
        vec = self._query(rule, store, t)
        if rule.kind == "recording":
            return self._record(rule, group, vec)
        return self._alert(rs, group, vec, t)

    @staticmethod
    def _record(rule: RuleDef, group: GroupDef, vec: list[tuple[dict[str, str], float]]) -> list[Sample]:
        samples = []
        seen = set()
        for labels, value in vec:
            lb = {k: v for k, v in labels.items() if k != "__name__"}
            for k, v in (*group.labels, *rule.labels):
                if v:
                    lb[k] = v
                else:
                    lb.pop(k, None)
            key = tuple(sorted(lb.items()))
            if key in seen:
                raise RuleError("vector contains metrics with the same labelset after applying rule labels")
            seen.add(key)
            samples.append(Sample(rule.name, key, value))
        if group.limit > 0 and len(samples) > group.limit:
            raise RuleError(f"exceeded limit of {group.limit} with {len(samples)} series")
        return samples

    def _alert(self, rs: _RuleState, group: GroupDef, vec: list[tuple[dict[str, str], float]],
               t: float) -> list[Sample]:
        rule = rs.rule
        fresh: dict[tuple, _Active] = {}
        for labels, value in vec:
            metric = {k: v for k, v in labels.items() if k != "__name__"}
            lb = dict(metric)
            for k, v in group.labels:
                if v:
                    lb[k] = v
                else:
                    lb.pop(k, None)
            for k, tmpl in rule.label_tmpls:
                v = tmpl.render(metric, value, self.external_labels, self.external_url)
                if v:
                    lb[k] = v
                else:
                    lb.pop(k, None)
            lb["alertname"] = rule.name
            ext, url = self.external_labels, self.external_url
            ann = {k: tmpl.render(metric, value, ext, url) for k, tmpl in rule.annotation_tmpls}
            key = _label_key(lb)
            if key in fresh:
                raise RuleError("vector contains metrics with the same labelset after applying alert labels")
            fresh[key] = _Active(lb, ann, "pending", t, value)
        active = rs.active
        for key, a in fresh.items():
            cur = active.get(key)
            if cur is not None and cur.state != "inactive":
                cur.value, cur.annotations = a.value, a.annotations
                continue
            active[key] = a
            self._dirty = True
        samples: list[Sample] = []
        n_active = 0
        for key in list(active):
            a = active[key]
            if key not in fresh:
                keep = False
                if a.state == "firing" and rule.keep_firing_for > 0:
                    if a.keep_firing_since is None:
                        a.keep_firing_since = t
                    keep = t - a.keep_firing_since < rule.keep_firing_for
                if a.state == "pending" or (a.resolved_at is not None and t - a.resolved_at > RESOLVED_RETENTION):
                    del active[key]
                if a.state != "inactive" and not keep:
                    a.state = "inactive"
                    a.resolved_at = t
                    self._dirty = True
                if not keep:
                    continue
            else:
                a.keep_firing_since = None
            n_active += 1
            if a.state == "pending" and t - a.active_at >= rule.for_:
                a.state = "firing"
                a.fired_at = t
                self._dirty = True
            base = tuple(sorted(a.labels.items()))
            samples.append(Sample("ALERTS", tuple(sorted((*base, ("alertstate", a.state)))), 1.0))
            samples.append(Sample("ALERTS_FOR_STATE", base, float(int(a.active_at))))
        if group.limit > 0 and n_active > group.limit:
            rs.active = {}
            self._dirty = True
            raise RuleError(f"exceeded limit of {group.limit} with {n_active} alerts")
        return samples

    def _self_metrics(self) -> list[Sample]:
        out = []
        counts = {"pending": 0, "firing": 0}
        for gs in self.groups:
            k = (("rule_group", gs.group.key),)
            if gs.last_eval is not None:
                out.append(Sample("nodewarden_rule_group_last_evaluation_timestamp_seconds", k, gs.last_eval))
                out.append(Sample("nodewarden_rule_group_last_duration_seconds", k, gs.duration))
            out.append(Sample("nodewarden_rule_group_interval_seconds", k, gs.group.interval or 0.0))
            out.append(Sample("nodewarden_rule_group_rules", k, float(len(gs.rules))))
            out.append(Sample("nodewarden_rule_evaluations_total", k, gs.evaluations))
            for reason, n in gs.failures.items():
                out.append(Sample("nodewarden_rule_evaluation_failures_total", (*k, ("reason", reason)), n))
            for rs in gs.rules:
                for a in rs.active.values():
                    if a.state in counts:
                        counts[a.state] += 1
        for state, n in counts.items():
            out.append(Sample("nodewarden_alerts", (("state", state),), float(n)))
        out.append(Sample("nodewarden_rules_last_reload_successful", (), self.reload_ok))
        out.append(Sample("nodewarden_rules_last_reload_success_timestamp_seconds", (), self.reload_time))
        return out

    # -- reading ---------------------------------------------------------------------------
    def rule_states(self) -> Iterable[tuple[GroupDef, _RuleState]]:
        """Every (group, rule state), in file order."""
        for gs in self.groups:
            for rs in gs.rules:
                yield gs.group, rs

    def alerts(self) -> list[Alert]:
        """Pending and firing alerts, plus resolved ones still remembered (state "inactive")."""
        out = []
        with self.lock:
            for _, rs in self.rule_states():
                for a in rs.active.values():
                    out.append(Alert(labels=dict(a.labels), annotations=dict(a.annotations), state=a.state,
                                     active_at=a.active_at, value=a.value, fired_at=a.fired_at,
                                     resolved_at=a.resolved_at if a.state == "inactive" else None))
        return out

    @staticmethod
    def _api_alert(a: _Active) -> dict[str, Any]:
        d = {"labels": dict(a.labels), "annotations": dict(a.annotations), "state": a.state,
             "activeAt": rfc3339(a.active_at), "value": go_float(a.value, "e")}
        if a.keep_firing_since is not None:
            d["keepFiringSince"] = rfc3339(a.keep_firing_since)
        return d

    def api_alerts(self) -> dict[str, Any]:
        """``GET /api/v1/alerts`` body."""
        with self.lock:
            alerts = [self._api_alert(a) for _, rs in self.rule_states() for a in rs.active.values()
                      if a.state != "inactive"]
        return {"status": "success", "data": {"alerts": alerts}}

    def api_rules(self) -> dict[str, Any]:
        """``GET /api/v1/rules`` body."""
        groups = []
        with self.lock:
            for gs in self.groups:
                rules = []
                for rs in gs.rules:
                    r = rs.rule
                    health = {"ok": "ok", "err": "err", "nodata": "err"}.get(rs.health, "unknown")
                    common = {"name": r.name, "query": r.expr, "labels": dict(r.labels), "health": health,
                              "lastError": rs.last_error, "evaluationTime": rs.eval_duration,
                              "lastEvaluation": rfc3339(rs.last_eval)}
                    if r.kind == "recording":
                        rules.append({**common, "type": "recording"})
                        continue
                    live = [a for a in rs.active.values() if a.state != "inactive"]
                    state = "firing" if any(a.state == "firing" for a in live) else (
                        "pending" if live else "inactive")
                    rules.append({"state": state, **common, "duration": r.for_, "keepFiringFor": r.keep_firing_for,
                                  "annotations": dict(r.annotations), "alerts": [self._api_alert(a) for a in live],
                                  "type": "alerting"})
                groups.append({"name": gs.group.name, "file": gs.group.file, "rules": rules,
                               "interval": gs.group.interval or 0.0, "limit": gs.group.limit,
                               "evaluationTime": gs.duration, "lastEvaluation": rfc3339(gs.last_eval)})
        return {"status": "success", "data": {"groups": groups}}

    # -- persistence -----------------------------------------------------------------------
    def _snapshot(self) -> dict[str, Any]:
        rules = []
        for g, rs in self.rule_states():
            alerts = [{"labels": a.labels, "annotations": a.annotations, "state": a.state, "active_at": a.active_at,
                       "fired_at": a.fired_at, "keep_firing_since": a.keep_firing_since,
                       "value": a.value if math.isfinite(a.value) else str(a.value)}
                      for a in rs.active.values() if a.state in ("pending", "firing")]
            if alerts:
                rules.append({"file": g.file, "group": g.name, "identity": _identity_json(rs.rule.identity),
                              "alerts": alerts})
        return {"version": STATE_VERSION, "rules": rules}

    def _maybe_persist(self) -> None:
        if not self._dirty or not self.state_path:
            return
        self._dirty = False
        snap = self._snapshot()
        if snap != self._last_persisted:
            self._write(snap)

    def save_state(self) -> None:
        """Write pending/firing alerts with their active-since times (temp file, fsync, rename)."""
        if not self.state_path:
            return
        with self.lock:
            self._write(self._snapshot())

    def _write(self, snap: dict[str, Any]) -> None:
        assert self.state_path
        directory = os.path.dirname(os.path.abspath(self.state_path))
        try:
            os.makedirs(directory, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".alerts-", suffix=".tmp", dir=directory)
            try:
                with os.fdopen(fd, "w", encoding="utf-8") as fh:
                    json.dump({**snap, "saved_at": self.clock()}, fh, sort_keys=True)
                    fh.flush()
                    os.fsync(fh.fileno())
                os.replace(tmp, self.state_path)
            except BaseException:
                if os.path.exists(tmp):
                    os.unlink(tmp)
                raise
            dfd = os.open(directory, os.O_RDONLY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
        except OSError as err:
            raise RuleError(f"{self.state_path}: cannot save alert state: {err.strerror}") from err
        self._last_persisted = snap

    def restore_state(self) -> None:
        """Read the state file; alerts of matching rules resume with their active-since times."""
        if not self.state_path or not os.path.exists(self.state_path):
            return
        try:
            with open(self.state_path, encoding="utf-8") as fh:
                data = json.load(fh)
        except (OSError, ValueError) as err:
            raise RuleError(f"{self.state_path}: cannot read alert state: {err}") from err
        if not isinstance(data, dict) or data.get("version") != STATE_VERSION:
            return
        with self.lock:
            pending: dict[tuple, list[dict[str, Any]]] = {}
            for entry in data.get("rules", []):
                key = (entry["file"], entry["group"], _identity_tuple(entry["identity"]))
                pending[key] = entry["alerts"]
            for g, rs in self.rule_states():
                key = (g.file, g.name, rs.rule.identity)
                if key in pending:
                    rs.active = self._restore_alerts(pending.pop(key))
            self._restored.update(pending)
            self._last_persisted = self._snapshot()

    @staticmethod
    def _restore_alerts(items: list[dict[str, Any]]) -> dict[tuple, _Active]:
        out = {}
        for it in items:
            a = _Active(labels=dict(it["labels"]), annotations=dict(it["annotations"]), state=it["state"],
                        active_at=float(it["active_at"]), value=float(it["value"]), fired_at=it.get("fired_at"),
                        keep_firing_since=it.get("keep_firing_since"))
            out[_label_key(a.labels)] = a
        return out


def _identity_json(identity: tuple) -> list[Any]:
    kind, name, expr, for_, kff, labels, annotations = identity
    return [kind, name, expr, for_, kff, [list(x) for x in labels], [list(x) for x in annotations]]


def _identity_tuple(data: list[Any]) -> tuple:
    kind, name, expr, for_, kff, labels, annotations = data
    return (kind, name, expr, float(for_), float(kff), tuple(tuple(x) for x in labels),
            tuple(tuple(x) for x in annotations))
