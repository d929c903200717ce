"""Remediator engine tests: modes, each guard rail (with a control showing it matters), escalation, revert.

The plugin is a real one (tests/remed_support.py ``Marker`` writes files); time is an injected clock value.
"""

from __future__ import annotations

import math
import os
import time

import pytest

from agent.core.alerts import Alert
from agent.remediation.journal import Journal
from agent.remediation.policy import load_policy_text
from agent.remediation.remediator import Remediator
from tests.remed_support import Marker, MarkerConfig

BASE = """
defaults:
  mode: {mode}
  cooldown: {cooldown}
  rate_limit: {{window: 1h, per_action: {per_action}, total: {total}}}
  max_concurrent: {concurrent}
  flap: {{window: 30m, max_changes: {flaps}}}
  timeout: {timeout}
  blast_radius: {blast}
routes:
  - name: xid
    matchers: ['alertname="GpuXid"', 'severity=~"critical|page"']
    revert_after: {revert_after}
    steps:
      - action: marker
        params: {{name: "m_{{{{ $labels.gpu }}}}", delay: "{delay}", fail: "{fail}"}}
        wait: 5m
{steps}
{extra}
"""


def make(tmp_path, mode="enforce", cooldown="0s", per_action=100, total=100, concurrent=4, flaps=100,
         timeout="5m", revert_after="10m", delay=0, fail="false", extra="", daemon_mode="enforce", pause=None,
         steps="", blast="{max_fraction: 0.1}"):
    text = BASE.format(mode=mode, cooldown=cooldown, per_action=per_action, total=total, concurrent=concurrent,
                       flaps=flaps, timeout=timeout, revert_after=revert_after, delay=delay, fail=fail, extra=extra,
                       steps=steps, blast=blast)
    policy = load_policy_text(text, "policy.yml", plugins={"marker": Marker})
    marks = tmp_path / "marks"
    marks.mkdir(exist_ok=True)
    journal = Journal(str(tmp_path / "state"))
    rem = Remediator(policy, journal, {"marker": Marker(MarkerConfig(dir=str(marks)))}, mode=daemon_mode,
                     pause_flag_path=pause)
    return rem, journal, marks


def alert(gpu="0", state="firing", value=79.0, name="GpuXid", severity="critical"):
    return Alert(labels={"alertname": name, "gpu": gpu, "severity": severity}, annotations={}, state=state,
                 active_at=0.0, value=value)


def tick(rem, alerts, now):
    rem.on_tick(alerts, now)
    rem.close(10.0)  # wait for the workers and fold their results in


def applied(marks, gpu="0"):
    p = marks / f"m_{gpu}"
    return len(p.read_text().splitlines()) if p.exists() else 0


def statuses(journal, op="apply"):
    return [(e.status, e.reason) for e in journal if e.op == op]


def test_observe_mode_only_journals(tmp_path):
    rem, journal, marks = make(tmp_path, mode="observe")
    tick(rem, [alert()], 100.0)
    tick(rem, [alert()], 105.0)
    assert applied(marks) == 0
    rows = [e for e in journal if e.op == "apply"]
    assert [(e.status, e.mode) for e in rows] == [("planned", "observe")]
    assert rows[0].plan["changes"] == ["append a line to m_0"]
    assert ("nodewarden_remediations_total", (("action", "marker"), ("result", "planned")), 1.0) in rem.samples()


def test_daemon_observe_overrides_route_enforce(tmp_path):
    rem, journal, marks = make(tmp_path, mode="enforce", daemon_mode="observe")
    tick(rem, [alert()], 100.0)
    assert applied(marks) == 0 and statuses(journal) == [("planned", "observe mode")]


def test_enforce_applies_once_and_journals_outcome(tmp_path):
    rem, journal, marks = make(tmp_path)
    for t in range(100, 130, 5):
        tick(rem, [alert()], float(t))
    assert applied(marks) == 1
    [row] = [e for e in journal if e.op == "apply"]
    assert row.status == "succeeded" and row.output == "wrote m_0" and row.plan["undo"] == {"was": "absent"}
    assert row.fingerprint == alert().fingerprint and row.route == "xid"
    assert ("nodewarden_remediations_total", (("action", "marker"), ("result", "succeeded")), 1.0) in rem.samples()


def test_label_values_are_data(tmp_path):
    rem, journal, marks = make(tmp_path)
    tick(rem, [alert(gpu="0; rm -rf /")], 100.0)
    assert statuses(journal) == [("skipped", "plan_failed")]
    assert list(marks.iterdir()) == []


@pytest.mark.parametrize("cooldown,expected", [("1h", 1), ("0s", 2)])
def test_cooldown(tmp_path, cooldown, expected):
    rem, journal, marks = make(tmp_path, cooldown=cooldown, revert_after="null")
    tick(rem, [alert()], 100.0)
    tick(rem, [], 110.0)           # resolved: the episode ends (no revert configured)
    tick(rem, [alert()], 120.0)    # fires again
    assert applied(marks) == expected
    if expected == 1:
        assert statuses(journal)[-1] == ("skipped", "cooldown")


@pytest.mark.parametrize("per_action,expected", [(2, 2), (100, 4)])
def test_rate_limit_per_action(tmp_path, per_action, expected):
    rem, journal, marks = make(tmp_path, per_action=per_action)
    tick(rem, [alert(gpu=str(g)) for g in range(4)], 100.0)
    assert sum(applied(marks, str(g)) for g in range(4)) == expected
    if expected == 2:
        assert [s for s in statuses(journal) if s[0] == "skipped"] == [("skipped", "rate_limit")] * 2


def test_rate_limit_total_and_window_slides(tmp_path):
    rem, _journal, marks = make(tmp_path, total=1)
    tick(rem, [alert("0"), alert("1")], 100.0)
    assert applied(marks, "0") + applied(marks, "1") == 1
    tick(rem, [alert("0"), alert("1")], 100.0 + 3601)   # window passed: the other one may go now
    assert applied(marks, "0") + applied(marks, "1") == 2


@pytest.mark.parametrize("concurrent,expected", [(1, 1), (2, 2)])
def test_max_concurrency(tmp_path, concurrent, expected):
    rem, journal, marks = make(tmp_path, concurrent=concurrent, delay=0.5)
    rem.on_tick([alert("0"), alert("1")], 100.0)
    rem.close(10.0)
    assert applied(marks, "0") + applied(marks, "1") == expected
    if expected == 1:
        assert ("skipped", "concurrency") in statuses(journal)


@pytest.mark.parametrize("max_changes", [3, 1000])
def test_flap_gate_bounds_actions_on_an_oscillating_alert(tmp_path, max_changes):
    rem, journal, marks = make(tmp_path, flaps=max_changes, revert_after="null")
    for i in range(20):   # firing, resolved, firing, ... every tick
        tick(rem, [alert()] if i % 2 == 0 else [], 100.0 + 5 * i)
    n = applied(marks)
    if max_changes == 3:
        assert n <= 2  # fires at changes 0 and 2; from the 4th change on the gate holds
        assert ("skipped", "flapping") in statuses(journal)
    else:
        assert n == 10


@pytest.mark.parametrize("a,gated", [(alert(value=math.nan), True), (alert(name="GpuXidAbsent"), False),
                                     (alert(value=79.0), False)])
def test_no_data_gate(tmp_path, a, gated):
    extra = """  - name: absent
    matchers: ['alertname="GpuXidAbsent"']
    steps: [{action: marker, params: {name: "m_{{ $labels.gpu }}"}}]"""
    rem, journal, marks = make(tmp_path, extra=extra)
    tick(rem, [a], 100.0)
    if a.name == "GpuXidAbsent":
        gated = True   # absent-style alert names are no-data alerts by default
    assert applied(marks) == (0 if gated else 1)
    if gated:
        assert statuses(journal) == [("skipped", "no_data")]


def test_pause_file_blocks_then_resume_runs(tmp_path):
    flag = tmp_path / "paused"
    rem, journal, marks = make(tmp_path, pause=str(flag))
    flag.write_text("maintenance\n")
    tick(rem, [alert()], 100.0)
    tick(rem, [alert()], 105.0)
    assert applied(marks) == 0 and statuses(journal) == [("skipped", "paused")]
    assert ("nodewarden_remediation_paused", (), 1.0) in rem.samples()
    flag.unlink()
    tick(rem, [alert()], 110.0)
    assert applied(marks) == 1


def test_revert_on_resolve_after_revert_after(tmp_path):
    rem, journal, marks = make(tmp_path, revert_after="10m")
    tick(rem, [alert()], 100.0)
    assert applied(marks) == 1
    tick(rem, [], 200.0)
    tick(rem, [], 200.0 + 599)
    assert applied(marks) == 1          # resolved, but not for revert_after yet
    tick(rem, [], 200.0 + 600)
    assert applied(marks) == 0          # reverted
    assert statuses(journal) == [("reverted", "")]
    assert statuses(journal, "revert") == [("succeeded", "alert resolved")]


def test_refire_before_revert_after_keeps_the_action(tmp_path):
    rem, journal, marks = make(tmp_path, revert_after="10m")
    tick(rem, [alert()], 100.0)
    tick(rem, [], 200.0)
    tick(rem, [alert()], 500.0)
    tick(rem, [], 600.0)
    tick(rem, [], 600.0 + 300)
    assert applied(marks) == 1 and statuses(journal, "revert") == []


def test_failed_step_escalates_to_page(tmp_path):
    rem, journal, _marks = make(tmp_path, fail="true", steps="      - action: page")
    tick(rem, [alert()], 100.0)
    tick(rem, [alert()], 105.0)
    assert statuses(journal) == [("failed", "apply_failed")]
    pages = [e for e in journal if e.op == "page"]
    assert [(p.status, p.output) for p in pages] == [("succeeded", "no alertmanager url configured; journaled only")]
    assert rem.exhausted == {alert().fingerprint}


def test_stuck_action_does_not_block_the_tick(tmp_path):
    rem, journal, marks = make(tmp_path, timeout="1s", delay=3)
    rem.on_tick([alert()], 100.0)
    rem.on_tick([alert()], 102.0)     # past the deadline: journaled as failed(timeout) while still running
    assert rem.in_progress() == 1 and applied(marks) == 0
    assert statuses(journal) == [("failed", "timeout")]
    assert ("nodewarden_remediation_in_progress", (), 1.0) in rem.samples()
    rem.close(10.0)                   # when it does finish, the journal records the truth
    assert applied(marks) == 1 and statuses(journal)[0][0] == "succeeded"


def test_restart_keeps_cooldown(tmp_path):
    rem, journal, marks = make(tmp_path, cooldown="1h", revert_after="null")
    tick(rem, [alert()], time.time())
    journal.close()
    rem2, journal2, _ = make(tmp_path, cooldown="1h", revert_after="null")
    rem2.recover()
    tick(rem2, [], time.time())            # resolved after the restart ...
    tick(rem2, [alert()], time.time())     # ... and firing again within the cooldown
    assert applied(marks) == 1 and statuses(journal2)[-1] == ("skipped", "cooldown")


def test_act_by_hand_plans_applies_and_reverts(tmp_path):
    rem, journal, marks = make(tmp_path)
    planned = rem.act("marker", {"name": "manual"}, apply=False)
    assert planned.status == "planned" and not (marks / "manual").exists()
    done = rem.act("marker", {"name": "manual"}, apply=True)
    assert done.status == "succeeded" and (marks / "manual").exists()
    rev = rem.revert_entry(done.id)
    assert rev.status == "succeeded" and rev.parent == done.id and not (marks / "manual").exists()
    assert journal.get(done.id).status == "reverted"


def test_metrics_catalogue_covers_samples(tmp_path):
    rem, _journal, _marks = make(tmp_path, per_action=0)
    tick(rem, [alert()], 100.0)
    names = {m.name for m in rem.metrics}
    assert {s.name for s in rem.samples()} <= names
    assert ("nodewarden_remediation_skipped_total", (("action", "marker"), ("reason", "rate_limit")), 1.0) \
        in rem.samples()


def test_pause_file_path_is_checked_each_tick(tmp_path):
    flag = tmp_path / "p"
    rem, _, _ = make(tmp_path, pause=str(flag))
    assert not rem.paused()
    flag.touch()
    assert rem.paused()
    os.unlink(flag)
    assert not rem.paused()


class Held:
    """The cluster engine's answer for the blast-radius tests (the real one is Slurm/Kubernetes)."""

    def __init__(self, held, total):
        self.value = (held, total)

    def held(self):
        return self.value


def test_blast_radius_refusal_retries_without_burning_the_cooldown(tmp_path):
    rem, journal, marks = make(tmp_path, cooldown="1h", blast="{max_nodes: 1, max_fraction: null}")
    rem.cluster = Held(1, 10)
    tick(rem, [alert()], 100.0)
    assert applied(marks) == 0 and statuses(journal) == [("skipped", "blast_radius")]
    tick(rem, [alert()], 110.0)            # within retry_interval (30s): not asked again
    assert len(statuses(journal)) == 1
    rem.cluster.value = (0, 10)            # the other node came back
    tick(rem, [alert()], 131.0)
    assert applied(marks) == 1 and statuses(journal)[-1] == ("succeeded", "")


def test_blast_radius_fraction(tmp_path):
    rem, journal, marks = make(tmp_path)
    rem.cluster = Held(0, 5)               # default max_fraction 10 %: 1 of 5 nodes would be 20 %
    tick(rem, [alert()], 100.0)
    assert applied(marks) == 0 and statuses(journal) == [("skipped", "blast_radius")]


def test_refire_after_revert_starts_a_new_escalation(tmp_path):
    rem, journal, marks = make(tmp_path, revert_after="1m")
    tick(rem, [alert()], 100.0)
    tick(rem, [], 110.0)
    tick(rem, [], 170.0)
    assert applied(marks) == 0
    tick(rem, [alert()], 200.0)
    assert applied(marks) == 1 and [s for s, _ in statuses(journal)] == ["reverted", "succeeded"]


def test_flapping_alert_escalates_to_a_page_instead_of_acting(tmp_path):
    rem, journal, marks = make(tmp_path, flaps=1, revert_after="null", steps="      - action: page")
    for i, firing in enumerate([True, False, True, False, True]):
        tick(rem, [alert()] if firing else [], 100.0 + i)
    assert applied(marks) == 1                               # the first firing acted; then the gate held
    tick(rem, [alert()], 100.0 + 4 + 301)                   # refused for longer than the step's wait (5m)
    assert [(e.op, e.status) for e in journal][-1] == ("page", "succeeded")


def test_pause_holds_reverts_too(tmp_path):
    flag = tmp_path / "paused"
    rem, _journal, marks = make(tmp_path, revert_after="1m", pause=str(flag))
    tick(rem, [alert()], 100.0)
    flag.touch()
    tick(rem, [], 110.0)
    tick(rem, [], 200.0)
    assert applied(marks) == 1
    flag.unlink()
    tick(rem, [], 210.0)
    assert applied(marks) == 0


def test_recover_finishes_an_interrupted_revert(tmp_path):
    rem, journal, marks = make(tmp_path)
    done = rem.act("marker", {"name": "m_0"}, apply=True)
    plan = journal.get(done.id).get_plan()
    journal.add(op="revert", action="marker", status="started", mode="enforce", target=plan.target, plan=plan,
                parent=done.id)                 # the process died here, before calling revert
    rem2, journal2, _ = make(tmp_path)
    rem2.recover()
    assert applied(marks) == 0
    assert [(e.op, e.status) for e in journal2] == [("apply", "reverted"), ("revert", "succeeded")]


def test_recover_rebuilds_revert_on_resolve(tmp_path):
    rem, _journal, marks = make(tmp_path, revert_after="1m")
    tick(rem, [alert()], time.time())
    rem2, _, _ = make(tmp_path, revert_after="1m")   # restart while the action is in effect
    rem2.recover()
    now = time.time()
    tick(rem2, [], now)
    tick(rem2, [], now + 61)
    assert applied(marks) == 0


class ExpiringMarker(Marker):
    """A Marker whose applied actions expire after ``max_age`` seconds and that reconciles on start."""

    max_age = 60.0
    reconciled: list[list[int]] = []

    def expired(self, active, now):
        return [e.id for e in active if now >= e.ts + self.max_age]

    def reconcile(self, active):
        ids = [e.id for e in active]
        ExpiringMarker.reconciled.append(ids)
        return type("Reconciled", (), {"expired": []})()


def test_expired_action_is_reverted_and_the_escalation_continues(tmp_path):
    steps = "      - action: page"
    text = BASE.format(mode="enforce", cooldown="0s", per_action=100, total=100, concurrent=4, flaps=100,
                       timeout="5m", revert_after="null", delay=0, fail="false", extra="", steps=steps,
                       blast="{max_fraction: null}")
    policy = load_policy_text(text, "policy.yml", plugins={"marker": ExpiringMarker})
    marks = tmp_path / "marks"
    marks.mkdir()
    now = 1000.0
    journal = Journal(str(tmp_path / "state"), clock=lambda: now)
    rem = Remediator(policy, journal, {"marker": ExpiringMarker(MarkerConfig(dir=str(marks)))}, mode="enforce",
                     clock=lambda: now)
    tick(rem, [alert()], now)
    assert applied(marks) == 1
    now = 1030.0
    tick(rem, [alert()], now)
    assert applied(marks) == 1 and statuses(journal, "revert") == []   # not yet expired, wait (5m) not over
    now = 1070.0
    tick(rem, [alert()], now)                                          # expired: reverted
    assert applied(marks) == 0
    assert statuses(journal, "revert") == [("succeeded", "expired")]
    assert statuses(journal) == [("reverted", "")]
    tick(rem, [alert()], now + 5)                                      # the escalation goes on: page now
    assert [(e.status, e.reason) for e in journal if e.op == "page"] == [("succeeded", "")]
    assert applied(marks) == 0


def test_recover_lets_plugins_reconcile_with_the_journal(tmp_path):
    rem, journal, marks = make(tmp_path)
    tick(rem, [alert()], 100.0)
    [applied_entry] = [e for e in journal if e.op == "apply" and e.status == "succeeded"]
    ExpiringMarker.reconciled.clear()
    rem2 = Remediator(rem.policy, journal, {"marker": ExpiringMarker(MarkerConfig(dir=str(marks)))}, mode="enforce")
    result = rem2.recover()
    assert ExpiringMarker.reconciled == [[applied_entry.id]] and "marker" in result


class ProgressMarker(Marker):
    """Reports byte progress while applying, then waits for the test to let it finish."""

    progress = None
    release = None

    def apply(self, plan):
        self.progress(250_000_000, 1_000_000_000)
        self.release.wait(10)
        self.progress(1_000_000_000, 1_000_000_000)
        return super().apply(plan)


def test_running_action_progress_is_journaled(tmp_path):
    import threading

    rem, journal, marks = make(tmp_path)
    plugin = ProgressMarker(MarkerConfig(dir=str(marks)))
    plugin.release = threading.Event()
    rem.plugins["marker"] = plugin
    rem.on_tick([alert()], 100.0)
    deadline = time.monotonic() + 10
    while not [e for e in journal if e.output.startswith("in progress")] and time.monotonic() < deadline:
        time.sleep(0.02)
    [row] = [e for e in journal if e.op == "apply"]
    assert (row.status, row.output) == ("started", "in progress: 0.25 of 1.00 GB (25%)")
    plugin.release.set()
    rem.close(10.0)
    [row] = [e for e in journal if e.op == "apply"]
    assert row.status == "succeeded" and row.output == "wrote m_0" and plugin.progress is None
