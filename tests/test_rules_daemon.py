"""The rule engine inside the running agent: alerts on /metrics and the HTTP API, reload, restart."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
from pathlib import Path

import pytest

from tests.agentproc import NODEWARDEN, AgentProcess, fixture_config, sample_value, wait_for
from tests.trees import build_scaled_tree

RULES = """groups:
- name: disks
  rules:
  - alert: DiskBusy
    expr: node_disk_io_now{device="nvme0n1"} > 0
    for: 2s
    labels: {severity: warning}
    annotations: {summary: "{{ $labels.device }} has {{ $value }} I/Os in flight"}
  - alert: DiskBusyForAnHour
    expr: node_disk_io_now{device="nvme0n1"} > 0
    for: 1h
  - record: device:node_disk_io_now:sum
    expr: sum by (device) (node_disk_io_now)
"""


@pytest.fixture
def setup(tmp_path: Path) -> tuple[Path, dict]:
    tree = build_scaled_tree(tmp_path / "tree")
    (tmp_path / "disk.rules.yml").write_text(RULES)
    return tmp_path, fixture_config(tree, rule_files=["disk.rules.yml"])


def _alerts(agent: AgentProcess) -> dict[str, dict]:
    status, body = agent.get("/api/v1/alerts")
    assert status == 200
    return {a["labels"]["alertname"]: a for a in json.loads(body)["data"]["alerts"]}


def test_alerts_fire_and_are_served(setup):
    tmp, cfg = setup
    with AgentProcess(tmp, cfg) as agent:
        wait_for(lambda: _alerts(agent).get("DiskBusy", {}).get("state") == "firing", what="DiskBusy firing")
        a = _alerts(agent)["DiskBusy"]
        assert a["labels"] == {"alertname": "DiskBusy", "device": "nvme0n1", "severity": "warning",
                               "instance": socket.gethostname()}   # the node label (config node_label)
        assert a["annotations"]["summary"] == "nvme0n1 has 1 I/Os in flight"
        assert _alerts(agent)["DiskBusyForAnHour"]["state"] == "pending"
        text = agent.metrics()
        assert sample_value(text, "ALERTS", alertname="DiskBusy", alertstate="firing", device="nvme0n1") == 1
        assert sample_value(text, "ALERTS_FOR_STATE", alertname="DiskBusy") is not None
        assert sample_value(text, "device:node_disk_io_now:sum", device="nvme0n1") == 1
        rules = json.loads(agent.get("/api/v1/rules")[1])["data"]["groups"]
        assert [g["name"] for g in rules] == ["disks"] and len(rules[0]["rules"]) == 3
        res = subprocess.run([*NODEWARDEN, "status", "--url", agent.url], capture_output=True, text=True, timeout=30)
        assert "firing   DiskBusy{" in res.stdout and "nvme0n1 has 1 I/Os in flight" in res.stdout
        assert "pending  DiskBusyForAnHour" in res.stdout


def test_restart_keeps_for_timers(setup):
    tmp, cfg = setup
    with AgentProcess(tmp, cfg) as agent:
        wait_for(lambda: "DiskBusyForAnHour" in _alerts(agent), what="pending alert")
        active_at = _alerts(agent)["DiskBusyForAnHour"]["activeAt"]
    assert (tmp / "state" / "alerts.json").exists()
    with AgentProcess(tmp, cfg) as agent:
        wait_for(lambda: "DiskBusyForAnHour" in _alerts(agent), what="pending alert after restart")
        assert _alerts(agent)["DiskBusyForAnHour"]["activeAt"] == active_at  # the for: timer was not reset


def test_reload_with_bad_rule_file_keeps_old_rules(setup):
    tmp, cfg = setup
    with AgentProcess(tmp, cfg) as agent:
        wait_for(lambda: "DiskBusy" in _alerts(agent), what="alert")
        (tmp / "disk.rules.yml").write_text(RULES.replace("for: 2s", "for: 2 seconds"))
        agent.signal(signal.SIGHUP)
        wait_for(lambda: sample_value(agent.metrics(), "nodewarden_config_last_reload_successful") == 0,
                 what="failed reload reported")
        assert sample_value(agent.metrics(), "nodewarden_rules_last_reload_successful") == 0
        assert "disk.rules.yml:6:10" in agent.log()
        assert _alerts(agent)["DiskBusy"]["state"] in ("pending", "firing")  # old rules still evaluated
        (tmp / "disk.rules.yml").write_text(RULES.replace("DiskBusyForAnHour", "DiskBusyLong"))
        agent.signal(signal.SIGHUP)
        wait_for(lambda: "DiskBusyLong" in _alerts(agent), what="new rule after good reload")
        assert sample_value(agent.metrics(), "nodewarden_config_last_reload_successful") == 1


def test_bad_rule_file_at_start_exits_2(setup):
    tmp, cfg = setup
    (tmp / "disk.rules.yml").write_text(RULES.replace("> 0", "> > 0", 1))
    agent = AgentProcess(tmp, cfg)
    res = subprocess.run(agent.command(), capture_output=True, text=True, timeout=30, cwd=tmp)
    assert res.returncode == 2
    assert "disk.rules.yml:5:" in res.stderr
