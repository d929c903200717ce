"""The remediation journal: one SQLite database (WAL) in the state dir, one row per decision.

Statuses: ``planned`` (observe mode: would do), ``skipped`` (reason = the guard rail), ``started`` (intent,
committed before apply), ``succeeded`` / ``failed`` (outcome, committed after), ``reverted`` (an applied
action that a later ``revert`` row undid). Commits use ``synchronous=FULL`` so an intent survives a power
loss, not only a ``kill -9``.

Retention: rows older than ``retention`` seconds and rows beyond the newest ``max_rows`` are deleted, except
rows still ``started`` and applied reversible actions not yet reverted (needed for recovery and revert), so
the file holds at most ``max_rows`` rows plus the actions currently in effect.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from collections.abc import Iterator, Mapping
from typing import Any

from agent.core.errors import NodewardenError
from agent.core.plugin import Entry, Plan

FILENAME = "remediations.sqlite"
DEFAULT_RETENTION = 90 * 86400.0
DEFAULT_MAX_ROWS = 100_000
_PRUNE_EVERY = 500

_SCHEMA = """
CREATE TABLE IF NOT EXISTS entries (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    ts REAL NOT NULL,
    updated REAL NOT NULL,
    op TEXT NOT NULL,
    action TEXT NOT NULL,
    target TEXT NOT NULL DEFAULT '',
    status TEXT NOT NULL,
    mode TEXT NOT NULL,
    reason TEXT NOT NULL DEFAULT '',
    fingerprint TEXT NOT NULL DEFAULT '',
    alertname TEXT NOT NULL DEFAULT '',
    route TEXT NOT NULL DEFAULT '',
    step INTEGER NOT NULL DEFAULT 0,
    plan TEXT,
    output TEXT NOT NULL DEFAULT '',
    parent INTEGER
);
CREATE INDEX IF NOT EXISTS entries_status ON entries(status);
CREATE INDEX IF NOT EXISTS entries_ts ON entries(ts);
"""
_COLS = ("id", "ts", "updated", "op", "action", "target", "status", "mode", "reason", "fingerprint",
         "alertname", "route", "step", "plan", "output", "parent")
_KEEP = "status = 'started' OR (op = 'apply' AND status = 'succeeded' AND json_extract(plan, '$.reversible'))"
MAX_OUTPUT = 8192


class JournalError(NodewardenError):
    """The journal database cannot be opened or written."""


def _row(r: tuple) -> Entry:
    d = dict(zip(_COLS, r, strict=True))
    d["plan"] = json.loads(d["plan"]) if d["plan"] else None
    return Entry(**d)


class Journal:
    """Thread-safe access to the journal; several processes may share the file (WAL)."""

    def __init__(self, state_dir: str, retention: float = DEFAULT_RETENTION, max_rows: int = DEFAULT_MAX_ROWS,
                 clock=time.time, filename: str = FILENAME) -> None:
        self.path = os.path.join(state_dir, filename)
        self.retention = retention
        self.max_rows = max_rows
        self._clock = clock
        self._lock = threading.Lock()
        self._writes = 0
        try:
            os.makedirs(state_dir, exist_ok=True)
            self._db = sqlite3.connect(self.path, timeout=10.0, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(_SCHEMA)
        except (OSError, sqlite3.Error) as err:
            raise JournalError(f"cannot open journal {self.path}: {err}") from err
        self.prune()

    def close(self) -> None:
        """Close the database."""
        with self._lock:
            self._db.close()

    def _exec(self, sql: str, args: tuple = ()) -> tuple[list[tuple], int, int]:
        """(rows, lastrowid, rowcount), all read under the lock (one connection shared by threads)."""
        try:
            with self._lock:
                cur = self._db.execute(sql, args)
                return cur.fetchall(), cur.lastrowid or 0, cur.rowcount
        except sqlite3.Error as err:
            raise JournalError(f"journal {self.path}: {err}") from err

    def add(self, *, op: str, action: str, status: str, mode: str, target: str = "", reason: str = "",
            fingerprint: str = "", alertname: str = "", route: str = "", step: int = 0, plan: Plan | None = None,
            output: str = "", parent: int | None = None, ts: float | None = None) -> int:
        """Insert a row (committed on return) and return its id."""
        now = self._clock() if ts is None else ts
        _, rowid, _ = self._exec(
            "INSERT INTO entries (ts, updated, op, action, target, status, mode, reason, fingerprint, alertname,"
            " route, step, plan, output, parent) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (now, now, op, action, target, status, mode, reason, fingerprint, alertname, route, step,
             json.dumps(plan.to_dict()) if plan else None, output[:MAX_OUTPUT], parent))
        self._writes += 1
        if self._writes % _PRUNE_EVERY == 0:
            self.prune()
        return int(rowid)

    def finish(self, entry_id: int, status: str, output: str = "", plan: Plan | None = None,
               reason: str | None = None) -> None:
        """Record the outcome of a ``started`` row (and the plan with its undo data, when given)."""
        sets, args = ["status = ?", "updated = ?", "output = ?"], [status, self._clock(), output[:MAX_OUTPUT]]
        if plan is not None:
            sets.append("plan = ?")
            args.append(json.dumps(plan.to_dict()))
        if reason is not None:
            sets.append("reason = ?")
            args.append(reason)
        self._exec(f"UPDATE entries SET {', '.join(sets)} WHERE id = ?", (*args, entry_id))

    def progress(self, entry_id: int, output: str) -> None:
        """Progress of a ``started`` row (e.g. bytes copied so far), shown by ``nodewarden history``."""
        self._exec("UPDATE entries SET updated = ?, output = ? WHERE id = ? AND status = 'started'",
                   (self._clock(), output[:MAX_OUTPUT], entry_id))

    def mark_reverted(self, revert_id: int, applied_id: int, output: str) -> None:
        """A revert row succeeded: it and the applied row it undid change status in one transaction."""
        now = self._clock()
        try:
            with self._lock:
                self._db.execute("BEGIN IMMEDIATE")
                self._db.execute("UPDATE entries SET status='succeeded', updated=?, output=? WHERE id=?",
                                 (now, output[:MAX_OUTPUT], revert_id))
                self._db.execute("UPDATE entries SET status='reverted', updated=? WHERE id=?", (now, applied_id))
                self._db.execute("COMMIT")
        except sqlite3.Error as err:
            raise JournalError(f"journal {self.path}: {err}") from err

    def get(self, entry_id: int) -> Entry | None:
        """One row by id."""
        rows, _, _ = self._exec(f"SELECT {','.join(_COLS)} FROM entries WHERE id = ?", (entry_id,))
        return _row(rows[0]) if rows else None

    def query(self, where: str = "1", args: tuple = (), order: str = "id") -> list[Entry]:
        """Rows matching a fixed SQL condition written by this package (values go in ``args``)."""
        sql = f"SELECT {','.join(_COLS)} FROM entries WHERE {where} ORDER BY {order}"
        return [_row(r) for r in self._exec(sql, args)[0]]

    def since(self, t: float) -> list[Entry]:
        """Rows written or updated at or after ``t``, oldest first."""
        return self.query("updated >= ?", (t,))

    def started(self) -> list[Entry]:
        """Rows left ``started`` (a crash interrupted them)."""
        return self.query("status = 'started'")

    def active(self) -> list[Entry]:
        """Applied, reversible actions that were not reverted, oldest first."""
        return [e for e in self.query("op = 'apply' AND status = 'succeeded'") if e.plan and e.plan.get("reversible")]

    def counts(self) -> Mapping[str, int]:
        """Rows per status."""
        return dict(self._exec("SELECT status, COUNT(*) FROM entries GROUP BY status")[0])

    def prune(self) -> int:
        """Apply the retention bounds; returns rows deleted."""
        cutoff = self._clock() - self.retention
        n = self._exec(f"DELETE FROM entries WHERE ts < ? AND NOT ({_KEEP})", (cutoff,))[2]
        n += self._exec(f"DELETE FROM entries WHERE NOT ({_KEEP}) AND id NOT IN "
                        "(SELECT id FROM entries ORDER BY id DESC LIMIT ?)", (self.max_rows,))[2]
        return n

    def __iter__(self) -> Iterator[Entry]:
        return iter(self.query())


def to_json(entry: Entry) -> dict[str, Any]:
    """A row as a JSON-ready dict."""
    return {k: getattr(entry, k) for k in _COLS}
