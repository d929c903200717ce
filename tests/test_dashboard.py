"""The Grafana dashboard: every query parses (promql-parser, and Prometheus' own parser through promtool), names only
metrics and labels the catalogue says we export, and takes its datasource from a variable."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import promql_parser as pp
import pytest

from agent.catalogue import sources
from tests.conftest import require_binary

REPO = Path(__file__).resolve().parents[1]
DASHBOARD = REPO / "dashboards" / "nodewarden.json"
TARGET_LABELS = {"instance", "job"}  # added by the scrape, not by the agent
GRAFANA_VARS = {"$__rate_interval": "1m", "$__interval": "1m", "$__range": "6h"}


@pytest.fixture(scope="module")
def dash() -> dict:
    return json.loads(DASHBOARD.read_text())


@pytest.fixture(scope="module")
def catalogue() -> dict[str, set[str]]:
    return {s.name: set(s.labels) for _, specs in sources() for s in specs}


def panels(dash: dict) -> list[dict]:
    out = []
    for p in dash["panels"]:
        out.append(p)
        out += p.get("panels", [])
    return [p for p in out if p["type"] != "row"]


def queries(dash: dict) -> list[tuple[str, str, str]]:
    """(where, expr, legend) of every panel target and annotation."""
    out = [(p["title"], t["expr"], t.get("legendFormat", "")) for p in panels(dash) for t in p["targets"]]
    out += [(f"annotation {a['name']}", a["expr"], a.get("titleFormat", "")) for a in dash["annotations"]["list"]]
    return out


def expand(expr: str) -> str:
    for var, value in GRAFANA_VARS.items():
        expr = expr.replace(var, value)
    return expr


def selectors(expr: str) -> list[pp.VectorSelector]:
    found: list[pp.VectorSelector] = []

    def visit(node):
        if isinstance(node, pp.VectorSelector):
            found.append(node)
        return True

    pp.walk(pp.parse(expand(expr)), visit)
    return found


def test_generator_and_json_agree(dash):
    out = subprocess.run([sys.executable, str(REPO / "dashboards" / "generate.py")], capture_output=True, text=True,
                         timeout=60, check=True).stdout
    assert json.loads(out) == dash  # edit dashboards/generate.py, then regenerate the JSON


def test_every_query_references_only_catalogue_metrics_and_labels(dash, catalogue):
    used: set[str] = set()
    for where, expr, legend in queries(dash):
        sels = selectors(expr)
        assert sels, where
        labels = set(TARGET_LABELS)
        for sel in sels:
            assert sel.name in catalogue, f"{where}: {sel.name} is not in the catalogue (docs/metrics.md)"
            used.add(sel.name)
            labels |= catalogue[sel.name]
            for m in sel.matchers.matchers:
                assert m.name in labels, f"{where}: {sel.name} has no label {m.name}"
        for name in re.findall(r"\{\{\s*(\w+)\s*\}\}", legend):
            assert name in labels, f"{where}: legend uses {{{{{name}}}}}, which none of its metrics carries"
        for by in re.findall(r"\bby \(([^)]*)\)", expr):
            for name in (n.strip() for n in by.split(",")):
                assert name in labels, f"{where}: grouping by {name}, which none of its metrics carries"
    # the four parts the issue asks for are all there
    assert any(n.startswith("DCGM_FI_DEV_") for n in used)
    assert any(n.startswith("node_") for n in used)
    assert {"nodewarden_alerts", "nodewarden_rule_evaluation_failures_total"} <= used
    assert {"nodewarden_remediations_total", "nodewarden_remediation_skipped_total"} <= used


def test_variable_queries_use_catalogue_metrics(dash, catalogue):
    for var in dash["templating"]["list"]:
        if var["type"] != "query":
            continue
        m = re.fullmatch(r"label_values\((.+), (\w+)\)", var["query"]["query"])
        assert m, var["name"]
        sel_names = [s.name for s in selectors(m.group(1))]
        assert sel_names and all(n in catalogue for n in sel_names)
        assert m.group(2) in catalogue[sel_names[0]] | TARGET_LABELS


def test_datasource_is_a_variable(dash):
    (ds,) = [v for v in dash["templating"]["list"] if v["type"] == "datasource"]
    assert ds["query"] == "prometheus"
    ref = {"type": "prometheus", "uid": f"${{{ds['name']}}}"}
    for p in panels(dash):
        assert p["datasource"] == ref, p["title"]
        assert all(t["datasource"] == ref for t in p["targets"]), p["title"]
    for v in dash["templating"]["list"]:
        if v["type"] == "query":
            assert v["datasource"] == ref
    assert all(a["datasource"] == ref for a in dash["annotations"]["list"])
    assert "__inputs" not in dash  # nothing bound to one Grafana's datasource uid


def test_panels_do_not_overlap(dash):
    cells: set[tuple[int, int]] = set()
    for p in dash["panels"]:
        g = p["gridPos"]
        assert g["x"] + g["w"] <= 24
        mine = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
        assert not mine & cells, p["title"]
        cells |= mine
    assert len({p["id"] for p in dash["panels"]}) == len(dash["panels"])


def test_prometheus_parses_every_query(dash, tmp_path):
    """Prometheus' own parser (promtool 2.42) accepts each expression, as a recording rule."""
    promtool = require_binary("promtool")
    rules = [{"record": f"dashboard:q{i}", "expr": expand(expr)} for i, (_, expr, _) in enumerate(queries(dash))]
    (tmp_path / "q.yml").write_text(json.dumps({"groups": [{"name": "dashboard", "rules": rules}]}))
    proc = subprocess.run([promtool, "check", "rules", str(tmp_path / "q.yml")], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
