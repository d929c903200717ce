"""End to end: `nodewarden run` as a real process, scraped by real Prometheus, checked by promtool."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from tests.agentproc import NODEWARDEN, AgentProcess, fixture_config, sample_value, wait_for, write_yaml
from tests.conftest import free_port, require_binary
from tests.trees import build_scaled_tree

PLUGINS = Path(__file__).parent / "plugins"


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """A big node's /proc and /sys (16 disks, 8 NICs, 8 IB ports)."""
    return build_scaled_tree(tmp_path / "tree")

# Names we keep verbatim from node_exporter for dashboard compatibility; promtool's camelCase lint flags them
# exactly as it flags node_exporter's own output. Every other lint finding fails the test.
INHERITED_CAMELCASE = ("node_netstat_", "node_memory_")  # node_exporter's /proc field names (TcpExt_ListenDrops...)


def test_real_prometheus_scrapes_agent(tmp_path, tree):
    prometheus = require_binary("prometheus")
    with AgentProcess(tmp_path, fixture_config(tree)) as agent:
        prom_port = free_port()
        prom_cfg = write_yaml(tmp_path / "prometheus.yml", {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "scrape_configs": [{"job_name": "nodewarden", "static_configs": [
                {"targets": [f"127.0.0.1:{agent.port}"]}]}],
        })
        prom_log = (tmp_path / "prometheus.log").open("wb")
        prom = subprocess.Popen(
            [prometheus, f"--config.file={prom_cfg}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{prom_port}"],
            stdout=prom_log, stderr=subprocess.STDOUT)
        try:
            def query(expr: str) -> list[dict]:
                url = f"http://127.0.0.1:{prom_port}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
                try:
                    with urllib.request.urlopen(url, timeout=3) as resp:
                        return json.load(resp)["data"]["result"]
                except OSError:
                    return []

            rx = wait_for(lambda: query("node_network_receive_bytes_total"), timeout=60,
                          what="node_network_receive_bytes_total in Prometheus")
            devices = {r["metric"]["device"] for r in rx}
            assert {f"ens{i}f0np0" for i in range(1, 9)} <= devices and "lo" not in devices, devices
            for r in rx:
                assert r["metric"]["job"] == "nodewarden"
                assert r["metric"]["instance"] == f"127.0.0.1:{agent.port}"
                assert set(r["metric"]) == {"__name__", "device", "instance", "job"}
            ok = wait_for(lambda: query("nodewarden_collector_success"), timeout=30, what="collector_success")
            by_collector = {r["metric"]["collector"]: float(r["value"][1]) for r in ok}
            for name in ("disk", "filesystem", "network", "netstat", "infiniband"):
                assert by_collector.get(name) == 1.0, by_collector
            up = query('up{job="nodewarden"}')
            assert up and up[0]["value"][1] == "1"
        finally:
            prom.terminate()
            prom.wait(10)
            prom_log.close()


def test_promtool_check_metrics_is_clean(tmp_path, tree):
    promtool = require_binary("promtool")
    with AgentProcess(tmp_path, fixture_config(tree)) as agent:
        body = agent.metrics()
    assert "node_disk_reads_completed_total" in body
    res = subprocess.run([promtool, "check", "metrics"], input=body.encode(), capture_output=True, timeout=30)
    findings = [ln for ln in (res.stdout + res.stderr).decode().splitlines() if ln.strip()]
    unexpected = [f for f in findings if not f.split(" ", 1)[0].startswith(INHERITED_CAMELCASE)]
    assert unexpected == [], unexpected
    for f in findings:
        assert "camelCase" in f


def test_healthz_index_and_read_only(tmp_path, tree):
    with AgentProcess(tmp_path, fixture_config(tree)) as agent:
        status, body = agent.get("/healthz")
        assert status == 200 and body.startswith(b"ok")
        status, body = agent.get("/")
        assert status == 200 and b'href="/metrics"' in body and b'href="/healthz"' in body
        req = urllib.request.Request(agent.url + "/metrics", data=b"x", method="POST")
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(req, timeout=5)
        assert err.value.code == 405
        gz = urllib.request.Request(agent.url + "/metrics", headers={"Accept-Encoding": "gzip"})
        with urllib.request.urlopen(gz, timeout=5) as resp:
            assert resp.headers["Content-Encoding"] == "gzip"
            import gzip

            assert b"nodewarden_build_info" in gzip.decompress(resp.read())


def test_sighup_with_broken_config_keeps_serving_and_sigterm_exits_0(tmp_path, tree):
    agent = AgentProcess(tmp_path, fixture_config(tree)).start()
    try:
        assert sample_value(agent.metrics(), "nodewarden_config_last_reload_successful") == 1
        good = agent.config_path.read_text()
        agent.config_path.write_text(good + "\nbogus_key: 1\n")
        agent.signal(signal.SIGHUP)
        wait_for(lambda: sample_value(agent.metrics(), "nodewarden_config_last_reload_successful") == 0,
                 what="reload failure reported")
        assert "reload_failed" in agent.log() and "bogus_key" in agent.log()
        assert sample_value(agent.metrics(), "node_disk_reads_completed_total", device="nvme0n1") is not None
        t1 = sample_value(agent.metrics(), "nodewarden_last_tick_timestamp_seconds")
        wait_for(lambda: sample_value(agent.metrics(), "nodewarden_last_tick_timestamp_seconds") > t1,
                 what="ticks continue after failed reload")
        # Fix the file and reload with a change that shows: network no longer exported.
        cfg = fixture_config(tree)
        cfg["collectors"]["network"] = {"export": False}
        write_yaml(agent.config_path, cfg)
        agent.signal(signal.SIGHUP)
        wait_for(lambda: sample_value(agent.metrics(), "nodewarden_config_last_reload_successful") == 1,
                 what="reload success")
        wait_for(lambda: "node_network_receive_bytes_total" not in agent.metrics(), what="network family hidden")
        assert sample_value(agent.metrics(), "nodewarden_collector_success", collector="network") == 1
    finally:
        t0 = time.monotonic()
        rc = agent.stop(timeout=10)
        elapsed = time.monotonic() - t0
    assert rc == 0, agent.log()
    assert elapsed < 5, f"SIGTERM took {elapsed:.1f}s"


def test_bad_config_exits_2_with_position(tmp_path):
    bad = tmp_path / "bad.yml"
    bad.write_text("interval: 5s\ncollectors:\n  disk:\n    device_exclud: '^loop'\nretention: 10x\n")
    res = subprocess.run([*NODEWARDEN, "run", "--config", str(bad)],
                         capture_output=True, text=True, timeout=30, env={**os.environ})
    assert res.returncode == 2
    assert f"{bad}:4:5: collectors.disk.device_exclud: unknown key 'device_exclud'" in res.stderr
    assert f"{bad}:5:12: retention: not a valid duration string: '10x'" in res.stderr
    res = subprocess.run([*NODEWARDEN, "check", "config", str(bad)],
                         capture_output=True, text=True, timeout=30)
    assert res.returncode == 2 and f"{bad}:4:5:" in res.stderr


def _notify_socket(tmp_path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(tmp_path / "notify.sock"))
    sock.settimeout(0.5)
    return sock


def _drain(sock: socket.socket, until: str, timeout: float = 15.0) -> list[str]:
    got: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            got.extend(sock.recv(4096).decode().splitlines())
        except TimeoutError:
            continue
        if until in got:
            return got
    raise AssertionError(f"{until} not received; got {got}")


def test_sd_notify_ready_watchdog_reload_stopping(tmp_path, tree):
    sock = _notify_socket(tmp_path)
    env = {"NOTIFY_SOCKET": str(tmp_path / "notify.sock"), "WATCHDOG_USEC": "2000000"}
    agent = AgentProcess(tmp_path, fixture_config(tree), env=env).start(wait=False)
    try:
        msgs = _drain(sock, "READY=1")
        assert not any(m.startswith("WATCHDOG") for m in msgs[: msgs.index("READY=1")])
        _drain(sock, "WATCHDOG=1")
        agent.signal(signal.SIGHUP)
        msgs = _drain(sock, "RELOADING=1")
        assert any(m.startswith("MONOTONIC_USEC=") for m in msgs)
        _drain(sock, "READY=1")
        agent.signal(signal.SIGTERM)
        _drain(sock, "STOPPING=1")
        assert agent.proc.wait(5) == 0
    finally:
        agent.stop()
        sock.close()


def test_hung_collector_does_not_stop_others_nor_metrics(tmp_path, tree):
    site = tmp_path / "site"
    site.mkdir()
    import sys

    sys.path.insert(0, str(PLUGINS))
    try:
        from nw_testplugins import install
    finally:
        sys.path.pop(0)
    install(str(site))
    flag = tmp_path / "hang.flag"
    env = {"PYTHONPATH": os.pathsep.join([str(site), str(PLUGINS), os.environ.get("PYTHONPATH", "")]),
           "NW_HANG_FILE": str(flag)}
    cfg = fixture_config(tree)
    cfg["collectors"]["hang"] = {"timeout": "300ms"}
    with AgentProcess(tmp_path, cfg, env=env) as agent:
        wait_for(lambda: sample_value(agent.metrics(), "nwtest_hang_calls_total") is not None, what="plugin sample")
        threads_before = _threads(agent.proc.pid)
        flag.touch()
        wait_for(lambda: sample_value(agent.metrics(), "nodewarden_collector_success", collector="hang") == 0,
                 what="hang reported as failed")
        t1 = sample_value(agent.metrics(), "nodewarden_last_tick_timestamp_seconds")
        time.sleep(3.5)  # several ticks while the plugin is stuck
        text = agent.metrics()
        assert sample_value(text, "nodewarden_last_tick_timestamp_seconds") >= t1 + 2
        assert sample_value(text, "nodewarden_collector_success", collector="disk") == 1
        assert sample_value(text, "nodewarden_collector_success", collector="network") == 1
        assert sample_value(text, "nwtest_hang_calls_total") is None  # no stale value exported
        assert agent.get("/healthz")[0] == 200
        assert _threads(agent.proc.pid) <= threads_before + 1  # no thread per tick for the stuck call
        assert re.search(r'"collector": "hang".*"status": "(timeout|hung)"', agent.log())
        flag.unlink()
        wait_for(lambda: sample_value(agent.metrics(), "nodewarden_collector_success", collector="hang") == 1,
                 what="recovery")
        assert "collector_recovered" in agent.log()


def _threads(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Threads:"):
            return int(line.split()[1])
    raise AssertionError("no Threads line")


def test_sample_prints_table_and_json(tmp_path, tree):
    cfg = write_yaml(tmp_path / "c.yml", fixture_config(tree))
    res = subprocess.run([*NODEWARDEN, "sample", "--config", str(cfg)],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert re.search(r"^network\s+node_network_receive_bytes_total\s+device=\"ens1f0np0\"\s+\d+", res.stdout, re.M)
    assert re.search(r"^disk: ok, \d+ samples", res.stdout, re.M)
    res = subprocess.run([*NODEWARDEN, "sample", "--json", "--config", str(cfg),
                          "--collector", "netstat"], capture_output=True, text=True, timeout=60)
    doc = json.loads(res.stdout)
    assert list(doc) == ["netstat"] and doc["netstat"]["status"] == "ok"
    names = {s["name"] for s in doc["netstat"]["samples"]}
    assert {"node_netstat_Tcp_RetransSegs", "node_netstat_Tcp_OutSegs", "node_netstat_TcpExt_ListenDrops"} <= names


def test_status_command_reports_running_agent(tmp_path, tree):
    with AgentProcess(tmp_path, fixture_config(tree)) as agent:
        res = subprocess.run([*NODEWARDEN, "status", "--url", agent.url], capture_output=True, text=True, timeout=30)
        assert res.returncode == 0, res.stderr
        assert "healthy" in res.stdout and "mode observe" in res.stdout
        assert re.search(r"alerts: \d+ firing, \d+ pending", res.stdout)
    res = subprocess.run([*NODEWARDEN, "status", "--url", agent.url], capture_output=True, text=True, timeout=30)
    assert res.returncode == 2 and "cannot reach" in res.stderr


def test_unknown_simulation_scenario_exits_2(tmp_path):
    res = subprocess.run([*NODEWARDEN, "run", "--simulate", "no-such-scenario", "--state-dir", str(tmp_path)],
                         capture_output=True, text=True, timeout=30)
    assert res.returncode == 2 and "unknown scenario 'no-such-scenario'" in res.stderr
