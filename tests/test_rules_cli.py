"""``nodewarden check rules`` / ``nodewarden test rules`` through the real CLI entry point."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from agent.commands import check_rules
from agent.core.metrics import MetricSpec
from agent.engine.rules import parse_rule_text
from tests.conftest import REPO

CORPUS = REPO / "tests" / "rules_corpus"


def nodewarden(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "agent.cli", *args], capture_output=True, text=True, timeout=120,
                          check=False, cwd=cwd or REPO)


TYPO = """\
groups:
  - name: typos
    rules:
      - alert: DiskBusy
        expr: rate(node_disk_io_time_second_total[5m]) > 0.9
      - alert: WrongLabel
        expr: node_filesystem_readonly{mount_point="/"} == 1
      - alert: Fine
        expr: node_filesystem_readonly{mountpoint="/", fstype!="tmpfs"} == 1
"""


def test_check_rules_warns_about_unknown_metrics_and_labels(tmp_path: Path) -> None:
    path = tmp_path / "typo.yml"
    path.write_text(TYPO)
    proc = nodewarden("check", "rules", str(path))
    assert proc.returncode == 0, proc.stderr
    assert "SUCCESS: 3 rules found" in proc.stdout
    warnings = [line for line in proc.stderr.splitlines() if "warning:" in line]
    assert len(warnings) == 2, proc.stderr
    assert warnings[0].startswith(f"  WARNING: {path}:5:15: warning: ")
    assert "node_disk_io_time_second_total" in warnings[0]
    assert "closest known: node_disk_io_time_seconds_total" in warnings[0]
    assert f"{path}:7:15:" in warnings[1] and "never carries label 'mount_point'" in warnings[1]
    assert "mountpoint" in warnings[1]
    assert nodewarden("check", "rules", "--lint-fatal", str(path)).returncode == 3
    assert nodewarden("check", "rules", "--no-catalogue", str(path)).stderr == ""


def test_check_rules_only_enabled_collectors(tmp_path: Path) -> None:
    rules = tmp_path / "r.yml"
    rules.write_text("groups: [{name: g, rules: [{alert: A, expr: 'node_filesystem_readonly == 1'}]}]\n")
    cfg = tmp_path / "config.yml"
    cfg.write_text("collectors:\n  filesystem:\n    enabled: false\n")
    proc = nodewarden("check", "rules", "--config", str(cfg), str(rules))
    assert proc.returncode == 0
    assert "no enabled collector produces node_filesystem_readonly" in proc.stderr
    assert "no enabled collector" not in nodewarden("check", "rules", str(rules)).stderr


def test_catalogue_warnings_pure() -> None:
    catalogue = {"gpu_temp": MetricSpec("gpu_temp", "gauge", "", ("gpu", "UUID"))}
    text = "groups: [{name: g, rules: [{record: 'x:y', expr: 'gpu_temp{gpu=\"0\",job=\"\"}'}, " \
           "{alert: A, expr: 'x:y > 1 and gpu_tmp{gpu=~\".+\"}'}]}]\n"
    groups, problems = parse_rule_text(text, "f.yml")
    assert problems == []
    warnings = check_rules.catalogue_warnings(groups, catalogue, text, "f.yml")
    assert len(warnings) == 1  # job="" matches a missing label; x:y is produced by the file itself
    assert "gpu_tmp" in warnings[0] and "closest known: gpu_temp" in warnings[0]


def test_check_rules_problem_output_shape(tmp_path: Path) -> None:
    bad = CORPUS / "check" / "bad_duration.yml"
    proc = nodewarden("check", "rules", str(bad))
    assert proc.returncode == 1
    assert proc.stdout == f"Checking {bad}\n\n"
    assert proc.stderr.splitlines()[0] == "  FAILED:"
    assert proc.stderr.splitlines()[1] == f'{bad}:6:14: not a valid duration string: "5 minutes"'


def test_test_rules_run_filter_and_exit_codes() -> None:
    path = CORPUS / "edges_fail.test.yml"
    proc = nodewarden("test", "rules", str(path))
    assert proc.returncode == 1
    assert proc.stdout.startswith(f"Unit Testing:  {path}\n")
    assert "name: for 90s with 30s evaluation and 1m samples" in proc.stderr
    assert "name: keep_firing_for bridges gaps" in proc.stderr
    only = nodewarden("test", "rules", "--run", "^recording chain", str(path))
    assert only.returncode == 0, only.stderr
    assert "  SUCCESS" in only.stdout
    keep = nodewarden("test", "rules", "--run", "keep_firing", str(path))
    assert keep.returncode == 1
    assert "keep_firing_for bridges gaps" in keep.stderr and "90s" not in keep.stderr


def test_test_rules_missing_file_fails() -> None:
    proc = nodewarden("test", "rules", "/nonexistent/x.test.yml")
    assert proc.returncode == 1
    assert "FAILED" in proc.stderr


@pytest.mark.parametrize("name", ["gpu", "storage", "network"])
def test_default_library_loads_in_the_engine(name: str) -> None:
    from agent.engine.rules import RuleEngine

    eng = RuleEngine(None)
    eng.load([str(REPO / "rules" / f"{name}.yml")])
    assert sum(1 for _ in eng.rule_states()) >= 10
    assert all(rs.rule.annotations or rs.rule.kind == "recording" for _, rs in eng.rule_states())


def test_default_library_names_only_metrics_and_labels_the_collectors_emit() -> None:
    files = sorted(str(p) for p in (REPO / "rules").glob("*.yml"))
    proc = nodewarden("check", "rules", "--lint-fatal", *files)
    assert proc.returncode == 0, proc.stderr
    assert "WARNING" not in proc.stderr and "NOTE" not in proc.stderr
