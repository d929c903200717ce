"""The remediation commands (act, history, pause, resume) through their command modules' public entry."""

from __future__ import annotations

import argparse
import json
import time

import pytest

from agent.commands import act, history, pause, resume
from agent.core.alerts import Alert
from agent.remediation.journal import Journal
from agent.remediation.policy import load_policy_text
from agent.remediation.remediator import Remediator
from tests.remed_support import Marker, MarkerConfig

POLICY = """
plugins:
  rebalance: {backend: slurm, node_name: nw9}
routes: []
"""


def run(module, argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    module.add_arguments(parser)
    return module.main(parser.parse_args(argv))


@pytest.fixture
def policy(tmp_path):
    p = tmp_path / "remediations.yml"
    p.write_text(POLICY)
    return str(p)


def test_act_plans_through_the_registered_plugin(tmp_path, policy, capsys):
    state = str(tmp_path / "state")
    assert run(act, ["--state-dir", state, "--policy", policy, "rebalance", "gpu=3", "reason=xid 79", "--json"]) == 0
    entry = json.loads(capsys.readouterr().out)
    assert entry["status"] == "planned" and entry["target"] == "node/nw9" and entry["mode"] == "observe"
    assert entry["plan"]["params"]["reason"] == "nodewarden: xid 79"
    assert [e.status for e in Journal(state)] == ["planned"]


@pytest.mark.parametrize("argv,err", [(["rebalance", "node=a;b"], "not a valid node name"),
                                      (["rebalance", "nokey"], "KEY=VALUE"),
                                      (["nosuch", "a=b"], "unknown plugin")])
def test_act_rejects_bad_input(tmp_path, policy, capsys, argv, err):
    assert run(act, ["--state-dir", str(tmp_path), "--policy", policy, *argv]) == 2
    assert err in capsys.readouterr().err


def test_act_reports_policy_errors_with_position(tmp_path, capsys):
    p = tmp_path / "bad.yml"
    p.write_text("defaults:\n  cooldown: 5\nroutes: []\n")
    assert run(act, ["--state-dir", str(tmp_path), "--policy", str(p), "rebalance"]) == 2
    assert f"{p}:2:13: defaults.cooldown: duration must be a string" in capsys.readouterr().err


def test_pause_resume_and_the_daemon_sees_it(tmp_path, capsys):
    state = tmp_path / "state"
    assert run(pause, ["--state-dir", str(state), "--reason", "GPU swap"]) == 0
    assert "GPU swap" in (state / "paused").read_text()
    policy = load_policy_text("defaults: {mode: enforce}\nroutes:\n - matchers: ['alertname=\"X\"']\n"
                              "   steps: [{action: marker, params: {name: m}}]\n")
    rem = Remediator(policy, Journal(str(state)), {"marker": Marker(MarkerConfig(dir=str(tmp_path)))}, "enforce",
                     pause_flag_path=str(state / "paused"))
    x = Alert(labels={"alertname": "X"}, annotations={}, state="firing", active_at=0, value=1.0)
    rem.on_tick([x], 100.0)
    rem.close(10)
    assert not (tmp_path / "m").exists()
    assert run(resume, ["--state-dir", str(state)]) == 0
    rem.on_tick([x], 105.0)
    rem.close(10)
    assert (tmp_path / "m").exists()
    assert run(resume, ["--state-dir", str(state)]) == 0
    assert "not paused" in capsys.readouterr().out


def test_history_table_json_and_since(tmp_path, capsys):
    state = str(tmp_path / "state")
    j = Journal(state)
    j.add(op="apply", action="rebalance", status="skipped", mode="enforce", reason="cooldown", target="node/a",
          alertname="GpuXid", ts=time.time() - 7200)
    j.add(op="apply", action="rebalance", status="planned", mode="observe", target="node/b", alertname="GpuXid")
    j.close()
    assert run(history, ["--state-dir", state]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 3 and "cooldown" in out[1] and "node/b" in out[2]
    assert run(history, ["--state-dir", state, "--since", "1h", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["target"] for r in rows] == ["node/b"]
    assert run(history, ["--state-dir", state, "--since", "soon"]) == 2


def test_history_without_a_journal_is_empty(tmp_path, capsys):
    assert run(history, ["--state-dir", str(tmp_path / "none"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == []


def test_check_rules_validates_the_policy_against_plugins_and_loaded_rules(tmp_path, capsys):
    from agent.cli import main

    rules = tmp_path / "r.yml"
    rules.write_text("groups:\n  - name: g\n    rules:\n      - alert: GpuXid\n        expr: up == 0\n"
                     "        annotations: {summary: x}\n")
    good = tmp_path / "p.yml"
    good.write_text("routes:\n  - matchers: ['alertname=\"GpuXid\"']\n    steps: [{action: rebalance}]\n"
                    "  - matchers: ['alertname=\"Nope\"']\n    steps: [{action: page}]\n")
    assert main(["check", "rules", "--no-catalogue", str(rules), str(good)]) == 0
    assert f"WARNING: {good}:4:15: routes.1: matches no alert of the loaded rules" in capsys.readouterr().err
    assert main(["check", "rules", "--no-catalogue", "--lint-fatal", str(rules), str(good)]) == 3
    bad = tmp_path / "bad.yml"
    bad.write_text("routes:\n  - matchers: ['alertname=\"GpuXid\"']\n    steps:\n      - action: rebalance\n"
                   "        params: {node: 'a b'}\n")
    capsys.readouterr()
    assert main(["check", "rules", "--no-catalogue", str(rules), str(bad)]) == 1
    assert f"{bad}:5:24: routes.0.steps.0.params.node: not a valid node name: 'a b'" in capsys.readouterr().err
