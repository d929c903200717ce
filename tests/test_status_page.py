"""The status page at `/`: over HTTP from a real agent, in a real headless browser (Debian's chromium), and its
per-tick cache against a real store.

The browser test keeps its screenshot: under the test's tmp dir (pytest keeps the last three runs, e.g.
/tmp/pytest-of-root/pytest-current/test_status_page_in_a_real_br0/status.png), and also copied to
$NODEWARDEN_ARTIFACTS/status-page.png when that variable is set (CI keeps that directory).
"""

from __future__ import annotations

import base64
import html
import json
import os
import re
import shutil
import struct
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import bcrypt
import pytest

from agent.core.metrics import Sample
from agent.engine.store import Store
from agent.serve.status_page import CHARTS, StatusPage, rates, thin
from tests.agentproc import AgentProcess, fixture_config, wait_for, write_yaml
from tests.conftest import require_binary
from tests.trees import build_scaled_tree

REPO = Path(__file__).resolve().parents[1]
SCENARIO = """
name: lost-now
description: GPU 1 is lost from the first tick; GPU 0 heats up.
gpu_count: 2
driver_version: '550.<a1>&"x"'
gpu: {gpu_util: 90, fb_used_mib: 50000, temperature: 50, power_w: 550}
timeline:
  - {at: 0s, gpu: 1, lost: true}
  - {at: 2s, gpu: 0, set: {temperature: 70}}
"""
HOST = "gpu-a1"
HOSTILE = '550.<a1>&"x"'  # the simulated driver version, a label value of the alert: it must be escaped


@pytest.fixture
def sick_agent(tmp_path):
    """An agent on a fixture tree with one lost GPU: a firing GpuLost and a planned drain."""
    tree = build_scaled_tree(tmp_path / "tree", disks=2, nics=2, ib_ports=2)
    (tmp_path / "lost.yml").write_text(SCENARIO)
    cfg = fixture_config(tree, hostname=HOST, rule_files=[str(REPO / "rules" / "gpu.yml")],
                         remediation_policy=str(REPO / "rules" / "remediations.yml"))
    with AgentProcess(tmp_path, cfg, args=["--simulate", str(tmp_path / "lost.yml")]) as agent:
        def ready():
            status, body = agent.get("/")
            page = body.decode()
            return page if status == 200 and "GpuLost" in page and "rebalance" in page and \
                page.count("<polyline") >= 8 and "gpu=0 <b>70°C</b>" in page else None
        wait_for(ready, timeout=40, what="a status page with the alert, the plan and history")
        yield agent


def sections(page: str) -> dict[str, str]:
    """h2 id -> the HTML up to the next h2."""
    parts = re.split(r'<h2 id="([a-z]+)">', page)
    return {parts[i]: parts[i + 1] for i in range(1, len(parts) - 1, 2)}


def test_status_page_content_over_http(sick_agent):
    status, body = sick_agent.get("/")
    page = body.decode()
    assert status == 200
    # escaped, never raw: label values and names are data
    assert html.escape(HOSTILE, quote=True) in page and HOSTILE not in page and HOST in page
    assert "<script" not in page
    s = sections(page)
    assert set(s) >= {"alerts", "collectors", "remediations", "history"}
    firing = re.search(r'<tr class="bad"><td>firing</td><td><b>GpuLost</b>(.*?)</tr>', s["alerts"])
    assert firing and 'gpu="1"' in firing.group(1) and "is lost" in firing.group(1)
    for name in ("disk", "filesystem", "network", "netstat", "infiniband", "gpu"):
        assert re.search(rf'<tr class="ok"><td>{name}</td><td>(ok|nodata)</td>', s["collectors"]), name
    row = re.search(r"<tr[^>]*><td>\d+</td><td>[^<]*</td><td>apply rebalance</td><td>node/[^<]*</td>"
                    r"<td>planned</td><td>observe</td>", s["remediations"])
    assert row, s["remediations"]
    # history charts: GPU, disk, network and IB series from the store, as inline SVG
    for title in ("GPU temperature", "GPU power", "GPU utilisation", "Disk busy", "Network receive",
                  "InfiniBand receive"):
        fig = re.search(rf"<figure><figcaption>{title} .*?</figure>", s["history"])
        assert fig and "<svg" in fig.group(0) and "<polyline" in fig.group(0), title
    temp = re.search(r"<figure><figcaption>GPU temperature .*?</figure>", s["history"]).group(0)
    assert "gpu=0 <b>70°C</b>" in temp  # the legend's last value follows the scenario
    assert 'href="/metrics"' in page and 'href="/healthz"' in page
    # the same numbers as the JSON API
    alerts = json.loads(sick_agent.get("/api/v1/alerts")[1])["data"]["alerts"]
    assert sum(a["state"] == "firing" for a in alerts) == len(re.findall(r"<td>firing</td>", s["alerts"]))


def test_status_page_needs_the_same_auth_as_metrics(tmp_path):
    tree = build_scaled_tree(tmp_path / "tree", disks=1, nics=1, ib_ports=1)
    hashed = bcrypt.hashpw(b"s3cret", bcrypt.gensalt(rounds=4)).decode()
    web = write_yaml(tmp_path / "web.yml", {"basic_auth_users": {"sre": hashed}})
    good = {"Authorization": "Basic " + base64.b64encode(b"sre:s3cret").decode()}
    bad = {"Authorization": "Basic " + base64.b64encode(b"sre:wrong").decode()}
    agent = AgentProcess(tmp_path, fixture_config(tree, web_config_file=str(web))).start(wait=False)
    try:
        wait_for(lambda: _ok(agent, good), timeout=20, what="the agent answering with credentials")
        for path in ("/", "/metrics"):
            assert agent.get(path)[0] == 401
            assert agent.get(path, headers=bad)[0] == 401
            assert agent.get(path, headers=good)[0] == 200
        req = urllib.request.Request(agent.url + "/", data=b"x", method="POST", headers=good)
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(req, timeout=5)
        assert err.value.code == 405
    finally:
        agent.stop()


def _ok(agent, headers) -> bool:
    try:
        return agent.get("/healthz", headers=headers)[0] == 200
    except OSError:
        return False


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    return struct.unpack(">II", data[16:24])


def test_status_page_in_a_real_browser(sick_agent, tmp_path):
    chromium = require_binary("chromium")
    base = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
            "--no-first-run", "--hide-scrollbars", f"--user-data-dir={tmp_path / 'profile'}"]
    url = sick_agent.url + "/"
    dom = subprocess.run([*base, "--dump-dom", url], capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    # what the browser built from our HTML: the sections, the firing alert, SVG charts with their lines
    assert "<title>nodewarden" in dom.stdout and "(1 firing)" in dom.stdout
    assert re.search(r"<td>firing</td><td><b>GpuLost</b>", dom.stdout)
    assert len(re.findall(r"<svg[^>]*class=\"chart\"", dom.stdout)) >= 6
    shot = tmp_path / "status.png"
    proc = subprocess.run([*base, f"--screenshot={shot}", "--window-size=1280,1800", url], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0 and shot.exists(), proc.stderr[-2000:]
    data = shot.read_bytes()
    assert png_size(data) == (1280, 1800)
    assert len(data) > 20_000  # text, tables and charts; a blank page compresses to a few kB
    if os.environ.get("NODEWARDEN_ARTIFACTS"):
        dest = Path(os.environ["NODEWARDEN_ARTIFACTS"])
        dest.mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, dest / "status-page.png")


# -- pure parts -----------------------------------------------------------------------------------------------
class Source:
    """A PageSource over a real store, counting renders."""

    def __init__(self) -> None:
        self.store = Store(retention=120, interval=1)
        self.calls = 0

    def status(self):
        self.calls += 1
        return {"healthy": True, "health": "ok", "mode": "observe", "collectors": {}, "failed_collectors": {}}

    def api_alerts(self):
        return {"data": {"alerts": []}}

    def recent_remediations(self, limit):
        return []

    def hostname(self):
        return "n1"


def test_page_is_rendered_once_per_tick_and_charts_rates():
    src = Source()
    page = StatusPage(src)
    for t in range(10):
        src.store.begin_tick(1000.0 + t)
        src.store.add([Sample("node_network_receive_bytes_total", (("device", "eth0"),), 1000.0 * t),
                       Sample("DCGM_FI_DEV_GPU_TEMP", (("gpu", "0"),), 40.0 + t)])
    first = page.response()[2]
    assert page.response()[2] is first and src.calls == 1  # same tick: cached bytes
    src.store.begin_tick(1010.0)
    src.store.add([Sample("node_network_receive_bytes_total", (("device", "eth0"),), 10_000.0)])
    body = page.response()[2].decode()
    assert src.calls == 2
    assert "device=eth0 <b>1kB/s</b>" in body  # counter -> per-second rate
    assert "gpu=0 <b>49°C</b>" in body  # a gauge's history: its newest sample in the window
    assert "No data for: GPU power, GPU utilisation" in body


def test_rates_and_thinning():
    assert rates([(0, 0), (1, 10), (3, 30), (4, 5)]) == [(1, 10.0), (3, 10.0), (4, 5.0)]  # reset counts from 0
    pts = [(float(i), float(i)) for i in range(1000)]
    kept = thin(pts, 120)
    assert len(kept) == 120 and kept[0] == pts[0] and kept[-1] == pts[-1]
    assert {c.metric for c in CHARTS} <= set(catalogue_names())


def catalogue_names() -> set[str]:
    from agent.catalogue import sources

    return {spec.name for _, specs in sources() for spec in specs}
