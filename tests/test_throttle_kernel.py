"""The throttle plugin against the real kernel, with real TCP traffic, in network namespaces made by the test.

Two namespaces joined by a veth pair (10.231.0.1/30 <-> 10.231.0.2/30, addresses that exist only inside
them); the plugin runs in the sender's namespace through tests/throttle_driver.py under ``ip netns exec``.
Every subprocess is bounded in time; the namespaces are deleted in ``finally``. Needs root, ``ip`` and ``tc``.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

from agent.remediation.journal import Journal
from remediations.throttle import Throttle
from tests.conftest import require_binary, require_root

DRIVER = str(Path(__file__).with_name("throttle_driver.py"))
CAP = 20_000_000                    # bit/s
PORT_CAPPED, PORT_FREE = 15001, 15002
A_ADDR, B_ADDR = "10.231.0.1", "10.231.0.2"
A2_ADDR, B2_ADDR = "10.231.0.5", "10.231.0.6"
A6_ADDR, B6_ADDR = "fd77:231::1", "fd77:231::2"       # unique local, inside the test's namespaces only


@dataclass
class Pair:
    """Namespace ``a`` (sender, shaped: va, va2) and ``b`` (receiver: vb, vb2)."""

    a: str
    b: str
    ip: str
    tc: str

    def run(self, ns: str, *argv: str, timeout: float = 30) -> str:
        cp = subprocess.run([self.ip, "netns", "exec", ns, *argv], capture_output=True, text=True,
                            timeout=timeout, check=False)
        assert cp.returncode == 0, f"{argv}: {cp.stdout}{cp.stderr}"
        return cp.stdout

    def driver(self, *args: str, timeout: float = 60) -> dict:
        out = self.run(self.a, sys.executable, DRIVER, *args, timeout=timeout)
        return json.loads(out.strip().splitlines()[-1])

    def tc_state(self, dev: str = "va") -> tuple[str, str, str]:
        """``tc qdisc/class/filter show dev`` in the sender's namespace (configuration, no statistics)."""
        return tuple(self.run(self.a, self.tc, what, "show", "dev", dev) for what in ("qdisc", "class", "filter"))


@pytest.fixture
def pair():
    require_root()
    ip, tc = require_binary("ip"), require_binary("tc")
    tag = f"nwt{os.getpid()}{uuid.uuid4().hex[:6]}"
    a, b = f"{tag}a", f"{tag}b"
    made = []

    def sh(*argv: str) -> None:
        subprocess.run([ip, *argv], check=True, timeout=20, capture_output=True)

    try:
        for ns in (a, b):
            sh("netns", "add", ns)
            made.append(ns)
            sh("-n", ns, "link", "set", "lo", "up")
        for va, vb, aa, ba in (("va", "vb", A_ADDR, B_ADDR), ("va2", "vb2", A2_ADDR, B2_ADDR)):
            sh("-n", a, "link", "add", va, "type", "veth", "peer", "name", vb, "netns", b)
            sh("-n", a, "addr", "add", f"{aa}/30", "dev", va)
            sh("-n", b, "addr", "add", f"{ba}/30", "dev", vb)
            sh("-n", a, "link", "set", va, "up")
            sh("-n", b, "link", "set", vb, "up")
        sh("-n", a, "addr", "add", f"{A6_ADDR}/64", "dev", "va", "nodad")
        sh("-n", b, "addr", "add", f"{B6_ADDR}/64", "dev", "vb", "nodad")
        yield Pair(a, b, ip, tc)
    finally:
        for ns in made:
            subprocess.run([ip, "netns", "del", ns], timeout=20, capture_output=True, check=False)


def _spawn(pair: Pair, ns: str, *args: str) -> subprocess.Popen:
    return subprocess.Popen([pair.ip, "netns", "exec", ns, sys.executable, DRIVER, *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def measure(pair: Pair, flows: dict[int, tuple[str, int]] | None = None, seconds: float = 2.0) -> dict[int, float]:
    """Goodput (bit/s) of simultaneous TCP flows a -> b: {port: (destination address, TOS byte)}."""
    flows = flows or {PORT_CAPPED: (B_ADDR, 0), PORT_FREE: (B_ADDR, 0)}
    warmup = 0.7
    receivers = {p: _spawn(pair, pair.b, "recv", str(p), str(warmup), str(seconds)) for p in flows}
    senders = []
    try:
        for r in receivers.values():
            assert json.loads(r.stdout.readline()) == {"ready": True}, r.stderr.read() if r.poll() else ""
        senders = [_spawn(pair, pair.a, "send", host, str(p), str(warmup + seconds + 0.5), str(tos))
                   for p, (host, tos) in flows.items()]
        for s in senders:
            _, err = s.communicate(timeout=30)
            assert s.returncode == 0, err
        out = {}
        for p, r in receivers.items():
            stdout, err = r.communicate(timeout=30)
            doc = json.loads(stdout.strip().splitlines()[-1])
            assert r.returncode == 0 and doc["complete"], err
            out[p] = doc["bits_per_second"]
        return out
    finally:
        for proc in [*receivers.values(), *senders]:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)


def test_cap_one_port_with_real_traffic_and_revert_byte_for_byte(pair):
    before = pair.tc_state()
    free = measure(pair)
    assert free[PORT_CAPPED] > 5 * CAP and free[PORT_FREE] > 5 * CAP, free   # the cap will be visible

    params = {"device": "va", "classes": [{"name": "bulk", "rate": "20Mbit", "protocol": "tcp",
                                            "dport": str(PORT_CAPPED)}]}
    applied = pair.driver("apply", json.dumps(params))
    assert applied["verified"], applied
    plan = applied["plan"]
    assert plan["target"] == "netdev/va" and plan["reversible"] and not plan["noop"]
    assert ["nodewarden_throttle_active", [["device", "va"], ["class", "bulk"]], 1.0] in applied["samples"]
    catalogue = {m.name: m.labels for m in Throttle.metrics}
    assert {s[0]: tuple(k for k, _ in s[1]) for s in applied["samples"]} == catalogue      # complete catalogue
    assert ["nodewarden_throttle_rate_bits_per_second", [["device", "va"], ["class", "bulk"]], 2e7] \
        in applied["samples"]
    qdisc, classes, filters = pair.tc_state()
    assert "qdisc htb 4e57: root" in qdisc and "default 0xffff" in qdisc
    assert "class htb 4e57:10 root" in classes and "rate 20Mbit ceil 20Mbit" in classes
    assert "flowid 4e57:10" in filters

    capped = measure(pair)
    print(f"unthrottled {free}, throttled {capped} (cap {CAP})")
    assert 0.85 * CAP <= capped[PORT_CAPPED] <= 1.15 * CAP, capped
    assert capped[PORT_FREE] > 3 * CAP, capped

    # applying the same plan again changes nothing; planning it again is a no-op plan
    again = pair.driver("apply-plan", json.dumps(plan))
    assert again["output"] == "va: already in place" and again["verified"]
    assert pair.driver("plan", json.dumps(params))["plan"]["noop"] is True
    assert pair.tc_state() == (qdisc, classes, filters)

    # a different throttle on the same interface is refused while ours is in place
    other = {"device": "va", "rate": "50Mbit", "dport": "9000"}
    assert pair.driver("plan", json.dumps(other))["refused"] == "already_throttled"

    reverted = pair.driver("revert", json.dumps(applied["plan"]))
    assert "back as before" in reverted["output"]
    assert pair.tc_state() == before                    # byte for byte: qdiscs, classes, filters
    assert "noqueue 0: root" in before[0]
    assert pair.driver("revert", json.dumps(applied["plan"]))["output"].endswith("nothing to do")   # idempotent
    after = measure(pair)
    assert after[PORT_CAPPED] > 5 * CAP, after


def test_ipv6_ports_and_dscp_with_real_traffic(pair):
    # IPv6 to one port, IPv4 marked AF11 (DSCP 10, plus an ECN bit) and IPv4 unmarked to the same port
    flows = {15011: (B6_ADDR, 0), 15012: (B_ADDR, 10 << 2 | 1), 15013: (B_ADDR, 0)}
    params = {"device": "va", "classes": [
        {"name": "v6", "rate": "20Mbit", "protocol": "tcp", "dport": "15011"},
        {"name": "af11", "rate": "20Mbit", "dscp": 10}]}
    applied = pair.driver("apply", json.dumps(params))
    assert applied["verified"], applied
    got = measure(pair, flows)
    print(f"throttled {got} (cap {CAP})")
    assert 0.85 * CAP <= got[15011] <= 1.15 * CAP, got
    assert 0.85 * CAP <= got[15012] <= 1.15 * CAP, got
    assert got[15013] > 3 * CAP, got
    pair.driver("revert", json.dumps(applied["plan"]))


@pytest.mark.parametrize("foreign", [["tbf", "rate", "1gbit", "burst", "32kb", "latency", "50ms"], ["pfifo_fast"]],
                         ids=["tbf", "explicit-pfifo_fast"])
def test_foreign_root_qdisc_is_left_alone(pair, foreign, tmp_path):
    params = {"device": "va", "rate": "20Mbit", "dport": "5001"}
    stale_plan = pair.driver("plan", json.dumps(params))["plan"]       # planned while the default was there
    pair.run(pair.a, pair.tc, "qdisc", "add", "dev", "va", "root", *foreign)
    before = pair.tc_state()
    refused = pair.driver("plan", json.dumps(params))
    assert refused["refused"] == "foreign_qdisc", refused
    assert re.search(rf"root qdisc {foreign[0]} [0-9a-f]+: that nodewarden did not create", refused["error"])
    raced = pair.driver("apply-plan", json.dumps(stale_plan))          # it appeared between plan and apply
    assert raced["refused"] == "foreign_qdisc", raced
    assert pair.driver("revert", json.dumps(stale_plan))["output"].endswith("nothing to do")
    assert pair.tc_state() == before
    # through the remediator: the action is not taken, the refusal is the error
    out = pair.driver("act", str(tmp_path / "state"), json.dumps(params))
    assert "foreign_qdisc" in out["error"]
    assert pair.tc_state() == before


def test_default_route_interface_is_refused_unless_allowed(pair):
    pair.run(pair.a, pair.ip, "route", "add", "default", "via", B_ADDR, "dev", "va")
    params = {"device": "va", "rate": "20Mbit", "dport": "5001"}
    refused = pair.driver("plan", json.dumps(params))
    assert refused["refused"] == "default_route", refused
    assert pair.driver("plan", json.dumps({**params, "allow_default_route": True}))["plan"]["changes"]
    # va2 carries no default route
    assert "plan" in pair.driver("plan", json.dumps({**params, "device": "va2"}))
    assert pair.driver("plan", json.dumps({**params, "device": "nosuch0"}))["refused"] == "no_such_device"
    # ... until it is enslaved to a bridge that does: shaping the port would shape the management path too
    a = pair.a
    pair.run(a, pair.ip, "link", "add", "br0", "type", "bridge")
    pair.run(a, pair.ip, "addr", "del", f"{A2_ADDR}/30", "dev", "va2")
    pair.run(a, pair.ip, "link", "set", "va2", "master", "br0")
    pair.run(a, pair.ip, "addr", "add", f"{A2_ADDR}/30", "dev", "br0")
    pair.run(a, pair.ip, "link", "set", "br0", "up")
    pair.run(a, pair.ip, "route", "add", "default", "via", B2_ADDR, "dev", "br0", "metric", "100")
    stacked = pair.driver("plan", json.dumps({**params, "device": "va2"}))
    assert stacked["refused"] == "default_route" and "stacked interface" in stacked["error"], stacked
    assert pair.driver("plan", json.dumps({**params, "device": "br0"}))["refused"] == "default_route"


def test_percentage_of_link_speed(pair):
    # veth reports 10000 Mb/s in sysfs (node_network_speed_bytes 1.25e9): 0.5 % is 50 Mbit/s
    plan = pair.driver("plan", json.dumps({"device": "va", "rate": "0.5%", "dport": "5001"}))["plan"]
    assert plan["params"]["tree"]["classes"][0]["rate_bits"] == 50_000_000
    floor = pair.driver("plan", json.dumps({"device": "va", "rate": "10kbit", "dport": "5001"}))["plan"]
    assert floor["params"]["tree"]["classes"][0]["rate_bits"] == 1_000_000      # the min_rate floor
    assert any("raised to the floor" in c for c in floor["changes"])


def _wait_for(cond, what: str, timeout: float = 30.0) -> None:
    end = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > end:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.05)


def test_kill9_between_apply_and_journal_then_recover_reconciles(pair, tmp_path):
    state, mark = tmp_path / "state", tmp_path / "applied"
    before_va, before_va2 = pair.tc_state("va"), pair.tc_state("va2")
    # an orphan: a nodewarden qdisc on va2 that no journal knows (e.g. a journal lost with its disk)
    assert pair.driver("apply", json.dumps({"device": "va2", "rate": "30Mbit", "dport": "6000"}))["verified"]
    assert "htb 4e57:" in pair.tc_state("va2")[0]

    params = {"device": "va", "rate": "20Mbit", "dport": str(PORT_CAPPED)}
    child = _spawn(pair, pair.a, "act", str(state), json.dumps(params), str(mark))
    try:
        _wait_for(mark.exists, "the change (marker file)")
        journal = Journal(str(state))
        assert [(e.op, e.status) for e in journal] == [("apply", "started")]
        journal.close()
        os.kill(child.pid, signal.SIGKILL)     # ip netns exec execs python: this is the driver itself
        child.wait(timeout=10)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(timeout=10)
    throttled = pair.tc_state("va")
    assert "htb 4e57:" in throttled[0]

    rec = pair.driver("recover", str(state))
    assert rec["kept"] == ["va"] and rec["removed"] == ["va2"] and rec["expired"] == [], rec
    assert [(r["op"], r["status"], r["reason"]) for r in rec["rows"]] == [("apply", "succeeded", "recovered")]
    assert pair.tc_state("va") == throttled               # the journaled throttle stays, untouched
    assert pair.tc_state("va2") == before_va2             # the orphan is gone
    assert ["nodewarden_throttle_active", [["device", "va"], ["class", "throttled"]], 1.0] in rec["samples"]

    # a second restart changes nothing (idempotent)
    again = pair.driver("recover", str(state))
    assert again["kept"] == ["va"] and again["removed"] == [] and pair.tc_state("va") == throttled

    # the throttle vanished behind nodewarden's back (a reboot, a hand-made `tc qdisc del`): put back
    pair.run(pair.a, pair.tc, "qdisc", "del", "dev", "va", "root")
    assert pair.tc_state("va") == before_va
    back = pair.driver("recover", str(state))
    assert back["reapplied"] == ["va"] and back["kept"] == [], back
    assert pair.tc_state("va") == throttled

    # past its duration (default 30m) the throttle is reverted through the journal, even while the alert fires
    late = pair.driver("recover", str(state), "3600")
    assert late["expired"] == [rec["rows"][0]["id"]], late
    assert [(r["op"], r["status"]) for r in late["rows"]] == [("apply", "reverted"), ("revert", "succeeded")]
    assert pair.tc_state("va") == before_va


POLICY = """
defaults:
  mode: enforce
routes:
  - name: network-congestion
    matchers: ['alertname="NetworkLinkSaturated"']
    revert_after: 1m
    steps:
      - action: throttle
        params:
          device: "{{ $labels.device }}"
          duration: 30m
          classes:
            - name: checkpoint
              rate: 20Mbit
              protocol: tcp
              dport: "15001"
        wait: 10m
      - action: page
"""


def test_policy_route_throttles_on_alert_and_reverts_on_resolve(pair, tmp_path):
    policy = tmp_path / "remediations.yml"
    policy.write_text(POLICY)
    before = pair.tc_state()
    out = pair.run(pair.a, sys.executable, DRIVER, "route", str(tmp_path / "state"), str(policy), timeout=90)
    firing, resolved = (json.loads(line) for line in out.strip().splitlines())
    assert [(r["op"], r["action"], r["status"], r["target"]) for r in firing["rows"]] == \
        [("apply", "throttle", "succeeded", "netdev/va")]
    assert "qdisc htb 4e57: root" in firing["qdisc"]
    assert ["nodewarden_throttle_active", [["device", "va"], ["class", "checkpoint"]], 1.0] in firing["samples"]
    assert [(r["op"], r["status"]) for r in resolved["rows"]] == [("apply", "reverted"), ("revert", "succeeded")]
    assert resolved["samples"] == []
    assert pair.tc_state() == before


def test_policy_route_skips_a_foreign_qdisc_with_the_reason(pair, tmp_path):
    policy = tmp_path / "remediations.yml"
    policy.write_text(POLICY)
    pair.run(pair.a, pair.tc, "qdisc", "add", "dev", "va", "root", "tbf", "rate", "1gbit", "burst", "32kb",
             "latency", "50ms")
    before = pair.tc_state()
    out = pair.run(pair.a, sys.executable, DRIVER, "route", str(tmp_path / "state"), str(policy), timeout=90)
    firing, resolved = (json.loads(line) for line in out.strip().splitlines())
    assert [(r["op"], r["action"], r["status"], r["reason"]) for r in firing["rows"]] == \
        [("apply", "throttle", "skipped", "refused:foreign_qdisc")]
    assert "foreign_qdisc" in firing["rows"][0]["output"]
    assert resolved["rows"] == firing["rows"] and firing["samples"] == []
    assert pair.tc_state() == before
