"""The executor: runs plugin actions in worker threads with a deadline, journals their outcome, reports back.

A stuck plugin never stalls the sampling thread: :meth:`Executor.spawn` starts a daemon thread, the outcome
comes back as a :class:`Done` through a queue that the coordinator drains once per tick (:meth:`done`), and a
job past its deadline is journaled ``failed`` (``timeout``) while it keeps running.
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import structlog

from agent.core.errors import NodewardenError
from agent.core.plugin import Plan, Remediation, ReportsProgress
from agent.remediation.journal import Journal

PROGRESS_INTERVAL = 1.0  # seconds between journal updates of a running action's progress

log = structlog.get_logger("nodewarden.remediator")


@dataclass
class Job:
    """One action in flight."""

    entry_id: int
    action: str
    deadline: float
    thread: threading.Thread
    episode: tuple[int, str] | None
    mode: str = "enforce"
    at: float = 0.0             # dispatch time (the cooldown / rate-limit reservation)
    timed_out: bool = False


@dataclass(frozen=True)
class Done:
    """A finished job's outcome, folded back into its episode by the router."""

    entry_id: int
    episode: tuple[int, str] | None
    kind: str                   # apply | revert | page | plan
    status: str                 # succeeded | failed | skipped | planned | reverted
    reason: str = ""
    plan: Plan | None = None


class Tally:
    """Counters behind ``nodewarden_remediations_total`` and ``nodewarden_remediation_skipped_total``."""

    def __init__(self) -> None:
        self.results: dict[tuple[str, str], float] = defaultdict(float)
        self.skips: dict[tuple[str, str], float] = defaultdict(float)

    def result(self, action: str, result: str) -> None:
        """Count one decision or outcome."""
        self.results[(action, result)] += 1

    def skip(self, action: str, reason: str) -> None:
        """Count one refusal."""
        self.skips[(action, reason)] += 1


class Executor:
    """Worker threads for apply, revert and page; the journal's outcome rows."""

    def __init__(self, journal: Journal, clock: Callable[[], float]) -> None:
        self.journal = journal
        self.clock = clock
        self.jobs: dict[int, Job] = {}
        self._done: queue.SimpleQueue[Done] = queue.SimpleQueue()

    def spawn(self, eid: int | None, action: str, timeout: float, key, now: float, fn, *args) -> None:
        """Run ``fn(*args)`` in a worker; with an entry id, track it as a job with a deadline."""
        t = threading.Thread(target=fn, args=args, name=f"remediation-{action}-{eid}", daemon=True)
        if eid is not None:
            self.jobs[eid] = Job(eid, action, now + timeout, t, key, at=now)
        t.start()

    def report(self, done: Done) -> None:
        """Hand an outcome to the next :meth:`done` (thread-safe)."""
        self._done.put(done)

    def done(self) -> Iterator[tuple[Done, Job | None]]:
        """Outcomes reported since the last call, each with its job (None for untracked work)."""
        while True:
            try:
                d = self._done.get_nowait()
            except queue.Empty:
                return
            yield d, self.jobs.pop(d.entry_id, None)

    def timeouts(self, now: float) -> list[Job]:
        """Jobs that just passed their deadline (journaled ``failed``/``timeout``; the thread runs on)."""
        late = []
        for job in list(self.jobs.values()):
            if not job.timed_out and now > job.deadline and job.thread.is_alive():
                job.timed_out = True
                self.journal.finish(job.entry_id, "failed", "deadline exceeded; still running", reason="timeout")
                log.error("remediation_timeout", id=job.entry_id, action=job.action)
                late.append(job)
        return late

    def in_progress(self) -> int:
        """Actions in flight."""
        return sum(1 for j in self.jobs.values() if j.thread.is_alive())

    def join(self, timeout: float) -> None:
        """Wait up to ``timeout`` seconds for the jobs in flight."""
        end = time.monotonic() + timeout
        for job in list(self.jobs.values()):
            job.thread.join(max(0.0, end - time.monotonic()))

    # ---- the work itself (runs in a worker, or inline for by-hand actions)

    def apply(self, eid: int, plugin: Remediation, plan: Plan, key,
              before: Callable[[], tuple[str, str]] | None = None,
              undo_claim: Callable[[], None] | None = None) -> None:
        """``before() -> (reason, detail)`` (the blast-radius claim) may refuse; then apply + verify, journal.

        ``undo_claim`` is called when apply or verify fails, so a failed action holds no claim.
        """
        note = ""
        if before is not None:
            try:
                reason, note = before()
            except Exception as err:  # a gate that cannot decide refuses
                reason, note = "gate_failed", str(err)
            if reason:
                self.journal.finish(eid, "skipped", note, reason=reason)
                self.report(Done(eid, key, "apply", "skipped", reason, plan))
                return
        try:
            with self._progress_to(eid, plugin):
                outcome = plugin.apply(plan)
            plan = plan.with_undo(outcome.undo) if outcome.undo else plan
            ok = plugin.verify(plan)
        except Exception as err:  # a plugin failure is data: journal it and go on
            log.error("remediation_failed", id=eid, action=plan.action, error=str(err))
            self._undo_claim(undo_claim)
            self.journal.finish(eid, "failed", "; ".join(x for x in (note, str(err)) if x), reason="apply_failed")
            self.report(Done(eid, key, "apply", "failed", "apply_failed", plan))
            return
        status = "succeeded" if ok else "failed"
        if not ok:
            self._undo_claim(undo_claim)
        output = "; ".join(x for x in (note, outcome.output) if x)
        self.journal.finish(eid, status, output, plan=plan, reason="" if ok else "verify_failed")
        log.info("remediation_finished", id=eid, action=plan.action, status=status)
        self.report(Done(eid, key, "apply", status, "" if ok else "verify_failed", plan))

    @staticmethod
    def _undo_claim(undo: Callable[[], None] | None) -> None:
        if undo is not None:
            try:
                undo()
            except Exception as err:  # journaled by the caller's outcome; the claim is found again on recover
                log.error("claim_release_failed", error=str(err))

    def revert(self, rid: int, applied_id: int, plugin: Remediation, plan: Plan, key,
               after: Callable[[], None] | None = None) -> None:
        """Revert, mark the applied row reverted; ``after()`` releases the blast-radius claim."""
        try:
            outcome = plugin.revert(plan)
        except Exception as err:
            log.error("revert_failed", id=rid, action=plan.action, error=str(err))
            self.journal.finish(rid, "failed", str(err), reason="revert_failed")
            self.report(Done(rid, key, "revert", "failed", "revert_failed", plan))
            return
        self._undo_claim(after)
        self.journal.mark_reverted(rid, applied_id, outcome.output)
        log.info("remediation_reverted", id=rid, applied=applied_id, action=plan.action)
        self.report(Done(rid, key, "revert", "reverted", "", plan))

    def page(self, eid: int | None, push: Callable[[], tuple[str, str]]) -> None:
        """Push a page (``push() -> (status, output)``); journal it when it has an entry."""
        status, output = push()
        if eid is not None:
            self.journal.finish(eid, status, output, reason="" if status == "succeeded" else "push_failed")
            self.report(Done(eid, None, "page", status))

    @contextlib.contextmanager
    def _progress_to(self, eid: int, plugin: Remediation) -> Iterator[None]:
        """While ``apply`` runs, journal a plugin's ``progress(done, total)`` calls (bytes) at most once a second.

        Plugins opt in with a settable ``progress`` attribute (migrate does); one action per plugin reports at a
        time, others run without progress rows.
        """
        if not isinstance(plugin, ReportsProgress) or plugin.progress is not None:
            yield
            return
        last = [0.0]

        def report(done: int, total: int) -> None:
            now = time.monotonic()
            if now - last[0] >= PROGRESS_INTERVAL or done >= total:
                last[0] = now
                pct = f" ({100 * done / total:.0f}%)" if total else ""
                with contextlib.suppress(NodewardenError):
                    self.journal.progress(eid, f"in progress: {done / 1e9:.2f} of {total / 1e9:.2f} GB{pct}")

        plugin.progress = report  # type: ignore[attr-defined]
        try:
            yield
        finally:
            plugin.progress = None  # type: ignore[attr-defined]
