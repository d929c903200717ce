"""``powercap`` and ``gpu-reset`` against the fake NVML: plan/clamp, apply, revert, expiry, reconcile, the
remediator's guard rails and journal, ``nodewarden act`` by hand, and kill -9 recovery."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agent.collectors import simulate
from agent.collectors.fakenvml import FakeNvml
from agent.core.alerts import Alert
from agent.core.errors import RemediationError
from agent.remediation.journal import Journal
from agent.remediation.policy import load_policy_text
from agent.remediation.remediator import Remediator
from remediations.gpureset import Config as ResetConfig
from remediations.gpureset import GpuReset
from remediations.powercap import Config, Params, PowerCap

ROOT = Path(__file__).resolve().parents[1]
SUPPORT = Path(__file__).with_name("powercap_support.py")


class Clock:
    def __init__(self, t: float = 1_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def fake(state: Path | None = None, scenario: str = "h100-healthy") -> FakeNvml:
    return FakeNvml(simulate.load(scenario), state_path=str(state) if state else "")


def limit(nv: FakeNvml, i: int) -> float:
    return nv.devices[i].values["power_limit_w"]


def test_plan_clamps_to_constraints_and_floor(tmp_path):
    nv = fake()
    pc = PowerCap(Config(node_name="n1"), nvml=nv, state_dir=str(tmp_path))
    p = pc.plan(None, Params(gpu="0"))  # default fraction 0.8 of the 700 W default
    assert p.params["caps"] == [{"gpu": "0", "uuid": nv.devices[0].spec.uuid, "limit_mw": 560000}]
    assert p.target == "gpu/n1/0" and p.reversible and not p.noop
    low = pc.plan(None, Params(gpu="0", limit_w=100))  # below the 200 W constraint and the 50 % floor
    assert low.params["caps"][0]["limit_mw"] == 350000
    assert "clamped" in low.changes[0]
    assert pc.plan(None, Params(gpu="0", limit_w=900)).noop  # not a cap: left alone
    assert len(pc.plan(None, Params(gpu="all", fraction=0.9)).params["caps"]) == 8
    assert pc.plan(None, Params(gpu="0", duration="10h")).params["expires_after"] == 7200  # max_duration
    with pytest.raises(ValueError):
        Params(gpu="0; rm -rf /")
    assert limit(nv, 0) == 700  # planning changed nothing


def test_apply_persists_first_revert_restores_and_respects_an_operator(tmp_path):
    nv = fake()
    pc = PowerCap(Config(node_name="n1"), nvml=nv, state_dir=str(tmp_path))
    plan = pc.plan(None, Params(gpu="all", fraction=0.75))
    out = pc.apply(plan)
    assert [limit(nv, i) for i in range(8)] == [525] * 8
    state = json.loads((tmp_path / "powercap.json").read_text())
    assert {v["previous_mw"] for v in state.values()} == {700000}
    assert pc.verify(plan)
    assert {s.name for s in pc.samples()} == {"nodewarden_powercap_active", "nodewarden_powercap_limit_watts",
                                             "nodewarden_powercap_previous_limit_watts"}
    nv.devices[3].values["power_limit_w"] = 600  # an operator changes GPU 3 meanwhile
    res = pc.revert(plan.with_undo(out.undo))
    assert [limit(nv, i) for i in range(8)] == [700, 700, 700, 600, 700, 700, 700, 700]
    assert "GPU 3: limit is 600 W, not ours" in res.output
    assert json.loads((tmp_path / "powercap.json").read_text()) == {}
    assert pc.samples() == []


def test_cap_on_a_cap_restores_the_original_and_no_permission_is_reported(tmp_path):
    nv = fake()
    pc = PowerCap(Config(node_name="n1"), nvml=nv, state_dir=str(tmp_path))
    first = pc.plan(None, Params(gpu="1", limit_w=600))
    pc.apply(first)
    second = pc.plan(None, Params(gpu="1", limit_w=450))
    out = pc.apply(second)
    assert limit(nv, 1) == 450
    pc.revert(second.with_undo(out.undo))
    assert limit(nv, 1) == 700  # the limit before nodewarden touched it, not 600
    nv.devices[2].not_supported.add("set_power_limit")
    with pytest.raises(RemediationError, match="cannot set the power limit"):
        pc.apply(pc.plan(None, Params(gpu="2")))
    assert limit(nv, 2) == 700 and "00000000" not in (tmp_path / "powercap.json").read_text()


def test_reconcile_restores_orphans_reapplies_lost_caps_reports_expired(tmp_path):
    clock = Clock(time.time())  # the journal stamps rows with wall time
    nv = fake(tmp_path / "hw.json")
    pc = PowerCap(Config(node_name="n1", max_duration="1h"), nvml=nv, state_dir=str(tmp_path), clock=clock)
    j = Journal(str(tmp_path / "j"))
    try:
        plan = pc.plan(None, Params(gpu="0"))
        pc.apply(plan)
        eid = j.add(op="apply", action="powercap", status="started", target=plan.target, mode="enforce",
                    fingerprint="f", alertname="A", route="r", plan=plan)
        j.finish(eid, "succeeded", "ok")
        orphan = pc.plan(None, Params(gpu="5"))
        pc.apply(orphan)  # a cap the journal does not know (e.g. its entry was pruned)
        nv.devices[0].values["power_limit_w"] = 700  # a driver reload reset GPU 0
        res = pc.reconcile(j.active())
        assert res.restored == [nv.devices[5].spec.uuid] and limit(nv, 5) == 700
        assert res.reapplied == [nv.devices[0].spec.uuid] and limit(nv, 0) == 560
        assert res.expired == []
        clock.t += 3601
        assert pc.expired(j.active()) == [eid]
    finally:
        j.close()


POLICY = """
defaults: {mode: enforce, cooldown: 1h}
plugins:
  powercap: {max_duration: 10m, node_name: n1}
routes:
  - name: hot
    matchers: ['alertname="GpuTemperatureHigh"']
    steps:
      - action: powercap
        params: {gpu: "{{ $labels.gpu }}", fraction: "0.7", reason: "hot gpu {{ $labels.gpu }}"}
        wait: 30m
      - action: page
"""


def _wait(rem: Remediator, clock: Clock, cond, what: str) -> None:
    end = time.monotonic() + 30
    while not cond():
        if time.monotonic() > end:
            pytest.fail(f"timed out waiting for {what}")
        rem.on_tick([], clock())
        time.sleep(0.02)


def test_through_the_remediator_applies_then_expires_at_max_duration(tmp_path):
    clock = Clock(time.time())  # the journal stamps rows with wall time
    nv = fake()
    policy = load_policy_text(POLICY)
    pc = PowerCap(Config(max_duration="10m", node_name="n1"), nvml=nv, state_dir=str(tmp_path), clock=clock)
    j = Journal(str(tmp_path))
    rem = Remediator(policy, j, {"powercap": pc}, mode="enforce", clock=clock)
    alert = Alert(labels={"alertname": "GpuTemperatureHigh", "gpu": "2"}, annotations={}, state="firing",
                  active_at=clock(), value=91.0)
    try:
        rem.on_tick([alert], clock())
        _wait(rem, clock, lambda: any(e.status == "succeeded" for e in j), "the cap")
        assert limit(nv, 2) == 490
        applied = next(e for e in j if e.op == "apply" and e.action == "powercap")
        assert applied.route == "hot" and "GPU 2" in applied.output
        clock.t += 601  # max_duration 10m, alert still firing
        rem.on_tick([alert], clock())
        _wait(rem, clock, lambda: any(e.op == "apply" and e.status == "reverted" for e in j), "expiry revert")
        assert limit(nv, 2) == 700
        assert next(e for e in j if e.op == "revert").reason == "expired"
    finally:
        rem.close(5.0)
        j.close()


def test_observe_mode_plans_only(tmp_path):
    clock = Clock()
    nv = fake()
    policy = load_policy_text(POLICY.replace("mode: enforce", "mode: observe"))
    rem = Remediator(policy, Journal(str(tmp_path)), {"powercap": PowerCap(Config(node_name="n1"), nvml=nv,
                                                                           state_dir=str(tmp_path))},
                     mode="observe", clock=clock)
    alert = Alert(labels={"alertname": "GpuTemperatureHigh", "gpu": "2"}, annotations={}, state="firing",
                  active_at=clock(), value=91.0)
    rem.on_tick([alert], clock())
    rows = list(rem.journal)
    assert [(e.action, e.status, e.mode) for e in rows if e.op == "apply"] == [("powercap", "planned", "observe")]
    assert limit(nv, 2) == 700 and nv.set_limit_calls == 0
    rem.close(2.0)
    rem.journal.close()


def _cli(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "NODEWARDEN_FAKE_NVML_STATE": str(tmp_path / "hw.json")}
    return subprocess.run([sys.executable, "-m", "agent.cli", "act", "--state-dir", str(tmp_path / "state"),
                           "--policy", str(ROOT / "rules" / "remediations.yml"), "--simulate", "h100-healthy",
                           *args], capture_output=True, text=True, timeout=60, env=env, cwd=ROOT)


def test_act_powercap_by_hand_apply_and_revert(tmp_path):
    planned = _cli(tmp_path, "powercap", "gpu=4", "limit_w=500")
    assert planned.returncode == 0, planned.stderr
    assert "GPU 4" in planned.stdout and "700 W -> 500 W" in planned.stdout and "planned" in planned.stdout
    done = _cli(tmp_path, "powercap", "gpu=4", "limit_w=500", "--apply", "--json")
    assert done.returncode == 0, done.stderr
    entry = json.loads(done.stdout)
    assert entry["status"] == "succeeded"
    hw = json.loads((tmp_path / "hw.json").read_text())
    uuid = simulate.load("h100-healthy").devices[4].uuid
    assert hw[uuid]["power_limit_w"] == 500
    back = _cli(tmp_path, "--revert", str(entry["id"]))
    assert back.returncode == 0, back.stdout + back.stderr
    assert json.loads((tmp_path / "hw.json").read_text())[uuid]["power_limit_w"] == 700


@pytest.mark.parametrize("phase", ["before", "after"])
def test_kill9_during_apply_recovers_and_revert_restores_the_original(tmp_path, phase):
    """Killed after the previous limit was persisted, before / after the limit changed: the restarted agent
    finishes the cap once, and its revert restores the limit from before the cap (the undo was never
    journaled; it comes from the state file)."""
    hw = tmp_path / "hw.json"
    child = subprocess.Popen([sys.executable, str(SUPPORT), str(tmp_path), phase], stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT)
    marker = tmp_path / f"in_set_{phase}"
    try:
        end = time.monotonic() + 60
        while not marker.exists():
            assert child.poll() is None, child.stdout.read().decode()
            assert time.monotonic() < end, "the child never reached the power-limit call"
            time.sleep(0.02)
        os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=10)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(timeout=10)
    uuid = simulate.load("h100-healthy").devices[1].uuid
    state = json.loads((tmp_path / "state" / "powercap.json").read_text())
    assert state[uuid]["previous_mw"] == 700000  # persisted before the change
    on_hw = json.loads(hw.read_text())[uuid]["power_limit_w"] if hw.exists() else 700
    assert on_hw == (490 if phase == "after" else 700)
    done = subprocess.run([sys.executable, str(SUPPORT), str(tmp_path), "recover"], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "limit after recover 490" in done.stdout
    assert "limit after revert 700" in done.stdout
    j = Journal(str(tmp_path / "state"))
    try:
        rows = [(e.op, e.status, e.reason) for e in j]
    finally:
        j.close()
    assert ("apply", "reverted", "recovered") in rows  # recovered as succeeded, then reverted by hand
    assert sum(1 for r in rows if r[0] == "apply") == 1  # the cap happened once, no second apply entry


# ---------------------------------------------------------------- gpu-reset

class Runner:
    def __init__(self, nv: FakeNvml, state: str) -> None:
        self.nv, self.state, self.calls = nv, state, []

    def __call__(self, argv, timeout):
        self.calls.append(list(argv))
        if argv[0] == "scontrol":
            out = f"NodeName=n1 Arch=x86_64 State={self.state} ThreadsPerCore=2"
            return subprocess.CompletedProcess(argv, 0, out, "")
        if argv[:2] == ["nvidia-smi", "--gpu-reset"]:
            bus = argv[3]
            idx = next(d.index for d in self.nv.devices if d.spec.pci_bus_id == bus)
            self.nv.reset_gpu(idx)
            return subprocess.CompletedProcess(argv, 0, f"GPU {bus} was successfully reset.", "")
        return subprocess.CompletedProcess(argv, 1, "", "unexpected")


def test_gpu_reset_only_when_drained_and_idle():
    nv = FakeNvml(simulate.load_text("""
name: reset
description: GPU 1 with a pending row remap and no processes, GPU 0 still used by pid 77
gpu_count: 2
gpus:
  0: {processes: [{pid: 77}]}
  1: {remap_pending: 1, power_limit_w: 500}
"""), state_path="")
    from remediations.gpureset import Params as ResetParams

    draining = Runner(nv, "MIXED+DRAIN")
    plugin = GpuReset(ResetConfig(node_name="n1"), nvml=nv, runner=draining)
    with pytest.raises(RemediationError) as err:
        plugin.plan(None, ResetParams(gpu="1"))
    assert err.value.reason == "not_drained"
    drained = Runner(nv, "IDLE+DRAIN")
    plugin = GpuReset(ResetConfig(node_name="n1"), nvml=nv, runner=drained)
    with pytest.raises(RemediationError) as err:
        plugin.plan(None, ResetParams(gpu="0"))
    assert err.value.reason == "gpu_busy" and "77" in str(err.value)
    plan = plugin.plan(None, ResetParams(gpu="1"))
    assert not plan.reversible
    out = plugin.apply(plan)
    assert drained.calls[-1] == ["nvidia-smi", "--gpu-reset", "-i", nv.devices[1].spec.pci_bus_id]
    assert "successfully reset" in out.output
    assert nv.resets == 1 and nv.devices[1].values["remap_pending"] == 0 and limit(nv, 1) == 700
    assert plugin.verify(plan)
    with pytest.raises(RemediationError):
        plugin.revert(plan)
