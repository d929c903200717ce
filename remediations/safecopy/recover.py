"""Crash recovery: every operation the step log shows open is rolled back or forward (idempotent).

Rolled back: ``begin``, and ``copied`` while tmp was not yet in place. Rolled forward: ``copied`` once dst
holds the verified data (checked by its digest), and ``renamed``. Afterwards every file exists exactly once
with its original content and no temporary file remains.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from remediations.safecopy.fsops import fsync_dir, link_tmp_for, quarantine_tmp_for, source_action, unlink_quiet
from remediations.safecopy.steplog import OPEN_STEPS, StepLog
from remediations.safecopy.verify import hash_file


@dataclass
class Recovery:
    """What :func:`recover` did with the operations a crash left open."""

    finished: list[str] = field(default_factory=list)
    rolled_back: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)


def recover(log: StepLog, rotate_bytes: int = 4 << 20) -> Recovery:
    """Finish or roll back every open operation of ``log`` (whose lock the caller holds); then rotate it."""
    out = Recovery()
    for op, o in log.ops().items():
        if o["step"] not in OPEN_STEPS:
            continue
        try:
            status = recover_one(log, op, o)
        except OSError as err:
            log.record(op, "failed", reason=f"recover: {err.strerror}", errno=err.errno or 0)
            out.failed.append(op)
            continue
        {"done": out.finished, "rolledback": out.rolled_back}.get(status, out.failed).append(op)
    log.rotate(rotate_bytes)
    return out


def recover_one(log: StepLog, op: str, o: Mapping[str, Any]) -> str:
    """Settle one open operation (its merged records ``o``); its final status, recorded in ``log``."""
    src, dst, tmp = o["src"], o["dst"], o["tmp"]
    step = o["step"]
    if step == "copied" and os.path.lexists(tmp):
        if not o.get("replace") and os.path.lexists(dst) and os.path.samefile(tmp, dst):
            os.unlink(tmp)                  # crashed between link and unlink: placed
            fsync_dir(os.path.dirname(dst))
            step = "renamed"
        # else: not placed yet -> roll back below
    elif step == "copied":
        # tmp gone: it was placed (link+unlink or rename); dst must hold the verified data
        got = hash_file(dst) if os.path.isfile(dst) and not os.path.islink(dst) else None
        if got != o["hash"]:
            log.record(op, "failed", reason="recover: destination does not hold the copied data; "
                       "source left untouched")
            return "failed"
        fsync_dir(os.path.dirname(dst))
        step = "renamed"
    if step == "renamed":
        source_action(op, src, dst, o["after"], o["dev"], o["ino"])
        log.record(op, "done", recovered=True)
        return "done"
    unlink_quiet(tmp)
    unlink_quiet(link_tmp_for(src, op))
    if o.get("quarantine"):
        unlink_quiet(quarantine_tmp_for(o["quarantine"], op))
    fsync_dir(os.path.dirname(dst))
    log.record(op, "rolledback", reason=f"crashed at step {o['step']}")
    return "rolledback"
