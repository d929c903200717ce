"""Remediator overhead: time from the tick whose alert fires to the action starting, and steady-state tick cost.

With a ``for: 0s`` rule the alert fires in the rule evaluation of the tick that brought the sample, and the
daemon calls ``Remediator.on_tick`` in that same tick; so the sample-to-action time is one tick at most plus
what this measures: ``on_tick`` deciding, journaling the intent (SQLite WAL, synchronous=FULL: one fsync) and
handing the action to a worker thread that calls ``apply``. Peer in the same run: one bare SQLite insert with
the same durability settings, the floor for "intent written before apply".

    python bench/remediation_latency.py [STATE_DIR]
"""

from __future__ import annotations

import os
import sqlite3
import statistics
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from agent.core.alerts import Alert
from agent.core.plugin import Outcome, ParamsModel, Plan
from agent.remediation.journal import Journal
from agent.remediation.policy import load_policy_text
from agent.remediation.remediator import Remediator


class ProbeParams(ParamsModel):
    gpu: str


class Probe:
    """Records when apply starts."""

    NAME = "probe"
    Params = ProbeParams

    def __init__(self) -> None:
        self.name = self.NAME
        self.started: dict[str, float] = {}
        self.event = threading.Event()

    def plan(self, alert, params):
        return Plan(action="probe", target=f"gpu/{params.gpu}", params=params.model_dump(), changes=["probe"],
                    reversible=False)

    def apply(self, plan):
        self.started[plan.params["gpu"]] = time.perf_counter()
        self.event.set()
        return Outcome("ok")

    def verify(self, plan):
        return True

    def revert(self, plan):
        return Outcome()

    def recover(self, entry):
        return "succeeded"


POLICY = """
defaults: {mode: enforce, cooldown: 0s, rate_limit: {per_action: null, total: null}, max_concurrent: 64,
           flap: {max_changes: 1000}}
routes:
  - matchers: ['alertname="GpuXid"']
    steps: [{action: probe, params: {gpu: "{{ $labels.gpu }}"}}]
"""


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(p * len(xs)))]


def main() -> None:
    state = sys.argv[1] if len(sys.argv) > 1 else tempfile.mkdtemp(prefix="nw-bench-")
    probe = Probe()
    rem = Remediator(load_policy_text(POLICY), Journal(state), {"probe": probe}, "enforce")
    n = 200
    decide, to_apply = [], []
    for i in range(n):
        a = Alert(labels={"alertname": "GpuXid", "gpu": str(i)}, annotations={}, state="firing", active_at=0.0,
                  value=79.0)
        probe.event.clear()
        t0 = time.perf_counter()
        rem.on_tick([a], float(i))
        t1 = time.perf_counter()
        probe.event.wait(5)
        decide.append((t1 - t0) * 1e3)
        to_apply.append((probe.started[str(i)] - t0) * 1e3)
        rem.close(5)

    firing = [Alert(labels={"alertname": "GpuXid", "gpu": str(i)}, annotations={}, state="firing", active_at=0.0,
                    value=79.0) for i in range(n)]
    steady = []
    for k in range(200):
        t0 = time.perf_counter()
        rem.on_tick(firing, float(n + k))
        steady.append((time.perf_counter() - t0) * 1e3)

    db = sqlite3.connect(os.path.join(state, "peer.sqlite"), isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.execute("CREATE TABLE t (a REAL, b TEXT)")
    peer = []
    for i in range(n):
        t0 = time.perf_counter()
        db.execute("INSERT INTO t VALUES (?, ?)", (i, "x" * 300))
        peer.append((time.perf_counter() - t0) * 1e3)

    pipe = pipeline(state)

    print(f"state dir: {state}")
    print(f"alert fires -> on_tick returns (decide + journal intent + spawn), ms: p50 {statistics.median(decide):.3f}"
          f"  p99 {pct(decide, 0.99):.3f}  max {max(decide):.3f}")
    print(f"alert fires -> plugin.apply starts, ms:                         p50 {statistics.median(to_apply):.3f}"
          f"  p99 {pct(to_apply, 0.99):.3f}  max {max(to_apply):.3f}")
    print(f"steady tick, {n} firing alerts already handled, ms:              p50 {statistics.median(steady):.3f}"
          f"  p99 {pct(steady, 0.99):.3f}")
    print(f"peer: one bare SQLite WAL+FULL insert, ms:                       p50 {statistics.median(peer):.3f}"
          f"  p99 {pct(peer, 0.99):.3f}")
    print(f"sample added -> rule (for: 0s) fires -> plugin.apply starts, ms: p50 {statistics.median(pipe):.3f}"
          f"  p99 {pct(pipe, 0.99):.3f}  (same tick: store.add + RuleEngine.evaluate + on_tick)")
    print("target: action start <= one tick + 10 ms of our own overhead")


def pipeline(state: str, n: int = 100) -> list[float]:
    """Store + RuleEngine (a ``for: 0s`` rule) + Remediator: from the sample to apply starting, same tick."""
    from agent.core.metrics import Sample
    from agent.engine.rules import RuleEngine
    from agent.engine.store import Store

    rules = os.path.join(state, "bench-rules.yml")
    with open(rules, "w") as f:
        f.write("groups:\n  - name: b\n    rules:\n      - alert: GpuXid\n        expr: bench_xid > 0\n"
                "        annotations: {summary: x}\n")
    engine = RuleEngine(None)
    engine.load([rules])
    store = Store(retention=900.0, interval=5.0)
    probe = Probe()
    rem = Remediator(load_policy_text(POLICY), Journal(os.path.join(state, "pipe")), {"probe": probe}, "enforce")
    out = []
    t = 1_700_000_000.0
    for i in range(n):
        gpu = str(i)
        for value in (0.0, 1.0):  # a quiet tick, then the tick whose sample makes the rule fire
            t += 5.0
            probe.event.clear()
            t0 = time.perf_counter()
            store.begin_tick(t)
            store.add([Sample("bench_xid", (("gpu", gpu),), value)])
            engine.evaluate(store, t)
            rem.on_tick(engine.alerts(), t)
        probe.event.wait(5)
        out.append((probe.started[gpu] - t0) * 1e3)
        rem.close(5)
    return out


if __name__ == "__main__":
    main()
