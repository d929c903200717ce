"""``nodewarden test rules TEST.yml...``: rule unit tests in promtool's format, run on nodewarden's engine.

Same file format (``rule_files``, ``evaluation_interval``, ``group_eval_order``, ``tests[]`` with
``interval``, ``name``, ``input_series``, ``external_labels``, ``alert_rule_test``, ``promql_expr_test``),
same evaluation loop (every group evaluated at 0, evaluation_interval, ... up to the largest eval_time;
alert tests compared at the evaluation at or before their eval_time), same output shape and exit codes
(0 all passed, 1 a test failed or a file is invalid) as ``promtool test rules``. ``--run REGEX`` runs
only the test groups whose name matches.
"""

from __future__ import annotations

import argparse
import functools
import glob
import os
import re
import sys
from dataclasses import dataclass
from typing import Any

from ruamel.yaml.comments import CommentedMap, CommentedSeq

from agent.core import yamlpos
from agent.core.durations import format_duration, parse_prometheus_duration
from agent.core.errors import ConfigError, RuleError
from agent.core.formatting import go_float
from agent.engine.promql import PromQLError
from agent.engine.promql.series_notation import parse_series
from agent.engine.rules import RuleEngine
from agent.engine.store import ABSENT_NAN, STALE_NAN, Store

HELP = "run rule unit tests in promtool's test-file format (exit 0 passed, 1 failed)"

FILE_KEYS = {"rule_files", "evaluation_interval", "group_eval_order", "tests"}
GROUP_KEYS = {"interval", "input_series", "alert_rule_test", "promql_expr_test", "external_labels", "external_url",
              "name"}
SERIES_KEYS = {"series", "values"}
ALERT_TEST_KEYS = {"eval_time", "alertname", "exp_alerts"}
EXP_ALERT_KEYS = {"exp_labels", "exp_annotations"}
EXPR_TEST_KEYS = {"expr", "eval_time", "exp_samples"}
SAMPLE_KEYS = {"labels", "value"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register arguments."""
    parser.add_argument("file", nargs="+", help="test file(s) in promtool's format")
    parser.add_argument("--run", metavar="REGEX", help="only run test groups whose name matches REGEX")


class TestFileError(Exception):
    """The test file itself is invalid."""


# ---------------------------------------------------------------------------------------------
# Go-style printing (promtool's failure messages)
# ---------------------------------------------------------------------------------------------
def _quote(s: str) -> str:
    out = ['"']
    for c in s:
        if c in '"\\':
            out.append("\\" + c)
        elif c == "\n":
            out.append("\\n")
        elif c == "\t":
            out.append("\\t")
        elif ord(c) < 32:
            out.append(f"\\x{ord(c):02x}")
        else:
            out.append(c)
    out.append('"')
    return "".join(out)


def labels_str(labels: dict[str, str]) -> str:
    """Prometheus's labels.String(): ``{a="1", b="2"}`` sorted by name."""
    return "{" + ", ".join(f"{k}={_quote(labels[k])}" for k in sorted(labels)) + "}"


def _dur(seconds: float) -> str:
    return format_duration(seconds)


# ---------------------------------------------------------------------------------------------
# Input series
# ---------------------------------------------------------------------------------------------
def _num(text: str) -> float:
    return float(text.strip())


_METRIC = re.compile(r"\s*(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)?\s*(?:\{(?P<body>.*)\})?\s*", re.S)
_PAIR = re.compile(r"\s*(?P<k>[a-zA-Z_][a-zA-Z0-9_]*)\s*=\s*\"(?P<v>(?:[^\"\\]|\\.)*)\"\s*(?:,|$)", re.S)
_UNESCAPE = {"n": "\n", "t": "\t", "\\": "\\", '"': '"'}


def parse_metric(text: str) -> dict[str, str]:
    """``name{a="b"}``, ``{a="b"}`` or ``{}`` (exp_samples labels, like Go's parser.ParseMetric) to a dict."""
    m = _METRIC.fullmatch(str(text))
    if m is None or (m["name"] is None and m["body"] is None):
        raise ValueError(f"cannot parse metric {text!r}")
    labels: dict[str, str] = {}
    if m["name"]:
        labels["__name__"] = m["name"]
    body = (m["body"] or "").strip()
    pos = 0
    while pos < len(body):
        pm = _PAIR.match(body, pos)
        if pm is None or pm.end() == pos:
            raise ValueError(f"cannot parse metric {text!r}")
        labels[pm["k"]] = re.sub(r"\\(.)", lambda e: _UNESCAPE.get(e.group(1), e.group(1)), pm["v"])
        pos = pm.end()
    return labels


@dataclass
class InputSeries:
    name: str
    labels: tuple[tuple[str, str], ...]
    points: dict[float, float]


def load_input_series(items: list[Any], interval: float) -> list[InputSeries]:
    """Input series as {time: value} maps (promtool puts value i at i*interval; ``stale`` is STALE_NAN)."""
    out: list[InputSeries] = []
    for item in items:
        try:
            name, labels, values = parse_series(str(item.get("series", "")), str(item.get("values", "") or ""))
        except PromQLError as err:
            raise ValueError(err.message) from err
        points: dict[float, float] = {}
        for i, v in enumerate(values):
            if v is None:
                continue
            t = i * interval
            if t not in points:  # equal timestamps (interval 0): the first sample wins, as in promtool
                points[t] = STALE_NAN if v == "stale" else float(v)
        out.append(InputSeries(name, tuple(sorted(labels.items())), points))
    return out


# ---------------------------------------------------------------------------------------------
# Test file reading
# ---------------------------------------------------------------------------------------------
def _strict(node: Any, keys: set[str], what: str, root: Any, filename: str, loc: list[Any]) -> None:
    if node is None:
        return
    if not isinstance(node, CommentedMap):
        line, col = yamlpos.position(root, loc)
        raise TestFileError(f"{filename}:{line}:{col}: {what} must be a mapping")
    for k in node:
        if k not in keys:
            line, col = yamlpos.position(root, [*loc, k], key=True)
            raise TestFileError(f"{filename}:{line}:{col}: field {k} not found in type {what}")


def _seq(node: Any, root: Any, filename: str, loc: list[Any]) -> list[Any]:
    if node is None:
        return []
    if not isinstance(node, CommentedSeq):
        line, col = yamlpos.position(root, loc)
        raise TestFileError(f"{filename}:{line}:{col}: expected a list")
    return list(node)


def _duration(node: Any, root: Any, filename: str, loc: list[Any]) -> float:
    if node is None:
        return 0.0
    try:
        return parse_prometheus_duration(str(node))
    except ValueError as err:
        line, col = yamlpos.position(root, loc)
        raise TestFileError(f"{filename}:{line}:{col}: {err}") from err


def validate_structure(root: Any, filename: str) -> None:
    """Reject unknown keys everywhere, like promtool's yaml.UnmarshalStrict."""
    _strict(root, FILE_KEYS, "main.unitTestFile", root, filename, [])
    for ti, tg in enumerate(_seq(root.get("tests"), root, filename, ["tests"])):
        loc = ["tests", ti]
        _strict(tg, GROUP_KEYS, "main.testGroup", root, filename, loc)
        for si, s in enumerate(_seq(tg.get("input_series"), root, filename, [*loc, "input_series"])):
            _strict(s, SERIES_KEYS, "main.series", root, filename, [*loc, "input_series", si])
        for ai, a in enumerate(_seq(tg.get("alert_rule_test"), root, filename, [*loc, "alert_rule_test"])):
            aloc = [*loc, "alert_rule_test", ai]
            _strict(a, ALERT_TEST_KEYS, "main.alertTestCase", root, filename, aloc)
            for ei, e in enumerate(_seq(a.get("exp_alerts"), root, filename, [*aloc, "exp_alerts"])):
                _strict(e, EXP_ALERT_KEYS, "main.alert", root, filename, [*aloc, "exp_alerts", ei])
        for pi, p in enumerate(_seq(tg.get("promql_expr_test"), root, filename, [*loc, "promql_expr_test"])):
            ploc = [*loc, "promql_expr_test", pi]
            _strict(p, EXPR_TEST_KEYS, "main.promqlTestCase", root, filename, ploc)
            for xi, x in enumerate(_seq(p.get("exp_samples"), root, filename, [*ploc, "exp_samples"])):
                _strict(x, SAMPLE_KEYS, "main.sample", root, filename, [*ploc, "exp_samples", xi])


# ---------------------------------------------------------------------------------------------
# Running
# ---------------------------------------------------------------------------------------------
def run_file(filename: str, run: re.Pattern[str] | None = None) -> list[str]:
    """Run one test file; return promtool-style error strings (empty when every test passed)."""
    try:
        with open(filename, encoding="utf-8") as fh:
            text = fh.read()
        root = yamlpos.load(text, filename)
    except OSError as err:
        return [f"open {filename}: {err.strerror}"]
    except ConfigError as err:
        return [str(err)]
    if root is None:
        root = CommentedMap()
    try:
        validate_structure(root, filename)
        eval_interval = _duration(root.get("evaluation_interval"), root, filename, ["evaluation_interval"]) or 60.0
        order: dict[str, int] = {}
        for i, gn in enumerate(_seq(root.get("group_eval_order"), root, filename, ["group_eval_order"])):
            if gn in order:
                return [f"group name repeated in evaluation order: {gn}"]
            order[str(gn)] = i
    except TestFileError as err:
        return [str(err)]
    base = os.path.dirname(filename)
    rule_files: list[str] = []
    warnings = []
    for rf in _seq(root.get("rule_files"), root, filename, ["rule_files"]):
        rf = str(rf)
        path = rf if (not rf or os.path.isabs(rf)) else os.path.join(base, rf)
        matches = sorted(glob.glob(path))
        if not matches:
            warnings.append(f"  WARNING: no file match pattern {path}")
        rule_files.extend(matches)
    for w in warnings:
        print(w, file=sys.stderr)
    errs: list[str] = []
    for ti, tg in enumerate(_seq(root.get("tests"), root, filename, ["tests"])):
        tg = tg or CommentedMap()
        name = str(tg.get("name") or "")
        if run is not None and not run.search(name):
            continue
        try:
            errs.extend(_run_group(tg, root, filename, ["tests", ti], eval_interval, order, rule_files))
        except TestFileError as err:
            errs.append(str(err))
    return errs


def _run_group(tg: Any, root: Any, filename: str, loc: list[Any], eval_interval: float, order: dict[str, int],
               rule_files: list[str]) -> list[str]:
    from agent.engine.promql import compile_expr

    interval = _duration(tg.get("interval"), root, filename, [*loc, "interval"])
    name = str(tg.get("name") or "")
    try:
        series = load_input_series(_seq(tg.get("input_series"), root, filename, [*loc, "input_series"]), interval)
    except ValueError as err:
        return [f"{filename}: {err}"]
    ext = {str(k): str(v) for k, v in (tg.get("external_labels") or {}).items()}
    # subqueries without a step use the file's evaluation_interval, as promtool does
    compiler = functools.partial(compile_expr, subquery_step=eval_interval)
    engine = RuleEngine(None, ext, clock=lambda: 0.0, check_no_data=False, compiler=compiler)
    engine.external_url = str(tg.get("external_url") or "")
    try:
        engine.load(rule_files)
    except RuleError as err:
        return list(err.problems)
    engine.groups.sort(key=lambda gs: order.get(gs.group.name, 0))  # stable: file order within equal ranks

    alert_tests: dict[float, list[tuple[str, list[dict[str, dict[str, str]]]]]] = {}
    max_t = 0.0
    for ai, a in enumerate(_seq(tg.get("alert_rule_test"), root, filename, [*loc, "alert_rule_test"])):
        et = _duration(a.get("eval_time"), root, filename, [*loc, "alert_rule_test", ai, "eval_time"])
        alertname = str(a.get("alertname") or "")
        if not alertname:
            in_group = f" (in TestGroup {name})" if name else ""
            return [f"an item under alert_rule_test misses required attribute alertname at eval_time {_dur(et)}"
                    f"{in_group}"]
        exp = []
        for e in a.get("exp_alerts") or []:
            e = e or {}
            labels = {str(k): str(v) for k, v in (e.get("exp_labels") or {}).items()}
            labels["alertname"] = alertname
            anns = {str(k): str(v) for k, v in (e.get("exp_annotations") or {}).items()}
            exp.append({"labels": labels, "annotations": anns})
        alert_tests.setdefault(et, []).append((alertname, exp))
        max_t = max(max_t, et)
    expr_tests = []
    for pi, p in enumerate(_seq(tg.get("promql_expr_test"), root, filename, [*loc, "promql_expr_test"])):
        et = _duration(p.get("eval_time"), root, filename, [*loc, "promql_expr_test", pi, "eval_time"])
        expr_tests.append((str(p.get("expr") or ""), et, list(p.get("exp_samples") or [])))
        max_t = max(max_t, et)

    eval_times = []
    t = 0.0
    k = 0
    while t <= max_t:
        eval_times.append(t)
        k += 1
        t = k * eval_interval
    ticks = sorted({*eval_times, *(pt for s in series for pt in s.points if pt <= max_t)})
    store = Store(retention=float(len(ticks) + 2), interval=1.0)
    eval_set = set(eval_times)
    pending_checks = sorted(alert_tests)
    errs: list[str] = []
    for t in ticks:
        store.begin_tick(t)
        store.add([(s.name, s.labels, s.points.get(t, ABSENT_NAN)) for s in series])
        if t not in eval_set:
            engine.evaluate(store, t, force=False)
            continue
        engine.evaluate(store, t, force=True)
        eval_errs = [f"    rule: {rs.rule.name}, time: {_dur(t)}, err: {rs.last_error}"
                     for _, rs in engine.rule_states() if rs.health == "err" and rs.last_eval == t]
        if eval_errs:
            return errs + eval_errs
        while pending_checks and t <= pending_checks[0] < t + eval_interval:
            et = pending_checks.pop(0)
            for alertname, exp in alert_tests[et]:
                got = []
                for _, rs in engine.rule_states():
                    if rs.rule.kind == "alerting" and rs.rule.name == alertname:
                        got.extend({"labels": dict(a.labels), "annotations": dict(a.annotations)}
                                   for a in rs.active.values() if a.state == "firing")
                key = _alert_sort_key
                if sorted(exp, key=key) != sorted(got, key=key):
                    prefix = f"    name: {name},\n" if name else ""
                    errs.append(f"{prefix}    alertname: {alertname}, time: {_dur(et)}, \n"
                                f"        exp:{_indent(_alerts_str(sorted(exp, key=key)))}, \n"
                                f"        got:{_indent(_alerts_str(sorted(got, key=key)))}")

    for expr, et, exp_samples in expr_tests:
        try:
            res = compiler(expr).eval(store, et)
        except Exception as err:  # PromQLError and evaluation errors are test failures, as in promtool
            errs.append(f"    expr: {_quote(expr)}, time: {_dur(et)}, err: {getattr(err, 'message', None) or err}")
            continue
        got_s = [(dict(lb), float(v)) for lb, v in res] if isinstance(res, list) else [({}, float(res.value))]
        try:
            exp_s = [(parse_metric(s.get("labels", "")), float(_num(str(s.get("value", 0)))))
                     for s in exp_samples]
        except ValueError as err:
            errs.append(f"    expr: {_quote(expr)}, time: {_dur(et)}, err: {err}")
            continue
        exp_s.sort(key=lambda s: sorted(s[0].items()))
        got_s.sort(key=lambda s: sorted(s[0].items()))
        if not _samples_equal(exp_s, got_s):
            errs.append(f"    expr: {_quote(expr)}, time: {_dur(et)},\n"
                        f"        exp: {_samples_str(exp_s)}\n        got: {_samples_str(got_s)}")
    return errs


def _samples_equal(a: list[tuple[dict[str, str], float]], b: list[tuple[dict[str, str], float]]) -> bool:
    # reflect.DeepEqual on float64 uses ==, so NaN never equals NaN.
    return len(a) == len(b) and all(x[0] == y[0] and x[1] == y[1] for x, y in zip(a, b, strict=True))


def _alert_sort_key(a: dict[str, dict[str, str]]) -> tuple:
    return (sorted(a["labels"].items()), sorted(a["annotations"].items()))


def _alerts_str(alerts: list[dict[str, dict[str, str]]]) -> str:
    if not alerts:
        return "[]"
    parts = []
    for i, a in enumerate(alerts):
        body = "\nLabels:" + labels_str(a["labels"]) + "\nAnnotations:" + labels_str(a["annotations"])
        parts.append(f"{i}:" + body.replace("\n", "\n  "))
    return "[\n" + ",\n".join(parts) + "\n]"


def _indent(text: str) -> str:
    return text.replace("\n", "\n            ")


def _samples_str(samples: list[tuple[dict[str, str], float]]) -> str:
    if not samples:
        return "nil"
    return ", ".join(f"{labels_str(lb)} {go_float(v, 'E')}" for lb, v in samples)


def main(args: argparse.Namespace) -> int:
    """Run each test file; promtool's output shape and exit codes."""
    try:
        run = re.compile(args.run) if args.run else None
    except re.error as err:
        print(f"nodewarden: error: invalid --run regular expression: {err}", file=sys.stderr)
        return 2
    failed = False
    for path in args.file:
        print("Unit Testing: ", path)
        errs = run_file(path, run)
        if errs:
            print("  FAILED:", file=sys.stderr)
            for e in errs:
                print(e, file=sys.stderr)
                print()
            failed = True
        else:
            print("  SUCCESS")
        print()
    sys.stdout.flush()
    return 1 if failed else 0
