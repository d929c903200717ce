"""End to end: the agent restarts, the kernel log is replayed, and only new records count (no blind window)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from tests.agentproc import AgentProcess, fixture_config, sample_value, wait_for
from tests.conftest import REPO
from tests.trees import build_scaled_tree

pytestmark = pytest.mark.slow

SCENARIO = """\
name: two-gpus
description: GPU 4 sits on bus 9b
gpu_count: 8
gpus:
  4: {pci_bus_id: "00000000:9B:00.0"}
"""


def _record(seq: int, message: str) -> str:
    ts_us = int(time.clock_gettime(time.CLOCK_MONOTONIC) * 1e6)  # now, in the kernel's clock
    return f"3,{seq},{ts_us},-;{message}\n"


def _firing(agent: AgentProcess) -> dict[str, list[dict]]:
    _, body = agent.get("/api/v1/alerts")
    out: dict[str, list[dict]] = {}
    for a in json.loads(body)["data"]["alerts"]:
        if a["state"] == "firing":
            out.setdefault(a["labels"]["alertname"], []).append(a["labels"])
    return out


def test_restart_replays_kmsg_and_counts_only_new_records(tmp_path: Path, gpud_fixtures: Path) -> None:
    tree = build_scaled_tree(tmp_path / "tree", disks=1, nics=1, ib_ports=0)
    (tmp_path / "dev").mkdir()
    kmsg = tmp_path / "dev" / "kmsg"
    scenario = tmp_path / "gpus.yml"
    scenario.write_text(SCENARIO)
    cfg = fixture_config(tree)
    cfg["interval"] = "60s"  # one tick during each check below: "seen on the first tick" is what is asserted
    cfg["paths"]["devfs"] = str(tmp_path / "dev")
    cfg["rule_files"] = [str(REPO / "rules" / "gpu.yml")]
    cfg["collectors"]["gpu"] = {"enabled": True, "kmsg": True, "simulate": str(scenario)}
    xid79 = "NVRM: Xid (PCI:0000:9b:00): 79, pid='<unknown>', name=<unknown>, GPU has fallen off the bus."
    xid119 = next(line.split("] ", 1)[1] for line in (gpud_fixtures / "dmesg-with-xid-119.log").read_text()
                  .splitlines() if "NVRM: Xid" in line)
    history = (gpud_fixtures / "kmsg.1.log").read_text().rstrip("\n") + "\n"  # the fixture lacks a final newline
    kmsg.write_text(history + _record(5000, xid79))

    # First start (no saved position): the XID logged just before start is counted on the first tick.
    agent = AgentProcess(tmp_path, cfg).start()
    try:
        text = agent.metrics()
        assert sample_value(text, "nodewarden_gpu_xid_errors_total", gpu="4", xid="79") == 1
        assert sample_value(text, "nodewarden_kernel_problems_total", reason="GPUFallenOffBus") == 1
        assert sample_value(text, "nodewarden_kernel_condition", type="GPUFallenOffBus", reason="GPUFallenOffBus") == 1
        assert sample_value(text, "nodewarden_last_tick_timestamp_seconds") is not None
        assert "GpuFallenOffBus" in _firing(agent)
    finally:
        agent.stop()
    assert json.loads((tmp_path / "state" / "kmsg.json").read_text())["sequence"] == 5000

    # While the agent is down the kernel logs an XID 119. On restart the whole buffer is read again.
    with kmsg.open("a") as f:
        f.write(_record(5001, xid119))
    agent = AgentProcess(tmp_path, cfg).start()
    try:
        text = agent.metrics()  # the first tick
        assert sample_value(text, "nodewarden_gpu_xid_errors_total", gpu="4", xid="79") is None  # never twice
        assert sample_value(text, "nodewarden_gpu_xid_errors_total", gpu="4", xid="119") == 1
        assert sample_value(text, "nodewarden_kernel_problems_total", reason="GPUXid") == 1
        assert sample_value(text, "nodewarden_kernel_problems_total", reason="GPUFallenOffBus") == 0
        # the permanent condition survives the restart (same boot) without being counted again
        assert sample_value(text, "nodewarden_kernel_condition", type="GPUFallenOffBus", reason="GPUFallenOffBus") == 1
        firing = _firing(agent)
        assert [a["xid"] for a in firing.get("GpuGspError", [])] == ["119"]
        assert "GpuFallenOffBus" not in firing
        with kmsg.open("a") as f:  # a live record is read at once (counted on the next tick)
            f.write(_record(5002, "nvidia-nvswitch0: SXid (PCI:0000:c3:00.0): 20009, Non-fatal, Link 28 RX Short"))
        wait_for(lambda: agent.get("/api/v1/status")[0] == 200 and (tmp_path / "state" / "kmsg.json").exists()
                 and json.loads((tmp_path / "state" / "kmsg.json").read_text())["sequence"] == 5002,
                 what="live record read")
    finally:
        agent.stop()
