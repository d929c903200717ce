"""``rebalance`` with the slurm backend against a real single-node Slurm started by the tests.

The fixture runs munged + slurmctld + slurmd (Debian ``slurm-wlm`` + ``munge``) as root from a temp
slurm.conf (``proctrack/linuxproc``, loopback, free ports, state in tmp). Node ``nw1`` has a slurmd;
node ``nw2`` is configured but has none (a second node for the blast-radius test; it never registers).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from agent.core.alerts import Alert
from agent.core.discovery import load_remediations
from agent.remediation.journal import Journal
from agent.remediation.policy import load_policy_text
from agent.remediation.remediator import Remediator
from tests.conftest import free_port, require_binary, require_root

pytestmark = [pytest.mark.privileged, pytest.mark.slow]

SLURM_CONF = """\
ClusterName=nwtest
GresTypes=gpu
SlurmdParameters=config_overrides
SlurmctldHost=localhost(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={d_port}
AuthType=auth/munge
AuthInfo=socket={dir}/munge.sock
CredType=cred/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/builtin
StateSaveLocation={dir}/ctld
SlurmdSpoolDir={dir}/spool/%n
SlurmctldPidFile={dir}/slurmctld.pid
SlurmdPidFile={dir}/slurmd.%n.pid
SlurmUser=root
SlurmdUser=root
SlurmdTimeout=6
ReturnToService=2
MpiDefault=none
JobCompType=jobcomp/none
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
SlurmctldLogFile={dir}/slurmctld.log
SlurmdLogFile={dir}/slurmd.log
NodeName=nw1 NodeHostname=localhost NodeAddr=127.0.0.1 CPUs=2 RealMemory=100 Gres=gpu:2 State=UNKNOWN
NodeName=nw2 NodeHostname=localhost NodeAddr=127.0.0.1 Port={dead_port} CPUs=1 RealMemory=100 State=UNKNOWN
PartitionName=gpu Nodes=nw1,nw2 Default=YES MaxTime=INFINITE State=UP
"""


class SlurmCluster:
    """A running test cluster: its directory and an environment that points the clients at it."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.env = {**os.environ, "SLURM_CONF": str(root / "slurm.conf")}

    def run(self, *argv: str) -> str:
        cp = subprocess.run(argv, env=self.env, capture_output=True, text=True, timeout=20, check=True)
        return cp.stdout

    def reasons(self) -> dict[str, str]:
        out = self.run("sinfo", "--noheader", "--Node", "--format=%N|%E|%T")
        return {n: r for n, r, _ in (line.split("|") for line in out.splitlines())}

    def state(self, node: str) -> str:
        out = self.run("scontrol", "--oneliner", "show", "node", node)
        return out.split(" State=")[1].split()[0]

    def reset(self) -> None:
        self.run("scancel", "--full", "--quiet", "--user=root")
        for node in ("nw1", "nw2"):
            if "DRAIN" in self.state(node):
                self.run("scontrol", "update", f"NodeName={node}", "State=UNDRAIN")


def _stop(pidfile: Path) -> None:
    try:
        pid = int(pidfile.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return
    for sig, wait in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
        end = time.monotonic() + wait
        while time.monotonic() < end:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.1)


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    require_root()
    munged, slurmctld, slurmd = (require_binary(b) for b in ("munged", "slurmctld", "slurmd"))
    for b in ("scontrol", "sinfo", "squeue"):
        require_binary(b)
    root = tmp_path_factory.mktemp("slurm")
    os.chmod(root, 0o755)
    for d in ("ctld", "spool", "spool/nw1"):
        (root / d).mkdir()
    key = root / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o400)
    for i in (0, 1):   # GRES "device" files: enough for Slurm to hand out GPU indices 0 and 1
        (root / f"gpu{i}").touch()
    (root / "gres.conf").write_text(f"NodeName=nw1 Name=gpu File={root}/gpu[0-1]\n")
    (root / "slurm.conf").write_text(SLURM_CONF.format(dir=root, ctld_port=free_port(), d_port=free_port(),
                                                       dead_port=free_port()))
    cluster = SlurmCluster(root)
    pidfiles = [root / "slurmd.nw1.pid", root / "slurmctld.pid", root / "munged.pid"]
    try:
        subprocess.run([munged, "--force", f"--socket={root}/munge.sock", f"--key-file={key}",
                        f"--log-file={root}/munged.log", f"--pid-file={root}/munged.pid",
                        f"--seed-file={root}/munge.seed"], check=True, timeout=20)
        subprocess.run([slurmctld, "-f", str(root / "slurm.conf"), "-i"], env=cluster.env, check=True, timeout=20)
        subprocess.run([slurmd, "-f", str(root / "slurm.conf"), "-N", "nw1"], env=cluster.env, check=True,
                       timeout=20)
        end = time.monotonic() + 60
        while True:
            try:
                if cluster.state("nw1").startswith("IDLE"):
                    break
            except subprocess.CalledProcessError:
                pass
            if time.monotonic() > end:
                pytest.fail("slurm did not come up: " + (root / "slurmctld.log").read_text()[-2000:])
            time.sleep(0.5)
        yield cluster
    finally:
        with contextlib.suppress(Exception):
            cluster.run("scancel", "--quiet", "--user=root")
        for p in pidfiles:
            _stop(p)


POLICY = """
defaults:
  mode: {mode}
  cooldown: 0s
  blast_radius: {{max_nodes: 1, max_fraction: null}}
plugins:
  rebalance:
    backend: slurm
    node_name: {node}
routes:
  - name: gpu-xid
    matchers: ['alertname="GpuXid"', 'xid=~"79|48"']
    revert_after: 1m
    steps:
      - action: rebalance
        params:
          gpu: "{{{{ $labels.gpu }}}}"
          reason: "XID {{{{ $labels.xid }}}} on GPU {{{{ $labels.gpu }}}}"
"""

XID79 = Alert(labels={"alertname": "GpuXid", "xid": "79", "gpu": "0", "severity": "critical"}, annotations={},
              state="firing", active_at=0.0, value=79.0)


def remediator(tmp_path: Path, slurm: SlurmCluster, mode="enforce", node="nw1", monkeypatch=None) -> Remediator:
    policy = load_policy_text(POLICY.format(mode=mode, node=node), "remediations.yml")
    loaded = load_remediations(policy.plugins)
    assert "rebalance" in loaded.plugins, loaded.errors
    return Remediator(policy, Journal(str(tmp_path / node)), loaded.plugins, mode="enforce")


@pytest.fixture
def slurm_env(slurm, monkeypatch):
    monkeypatch.setenv("SLURM_CONF", slurm.env["SLURM_CONF"])
    slurm.reset()
    yield slurm
    slurm.reset()


def tick(rem: Remediator, alerts, now: float) -> None:
    rem.on_tick(alerts, now)
    rem.close(30.0)


def test_xid79_drains_in_enforce_and_resumes_after_revert_after(tmp_path, slurm_env):
    rem = remediator(tmp_path, slurm_env)
    tick(rem, [XID79], 1000.0)
    reasons = slurm_env.reasons()
    assert reasons["nw1"] == "nodewarden: XID 79 on GPU 0"
    assert "DRAIN" in slurm_env.state("nw1")
    sinfo_r = slurm_env.run("sinfo", "-R", "--noheader", "--format=%E|%N")
    assert "nodewarden: XID 79 on GPU 0|nw1" in sinfo_r.splitlines()
    [row] = [e for e in rem.journal if e.op == "apply"]
    assert row.status == "succeeded" and row.target == "node/nw1" and row.plan["undo"] == {"owned": True}

    tick(rem, [], 1010.0)                 # the alert resolves
    tick(rem, [], 1010.0 + 59)
    assert "DRAIN" in slurm_env.state("nw1")
    tick(rem, [], 1010.0 + 60)            # resolved for revert_after: undrained
    assert "DRAIN" not in slurm_env.state("nw1")
    assert slurm_env.reasons()["nw1"] == "none"
    assert [e.status for e in rem.journal if e.op == "apply"] == ["reverted"]


def test_observe_mode_only_journals(tmp_path, slurm_env):
    rem = remediator(tmp_path, slurm_env, mode="observe")
    tick(rem, [XID79], 1000.0)
    assert "DRAIN" not in slurm_env.state("nw1")
    [row] = list(rem.journal)
    assert row.status == "planned" and "drain Slurm node nw1" in row.plan["changes"][0]


def test_second_node_drain_refused_by_blast_radius(tmp_path, slurm_env):
    first = remediator(tmp_path, slurm_env, node="nw1")
    tick(first, [XID79], 1000.0)
    assert slurm_env.reasons()["nw1"].startswith("nodewarden:")
    second = remediator(tmp_path, slurm_env, node="nw2")    # the daemon on the other node
    tick(second, [XID79], 1000.0)
    assert not slurm_env.reasons()["nw2"].startswith("nodewarden:")
    [row] = [e for e in second.journal if e.op == "apply"]
    assert (row.status, row.reason) == ("skipped", "blast_radius")
    assert ("nodewarden_remediation_skipped_total", (("action", "rebalance"), ("reason", "blast_radius")), 1.0) \
        in second.samples()


def test_foreign_drain_is_left_alone(tmp_path, slurm_env):
    slurm_env.run("scontrol", "update", "NodeName=nw1", "State=DRAIN", "Reason=disk swap by ops")
    rem = remediator(tmp_path, slurm_env)
    entry = rem.act("rebalance", {"gpu": "0", "reason": "by hand"}, apply=True)
    assert entry.status == "succeeded" and "already drained by someone else" in entry.output
    rev = rem.revert_entry(entry.id)
    assert rev.status == "succeeded"
    assert slurm_env.reasons()["nw1"] == "disk swap by ops" and "DRAIN" in slurm_env.state("nw1")


def test_revert_leaves_a_drain_taken_over_by_someone_else(tmp_path, slurm_env):
    rem = remediator(tmp_path, slurm_env)
    entry = rem.act("rebalance", {"gpu": "0", "reason": "by hand"}, apply=True)
    assert slurm_env.reasons()["nw1"] == "nodewarden: by hand"
    slurm_env.run("scontrol", "update", "NodeName=nw1", "State=DRAIN", "Reason=ops took over")
    rem.revert_entry(entry.id)
    assert slurm_env.reasons()["nw1"] == "ops took over"


def test_act_cli_apply_and_revert(tmp_path, slurm_env, capsys):
    import argparse
    import json

    from agent.commands import act, history

    policy = tmp_path / "p.yml"
    policy.write_text("defaults: {blast_radius: {max_nodes: 1, max_fraction: null}}\n"
                      "plugins: {rebalance: {backend: slurm, node_name: nw1}}\nroutes: []\n")

    def run(module, argv):
        parser = argparse.ArgumentParser()
        module.add_arguments(parser)
        return module.main(parser.parse_args(argv))

    base = ["--state-dir", str(tmp_path / "s"), "--policy", str(policy)]
    assert run(act, [*base, "rebalance", "gpu=2", "reason=rehearsal", "--apply", "--json"]) == 0
    entry = json.loads(capsys.readouterr().out)
    assert entry["status"] == "succeeded" and slurm_env.reasons()["nw1"] == "nodewarden: rehearsal"
    assert run(act, [*base, "--revert", str(entry["id"])]) == 0
    assert "undrained nw1" in capsys.readouterr().out
    assert "DRAIN" not in slurm_env.state("nw1")
    assert run(history, ["--state-dir", str(tmp_path / "s"), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(r["op"], r["status"]) for r in rows] == [("apply", "reverted"), ("revert", "succeeded")]


def test_requeue_only_the_jobs_on_the_bad_gpu(tmp_path, slurm_env):
    end = time.monotonic() + 60   # an undrained node answers again at slurmctld's next ping
    while "NOT_RESPONDING" in slurm_env.state("nw1"):
        assert time.monotonic() < end, slurm_env.state("nw1")
        time.sleep(0.5)
    jobs = [slurm_env.run("sbatch", "--parsable", "--gres=gpu:1", "--mem=1", "--nodelist=nw1", f"--chdir={tmp_path}",
                          "--output=/dev/null", "--wrap", "sleep 120").strip() for _ in range(2)]
    end = time.monotonic() + 30
    while True:
        detail = slurm_env.run("scontrol", "--details", "--oneliner", "show", "job")
        if detail.count("JobState=RUNNING") == 2:
            break
        assert time.monotonic() < end, detail
        time.sleep(0.3)
    on_gpu1 = [j for j in jobs if f"JobId={j} " in detail.split("GRES=gpu:1(IDX:1)")[0].rsplit("\n", 1)[-1]]
    assert len(on_gpu1) == 1
    rem = remediator(tmp_path, slurm_env)
    entry = rem.act("rebalance", {"gpu": "1", "reason": "xid 79", "requeue": "true"}, apply=True)
    assert entry.status == "succeeded" and f"requeued job {on_gpu1[0]}" in entry.output
    restarts = {j: slurm_env.run("scontrol", "--oneliner", "show", "job", j).split(" Restarts=")[1].split()[0]
                for j in jobs}
    assert restarts == {j: ("1" if j == on_gpu1[0] else "0") for j in jobs}
    other = next(j for j in jobs if j != on_gpu1[0])
    assert slurm_env.run("squeue", "--noheader", f"--jobs={other}", "--format=%T").strip() == "RUNNING"


class _Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_xid79_scenario_fires_the_default_rule_and_the_default_route_drains(tmp_path, slurm_env):
    """Fake NVML scenario -> GPU collector -> store -> default GPU rules -> default policy (enforce) -> Slurm."""
    from agent.collectors import simulate
    from agent.collectors.fakenvml import FakeNvml
    from agent.collectors.gpu import GpuCollector, GpuConfig, PartialFailure
    from agent.core.paths import Paths
    from agent.engine.rules import RuleEngine
    from agent.engine.store import Store
    from tests.conftest import REPO

    clock = _Clock()
    (tmp_path / "dev").mkdir()
    collector = GpuCollector(GpuConfig(kmsg=False), Paths(devfs=str(tmp_path / "dev")), "nw1",
                             nvml_module=FakeNvml(simulate.load("h100-xid79-lost"), clock), clock=clock)
    text = (REPO / "rules" / "remediations.yml").read_text()
    text = text.replace("mode: observe ", "mode: enforce ").replace("# node_name: gpu-a1", "node_name: nw1")
    text = text.replace("max_fraction: 0.1", "max_fraction: null").replace("max_nodes: null", "max_nodes: 1")
    policy = load_policy_text(text, "remediations.yml")
    rem = Remediator(policy, Journal(str(tmp_path / "s")), load_remediations(policy.plugins).plugins, "enforce")
    store, engine = Store(retention=900.0, interval=5.0), RuleEngine(None)
    engine.load([str(REPO / "rules" / "gpu.yml")])
    t = 1_700_000_000.0

    def tick() -> None:
        nonlocal t
        t += 5.0
        try:
            samples = list(collector.collect())
        except PartialFailure as err:
            samples = err.samples
        store.begin_tick(t)
        store.add(samples)
        engine.evaluate(store, t)
        rem.on_tick(engine.alerts(), t)
        rem.close(30)

    try:
        for _ in range(125):          # > 10 minutes of healthy history (the XID rule needs the GPU seen before)
            tick()
        assert "DRAIN" not in slurm_env.state("nw1")
        clock.t += 10.5               # the scenario raises XID 79 on GPU 2 (NVML event thread)
        end = time.monotonic() + 30
        while "DRAIN" not in slurm_env.state("nw1"):
            assert time.monotonic() < end, [e.status for e in rem.journal]
            time.sleep(0.1)
            tick()
    finally:
        collector.close()
    assert slurm_env.reasons()["nw1"] == "nodewarden: GpuFallenOffBus gpu=2 xid=79"
    [row] = [e for e in rem.journal if e.status == "succeeded"]
    assert (row.alertname, row.route, row.target) == ("GpuFallenOffBus", "gpu-drain-node", "node/nw1")


DAEMON_RULES = """groups:
- name: thermal
  rules:
  - alert: GpuTooHot
    expr: DCGM_FI_DEV_GPU_TEMP > 85
    labels: {severity: critical}
"""

DAEMON_POLICY = """
defaults:
  mode: enforce
  cooldown: 0s
  blast_radius: {max_nodes: 1, max_fraction: null}
plugins:
  rebalance: {backend: slurm, node_name: nw1}
routes:
  - name: hot-gpu
    matchers: ['alertname="GpuTooHot"']
    steps:
      - action: rebalance
        params: {gpu: "{{ $labels.gpu }}", reason: "{{ $labels.alertname }} gpu={{ $labels.gpu }}"}
"""


@pytest.mark.parametrize("mode", ["enforce", "observe"])
def test_daemon_simulated_overheat_drains_real_slurm_node(tmp_path, slurm_env, mode):
    """`nodewarden run --simulate h100-overheat`: collector -> rule -> policy -> Slurm, through the daemon."""
    from tests.agentproc import NODEWARDEN, AgentProcess, sample_value, wait_for

    (tmp_path / "hot.rules.yml").write_text(DAEMON_RULES)
    (tmp_path / "policy.yml").write_text(DAEMON_POLICY)
    cfg = {"interval": "1s", "mode": mode, "rule_files": ["hot.rules.yml"], "remediation_policy": "policy.yml",
           "collectors": {"gpu": {"kmsg": False}}}
    with AgentProcess(tmp_path, cfg, args=["--simulate", "h100-overheat"]) as agent:
        history = [*NODEWARDEN, "history", "--json", "--state-dir", str(tmp_path / "state")]

        def journaled() -> list[dict]:
            res = subprocess.run(history, capture_output=True, text=True, timeout=30)
            return [e for e in json.loads(res.stdout or "[]") if e["action"] == "rebalance"]

        rows = wait_for(lambda: [e for e in journaled() if e["status"] in ("succeeded", "planned")], timeout=60,
                        what="rebalance journaled")
        assert rows[0]["alertname"] == "GpuTooHot" and rows[0]["target"] == "node/nw1"
        if mode == "enforce":
            assert rows[0]["status"] == "succeeded"
            assert slurm_env.reasons()["nw1"] == "nodewarden: GpuTooHot gpu=3"
            wait_for(lambda: sample_value(agent.metrics(), "nodewarden_remediations_total", action="rebalance",
                                          result="succeeded") == 1, what="remediation counted on /metrics")
        else:
            assert rows[0]["status"] == "planned"
            assert "DRAIN" not in slurm_env.state("nw1")
