"""The ``page`` step pushes to a real Alertmanager (Debian ``prometheus-alertmanager``) through its v2 API."""

from __future__ import annotations

import json
import subprocess
import time
import urllib.request

import pytest

from agent.core.alerts import Alert
from agent.remediation.journal import Journal
from agent.remediation.policy import load_policy_text
from agent.remediation.remediator import Remediator
from tests.conftest import free_port, require_binary
from tests.remed_support import Marker, MarkerConfig

pytestmark = pytest.mark.slow

AM_CONFIG = """
route: {receiver: "null", group_wait: 1s}
receivers: [{name: "null"}]
"""


@pytest.fixture
def alertmanager(tmp_path):
    binary = require_binary("prometheus-alertmanager")
    (tmp_path / "am.yml").write_text(AM_CONFIG)
    port = free_port()
    proc = subprocess.Popen([binary, f"--config.file={tmp_path / 'am.yml'}", f"--storage.path={tmp_path / 'am'}",
                             f"--web.listen-address=127.0.0.1:{port}", "--cluster.listen-address="],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        end = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(url + "/-/ready", timeout=2).close()
                break
            except OSError:
                if time.monotonic() > end or proc.poll() is not None:
                    pytest.fail("alertmanager did not start")
                time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def am_alerts(url: str, active: bool = True) -> list[dict]:
    q = "active=true&silenced=false&inhibited=false" if active else "active=false&unprocessed=false"
    with urllib.request.urlopen(f"{url}/api/v2/alerts?{q}", timeout=5) as resp:
        return json.load(resp)


def test_exhausted_escalation_pages_alertmanager_and_resolves(tmp_path, alertmanager):
    policy = load_policy_text(f"""
defaults: {{mode: enforce, cooldown: 0s}}
alertmanager: {{url: "{alertmanager}"}}
routes:
  - matchers: ['alertname="GpuXid"']
    steps:
      - {{action: marker, params: {{name: m, fail: "true"}}, wait: 1m}}
      - action: page
""")
    rem = Remediator(policy, Journal(str(tmp_path / "s")), {"marker": Marker(MarkerConfig(dir=str(tmp_path)))},
                     "enforce")
    a = Alert(labels={"alertname": "GpuXid", "gpu": "0", "xid": "79"}, annotations={"summary": "GPU 0 XID 79"},
              state="firing", active_at=time.time(), value=79.0)
    now = time.time()
    rem.on_tick([a], now)
    rem.close(10)
    rem.on_tick([a], now + 5)     # the failed step escalates to the page
    rem.close(10)
    [page] = [e for e in rem.journal if e.op == "page"]
    assert page.status == "succeeded" and page.output == f"pushed to {alertmanager}"
    assert rem.exhausted == {a.fingerprint}
    end = time.monotonic() + 20
    while not (got := am_alerts(alertmanager)):
        assert time.monotonic() < end, "alert never showed up in alertmanager"
        time.sleep(0.2)
    [pushed] = got
    assert pushed["labels"] == {"alertname": "GpuXid", "gpu": "0", "xid": "79", "remediation": "exhausted"}
    assert pushed["annotations"] == {"summary": "GPU 0 XID 79"}

    rem.on_tick([], now + 10)     # resolved: pushed again with endsAt, and no longer exhausted
    rem.close(10)
    assert rem.exhausted == set()
    end = time.monotonic() + 20
    while am_alerts(alertmanager):
        assert time.monotonic() < end, "alert never resolved in alertmanager"
        time.sleep(0.2)
