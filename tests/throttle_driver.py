"""Test driver for the throttle tests, run inside a test-made network namespace with ``ip netns exec``.

Each command prints one JSON document on stdout (several, one per line, for ``route``)::

    recv PORT WARMUP WINDOW            TCP receiver: prints {"ready": true}, then the goodput (bit/s) it measured
    send HOST PORT SECONDS [TOS]       TCP sender: as fast as it can for SECONDS (IPv4 or IPv6 HOST, TOS byte)
    plan PARAMS                        the plugin's plan, or {"refused": reason, "error": text}
    apply PARAMS                       plan + apply + verify through the plugin; prints the plan with its undo
    apply-plan PLAN                    apply an earlier plan
    revert PLAN                        revert through the plugin
    act STATE PARAMS [MARK]            Remediator.act(..., apply=True); with MARK: write MARK after the change
                                       and hang (the test kills -9 it before the outcome is journaled)
    recover STATE [ADVANCE]            restart: Remediator.recover(), then Throttle.reconcile(journal.active()),
                                       reverting the expired entries; ADVANCE seconds are added to the clock
    route STATE POLICY                 a firing NetworkLinkSaturated alert through the policy, then resolved
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

if __name__ == "__main__":  # run as a script: make the checkout importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _out(doc) -> None:
    print(json.dumps(doc), flush=True)


def recv(port: int, warmup: float, window: float) -> None:
    """Accept one connection; goodput over [first byte + warmup, + window]."""
    srv = socket.socket(socket.AF_INET6)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)    # IPv4 and IPv6
    srv.bind(("::", port))
    srv.listen(1)
    srv.settimeout(20)
    _out({"ready": True})
    conn, _ = srv.accept()
    conn.settimeout(10)
    t0 = start = end = None
    counted = 0
    while True:
        data = conn.recv(1 << 20)
        now = time.monotonic()
        if not data:
            break
        if t0 is None:
            t0 = now
            start, end = t0 + warmup, t0 + warmup + window
        if start <= now <= end:
            counted += len(data)
        if now > end + 30:
            break
    conn.close()
    srv.close()
    complete = t0 is not None and time.monotonic() >= end
    _out({"bits_per_second": counted * 8 / window if complete else None, "complete": complete})


def send(host: str, port: int, seconds: float, tos: int = 0) -> None:
    """Send zeros as fast as possible for ``seconds``, with the given TOS / traffic class byte."""
    buf = b"\0" * (1 << 16)
    v6 = ":" in host
    with socket.socket(socket.AF_INET6 if v6 else socket.AF_INET) as s:
        s.setsockopt(*((socket.IPPROTO_IPV6, socket.IPV6_TCLASS) if v6 else (socket.IPPROTO_IP, socket.IP_TOS)), tos)
        s.settimeout(10)
        s.connect((host, port))
        end = time.monotonic() + seconds
        sent = 0
        while time.monotonic() < end:
            sent += s.send(buf)
    _out({"sent": sent})


def _plugin(hold_mark: str | None = None, clock=time.time):
    from remediations.throttle import Throttle

    if hold_mark is None:
        return Throttle(clock=clock)

    class Hold(Throttle):
        def apply(self, plan):
            out = super().apply(plan)
            with open(hold_mark, "w") as f:
                f.write("applied\n")
            time.sleep(120)   # the test kills -9 here: the change is made, the outcome not journaled
            return out

    return Hold(clock=clock)


def _tc(*argv: str) -> str:
    return subprocess.run(["tc", *argv], capture_output=True, text=True, timeout=10, check=True).stdout


def _rows(journal) -> list[dict]:
    from agent.remediation.journal import to_json

    return [to_json(e) for e in journal]


def main(argv: list[str]) -> int:
    cmd, args = argv[0], argv[1:]
    if cmd == "recv":
        recv(int(args[0]), float(args[1]), float(args[2]))
        return 0
    if cmd == "send":
        send(args[0], int(args[1]), float(args[2]), int(args[3]) if len(args) > 3 else 0)
        return 0

    import structlog

    structlog.configure(logger_factory=lambda *_: structlog.PrintLogger(sys.stderr))  # stdout is for JSON
    from agent.core.errors import RemediationError
    from agent.core.plugin import Plan
    from remediations.throttle import Params, Refused

    if cmd in ("plan", "apply", "apply-plan", "revert"):
        plugin = _plugin()
        try:
            if cmd == "revert":
                out = plugin.revert(Plan.from_dict(json.loads(args[0])))
                _out({"output": out.output})
                return 0
            if cmd == "apply-plan":
                plan = Plan.from_dict(json.loads(args[0]))
            else:
                plan = plugin.plan(None, Params.model_validate(json.loads(args[0])))
            if cmd in ("apply", "apply-plan"):
                outcome = plugin.apply(plan)
                plan = plan.with_undo(outcome.undo)
                _out({"plan": plan.to_dict(), "output": outcome.output, "verified": plugin.verify(plan),
                      "samples": [list(s) for s in plugin.samples()]})
            else:
                _out({"plan": plan.to_dict()})
        except Refused as err:
            _out({"refused": err.reason, "error": str(err)})
        return 0

    from agent.remediation.journal import Journal
    from agent.remediation.policy import Policy
    from agent.remediation.remediator import Remediator

    if cmd == "act":
        journal = Journal(args[0])
        plugin = _plugin(args[2] if len(args) > 2 else None)
        rem = Remediator(Policy(), journal, {"throttle": plugin}, mode="enforce")
        try:
            entry = rem.act("throttle", json.loads(args[1]), apply=True)
        except RemediationError as err:
            _out({"error": str(err)})
            return 0
        _out({"entry": entry.id, "status": entry.status, "rows": _rows(journal)})
        return 0
    if cmd == "recover":
        advance = float(args[1]) if len(args) > 1 else 0.0

        def clock() -> float:
            return time.time() + advance

        journal = Journal(args[0], clock=clock)
        plugin = _plugin(clock=clock)
        rem = Remediator(Policy(), journal, {"throttle": plugin}, mode="enforce", clock=clock)
        rec = rem.recover()["throttle"]  # recover() reconciles and reverts what expired
        rem.close(30.0)
        _out({"kept": rec.kept, "removed": rec.removed, "reapplied": rec.reapplied, "expired": rec.expired,
              "samples": [list(s) for s in plugin.samples()], "rows": _rows(journal)})
        return 0
    if cmd == "route":
        return route(args[0], args[1])
    raise SystemExit(f"unknown command {cmd!r}")


def route(state: str, policy_path: str) -> int:
    """A firing alert drives the route's throttle step; once resolved for revert_after it is reverted."""
    from agent.core.alerts import Alert
    from agent.core.discovery import classes, load_remediations
    from agent.remediation.journal import Journal
    from agent.remediation.policy import load_policy
    from agent.remediation.remediator import Remediator

    now = [1_000_000.0]
    policy = load_policy(policy_path, classes().plugins)
    loaded = load_remediations(policy.plugins)          # entry-point discovery, as the daemon does it
    journal = Journal(state, clock=lambda: now[0])
    rem = Remediator(policy, journal, loaded.plugins, mode="enforce", clock=lambda: now[0])
    alert = Alert(labels={"alertname": "NetworkLinkSaturated", "device": "va", "severity": "warning"},
                  annotations={}, state="firing", active_at=now[0] - 600, value=0.95, fired_at=now[0] - 300)

    def settle(alerts) -> None:
        end = time.monotonic() + 30
        while rem.in_progress() and time.monotonic() < end:
            time.sleep(0.02)
        now[0] += 1
        rem.on_tick(alerts, now[0])

    def report(phase: str) -> None:
        samples = [list(s) for p in loaded.plugins.values() for s in getattr(p, "samples", list)()]
        _out({"phase": phase, "rows": _rows(journal), "qdisc": _tc("qdisc", "show", "dev", "va"),
              "samples": samples})

    rem.on_tick([alert], now[0])
    settle([alert])
    report("firing")
    now[0] += 5
    rem.on_tick([], now[0])                               # resolved: revert_after starts
    now[0] += 120
    rem.on_tick([], now[0])                               # past revert_after: revert dispatched
    settle([])
    report("resolved")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
