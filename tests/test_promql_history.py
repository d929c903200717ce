"""The history window: ``nodewarden check rules`` warns when a rule's range, subquery or offset reaches past
the store's retention (the node would silently see less data than Prometheus), and about ``@ <time>``."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from agent.engine.promql import compile_expr
from agent.engine.promql.history import history_reach, retention_warning
from tests.conftest import REPO

RULES = """\
groups:
  - name: window
    rules:
      - alert: Fits
        expr: rate(node_network_receive_bytes_total[5m]) > 1
      - alert: LongRange
        expr: rate(node_network_receive_bytes_total[1h]) > 1
      - alert: DeepOffset
        expr: node_load1 offset 20m > 1
      - alert: Subquery
        expr: max_over_time(rate(node_network_receive_bytes_total[5m])[12m:1m] offset 1m) > 1
      - alert: Pinned
        expr: node_load1 @ 1700000000 > 1
"""


def nodewarden(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "agent.cli", *args], capture_output=True, text=True, timeout=120, check=False, cwd=REPO
    )


@pytest.mark.parametrize(
    ("expr", "seconds", "pinned"),
    [
        ("x", 0, False),
        ("x offset 20m", 1200, False),
        ("x offset -5m", 0, False),
        ("rate(x[5m])", 300, False),
        ("rate(x[5m] offset 1m) / rate(y[10m])", 600, False),
        ("max_over_time(rate(x[5m] offset 1m)[30m:1m] offset 2m)", 2280, False),
        ("max_over_time(max_over_time(x[1m:10s])[10m:1m])", 660, False),
        ("x @ 100", 0, True),
        ("rate(x[5m] @ end())", 300, False),
        ("sum_over_time(x[5m:] @ 30)", 300, True),
    ],
)
def test_reach(expr: str, seconds: float, pinned: bool) -> None:
    assert history_reach(compile_expr(expr)) == (seconds, pinned)


def test_retention_warning_pure() -> None:
    assert retention_warning(compile_expr("rate(x[15m])"), 900) is None
    assert "reads 15m1s of history" in (retention_warning(compile_expr("rate(x[15m] offset 1s)"), 900) or "")
    assert "@ <time>" in (retention_warning(compile_expr("x @ 5"), 900) or "")


def test_check_rules_warns_past_retention(tmp_path: Path) -> None:
    path = tmp_path / "window.yml"
    path.write_text(RULES)
    proc = nodewarden("check", "rules", "--no-catalogue", str(path))
    assert proc.returncode == 0, proc.stderr
    warnings = [line for line in proc.stderr.splitlines() if "warning:" in line]
    assert len(warnings) == 4, proc.stderr  # default retention 15m; the subquery reads 12m + 1m + 5m
    assert f"{path}:7:15: warning: group 'window', rule 'LongRange': reads 1h of history" in warnings[0]
    assert "rule 'DeepOffset': reads 20m of history" in warnings[1]
    assert "rule 'Subquery': reads 18m of history" in warnings[2]
    assert "rule 'Pinned': uses @ <time>" in warnings[3]
    assert nodewarden("check", "rules", "--no-catalogue", "--lint-fatal", str(path)).returncode == 3

    cfg = tmp_path / "config.yml"
    cfg.write_text("retention: 2h\n")
    proc = nodewarden("check", "rules", "--no-catalogue", "--config", str(cfg), str(path))
    assert proc.returncode == 0
    warnings = [line for line in proc.stderr.splitlines() if "warning:" in line]
    assert len(warnings) == 1 and "Pinned" in warnings[0], proc.stderr

    cfg.write_text("retention: 19m\n")
    proc = nodewarden("check", "rules", "--no-catalogue", "--config", str(cfg), str(path))
    warned = [w.split("rule ")[1].split(":")[0] for w in proc.stderr.splitlines() if "warning:" in w]
    assert warned == ["'LongRange'", "'DeepOffset'", "'Pinned'"], proc.stderr

