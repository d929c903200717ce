"""End to end: `nodewarden run --simulate ...` as a real process, GPU series checked through HTTP /metrics."""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import time
from pathlib import Path

import pytest

from tests.agentproc import NODEWARDEN, AgentProcess, fixture_config, sample_value, wait_for
from tests.conftest import require_binary
from tests.expo import parse_exposition
from tests.trees import build_scaled_tree

pytestmark = pytest.mark.slow


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    return build_scaled_tree(tmp_path / "tree")


def gpu_config(tree: Path, tmp_path: Path, **gpu) -> dict:
    """The fixture-tree config with the GPU collector on (kernel log read from an empty devfs)."""
    dev = tmp_path / "dev"
    dev.mkdir(exist_ok=True)
    cfg = fixture_config(tree)
    cfg["paths"]["devfs"] = str(dev)
    cfg["collectors"]["gpu"] = {"enabled": True, "kmsg": False, **gpu}
    return cfg


def series(text: str, name: str) -> dict[frozenset, float]:
    return {labels: v for (n, labels), v in parse_exposition(text).items() if n == name}


def by_gpu(text: str, name: str) -> dict[str, float]:
    return {dict(labels).get("gpu", ""): v for labels, v in series(text, name).items()
            if "GPU_I_ID" not in dict(labels)}


def _threads(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Threads:"):
            return int(line.split()[1])
    raise AssertionError("no Threads line")


def test_simulate_list_show_check(tmp_path):
    res = subprocess.run([*NODEWARDEN, "simulate", "--list"], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    names = [line.split()[0] for line in res.stdout.splitlines()]
    for required in ("h100-healthy", "h100-overheat", "h100-xid79-lost", "h100-ecc-dbe", "h100-row-remap",
                     "h100-not-supported", "h100-mig", "h100-hung-driver"):
        assert required in names
    shown = subprocess.run([*NODEWARDEN, "simulate", "--show", "h100-mig"], capture_output=True, text=True,
                           timeout=60)
    assert shown.returncode == 0 and "1g.10gb" in shown.stdout
    good = tmp_path / "mine.yml"
    good.write_text(shown.stdout)
    bad = tmp_path / "bad.yml"
    bad.write_text("name: bad\ndescription: x\ntimeline:\n  - {at: 5s, hang: [nvmlDeviceGetNothing]}\n")
    res = subprocess.run([*NODEWARDEN, "simulate", "--check", str(good), str(bad)], capture_output=True, text=True,
                         timeout=60)
    assert res.returncode == 2
    assert f"{good}: SUCCESS" in res.stdout
    assert f"{bad}:4:" in res.stderr and "nvmlDeviceGetNothing" in res.stderr


def test_run_simulate_healthy_exposes_dcgm_series(tmp_path, tree):
    cfg = gpu_config(tree, tmp_path)
    with AgentProcess(tmp_path, cfg, args=["--simulate", "h100-healthy"]) as agent:
        text = wait_for(lambda: (t := agent.metrics()) and len(by_gpu(t, "DCGM_FI_DEV_GPU_TEMP")) == 8 and t,
                        what="8 GPUs in /metrics")
    temps = series(text, "DCGM_FI_DEV_GPU_TEMP")
    for labels in temps:
        assert {k for k, _ in labels} == {"gpu", "UUID", "pci_bus_id", "device", "modelName", "hostname",
                                              "DCGM_FI_DRIVER_VERSION"}
        d = dict(labels)
        assert d["device"] == f"nvidia{d['gpu']}" and d["UUID"].startswith("GPU-")
        assert d["modelName"] == "NVIDIA H100 80GB HBM3"
    assert set(by_gpu(text, "DCGM_FI_DEV_GPU_TEMP").values()) == {52.0}
    assert set(by_gpu(text, "DCGM_FI_DEV_FB_USED").values()) == {71234.0}
    assert set(by_gpu(text, "nodewarden_gpu_up").values()) == {1.0}
    assert sample_value(text, "nodewarden_collector_success", collector="gpu") == 1
    assert sample_value(text, "nodewarden_gpu_collector_hung") == 0
    assert "# TYPE DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION counter" in text
    assert 'nodewarden_gpu_driver_info{driver_version="550.54.15"' in text


def test_promtool_findings_are_only_dcgm_compatibility_names(tmp_path, tree):
    """dcgm-exporter's names break promtool lints (camelCase `modelName`, counters without `_total`, `_COUNTER`).

    We keep them for dashboard compatibility, like node_exporter's own camelCase names; nothing else may
    be flagged (and our own GPU families only for the shared `modelName` label)."""
    promtool = require_binary("promtool")
    with AgentProcess(tmp_path, gpu_config(tree, tmp_path), args=["--simulate", "h100-mig"]) as agent:
        body = wait_for(lambda: (t := agent.metrics()) and "GPU_I_PROFILE" in t and t, what="MIG series")
    res = subprocess.run([promtool, "check", "metrics"], input=body.encode(), capture_output=True, timeout=30)
    findings = [ln for ln in (res.stdout + res.stderr).decode().splitlines() if ln.strip()]
    inherited = ("node_netstat_", "node_memory_")  # node_exporter's /proc field names (TcpExt_ListenDrops...)
    for f in findings:
        name = f.split(" ", 1)[0]
        if name.startswith(inherited):
            continue
        if name.startswith("nodewarden_gpu_"):  # carries dcgm's labels (modelName) so joins stay one-to-one
            assert "label names should be written in 'snake_case' not 'camelCase'" in f, f
            continue
        assert name.startswith("DCGM_FI_"), f
        assert "camelCase" in f or 'should have "_total" suffix' in f or "should not include type" in f, f


XID79 = """
name: xid79-fast
description: XID 79 on GPU 2 at 2 s, lost from 3 s
gpu_count: 8
timeline:
  - {at: 2s, gpu: 2, xid: 79}
  - {at: 3s, gpu: 2, lost: true}
"""


def test_run_simulate_xid79_then_lost(tmp_path, tree):
    scenario = tmp_path / "xid79.yml"
    scenario.write_text(XID79)
    with AgentProcess(tmp_path, gpu_config(tree, tmp_path, simulate=str(scenario))) as agent:
        text = wait_for(lambda: (t := agent.metrics()) and by_gpu(t, "nodewarden_gpu_up").get("2") == 0 and t,
                        what="GPU 2 lost")
        text = wait_for(lambda: (t := agent.metrics()) and "nodewarden_gpu_xid_errors_total" in t and t,
                        what="XID counter")
    assert sample_value(text, "nodewarden_gpu_xid_errors_total", gpu="2", xid="79") == 1
    assert sample_value(text, "DCGM_FI_DEV_XID_ERRORS", gpu="2") == 79
    assert [g for g, v in by_gpu(text, "nodewarden_gpu_up").items() if v == 1] == [str(i) for i in range(8) if i != 2]
    assert "2" not in by_gpu(text, "DCGM_FI_DEV_GPU_TEMP")
    assert sample_value(text, "nodewarden_gpu_xid_info", xid="79", action="drain_node") == 1
    assert sample_value(text, "nodewarden_collector_success", collector="gpu") == 1  # a lost GPU is data


HANG = """
name: hang-then-answer
description: every NVML call hangs from 3 s; the driver answers again at 12 s
gpu_count: 8
timeline:
  - {at: 3s, hang: [all]}
  - {at: 12s, hang: []}
"""


def test_hung_driver_keeps_loop_watchdog_and_threads_bounded_then_recovers(tmp_path, tree):
    scenario = tmp_path / "hang.yml"
    scenario.write_text(HANG)
    cfg = gpu_config(tree, tmp_path, simulate=str(scenario), call_timeout="300ms", max_abandoned_calls=2)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(tmp_path / "notify.sock"))
    sock.settimeout(0.5)
    env = {"NOTIFY_SOCKET": str(tmp_path / "notify.sock"), "WATCHDOG_USEC": "3000000"}
    try:
        with AgentProcess(tmp_path, cfg, env=env) as agent:
            wait_for(lambda: len(by_gpu(agent.metrics(), "nodewarden_gpu_up")) == 8, what="8 GPUs")
            threads_before = _threads(agent.proc.pid)
            wait_for(lambda: sample_value(agent.metrics(), "nodewarden_gpu_collector_hung") == 1, what="hung=1")
            text = agent.metrics()
            assert sample_value(text, "nodewarden_collector_success", collector="gpu") == 0
            t1 = sample_value(text, "nodewarden_last_tick_timestamp_seconds")
            watchdogs = 0
            deadline = time.monotonic() + 4  # several ticks while the driver is wedged
            while time.monotonic() < deadline:
                with contextlib.suppress(TimeoutError):
                    watchdogs += sock.recv(4096).decode().splitlines().count("WATCHDOG=1")
                assert _threads(agent.proc.pid) <= threads_before + 2  # max_abandoned_calls, no more
            text = agent.metrics()
            assert sample_value(text, "nodewarden_gpu_collector_hung") == 1
            assert sample_value(text, "nodewarden_gpu_abandoned_calls") <= 2
            assert sample_value(text, "nodewarden_last_tick_timestamp_seconds") >= t1 + 2  # the loop ticks on
            assert sample_value(text, "nodewarden_collector_success", collector="disk") == 1
            assert sample_value(text, "nodewarden_collector_success", collector="network") == 1
            assert "DCGM_FI_DEV_GPU_TEMP" not in text  # no stale values while hung
            assert agent.get("/healthz")[0] == 200
            assert watchdogs >= 1  # the watchdog keeps being sent
            wait_for(lambda: sample_value(agent.metrics(), "nodewarden_gpu_collector_hung") == 0, timeout=30,
                     what="recovery")
            text = wait_for(lambda: (t := agent.metrics()) and len(by_gpu(t, "DCGM_FI_DEV_GPU_TEMP")) == 8 and t,
                            what="GPU values back")
            assert sample_value(text, "nodewarden_collector_success", collector="gpu") == 1
            wait_for(lambda: sample_value(agent.metrics(), "nodewarden_gpu_abandoned_calls") == 0,
                     what="stuck workers gone")
    finally:
        sock.close()


XID119 = """
name: xid119
description: GPU 4 (bus 9b) raises XID 119 at 2 s through NVML
gpu_count: 8
gpus:
  4: {pci_bus_id: "00000000:9B:00.0"}
timeline:
  - {at: 2s, gpu: 4, xid: 119}
"""


def test_xid_counted_once_from_nvml_and_kernel_log(tmp_path, tree, gpud_fixtures):
    scenario = tmp_path / "xid119.yml"
    scenario.write_text(XID119)
    cfg = gpu_config(tree, tmp_path, simulate=str(scenario))
    cfg["collectors"]["gpu"]["kmsg"] = True
    kmsg = tmp_path / "dev" / "kmsg"
    kmsg.write_text((gpud_fixtures / "kmsg.1.log").read_text())
    line = next(ln for ln in (gpud_fixtures / "dmesg-with-xid-119.log").read_text().splitlines() if "Xid" in ln)
    with AgentProcess(tmp_path, cfg) as agent:
        wait_for(lambda: sample_value(agent.metrics(), "nodewarden_gpu_xid_events_seen_total", source="nvml") == 1,
                 what="NVML XID event")
        with kmsg.open("a") as f:  # the kernel's record of the same event
            f.write(f"3,9000,900000000,-;{line.split('] ', 1)[1]}\n")
        wait_for(lambda: sample_value(agent.metrics(), "nodewarden_gpu_xid_events_seen_total", source="kmsg") == 1,
                 what="kernel-log XID")
        text = agent.metrics()
    assert sample_value(text, "nodewarden_gpu_xid_errors_total", gpu="4", xid="119") == 1
    assert len(series(text, "nodewarden_gpu_xid_errors_total")) == 1


def test_sample_says_why_no_gpu_rows_and_shows_mig(tmp_path):
    res = subprocess.run([*NODEWARDEN, "sample", "--collector", "gpu"], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    import ctypes.util

    if not ctypes.util.find_library("nvidia-ml"):
        assert "gpu: nodata" in res.stdout and "no NVML: libnvidia-ml.so.1 not found" in res.stdout
    res = subprocess.run([*NODEWARDEN, "sample", "--collector", "gpu", "--simulate", "h100-mig", "--json"],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    doc = json.loads(res.stdout)["gpu"]
    assert doc["status"] == "ok"
    mig = [s["labels"] for s in doc["samples"] if s["name"] == "DCGM_FI_DEV_FB_USED" and "GPU_I_ID" in s["labels"]]
    assert sorted(m["GPU_I_ID"] for m in mig) == [str(i) for i in range(1, 8)]
    assert {m["GPU_I_PROFILE"] for m in mig} == {"1g.10gb"}


def test_no_driver_agent_serves_everything_else(tmp_path, tree):
    import ctypes.util

    if ctypes.util.find_library("nvidia-ml"):
        pytest.skip("an NVIDIA driver is installed here")
    with AgentProcess(tmp_path, gpu_config(tree, tmp_path)) as agent:  # real pynvml, no libnvidia-ml
        text = wait_for(lambda: (t := agent.metrics()) and 'collector="gpu"' in t and t, what="gpu collector ran")
    assert sample_value(text, "nodewarden_collector_success", collector="gpu") == 1  # "no GPUs" is not a failure
    assert sample_value(text, "nodewarden_collector_success", collector="disk") == 1
    assert "node_network_receive_bytes_total" in text
    assert "DCGM_FI_" not in text.replace("# HELP DCGM_FI_", "").replace("# TYPE DCGM_FI_", "")
