"""The blast-radius cap under concurrency against one real slurmctld that knows a fleet of 20 nodes.

Cheap checks first (the claim from 20 threads at once, count_unavailable, MAINT reservations, restart), then
the rehearsal: 20 real ``nodewarden run`` processes, one alert firing in all of them in the same wall-clock
second, several times over (see also docs/remediation.md, "Blast radius").
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from agent.core.alerts import Alert
from agent.core.discovery import load_remediations
from agent.core.plugin import Cap, Plan
from agent.remediation.journal import Journal
from agent.remediation.policy import load_policy_text
from agent.remediation.remediator import Remediator
from remediations.backends.slurm import SlurmBackend
from remediations.rebalance import SlurmSettings
from tests.fleet_support import Fleet, start_fleet

pytestmark = [pytest.mark.privileged, pytest.mark.slow]

COUNT = 20


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    yield from start_fleet(tmp_path_factory.mktemp("fleet"), COUNT)


@pytest.fixture
def cluster(fleet: Fleet, monkeypatch) -> Fleet:
    monkeypatch.setenv("SLURM_CONF", fleet.env["SLURM_CONF"])
    fleet.reset()
    yield fleet
    fleet.reset()


def plan(node: str) -> Plan:
    return Plan(action="rebalance", target=f"node/{node}", scope="node", reversible=True, changes=[],
                params={"backend": "slurm", "node": node, "reason": "nodewarden: leaf switch down"})


def test_claims_from_twenty_threads_at_once_hold_the_cap(cluster):
    backend = SlurmBackend(SlurmSettings())
    for cap in (1, 3):
        for _ in range(2):
            results: dict[str, tuple[str, str]] = {}
            barrier = threading.Barrier(COUNT)

            def claim(node: str, barrier=barrier, results=results, cap=cap) -> None:
                barrier.wait()
                results[node] = backend.claim(plan(node), Cap(max_nodes=cap))

            threads = [threading.Thread(target=claim, args=(n,)) for n in cluster.nodes]
            for t in threads:
                t.start()
            for t in threads:
                t.join(120)
            granted = sorted(n for n, (reason, _) in results.items() if not reason)
            assert len(results) == COUNT
            assert 1 <= len(granted) <= cap, results
            assert cluster.ours() == granted          # every refused claim undid its own drain
            assert {r for r, _ in results.values()} <= {"", "refused:blast_radius", "blast_radius"}
            for node in granted:
                backend.release(plan(node))
            assert cluster.ours() == []


def test_a_full_cap_refuses_without_draining(cluster):
    backend = SlurmBackend(SlurmSettings())
    assert backend.claim(plan("n01"), Cap(max_nodes=1))[0] == ""
    reason, detail = backend.claim(plan("n02"), Cap(max_nodes=1))
    assert reason == "blast_radius" and "n01" in detail
    assert cluster.ours() == ["n01"]
    assert backend.claim(plan("n01"), Cap(max_nodes=1))[0] == ""   # our own claim again: still ours


def test_count_unavailable_counts_nodes_down_for_other_reasons(cluster):
    cluster.run("scontrol", "update", "NodeName=n20", "State=DOWN", "Reason=psu failed")
    backend = SlurmBackend(SlurmSettings())
    assert backend.claim(plan("n01"), Cap(max_nodes=1, count_unavailable=True))[0] == "blast_radius"
    assert cluster.ours() == []
    assert backend.claim(plan("n01"), Cap(max_nodes=1))[0] == ""


POLICY = """
defaults:
  mode: enforce
  cooldown: 0s
  retry_interval: 1h
  blast_radius: {{max_nodes: 1, max_fraction: null}}
plugins:
  rebalance: {{backend: slurm, node_name: {node}}}
routes:
  - name: leaf
    matchers: ['alertname="LeafSwitchDown"']
    steps:
      - action: rebalance
        params: {{reason: "leaf switch down"}}
"""

LEAF = Alert(labels={"alertname": "LeafSwitchDown", "severity": "critical"}, annotations={}, state="firing",
             active_at=0.0, value=1.0)


def remediator(tmp: Path, node: str) -> Remediator:
    policy = load_policy_text(POLICY.format(node=node), "remediations.yml")
    return Remediator(policy, Journal(str(tmp / node)), load_remediations(policy.plugins).plugins, "enforce")


def test_maint_reservation_holds_the_action(tmp_path, cluster):
    cluster.run("scontrol", "create", "reservation", "ReservationName=nwmaint", "StartTime=now", "Duration=30",
                "Nodes=n03", "Users=root", "Flags=MAINT")
    rem = remediator(tmp_path, "n03")
    rem.on_tick([LEAF], 1000.0)
    rem.close(60)
    [row] = [e for e in rem.journal if e.op == "apply"]
    assert (row.status, row.reason) == ("skipped", "maintenance") and "nwmaint" in row.output
    assert cluster.ours() == []
    other = remediator(tmp_path, "n04")           # a node outside the reservation acts
    other.on_tick([LEAF], 1000.0)
    other.close(60)
    assert cluster.ours() == ["n04"]


def test_recover_rechecks_the_cap_for_an_interrupted_drain(tmp_path, cluster):
    """A crash between the claim's drain and its ranking: on restart the claim is ranked again, not assumed."""
    first = remediator(tmp_path, "n01")
    first.on_tick([LEAF], 1000.0)
    first.close(60)
    assert cluster.ours() == ["n01"]
    second = remediator(tmp_path, "n02")
    time.sleep(1.1)   # a later controller second than n01's claim
    # what a kill -9 right after the drain leaves: the node drained and the journal row still 'started'
    p = second.act("rebalance", {"reason": "leaf switch down"}, apply=False).get_plan()
    eid = second.journal.add(op="apply", action="rebalance", status="started", mode="enforce", target=p.target,
                             plan=p, route="leaf", fingerprint=LEAF.fingerprint, alertname="LeafSwitchDown")
    cluster.run("scontrol", "update", "NodeName=n02", "State=DRAIN", "Reason=nodewarden: leaf switch down")
    restarted = remediator(tmp_path, "n02")
    restarted.recover()
    row = restarted.journal.get(eid)
    assert (row.status, row.reason) == ("skipped", "refused:blast_radius") and "after restart" in row.output
    assert cluster.ours() == ["n01"]


# ---------------------------------------------------------------- the rehearsal: 20 real agents

CAP = 3
PERIOD, WINDOW, REPS = 30, 15, 3

FLEET_RULES = """groups:
- name: fleet
  rules:
  - alert: LeafSwitchDown
    expr: vector(time()) >= {t0} and vector(time()) < {end} and vector((time() - {t0}) % {period}) < {window}
    labels: {{severity: critical}}
"""

FLEET_POLICY = """
defaults:
  mode: enforce
  cooldown: 0s
  rate_limit: {{per_action: null, total: null}}
  flap: {{max_changes: 1000}}
  retry_interval: 1h
  blast_radius: {{max_nodes: {cap}, max_fraction: null}}
plugins:
  rebalance: {{backend: slurm, node_name: {node}}}
routes:
  - name: leaf
    matchers: ['alertname="LeafSwitchDown"']
    revert_after: 2s
    steps:
      - action: rebalance
        params: {{reason: "leaf switch down"}}
"""

LEAN = {name: {"enabled": False} for name in ("disk", "filesystem", "network", "netstat", "infiniband", "gpu")}


def _rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith("VmRSS:")) / 1024


@pytest.mark.timeout(600)   # 20 agent start-ups on 2 cores, three 30 s windows, the controller's teardown
def test_twenty_agents_firing_in_the_same_second_drain_at_most_max_nodes(tmp_path, cluster):
    import json
    import signal

    from tests.agentproc import AgentProcess, wait_for

    rules = tmp_path / "leaf.rules.yml"
    rules.write_text(FLEET_RULES.format(t0=4e9, end=4e9, period=PERIOD, window=WINDOW))   # never fires yet
    agents = []
    for node in cluster.nodes:
        d = tmp_path / node
        d.mkdir()
        (d / "policy.yml").write_text(FLEET_POLICY.format(cap=CAP, node=node))
        cfg = {"interval": "1s", "mode": "enforce", "hostname": node, "rule_files": [str(rules)],
               "remediation_policy": "policy.yml", "collectors": LEAN, "log": {"level": "warning"}}
        agents.append(AgentProcess(d, cfg, env={"SLURM_CONF": cluster.env["SLURM_CONF"]}))
    try:
        for a in agents:
            a.start(wait=False)
        for a in agents:
            a.wait_healthy(timeout=180)
        rss = sum(_rss_mb(a.proc.pid) for a in agents)
        assert rss < COUNT * 150, f"{rss:.0f} MB for {COUNT} lean agents"   # memory bound of the rehearsal
        t0 = int(time.time()) + 6
        rules.write_text(FLEET_RULES.format(t0=t0, end=t0 + REPS * PERIOD, period=PERIOD, window=WINDOW))
        for a in agents:
            a.signal(signal.SIGHUP)
        for a in agents:
            wait_for(lambda a=a: str(t0) in a.get("/api/v1/rules")[1].decode(), timeout=60, what="rules reloaded")
        assert time.time() < t0, "agents took too long to reload; the first window already began"
        journals = {a.tmp.name: Journal(str(a.tmp / "state")) for a in agents}

        def rows(start: float) -> dict[str, list]:
            return {n: [e for e in j.query("op = 'apply' AND ts >= ? AND ts < ?", (start - 1, start + PERIOD - 1))]
                    for n, j in journals.items()}

        report = []
        for k in range(REPS):
            start = t0 + k * PERIOD
            while time.time() < start + 2:
                time.sleep(0.2)

            def settled(start=start):
                got = rows(start)
                return got if all(r and all(e.status != "started" for e in r) for r in got.values()) else None

            got = wait_for(settled, timeout=WINDOW - 3, interval=0.3, what=f"every agent decided in window {k}")
            drained = cluster.ours()
            granted = sorted(n for n, r in got.items() if any(e.status == "succeeded" for e in r))
            assert 1 <= len(drained) <= CAP, (k, drained, got)
            assert drained == granted
            for n, r in got.items():
                assert len(r) == 1, (n, r)
                assert (r[0].status == "succeeded") or (r[0].status, r[0].reason) in (
                    ("skipped", "refused:blast_radius"), ("skipped", "blast_radius")), (n, r[0])
            fired = [r[0].ts for r in got.values()]
            report.append({"window": k, "drained": drained, "first_to_last_s": round(max(fired) - min(fired), 2)})
        wait_for(lambda: cluster.ours() == [], timeout=60, what="every drain reverted after the last window")
        print(json.dumps({"agents": len(agents), "rss_mb_total": round(rss), "windows": report}))
    finally:
        for a in agents:
            if a.proc is not None:
                a.stop()
