"""Every default rule against the simulated node, through the whole agent (collectors -> rules -> policy in
observe mode): each alert must fire in a fault scenario that expects it, and fire in no healthy scenario;
each recording rule must produce samples. A rule that no scenario covers fails the test.

The rule list is read from agent.core.config.DEFAULT_RULE_FILES, so a new default rule file is covered as soon
as it is listed, and fails here until scenarios exist for its alerts. The 24-hour soak runs with a 60 s tick
in CI (``nodewarden simulate --run node-soak-24h --interval 5s`` is the full-resolution run).
"""

from __future__ import annotations

import pytest

from agent.collectors import simulate
from agent.commands.simulate import Report, default_rule_files, rule_names, run_scenario

SCENARIOS = [n for n in simulate.builtin_names() if n.startswith("node-") and n != "node-soak-24h"]
_REPORTS: dict[str, Report] = {}


def _run(name: str, tmp_path_factory, **kw) -> Report:
    if name not in _REPORTS:
        _REPORTS[name] = run_scenario(simulate.load(name), str(tmp_path_factory.mktemp(name)), **kw)
    return _REPORTS[name]


@pytest.mark.timeout(300)
@pytest.mark.parametrize("name", SCENARIOS)
def test_scenario_meets_its_expectations(name, tmp_path_factory):
    rep = _run(name, tmp_path_factory)
    assert rep.ticks > 10
    assert not rep.failures, "\n".join(rep.failures)


def coverage_problems(alerts, records, reports, scenarios) -> list[str]:
    """Why the scenario set does not cover the rules (empty when every rule is covered)."""
    healthy = [n for n, sc in scenarios.items() if sc.healthy]
    problems = [] if healthy else ["no healthy scenario"]
    for alert in alerts:
        firing = [n for n, sc in scenarios.items() if not sc.healthy and alert in reports[n].fired
                  and any(e.alert == alert and not e.never for e in sc.expect)]
        if not firing:
            problems.append(f"{alert}: no fault scenario expects it and sees it fire")
        problems += [f"{alert}: fired in healthy scenario {n}" for n in healthy if alert in reports[n].fired]
    for record in records:
        if not any(record in r.recorded for r in reports.values()):
            problems.append(f"recording rule {record}: produced no sample in any scenario")
    return problems


@pytest.mark.timeout(1800)
def test_every_default_rule_fires_in_a_fault_scenario_and_never_in_a_healthy_one(tmp_path_factory):
    files = default_rule_files()
    alerts, records = rule_names(files)
    reports = {n: _run(n, tmp_path_factory) for n in SCENARIOS}
    scenarios = {n: simulate.load(n) for n in SCENARIOS}
    problems = coverage_problems(alerts, records, reports, scenarios)
    assert not problems, "uncovered or noisy default rules:\n" + "\n".join(problems)
    # ...and the check does catch a rule nothing covers, or one a healthy node fires
    assert coverage_problems([*alerts, "NoScenarioForThis"], records, reports, scenarios) == \
        ["NoScenarioForThis: no fault scenario expects it and sees it fire"]
    noisy = {**reports, "node-healthy": Report("node-healthy", fired={"GpuLost": 60.0})}
    assert "GpuLost: fired in healthy scenario node-healthy" in coverage_problems(alerts, records, noisy, scenarios)


@pytest.mark.timeout(1200)
def test_healthy_soak_24h_plans_nothing(tmp_path_factory):
    rep = run_scenario(simulate.load("node-soak-24h"), str(tmp_path_factory.mktemp("soak")), interval=60.0)
    print(f"soak: {rep.ticks} ticks, {rep.simulated_s / 3600:g} h simulated in {rep.wall_s:.1f} s, "
          f"{rep.series_max} series max, alerts fired {sorted(rep.fired)}, pending {sorted(rep.pending)}, "
          f"decisions {rep.action_rows}")
    assert rep.simulated_s >= 24 * 3600
    assert rep.fired == {} and rep.action_rows == 0, rep.failures
    assert not rep.failures
