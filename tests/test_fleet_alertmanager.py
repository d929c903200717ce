"""Node identity on alerts, and silences holding actions, against a real Alertmanager (prometheus-alertmanager)."""

from __future__ import annotations

import json
import time
import urllib.request
from pathlib import Path

import pytest

from agent.core.alerts import Alert
from agent.remediation.journal import Journal
from agent.remediation.pager import silence_matches
from agent.remediation.policy import load_policy_text
from agent.remediation.remediator import Remediator
from tests.agentproc import AgentProcess, wait_for
from tests.conftest import free_port
from tests.fleet_support import alertmanager, am_get, am_silence
from tests.remed_support import Marker, MarkerConfig

RULES = """groups:
- name: disks
  rules:
  - alert: DiskReadOnly
    expr: vector(time()) < {until}
    labels: {{severity: critical}}
"""

POLICY = """
defaults: {{mode: enforce}}
alertmanager: {{url: "{url}", resend: 2s}}
routes:
  - matchers: ['alertname="DiskReadOnly"']
    steps:
      - action: page
"""

LEAN = {name: {"enabled": False} for name in ("disk", "filesystem", "network", "netstat", "infiniband", "gpu")}


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_two_agents_page_two_alerts_that_resolve_independently(tmp_path):
    with alertmanager(tmp_path) as url:
        agents = []
        until = {"a1": time.time() + 40, "a2": 4e9}
        for node in ("a1", "a2"):
            d = tmp_path / node
            d.mkdir()
            (d / "rules.yml").write_text(RULES.format(until=until[node]))
            (d / "policy.yml").write_text(POLICY.format(url=url))
            cfg = {"interval": "1s", "mode": "enforce", "hostname": node, "rule_files": ["rules.yml"],
                   "remediation_policy": "policy.yml", "collectors": LEAN, "external_labels": {"cluster": "west"}}
            agents.append(AgentProcess(d, cfg))
        try:
            for a in agents:
                a.start()

            def active() -> list[dict]:
                return am_get(url, "/api/v2/alerts?active=true&silenced=false&inhibited=false")

            got = wait_for(lambda: len(active()) == 2 and active(), timeout=30, what="two alerts in alertmanager")
            assert sorted(a["labels"]["instance"] for a in got) == ["a1", "a2"]
            assert all(a["labels"]["cluster"] == "west" and a["labels"]["alertname"] == "DiskReadOnly" for a in got)
            served = json.loads(agents[0].get("/api/v1/alerts")[1])["data"]["alerts"]
            assert served[0]["labels"]["instance"] == "a1" and served[0]["labels"]["cluster"] == "west"

            left = wait_for(lambda: len(active()) == 1 and active(), timeout=60, what="a1's alert resolved")
            assert left[0]["labels"]["instance"] == "a2"   # the other node's alert is still open
            time.sleep(3)                                   # a2 resends; a1 stays resolved
            assert [a["labels"]["instance"] for a in active()] == ["a2"]
        finally:
            for a in agents:
                a.stop()


def _rem(tmp: Path, url: str, unreachable: str = "act") -> tuple[Remediator, Path]:
    policy = load_policy_text(f"""
defaults: {{mode: enforce, cooldown: 0s, retry_interval: 5s}}
alertmanager: {{url: "{url}", silences: {{cache: 0s, unreachable: {unreachable}}}}}
routes:
  - matchers: ['alertname="DiskReadOnly"']
    steps:
      - {{action: marker, params: {{name: m}}}}
""")
    marks = tmp / "marks"
    marks.mkdir(exist_ok=True)
    rem = Remediator(policy, Journal(str(tmp / f"s-{unreachable}")), {"marker": Marker(MarkerConfig(dir=str(marks)))},
                     "enforce", labels={"instance": "a1", "cluster": "west"})
    return rem, marks


ALERT = Alert(labels={"alertname": "DiskReadOnly", "device": "nvme0n1"}, annotations={}, state="firing",
              active_at=0.0, value=1.0)


def _tick(rem: Remediator, now: float) -> None:
    rem.on_tick([ALERT], now)
    rem.close(10)


@pytest.mark.slow
def test_an_active_silence_holds_the_action_until_it_expires(tmp_path):
    with alertmanager(tmp_path) as url:
        other = am_silence(url, [{"name": "instance", "value": "a2", "isRegex": False}])   # another node's
        assert other
        sid = am_silence(url, [{"name": "alertname", "value": "Disk.*", "isRegex": True},
                               {"name": "instance", "value": "a1", "isRegex": False}])
        rem, marks = _rem(tmp_path, url)
        _tick(rem, 100.0)
        [row] = [e for e in rem.journal if e.op == "apply"]
        assert (row.status, row.reason) == ("skipped", "silenced") and sid in row.output
        assert not (marks / "m").exists()
        req = urllib.request.Request(f"{url}/api/v2/silence/{sid}", method="DELETE")
        urllib.request.urlopen(req, timeout=5).close()
        _tick(rem, 106.0)                   # retried after retry_interval: the silence is gone
        assert (marks / "m").exists()
        assert [e.status for e in rem.journal if e.op == "apply"][-1] == "succeeded"


def test_unreachable_alertmanager_acts_by_default_and_says_so(tmp_path):
    dead = f"http://127.0.0.1:{free_port()}"
    rem, marks = _rem(tmp_path, dead)
    _tick(rem, 100.0)
    [row] = [e for e in rem.journal if e.op == "apply"]
    assert row.status == "succeeded" and "alertmanager silences unknown" in row.output
    assert "unreachable: act" in row.output and (marks / "m").exists()


def test_unreachable_alertmanager_holds_when_configured(tmp_path):
    dead = f"http://127.0.0.1:{free_port()}"
    rem, marks = _rem(tmp_path, dead, unreachable="hold")
    _tick(rem, 100.0)
    [row] = [e for e in rem.journal if e.op == "apply"]
    assert (row.status, row.reason) == ("skipped", "silence_unknown") and not (marks / "m").exists()


def test_silence_matchers_follow_alertmanager():
    labels = {"alertname": "DiskReadOnly", "instance": "a1"}
    assert silence_matches([{"name": "instance", "value": "a1", "isRegex": False}], labels)
    assert not silence_matches([{"name": "instance", "value": "a", "isRegex": True}], labels)   # anchored
    assert silence_matches([{"name": "instance", "value": "a2", "isRegex": False, "isEqual": False}], labels)
    assert silence_matches([{"name": "missing", "value": "", "isRegex": False}], labels)
    assert not silence_matches([], labels)
