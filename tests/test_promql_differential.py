"""Differential tests: agent.engine.promql against the real promtool (Prometheus 2.42) on tests/promql_corpus.yml.

For every (expr, eval time) of the corpus we evaluate with our engine and write OUR result as a promtool
``promql_expr_test`` (``exp_samples``); ``promtool test rules`` must then pass. When we raise an evaluation
error, promtool must report the very same error for that expression and time. promtool compares floats
exactly and never equates NaN, so a result holding NaN is checked through two NaN-free expressions
(also evaluated by our engine): ``(E) >= -Inf`` (the non-NaN samples) and
``((E) unless ((E) >= -Inf)) != bool 0`` (which series are NaN).
"""

from __future__ import annotations

import json
import math
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from agent.core.durations import parse_duration
from agent.engine.promql import PromQLEvalError, Scalar, compile_expr
from agent.engine.promql.series_notation import load_series, parse_values
from agent.engine.store import Store
from tests.conftest import require_binary

CORPUS = Path(__file__).with_name("promql_corpus.yml")
PROMTOOL_TIMEOUT = 60


def go_duration(seconds: float) -> str:
    """Prometheus model.Duration.String() (years and weeks only when exact)."""
    ms = round(seconds * 1000)
    if ms == 0:
        return "0s"
    out = ""
    for unit, mult, exact in (
        ("y", 31536000000, True),
        ("w", 604800000, True),
        ("d", 86400000, False),
        ("h", 3600000, False),
        ("m", 60000, False),
        ("s", 1000, False),
        ("ms", 1, False),
    ):
        if exact and ms % mult:
            continue
        n = ms // mult
        if n:
            out += f"{n}{unit}"
            ms -= n * mult
    return out


def yaml_float(v: float) -> str:
    if math.isinf(v):
        return ".inf" if v > 0 else "-.inf"
    return repr(v)


def promql_labels(labels: dict[str, str]) -> str:
    return "{" + ", ".join(f"{k}={json.dumps(v)}" for k, v in sorted(labels.items())) + "}"


def load_corpus() -> list[dict[str, Any]]:
    return yaml.safe_load(CORPUS.read_text())["groups"]


def _samples(result: Any) -> list[tuple[dict[str, str], float]]:
    return [({}, result.value)] if isinstance(result, Scalar) else list(result)


def _has_nan(result: Any) -> bool:
    return any(v != v for _, v in _samples(result))


def build(groups: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[tuple[str, float, str]]]:
    """promtool tests for our successful evaluations, and (expr, time, message) for our errors."""
    tests = []
    errors = []
    for group in groups:
        interval = parse_duration(group.get("interval", "1m"))
        store = load_series(Store, group["series"], interval)
        expr_tests = []
        for case in group["cases"]:
            query = compile_expr(case["expr"])
            for at in case["at"]:
                t = parse_duration(at)
                try:
                    result = query.eval(store, t)
                except PromQLEvalError as err:
                    errors.append((case["expr"], t, err.message))
                    continue
                checks = [(case["expr"], result)]
                if _has_nan(result):
                    e = case["expr"]
                    if isinstance(result, Scalar):
                        variants = [f"({e}) != bool ({e})"]
                    else:
                        variants = [f"({e}) >= -Inf", f"(({e}) unless (({e}) >= -Inf)) != bool 0"]
                    checks = [(v, compile_expr(v).eval(store, t)) for v in variants]
                    assert not any(_has_nan(r) for _, r in checks), f"NaN left in NaN check of {e}"
                for expr, res in checks:
                    expr_tests.append({"expr": expr, "eval_time": t, "samples": _samples(res)})
        tests.append({"interval": interval, "series": group["series"], "expr_tests": expr_tests})
    return tests, errors


def render(tests: list[dict[str, Any]]) -> str:
    """A promtool unit-test file (JSON-quoted strings are valid YAML)."""
    lines = ["rule_files: []", "evaluation_interval: 1m", "tests:"]
    for test in tests:
        lines.append(f"  - interval: {go_duration(test['interval'])}")
        lines.append("    input_series:")
        for s in test["series"]:
            lines.append(f"      - series: {json.dumps(s['series'])}")
            lines.append(f"        values: {json.dumps(s['values'])}")
        lines.append("    promql_expr_test:")
        # promtool loads samples only up to the group's latest eval_time: one at the last sample makes every
        # sample visible, as in our store (negative offsets read after the eval time)
        last = max((len(parse_values(s["values"])) for s in test["series"]), default=1) - 1
        tail = {"expr": "vector(0)", "eval_time": last * test["interval"], "samples": [({}, 0.0)]}
        for et in [*test["expr_tests"], tail]:
            lines.append(f"      - expr: {json.dumps(et['expr'])}")
            lines.append(f"        eval_time: {go_duration(et['eval_time'])}")
            if not et["samples"]:
                lines.append("        exp_samples: []")
                continue
            lines.append("        exp_samples:")
            for labels, value in et["samples"]:
                lines.append(f"          - labels: {json.dumps(promql_labels(labels))}")
                lines.append(f"            value: {yaml_float(value)}")
    return "\n".join(lines) + "\n"


def normalize(message: str) -> str:
    """Order the two series quoted in a duplicate-series error: promtool loads series in random order."""
    m = re.match(r"(.*?)\[(\{.*\}), (\{.*\})\](.*)", message)
    if m is None:
        return message
    first, second = sorted((m.group(2), m.group(3)))
    return f"{m.group(1)}[{first}, {second}]{m.group(4)}"


def run_promtool(path: Path) -> subprocess.CompletedProcess[str]:
    promtool = require_binary("promtool")
    return subprocess.run(
        [promtool, "test", "rules", str(path)],
        capture_output=True,
        text=True,
        timeout=PROMTOOL_TIMEOUT,
        check=False,
    )


@pytest.fixture(scope="module")
def corpus_cases() -> tuple[list[dict[str, Any]], list[tuple[str, float, str]]]:
    return build(load_corpus())


def test_corpus_is_large_enough() -> None:
    groups = load_corpus()
    exprs = {case["expr"] for g in groups for case in g["cases"]}
    points = sum(len(case["at"]) for g in groups for case in g["cases"])
    assert len(exprs) >= 60
    assert points >= 100


def test_promtool_agrees_with_our_values(corpus_cases: Any, tmp_path: Path) -> None:
    tests, _ = corpus_cases
    path = tmp_path / "promql_diff_test.yml"
    path.write_text(render(tests))
    proc = run_promtool(path)
    assert proc.returncode == 0, f"promtool disagrees with agent.engine.promql:\n{proc.stdout}\n{proc.stderr}"
    assert "SUCCESS" in proc.stdout + proc.stderr


def test_promtool_reports_our_evaluation_errors(corpus_cases: Any, tmp_path: Path) -> None:
    _, errors = corpus_cases
    assert errors, "the corpus should exercise evaluation errors (many-to-many, duplicate label sets)"
    groups = load_corpus()
    # Re-render only the erroring (expr, time) pairs: each must appear in promtool's failure report.
    tests = []
    for group in groups:
        wanted = [
            {"expr": c["expr"], "eval_time": parse_duration(at), "samples": []}
            for c in group["cases"]
            for at in c["at"]
            if (c["expr"], parse_duration(at)) in {(e, t) for e, t, _ in errors}
        ]
        if wanted:
            interval = parse_duration(group.get("interval", "1m"))
            tests.append({"interval": interval, "series": group["series"], "expr_tests": wanted})
    path = tmp_path / "promql_diff_errors.yml"
    path.write_text(render(tests))
    proc = run_promtool(path)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    pattern = r'^\s*expr: (".*"), time: (\S+), err: (.*)$'
    reported = {(json.loads(e), d): msg for e, d, msg in re.findall(pattern, out, re.M)}
    for expr, t, message in errors:
        got = reported.get((expr, go_duration(t)))
        assert got is not None, f"promtool evaluated {expr!r} at {go_duration(t)} without error:\n{out}"
        assert normalize(got) == normalize(message), f"{expr!r}: promtool says {got!r}, we say {message!r}"
