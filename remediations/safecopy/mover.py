"""The mover: batches of file operations through the step protocol (see the package docstring)."""

from __future__ import annotations

import errno
import os
import stat
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from remediations.safecopy.copy import CHUNK, Copier, Pending, Progress
from remediations.safecopy.errors import Abort
from remediations.safecopy.fsops import fsync_dir, place, quarantine, source_action, syncfs, tmp_path_for, unlink_quiet
from remediations.safecopy.recover import Recovery, recover, recover_one
from remediations.safecopy.steplog import StepLog
from remediations.safecopy.throttle import Throttle
from remediations.safecopy.verify import check_digests, check_expected, check_source
from remediations.safecopy.writers import ProcWriters, Writers

BATCH_FILES = 1024        # files per batch (group commit); each batch costs two /proc scans and one syncfs
After = Literal["unlink", "symlink", "keep"]



@dataclass(frozen=True, slots=True)
class Result:
    """What one operation did: ``status`` is done, failed, skipped or rolledback."""

    op: str
    src: str
    dst: str
    status: str
    reason: str = ""
    bytes: int = 0
    hash: str = ""
    errno: int = 0
    warnings: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Move:
    """One file operation (see :meth:`SafeMover.move` for the fields)."""

    src: str
    dst: str
    after: After = "unlink"
    expect: str | None = None
    quarantine: str | None = None
    replace_link: bool = False
    meta: Mapping[str, Any] | None = None


@dataclass
class _Op:
    id: str
    src: str
    dst: str
    tmp: str
    mv: Move
    st: os.stat_result
    replace: bool
    digest: str = ""
    warnings: list[str] = field(default_factory=list)
    result: Result | None = None
    pending: Pending | None = None   # big files: (source, read-back) digests computed in the pool


class SafeMover:
    """Moves/copies files through the step protocol above. Not thread-safe; one mover per step log.

    :meth:`move_many` works in batches (group commit): each step's records of a whole batch share one log
    fsync, the copies of a batch share one ``syncfs`` of the destination filesystem, and each directory is
    fsynced once per step. Every operation still passes every step in order, so recovery is per operation.
    ``writers(paths) -> {path: [pid, ...]}`` reports which of the paths are open for writing (default: a
    :class:`ProcWriters` scan, once per batch before copying and once before placing).
    """

    def __init__(self, log: StepLog, rate_mb_s: float | None = None,
                 writers: Writers | None = None,
                 progress: Progress | None = None, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep, chunk: int = CHUNK, hash_threads: int = 4,
                 hooks: Mapping[str, Callable[[], None]] | None = None, preallocate: bool = True,
                 batch_files: int | None = None, batch_bytes: int = 1 << 30) -> None:
        self.log = log
        self.throttle = Throttle(rate_mb_s * 1e6 if rate_mb_s else None, clock, sleep)
        self.copier = Copier(self.throttle, progress, chunk, hash_threads, preallocate)
        self.writers = writers if writers is not None else ProcWriters()
        self.batch_files, self.batch_bytes = max(1, batch_files or BATCH_FILES), batch_bytes
        self.hooks = dict(hooks or {})   # test seams: called after the named step's records
        log.lock()

    # ---------------------------------------------------------- public

    def move(self, src: str, dst: str, after: After = "unlink", expect: str | None = None,
             quarantine: str | None = None, replace_link: bool = False,
             meta: Mapping[str, Any] | None = None) -> Result:
        """Copy ``src`` to ``dst`` verified, then apply ``after`` to the source (one file, fsynced alone).

        ``expect``: the content must have this blake3 digest (a manifest entry), else nothing is changed.
        ``quarantine``: when ``dst`` exists it is replaced, and the old file is first linked (or copied) there.
        ``replace_link``: ``dst`` may be a symlink that points to ``src`` (moving a file back), replaced.
        ``meta``: extra fields for the begin record (e.g. the plan entry id).
        """
        return self._batch([Move(src, dst, after, expect, quarantine, replace_link, meta)])[0]

    def move_many(self, moves: Iterable[Move]) -> Iterator[Result]:
        """Results in order. A result is yielded only once its whole batch is settled, so a caller may stop
        (e.g. after ENOSPC) between any two results without leaving an operation open."""
        batch: list[Move] = []
        stats: list[os.stat_result | None] = []   # the identity the batch works with (re-checked before placing)
        size = 0
        for mv in moves:
            try:
                st: os.stat_result | None = os.stat(mv.src, follow_symlinks=False)
                size += st.st_size
            except OSError:
                st = None
            batch.append(mv)
            stats.append(st)
            if len(batch) >= self.batch_files or size >= self.batch_bytes:
                yield from self._batch(batch, stats)
                batch, stats, size = [], [], 0
        if batch:
            yield from self._batch(batch, stats)

    # ---------------------------------------------------------- one batch

    def _hook(self, step: str) -> None:
        fn = self.hooks.get(step)
        if fn is not None:
            fn()

    def _prepare(self, mv: Move, busy: Mapping[str, list[int]], st: os.stat_result | None) -> _Op | Result:
        op = uuid.uuid4().hex[:16]
        src, dst = os.path.abspath(mv.src), os.path.abspath(mv.dst)

        def skip(reason: str, err: int = 0) -> Result:
            self.log.record(op, "skipped", sync=False, reason=reason, errno=err, src=src, dst=dst)
            return Result(op, src, dst, "skipped", reason, errno=err)

        try:
            st = st or os.stat(src, follow_symlinks=False)
        except OSError as err:
            return skip(f"source unreadable: {err.strerror}", err.errno or 0)
        if not stat.S_ISREG(st.st_mode):
            return skip("source is not a regular file")
        if mv.after != "keep" and st.st_nlink > 1:
            return skip(f"source has {st.st_nlink} hard links")
        if busy.get(mv.src):
            return skip(f"open for writing by pid {','.join(map(str, busy[mv.src]))}")
        replace = False
        if os.path.lexists(dst):
            damaged = mv.quarantine is not None and os.path.isfile(dst) and not os.path.islink(dst)
            ours = mv.replace_link and os.path.islink(dst) and os.path.realpath(dst) == os.path.realpath(src)
            if not (damaged or ours):
                return skip("destination exists")
            if damaged and busy.get(mv.dst):
                return skip(f"destination open for writing by pid {busy[mv.dst][0]}")
            replace = True
        return _Op(op, src, dst, tmp_path_for(dst, op), mv, st, replace)

    def _fail(self, o: _Op, status: str, reason: str, err: int = 0) -> None:
        unlink_quiet(o.tmp)
        self.log.record(o.id, status, sync=False, reason=reason, errno=err)
        o.result = Result(o.id, o.src, o.dst, status, reason, errno=err)

    def _fail_os(self, o: _Op, err: OSError) -> None:
        reason = f"{errno.errorcode.get(err.errno or 0, 'E?')}: {err.strerror}" + (
            f" ({err.filename})" if err.filename else "")
        self._fail(o, "failed", reason, err.errno or 0)

    def _batch(self, moves: list[Move], stats: Sequence[os.stat_result | None] | None = None) -> list[Result]:
        busy = self.writers([m.src for m in moves] + [m.dst for m in moves if m.quarantine])
        prepared = [self._prepare(m, busy, st) for m, st in zip(moves, stats or [None] * len(moves), strict=True)]
        ops = [o for o in prepared if isinstance(o, _Op)]
        for o in ops:
            st = o.st
            self.log.record(o.id, "begin", sync=False, src=o.src, dst=o.dst, tmp=o.tmp, after=o.mv.after,
                            expect=o.mv.expect, quarantine=o.mv.quarantine if o.replace else None,
                            replace=o.replace, dev=st.st_dev, ino=st.st_ino, size=st.st_size,
                            mtime_ns=st.st_mtime_ns, **dict(o.mv.meta or {}))
        self.log.sync()
        if ops:
            self._hook("begin")
        live = self._copy_all(ops)
        live = self._verify_all(live)
        for o in live:
            self.log.record(o.id, "copied", sync=False, hash=o.digest, bytes=o.st.st_size, warnings=o.warnings)
        self.log.sync()
        if live:
            self._hook("copied")
        placed = self._place_all(live)
        for o in placed:
            self.log.record(o.id, "renamed", sync=False)
        self.log.sync()
        if placed:
            self._hook("renamed")
        src_dirs = set()
        for o in placed:
            if source_action(o.id, o.src, o.dst, o.mv.after, o.st.st_dev, o.st.st_ino, sync=False):
                src_dirs.add(os.path.dirname(o.src))
        for d in sorted(src_dirs):
            fsync_dir(d)
        for o in placed:
            self.log.record(o.id, "done", sync=False)
            o.result = Result(o.id, o.src, o.dst, "done", bytes=o.st.st_size, hash=o.digest,
                              warnings=tuple(o.warnings))
        self.log.sync()
        by_id = {o.id: o.result for o in ops}
        return [p if isinstance(p, Result) else by_id[p.id] for p in prepared]  # type: ignore[misc]

    def _copy_all(self, ops: list[_Op]) -> list[_Op]:
        live: list[_Op] = []
        alone = len(ops) == 1
        for i, o in enumerate(ops):
            try:
                got = self.copier.copy(o.src, o.tmp, o.st, alone, o.warnings)
                if isinstance(got, str):
                    o.digest = got
                else:
                    o.pending = got
                live.append(o)
            except Abort as err:
                self._fail(o, err.status, err.reason, err.errno)
            except OSError as err:
                self._fail_os(o, err)
                if err.errno == errno.ENOSPC:   # the rest would fail too: give up on them now
                    for rest in ops[i + 1:]:
                        self._fail(rest, "failed", "not attempted: destination full (ENOSPC)", errno.ENOSPC)
                    break
        if live and not alone:
            try:
                one_dir_per_fs = {os.stat(os.path.dirname(o.dst)).st_dev: os.path.dirname(o.dst) for o in live}
                for d in one_dir_per_fs.values():
                    syncfs(d)        # meanwhile the pool hashes sources and read-backs of the big files
            except OSError as err:
                for o in live:
                    self._fail_os(o, err)
                return []
        checked = []
        for o in live:
            if o.pending is not None:
                o.digest, again = (f.result() for f in o.pending)
                if not o.digest:
                    self._fail(o, "failed", "source changed size during copy")
                    continue
            else:
                again = o.digest
            try:
                check_digests(again, o.digest)
            except Abort as err:
                self._fail(o, err.status, err.reason, err.errno)
                continue
            checked.append(o)
        return checked

    def _verify_all(self, live: list[_Op]) -> list[_Op]:
        busy = self.writers([o.src for o in live]) if live else {}
        out = []
        for o in live:
            try:
                check_expected(o.digest, o.mv.expect)
                check_source(o.src, o.st)
                if busy.get(o.src):
                    raise Abort("skipped", f"opened for writing during copy by pid {busy[o.src][0]}")
                if o.replace and o.mv.quarantine is not None:
                    quarantine(o.dst, o.mv.quarantine, o.id)
            except Abort as err:
                self._fail(o, err.status, err.reason, err.errno)
                continue
            except OSError as err:
                self._fail_os(o, err)
                continue
            out.append(o)
        return out

    def _place_all(self, live: list[_Op]) -> list[_Op]:
        placed = []
        for o in live:
            try:
                place(o.tmp, o.dst, o.replace)
            except Abort as err:
                self._fail(o, err.status, err.reason, err.errno)
                continue
            except OSError as err:   # tmp may already be in place: settle it exactly as after a crash
                self.log.sync()
                status = recover_one(self.log, o.id, self.log.ops()[o.id])
                o.result = Result(o.id, o.src, o.dst, status, f"placing failed: {err.strerror}", errno=err.errno or 0)
                continue
            placed.append(o)
        for d in sorted({os.path.dirname(o.dst) for o in placed}):
            fsync_dir(d)
        if placed:
            self._hook("placed")
        return placed

    # ---------------------------------------------------------- recovery

    def recover(self, rotate_bytes: int = 4 << 20) -> Recovery:
        """Finish or roll back every operation the log shows open (idempotent); see :mod:`.recover`."""
        return recover(self.log, rotate_bytes)

    def close(self) -> None:
        """Release the step log (and the hash threads)."""
        self.copier.close()
        self.log.close()


