"""The SQLite journal: WAL, intent/outcome rows, retention bounds, sharing between processes."""

from __future__ import annotations

import sqlite3

import pytest

from agent.core.plugin import Plan
from agent.remediation.journal import FILENAME, Journal, JournalError

PLAN = Plan(action="rebalance", target="node/a", params={"node": "a"}, changes=["drain a"], reversible=True,
            scope="node")


def test_wal_and_full_sync(tmp_path):
    j = Journal(str(tmp_path))
    mode = sqlite3.connect(tmp_path / FILENAME).execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"
    assert j._db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL


def test_intent_then_outcome_round_trips_the_plan(tmp_path):
    now = [100.0]
    j = Journal(str(tmp_path), clock=lambda: now[0])
    eid = j.add(op="apply", action="rebalance", status="started", mode="enforce", target="node/a", plan=PLAN)
    assert [e.id for e in j.started()] == [eid]
    now[0] = 101.0
    j.finish(eid, "succeeded", "drained a", plan=PLAN.with_undo({"owned": True}))
    e = Journal(str(tmp_path)).get(eid)   # a second connection (another process) sees the committed row
    assert (e.status, e.output, e.ts, e.updated) == ("succeeded", "drained a", 100.0, 101.0)
    assert e.get_plan() == PLAN.with_undo({"owned": True})
    assert [a.id for a in j.active()] == [eid]
    rid = j.add(op="revert", action="rebalance", status="started", mode="enforce", parent=eid, plan=PLAN)
    j.mark_reverted(rid, eid, "undrained a")
    assert j.get(eid).status == "reverted" and j.get(rid).status == "succeeded" and j.active() == []


def test_retention_by_age_keeps_unfinished_and_active_rows(tmp_path):
    now = [1_000_000.0]
    j = Journal(str(tmp_path), retention=3600.0, clock=lambda: now[0])
    old_skip = j.add(op="apply", action="x", status="skipped", mode="enforce", reason="cooldown")
    old_started = j.add(op="apply", action="x", status="started", mode="enforce", plan=PLAN)
    old_active = j.add(op="apply", action="x", status="succeeded", mode="enforce", plan=PLAN)
    now[0] += 7200
    fresh = j.add(op="apply", action="x", status="planned", mode="observe")
    assert j.prune() == 1
    assert [e.id for e in j] == [old_started, old_active, fresh]
    assert j.get(old_skip) is None


def test_retention_by_count(tmp_path):
    j = Journal(str(tmp_path), max_rows=100)
    active = j.add(op="apply", action="x", status="succeeded", mode="enforce", plan=PLAN)
    done = j.add(op="apply", action="x", status="succeeded", mode="enforce",
                 plan=Plan(action="x", target="t", params={}, changes=[], reversible=False))
    for _ in range(250):
        j.add(op="apply", action="x", status="skipped", mode="enforce", reason="cooldown")
    j.prune()
    ids = [e.id for e in j]
    assert len(ids) == 101 and ids[0] == active and done not in ids and ids[-1] == 252


def test_output_is_bounded(tmp_path):
    j = Journal(str(tmp_path))
    eid = j.add(op="apply", action="x", status="failed", mode="enforce", output="x" * 100_000)
    assert len(j.get(eid).output) == 8192


def test_unwritable_state_dir_is_a_journal_error(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(JournalError, match="cannot open journal"):
        Journal(str(tmp_path / "file" / "sub"))
