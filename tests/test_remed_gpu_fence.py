"""``rebalance`` gpu-fence backend with a fake NVML module (hardware is the only thing faked)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from agent.core.alerts import Alert
from agent.core.discovery import build
from agent.remediation.journal import Journal
from agent.remediation.policy import load_policy_text
from agent.remediation.remediator import Remediator
from remediations.rebalance import Rebalance


class FakeNVML:
    """The pynvml calls gpu-fence uses: two GPUs, per-GPU compute mode and processes, a lost GPU."""

    NVML_COMPUTEMODE_DEFAULT, NVML_COMPUTEMODE_PROHIBITED, NVML_COMPUTEMODE_EXCLUSIVE_PROCESS = 0, 2, 3

    class NVMLError(Exception):
        pass

    def __init__(self):
        self.modes = {0: 3, 1: 0}
        self.procs = {0: [4242, 17], 1: []}
        self.lost = set()
        self.calls = []

    def nvmlInit(self):
        self.calls.append("init")

    def nvmlShutdown(self):
        self.calls.append("shutdown")

    def nvmlDeviceGetHandleByIndex(self, i):
        if i not in self.modes or i in self.lost:
            raise self.NVMLError("GPU is lost")
        return i

    def nvmlDeviceGetHandleByUUID(self, uuid):
        raise self.NVMLError("Not Found")

    def nvmlDeviceGetComputeMode(self, h):
        return self.modes[h]

    def nvmlDeviceSetComputeMode(self, h, mode):
        self.calls.append(("set", h, mode))
        self.modes[h] = mode

    def nvmlDeviceGetComputeRunningProcesses(self, h):
        return [SimpleNamespace(pid=p, usedGpuMemory=1) for p in self.procs[h]]


POLICY = """
defaults: {mode: enforce, cooldown: 0s}
plugins: {rebalance: {backend: gpu-fence, node_name: nw1}}
routes:
  - matchers: ['alertname="GpuXid"']
    revert_after: 5m
    steps: [{action: rebalance, params: {gpu: "{{ $labels.gpu }}", reason: "xid"}}]
"""


def make(tmp_path, nvml):
    policy = load_policy_text(POLICY)
    plugin = build(Rebalance, "rebalance", policy.plugins["rebalance"], nvml=nvml)
    return Remediator(policy, Journal(str(tmp_path)), {"rebalance": plugin}, "enforce")


def alert(gpu):
    return Alert(labels={"alertname": "GpuXid", "gpu": gpu}, annotations={}, state="firing", active_at=0, value=79.0)


def tick(rem, alerts, now):
    rem.on_tick(alerts, now)
    rem.close(10)


def test_fence_reports_users_and_restores_the_old_mode(tmp_path):
    nvml = FakeNVML()
    rem = make(tmp_path, nvml)
    tick(rem, [alert("0")], 100.0)
    assert nvml.modes == {0: 2, 1: 0}
    [row] = list(rem.journal)
    assert row.status == "succeeded" and row.target == "gpu/nw1/0"
    assert row.output == "GPU 0 compute mode EXCLUSIVE_PROCESS -> PROHIBITED; still used by pids 17, 4242"
    assert row.plan["undo"] == {"owned": True, "old_mode": 3, "pids": [17, 4242]}
    tick(rem, [], 110.0)
    tick(rem, [], 410.0)
    assert nvml.modes == {0: 3, 1: 0}                      # EXCLUSIVE_PROCESS again
    assert nvml.calls.count("init") == nvml.calls.count("shutdown")


def test_already_prohibited_gpu_is_left_alone(tmp_path):
    nvml = FakeNVML()
    nvml.modes[1] = 2
    rem = make(tmp_path, nvml)
    entry = rem.act("rebalance", {"gpu": "1"}, apply=True)
    assert "already PROHIBITED; left alone" in entry.output
    rem.revert_entry(entry.id)
    assert nvml.modes[1] == 2 and ("set", 1, 0) not in nvml.calls


def test_lost_gpu_fails_the_action_and_is_journaled(tmp_path):
    nvml = FakeNVML()
    nvml.lost.add(0)
    rem = make(tmp_path, nvml)
    tick(rem, [alert("0")], 100.0)
    [row] = list(rem.journal)
    assert (row.status, row.reason) == ("failed", "apply_failed") and "GPU is lost" in row.output


def test_fence_needs_a_gpu(tmp_path):
    rem = make(tmp_path, FakeNVML())
    tick(rem, [alert("")], 100.0)
    assert [(e.status, e.reason) for e in rem.journal] == [("skipped", "plan_failed")]


@pytest.mark.parametrize("gpu", ["0", "GPU-5e1f6a2b-7c3d-4e5f-8a9b-0c1d2e3f4a5b"])
def test_plan_is_pure(tmp_path, gpu):
    nvml = FakeNVML()
    plugin = build(Rebalance, "rebalance", {"backend": "gpu-fence", "node_name": "nw1"}, nvml=nvml)
    plan = plugin.plan(None, Rebalance.Params.model_validate({"gpu": gpu}))
    assert plan.scope == "gpu" and plan.reversible and nvml.calls == []
