"""Differential tests: promtool (Prometheus 2.42) and nodewarden give the same verdicts on the same files.

* ``test rules``: every ``tests/rules_corpus/*.test.yml`` and ``rules/tests/*.yml`` file is run by
  ``promtool test rules`` and by ``nodewarden test rules``; exit codes and the failing test headers
  (``name:``/``alertname: .., time: ..``/``expr: .., time: ..``/``rule: ..``) must be identical.
  Files named ``*_fail.test.yml`` must fail (so the verdicts are not all "pass"), ``*_pass.test.yml`` pass.
* ``check rules``: every file in ``tests/rules_corpus/check/`` gets the same exit code from both, and
  nodewarden reports each problem as ``file:line:column: message``.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import re
import subprocess
from pathlib import Path

import pytest

from agent.commands import check_rules, test_rules
from tests.conftest import REPO, require_binary

CORPUS = REPO / "tests" / "rules_corpus"
LIBRARY_TESTS = sorted((REPO / "rules" / "tests").glob("*.yml"))
TEST_FILES = sorted(CORPUS.glob("*.test.yml"))
CHECK_FILES = sorted((CORPUS / "check").glob("*.yml"))
HEADER = re.compile(r"^    (name: .*,|alertname: \S+, time: \S+,|expr: \".*\", time: [^,]+,|rule: \S+, time: [^,]+,)")

def run_cli(module, argv: list[str]) -> tuple[int, str, str]:
    parser = argparse.ArgumentParser()
    module.add_arguments(parser)
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = module.main(parser.parse_args(argv))
    return code, out.getvalue(), err.getvalue()


def promtool(*args: str) -> tuple[int, str, str]:
    exe = require_binary("promtool")
    proc = subprocess.run([exe, *args], capture_output=True, text=True, timeout=120, check=False)
    return proc.returncode, proc.stdout, proc.stderr


def headers(stderr: str) -> list[str]:
    return sorted(m.group(1) for line in stderr.splitlines() if (m := HEADER.match(line)))


@pytest.mark.parametrize("path", TEST_FILES + LIBRARY_TESTS, ids=lambda p: p.name)
def test_same_verdict_as_promtool(path: Path) -> None:
    p_code, _, p_err = promtool("test", "rules", str(path))
    n_code, _, n_err = run_cli(test_rules, [str(path)])
    assert (n_code, headers(n_err)) == (p_code, headers(p_err)), f"promtool:\n{p_err}\nnodewarden:\n{n_err}"
    if path.name.endswith("_fail.test.yml"):
        assert p_code == 1
    else:
        assert p_code == 0, p_err


def test_corpus_has_failing_and_passing_files() -> None:
    names = [f.name for f in TEST_FILES]
    assert sum(n.endswith("_fail.test.yml") for n in names) >= 5
    assert sum(n.endswith("_pass.test.yml") for n in names) >= 4
    assert LIBRARY_TESTS, "rules/tests/*.yml missing"


@pytest.mark.parametrize("path", CHECK_FILES, ids=lambda p: p.name)
def test_check_rules_same_exit_code_as_promtool(path: Path) -> None:
    p_code, _, _ = promtool("check", "rules", str(path))
    n_code, n_out, n_err = run_cli(check_rules, ["--no-catalogue", str(path)])
    assert n_code == p_code
    assert n_out.startswith(f"Checking {path}\n")
    if path.name.startswith("good_"):
        assert p_code == 0 and "SUCCESS" in n_out
    else:
        assert p_code == 1
        problems = [line for line in n_err.splitlines() if not line.startswith("  ")]
        assert problems and all(re.match(rf"^{re.escape(str(path))}:\d+:\d+: \S", p) for p in problems), n_err


def test_check_rules_several_files_exit_1_when_any_is_bad() -> None:
    files = [str(CORPUS / "check" / "good_full.yml"), str(CORPUS / "check" / "duplicate_group.yml")]
    p_code, _, _ = promtool("check", "rules", *files)
    n_code, n_out, _ = run_cli(check_rules, ["--no-catalogue", *files])
    assert n_code == p_code == 1
    assert "SUCCESS: 2 rules found" in n_out
