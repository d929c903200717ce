"""Prometheus 2.42's own PromQL test suite (promql/testdata/*.test) against agent.engine.promql.

Every eval of every file in ../shared/fixtures/prometheus-promqltest must agree (tests/promqltest.py runs the
format as Prometheus' promql/test.go does: almostEqual values, eval_fail, eval_ordered). Evals that cannot
apply to an engine on the node would be listed in NOT_APPLICABLE with the reason; there are none.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests import promqltest

SUITE = Path(__file__).resolve().parents[1] / ".." / "shared" / "fixtures" / "prometheus-promqltest"
FILES = sorted(p.name for p in SUITE.glob("*.test"))

# (file, line) -> why the eval cannot apply to a node engine. Expected to stay empty.
NOT_APPLICABLE: dict[tuple[str, int], str] = {}


def test_suite_is_present() -> None:
    assert len(FILES) == 11, f"expected the 11 files of Prometheus 2.42's promql/testdata in {SUITE}"


@pytest.mark.parametrize("name", FILES)
def test_every_eval_agrees(name: str) -> None:
    outcomes = list(promqltest.run_file(SUITE / name))
    assert outcomes, f"{name}: no evals"
    wrong = [
        f"{name}:{o.line}: {o.expr}\n    {o.problem}"
        for o in outcomes
        if o.problem is not None and (name, o.line) not in NOT_APPLICABLE
    ]
    assert not wrong, f"{len(wrong)} of {len(outcomes)} evals disagree with Prometheus 2.42:\n" + "\n".join(wrong)


def test_at_modifier_variants_agree() -> None:
    """Prometheus' harness also re-runs each eval with ``@ <eval time>`` on every selector outside
    subqueries, at other evaluation times (promql/test.go atModifierTestCases): the answer must not move."""
    total = 0
    wrong = []
    for name in FILES:
        for outcome in promqltest.run_file(SUITE / name, at_variants=True):
            total += 1
            if outcome.problem is not None and (name, outcome.line) not in NOT_APPLICABLE:
                wrong.append(f"{name}:{outcome.line}: {outcome.expr}\n    {outcome.problem}")
    assert total > 1000
    assert not wrong, f"{len(wrong)} of {total} @ variants disagree:\n" + "\n".join(wrong[:40])


def test_runner_detects_disagreement(tmp_path: Path) -> None:
    """The runner is not a rubber stamp: wrong values, missing or extra series, order, and eval_fail."""
    path = tmp_path / "wrong.test"
    path.write_text(
        "load 5m\n"
        '  m{a="1"} 0+10x10\n'
        '  m{a="2"} 0+20x10\n'
        "\n"
        "eval instant at 50m m\n"
        '  m{a="1"} 100\n'
        '  m{a="2"} 201\n'
        "\n"
        "eval instant at 50m m\n"
        '  m{a="1"} 100\n'
        "\n"
        "eval instant at 50m m\n"
        '  m{a="1"} 100\n'
        '  m{a="2"} 200\n'
        '  m{a="3"} 300\n'
        "\n"
        "eval_ordered instant at 50m sort_desc(m)\n"
        '  m{a="1"} 100\n'
        '  m{a="2"} 200\n'
        "\n"
        "eval_fail instant at 50m m\n"
        "\n"
        "eval instant at 50m sum(m)\n"
        "  {} 300.01\n"
        "\n"
        "eval instant at 50m sum(m)\n"
        "  {} 300.00000001\n"
    )
    problems = [o.problem for o in promqltest.run_file(path)]
    assert [p is not None for p in problems] == [True, True, True, True, True, True, False], problems


def test_almost_equal_is_prometheus_comparison() -> None:
    assert promqltest.almost_equal(float("nan"), float("nan"))
    assert promqltest.almost_equal(1.0, 1.0000001)
    assert not promqltest.almost_equal(1.0, 1.00001)
    assert not promqltest.almost_equal(0.0, 1e-300)
    assert promqltest.almost_equal(float("inf"), float("inf"))
    assert not promqltest.almost_equal(float("inf"), float("-inf"))
