"""``nodewarden run --simulate NODE-SCENARIO --speed N``: the real daemon on an accelerated simulated node (HTTP
served, host collectors on the rendered trees, rules on accelerated time), and ``nodewarden simulate --run``."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.agentproc import AgentProcess, wait_for

ROOT = Path(__file__).resolve().parents[1]


def _config() -> dict:
    return {"interval": "5s", "rule_files": [str(ROOT / "rules" / f) for f in ("gpu.yml", "network.yml",
                                                                              "storage.yml")],
            "remediation_policy": str(ROOT / "rules" / "remediations.yml")}


def _firing(agent: AgentProcess) -> set[str]:
    status, body = agent.get("/api/v1/alerts")
    assert status == 200
    return {a["labels"]["alertname"] for a in json.loads(body)["data"]["alerts"] if a["state"] == "firing"}


def test_run_speed_fires_the_overheat_rule_in_seconds(tmp_path):
    with AgentProcess(tmp_path, _config(), args=["--simulate", "node-gpu-thermal", "--speed", "20"]) as agent:
        text = wait_for(lambda: (t := agent.metrics()) and "DCGM_FI_PROF_SM_ACTIVE{" in t
                        and "node_network_receive_bytes_total{" in t and t, what="GPM and host series", timeout=30)
        assert 'node_network_receive_bytes_total{device="eth1"}' in text  # host collectors read the simulation
        assert 'node_filesystem_avail_bytes{device="/dev/nvme1n1",fstype="xfs",mountpoint="/data"}' in text
        assert 'nodewarden_gpu_job_info{gpu="0"' in text and 'job_id="4711"' in text
        # GpuOverheating: 87 C for 2 minutes from 1 minute -> ~3 simulated minutes = ~9 s at 20x
        wait_for(lambda: "GpuOverheating" in _firing(agent), what="GpuOverheating firing", timeout=60)
        hist = subprocess.run([sys.executable, "-m", "agent.cli", "history", "--state-dir", str(tmp_path / "state"),
                               "--json"], capture_output=True, text=True, timeout=60, cwd=ROOT)
        assert '"powercap"' in hist.stdout and '"planned"' in hist.stdout, hist.stdout + hist.stderr


def test_run_speed_requires_simulate(tmp_path):
    res = subprocess.run([sys.executable, "-m", "agent.cli", "run", "--speed", "10", "--state-dir", str(tmp_path)],
                         capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert res.returncode == 2 and "--speed needs --simulate" in res.stderr


def test_simulate_run_reports_a_failed_expectation(tmp_path):
    bad = tmp_path / "bad.yml"
    bad.write_text("""
name: expects-too-much
description: a healthy node that is told to overheat
extends: node-healthy
duration: 2m
expect:
  - {alert: GpuOverheating, within: 1m}
  - {action: powercap, never: true}
""")
    res = subprocess.run([sys.executable, "-m", "agent.cli", "simulate", "--run", str(bad), "--json"],
                         capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert res.returncode == 1, res.stdout + res.stderr
    rep = json.loads(res.stdout)[0]
    assert rep["failures"] == ["alert GpuOverheating did not happen within 120s"]
    assert rep["ticks"] == 25 and rep["simulated_s"] == 120


def test_simulate_check_locates_bad_host_objects(tmp_path):
    bad = tmp_path / "bad.yml"
    bad.write_text("name: x\ndescription: y\nnode:\n  nic/eth0: {speeed_mbps: 1}\n"
                   "timeline:\n  - {at: 1m, host: {dsk/sda: {set: {reads: 1}}}}\n")
    res = subprocess.run([sys.executable, "-m", "agent.cli", "simulate", "--check", str(bad)], capture_output=True,
                         text=True, timeout=60, cwd=ROOT)
    assert res.returncode == 2
    assert f"{bad}:3:" in res.stderr or f"{bad}:4:" in res.stderr, res.stderr
    assert "unknown nic field 'speeed_mbps'" in res.stderr and "unknown host object 'dsk/sda'" in res.stderr
