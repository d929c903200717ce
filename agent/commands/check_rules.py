"""``nodewarden check rules FILE...``: validate rule files like ``promtool check rules``, plus node warnings.

Exit codes as promtool: 0 all files valid, 1 a file has problems; with ``--lint-fatal`` warnings exit 3.
Beyond promtool, each selector is checked against the metric catalogue of the enabled collectors: a
metric no collector produces (the rule can never fire here; the closest known names are listed) and a
label matcher on a label the metric never carries are reported as warnings.
"""

from __future__ import annotations

import argparse
import difflib
import re
import sys
from collections.abc import Iterable
from typing import Any

from agent.core import discovery, yamlpos
from agent.core.errors import ConfigError, RuleError
from agent.core.metrics import Catalogued, MetricSpec
from agent.engine import rules as rulesmod
from agent.remediation.policy import looks_like_policy

HELP = "validate rule files like promtool (exit 0 valid, 1 invalid) and warn about metrics no collector produces"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register arguments."""
    parser.add_argument("file", nargs="+", help="rule file(s)")
    parser.add_argument("--config", help="agent config: only warn against collectors it enables")
    parser.add_argument("--no-catalogue", action="store_true", help="skip the metric-catalogue warnings")
    parser.add_argument("--lint-fatal", action="store_true", help="exit 3 when there are warnings")


def known_catalogue(enabled: Iterable[str] | None = None) -> tuple[dict[str, MetricSpec], list[str]]:
    """Metric specs of the registered (and enabled) collectors and of the remediation plugins, read from their
    class-level ``metrics``.

    Returns (catalogue, notes); notes name collectors whose catalogue could not be read.
    """
    catalogue: dict[str, MetricSpec] = {}
    notes: list[str] = []
    wanted = set(enabled) if enabled is not None else None
    for ep in discovery.discover(discovery.COLLECTORS).values():
        if wanted is not None and ep.name not in wanted:
            continue
        try:
            cls = ep.load()
        except Exception as err:  # a broken plugin disables only its own check
            notes.append(f"collector {ep.name!r} could not be loaded ({err}); its metrics are not known")
            continue
        specs = cls.metrics if isinstance(cls, Catalogued) else None
        if not isinstance(specs, (list, tuple)) or not all(isinstance(s, MetricSpec) for s in specs):
            notes.append(f"collector {ep.name!r} has no class-level metrics catalogue; its metrics are not known")
            continue
        for spec in specs:
            catalogue[spec.name] = spec
    from agent.core.discovery import classes  # remediation plugins export metrics too (e.g. the restore scrubber)

    for cls in classes().plugins.values():
        for spec in (cls.metrics if isinstance(cls, Catalogued) else None) or []:
            catalogue[spec.name] = spec
    return catalogue, notes


def _enabled_collectors(path: str) -> list[str]:
    from agent.core import config

    cfg = config.load_file(path)
    names = list(discovery.discover(discovery.COLLECTORS))
    return [n for n in names if cfg.collectors.get(n).enabled]


def _matcher(m: Any) -> tuple[str, str, str]:
    if isinstance(m, tuple):
        return str(m[0]), str(m[1]), str(m[2])
    name = getattr(m, "name", "")
    op = getattr(m, "op", getattr(m, "type", "="))
    op = {"Equal": "=", "NotEqual": "!=", "Re": "=~", "NotRe": "!~"}.get(str(op).split(".")[-1], str(op))
    return str(name), op, str(getattr(m, "value", ""))


def _matches_empty(op: str, value: str) -> bool:
    if op == "=":
        return value == ""
    if op == "=~":
        try:
            return re.fullmatch(value, "") is not None
        except re.error:
            return False
    return True  # != and !~ on a missing label usually match


def catalogue_warnings(groups: list[rulesmod.GroupDef], catalogue: dict[str, MetricSpec],
                       text: str, filename: str) -> list[str]:
    """Warnings for selectors that can never match on this node."""
    produced = {r.name for g in groups for r in g.rules if r.kind == "recording"}
    self_metrics = {s.name for s in rulesmod.METRICS} | {"ALERTS", "ALERTS_FOR_STATE"} | _daemon_metrics()
    known = set(catalogue) | produced | self_metrics
    ordered = sorted(known)
    close_cache: dict[str, list[str]] = {}
    out: list[str] = []
    for g in groups:
        for r in g.rules:
            where = f"{filename}:{r.expr_pos[0]}:{r.expr_pos[1]}"
            selectors = getattr(r.query, "selectors", None) or []
            seen: set[str] = set()
            for sel in selectors:
                name = getattr(sel, "name", None)
                if not name or name in seen:
                    continue
                seen.add(name)
                if name not in known:
                    if name not in close_cache:
                        close_cache[name] = difflib.get_close_matches(name, ordered, n=3, cutoff=0.6)
                    close = close_cache[name]
                    hint = f"; closest known: {', '.join(close)}" if close else ""
                    out.append(f"{where}: warning: group {g.name!r}, rule {r.name!r}: no enabled collector produces "
                               f"{name} (the rule can never match on this node){hint}")
                    continue
                spec = catalogue.get(name)
                if spec is None:
                    continue
                for m in getattr(sel, "matchers", None) or []:
                    lname, op, value = _matcher(m)
                    if lname == "__name__" or lname in spec.labels or _matches_empty(op, value):
                        continue
                    out.append(f"{where}: warning: group {g.name!r}, rule {r.name!r}: {name} never carries label "
                               f"{lname!r} (it has: {', '.join(spec.labels) or 'no labels'})")
    return out


def history_warnings(groups: list[rulesmod.GroupDef], retention: float, text: str, filename: str) -> list[str]:
    """Warnings for rules whose range, subquery or offset reaches past the store's retention."""
    from agent.engine.promql.history import retention_warning

    out = []
    for g in groups:
        for r in g.rules:
            why = retention_warning(r.query, retention)
            if why:
                where = f"{filename}:{r.expr_pos[0]}:{r.expr_pos[1]}"
                out.append(f"{where}: warning: group {g.name!r}, rule {r.name!r}: {why}")
    return out


def _retention(path: str | None) -> float:
    from agent.core import config

    return config.load_file(path).retention if path else config.Config().retention


def _daemon_metrics() -> set[str]:
    try:
        from agent.daemon_tick import SELF_METRICS
        from agent.remediation.remediator import METRICS as REMEDIATION_METRICS
    except Exception:  # the daemon module is optional for this check
        return set()
    return {s.name for s in (*SELF_METRICS, *REMEDIATION_METRICS)}



def main(args: argparse.Namespace) -> int:
    """Check each file; print promtool's shape with file:line:column problems."""
    status = 0
    warned = False
    catalogue: dict[str, MetricSpec] = {}
    notes: list[str] = []
    if not args.no_catalogue:
        try:
            enabled = _enabled_collectors(args.config) if args.config else None
        except ConfigError as err:
            for problem in err.problems:
                print(problem, file=sys.stderr)
            return 1
        catalogue, notes = known_catalogue(enabled)
    for note in notes:
        print(f"  NOTE: {note}", file=sys.stderr)
    try:
        retention = _retention(getattr(args, "config", None))
    except ConfigError as err:
        for problem in err.problems:
            print(problem, file=sys.stderr)
        return 1
    policies: list[str] = []
    alert_names: set[str] = set()
    for path in args.file:
        print(f"Checking {path}", flush=True)
        try:
            text = yamlpos.read_text(path, "rule file")
        except ConfigError as err:
            print("  FAILED:", file=sys.stderr)
            print(err, file=sys.stderr)
            print()
            status = 1
            continue
        if looks_like_policy(text):  # a remediation policy (rules/remediations.yml): checked after the rules
            policies.append(path)
            print("  remediation policy: checked after the rule files\n", flush=True)
            continue
        try:
            groups, problems = rulesmod.parse_rule_text(text, path)
        except Exception as err:  # a bug, not the file's fault: still one located line, never a traceback
            groups, problems = [], [f"{path}:1:1: internal error while checking: {type(err).__name__}: {err}"]
        if problems:
            print()
            print("  FAILED:", file=sys.stderr)
            for p in problems:
                print(p, file=sys.stderr)
            status = 1
            continue
        n = sum(len(g.rules) for g in groups)
        alert_names |= {r.name for g in groups for r in g.rules if r.kind != "recording"}
        warnings = catalogue_warnings(groups, catalogue, text, path) if catalogue else []
        warnings += history_warnings(groups, retention, text, path)
        sys.stdout.flush()
        for w in warnings:
            print(f"  WARNING: {w}", file=sys.stderr)
        warned = warned or bool(warnings)
        print(f"  SUCCESS: {n} rules found")
        print(flush=True)
    for path in policies:
        ok, policy_warned = _check_policy(path, alert_names or None)
        status = status if ok else 1
        warned = warned or policy_warned
    if status == 0 and warned and args.lint_fatal:
        return 3
    return status


def _check_policy(path: str, alert_names: set[str] | None) -> tuple[bool, bool]:
    """Validate a remediation policy (plugins, params, routes vs the loaded rules); (valid, warned)."""
    from agent.core.discovery import classes
    from agent.remediation.policy import check_policy_file

    print(f"Checking {path} (remediation policy)", flush=True)
    errors, warnings = check_policy_file(path, classes().plugins, alert_names)
    if errors:
        print("  FAILED:", file=sys.stderr)
        for e in errors:
            print(e, file=sys.stderr)
        print()
        return False, False
    for w in warnings:
        print(f"  WARNING: {w}", file=sys.stderr)
    print("  SUCCESS: remediation policy", flush=True)
    print(flush=True)
    return True, bool(warnings)


def check_files(files: list[str]) -> list[str]:
    """Problems of a set of rule files (empty when all are valid); for callers other than the CLI."""
    try:
        rulesmod.load_files(files)
    except RuleError as err:
        return list(err.problems)
    return []
