"""A subquery without a step uses the evaluation interval: promtool takes the test file's
``evaluation_interval``, and so does ``nodewarden test rules`` (rules and promql_expr_test alike)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from agent.engine.promql import compile_expr
from agent.engine.promql.series_notation import load_series
from agent.engine.store import Store
from tests.conftest import REPO, require_binary

RULES = """\
groups:
  - name: sub
    interval: 30s
    rules:
      - record: job:peak
        expr: max_over_time(rate(req_total[1m])[4m:])
"""

EXPR = "count_over_time(req_total[4m:])"
VALUES = "0 1 3 6 10 15 21 28 36 45 55 66 78 91 105 120 136 153 171 190 210 231"


def _test_file(tmp: Path, interval: str, peak: float, count: float) -> Path:
    (tmp / "rules.yml").write_text(RULES)
    path = tmp / f"test_{interval}.yml"
    path.write_text(f"""\
rule_files: [rules.yml]
evaluation_interval: {interval}
tests:
  - interval: 15s
    input_series:
      - series: 'req_total{{job="a"}}'
        values: '{VALUES}'
    promql_expr_test:
      - expr: job:peak
        eval_time: 5m
        exp_samples: [{{labels: 'job:peak{{job="a"}}', value: {peak!r}}}]
      - expr: {EXPR}
        eval_time: 5m
        exp_samples: [{{labels: '{{job="a"}}', value: {count!r}}}]
""")
    return path


def _expected(step: float) -> tuple[float, float]:
    store = load_series(
        Store,
        [
            {
                "series": 'req_total{job="a"}',
                "values": "0 1 3 6 10 15 21 28 36 45 55 66 78 91 105 120 136 153 171 190 210 231",
            }
        ],
        15,
    )
    peak = compile_expr("max_over_time(rate(req_total[1m])[4m:])", subquery_step=step).eval(store, 300)
    count = compile_expr(EXPR, subquery_step=step).eval(store, 300)
    return peak[0][1], count[0][1]


@pytest.mark.parametrize("interval, step", [("1m", 60.0), ("30s", 30.0), ("20s", 20.0)])
def test_stepless_subqueries_follow_the_evaluation_interval(tmp_path: Path, interval: str, step: float) -> None:
    peak, count = _expected(step)
    assert count == 240 / step + 1  # steps at every multiple of the interval in [60s, 300s]
    path = _test_file(tmp_path, interval, peak, count)
    promtool = subprocess.run([require_binary("promtool"), "test", "rules", str(path)], capture_output=True,
                              text=True, timeout=60, check=False)  # fmt: skip
    assert promtool.returncode == 0, promtool.stdout + promtool.stderr
    ours = subprocess.run([sys.executable, "-m", "agent.cli", "test", "rules", str(path)], capture_output=True,
                          text=True, timeout=120, check=False, cwd=REPO)  # fmt: skip
    assert ours.returncode == 0, ours.stdout + ours.stderr
