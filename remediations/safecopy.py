"""The safe-copy core shared by ``migrate`` and ``restore``: move or copy a file without ever losing it.

One file operation walks these steps; each is recorded in a durable step log (an fsynced, append-only JSON
lines file in the state dir) *before* the next one starts::

    begin     src, dst, tmp, source identity (dev, ino, size, mtime)     nothing changed yet
    (copy src -> tmp in dst's directory, hashing; fsync; copy mode, owner, xattrs, times; re-read and verify;
     re-check that src is unchanged and not open for writing; link the damaged dst into quarantine)
    copied    blake3 of the data                                           tmp complete and verified
    (link tmp -> dst (no replace) or rename tmp -> dst (replace); fsync dst's directory)
    renamed                                                                dst durable
    (source action: unlink src, or replace it atomically with a symlink to dst, or keep it; fsync its dir)
    done

or ends in ``failed`` / ``skipped`` (with the reason) or ``rolledback`` (by :meth:`SafeMover.recover`).
After a crash at any point :meth:`SafeMover.recover` rolls every open operation back (``begin``; ``copied``
while tmp was not yet in place) or forward (``copied`` once dst holds the verified data; ``renamed``): every
file then exists exactly once (a symlink left at the old path is not a copy) with its original content, and
no temporary file remains. The source is touched only after the verified copy is durable, and only when it
is still the same inode; a source open for writing (any process) is never moved.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import json
import mmap
import os
import stat
import threading
import time
import uuid
from collections.abc import Callable, Container, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Literal

import blake3

from agent.core.errors import RemediationError
from agent.core.paths import Paths

TMP_PREFIX = ".nwtmp."
CHUNK = 1 << 20
BIG = 8 << 20             # files this large: kernel copy + hashing in a helper thread, multithreaded blake3
RANGE_CHUNK = 8 << 20
BATCH_FILES = 1024        # files per batch (group commit); each batch costs two /proc scans and one syncfs
MAP_STEP = 64 << 20       # hash a memory map in steps of this (a stop request is seen between steps)
After = Literal["unlink", "symlink", "keep"]
Progress = Callable[[int], None]
Writers = Callable[[Sequence[str]], Mapping[str, list[int]]]   # paths -> {path: pids holding it open for writing}
OPEN_STEPS = ("begin", "copied", "renamed")
_JSON = json.JSONEncoder(separators=(",", ":"))   # one encoder (json.dumps with options builds one per call)
FINAL_STEPS = ("done", "failed", "skipped", "rolledback")


class SafeCopyError(RemediationError):
    """The step log cannot be used, or recovery met a state it must not guess about."""


# ------------------------------------------------------------------ hashing

def hash_file(path: str, threads: int = 1) -> str:
    """blake3 hex digest of a file (memory-mapped; ``threads`` > 1 hashes large files in parallel)."""
    h = blake3.blake3(max_threads=threads) if threads != 1 else blake3.blake3()
    try:
        if os.path.getsize(path) == 0:
            return h.hexdigest()
        h.update_mmap(path)
    except OSError as err:
        raise RemediationError(f"cannot read {path}: {err.strerror}") from err
    return h.hexdigest()


# ------------------------------------------------------------------ open-for-write detection

O_ACCMODE = 0o3


def parse_fdinfo_flags(text: str) -> int | None:
    """The ``flags:`` field (octal) of a ``/proc/PID/fdinfo/FD`` file; None when absent."""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key == "flags":
            try:
                return int(value.strip(), 8)
            except ValueError:
                return None
    return None


def flags_write(flags: int | None) -> bool:
    """True when open flags say O_WRONLY or O_RDWR."""
    return flags is not None and (flags & O_ACCMODE) in (os.O_WRONLY, os.O_RDWR)


def writers_in(fds: Iterable[tuple[int, tuple[int, int], int | None]], key: tuple[int, int]) -> list[int]:
    """Pure: pids whose descriptors ``(pid, (dev, ino), flags)`` hold file ``key`` open for writing."""
    return sorted({pid for pid, k, flags in fds if k == key and flags_write(flags)})


class ProcWriters:
    """Which processes hold a file open for writing, from a scan of ``/proc/*/fd`` and ``fdinfo``.

    The symlink mode of ``/proc/PID/fd/N`` has the owner write bit exactly when the file was opened for
    writing, so only those descriptors are followed and confirmed from their ``fdinfo`` flags. Writable
    shared memory maps of closed descriptors are not seen.
    """

    def __init__(self, paths: Paths | None = None) -> None:
        self.paths = paths or Paths()

    def scan(self, keys: Container[tuple[int, int]] | None = None) -> list[tuple[int, tuple[int, int], int | None]]:
        """``(pid, (dev, ino), flags)`` of every descriptor open for writing on a regular file (only those on
        the files ``keys`` when given: the others' ``fdinfo`` is not read)."""
        out = []
        try:
            pids = [int(p) for p in os.listdir(self.paths.procfs) if p.isdigit()]
        except OSError as err:
            raise RemediationError(f"cannot scan {self.paths.procfs}: {err.strerror}") from err
        for pid in pids:
            fd_dir = self.paths.proc(str(pid), "fd")
            try:
                fds = os.listdir(fd_dir)
            except OSError:
                continue  # gone, or not ours to read
            for fd in fds:
                link = os.path.join(fd_dir, fd)
                try:
                    if not os.lstat(link).st_mode & stat.S_IWUSR:
                        continue
                    st = os.stat(link)
                    if not stat.S_ISREG(st.st_mode) or (keys is not None and (st.st_dev, st.st_ino) not in keys):
                        continue
                    with open(self.paths.proc(str(pid), "fdinfo", fd)) as f:
                        flags = parse_fdinfo_flags(f.read())
                except OSError:
                    continue
                out.append((pid, (st.st_dev, st.st_ino), flags))
        return out

    def __call__(self, paths: Sequence[str]) -> dict[str, list[int]]:
        """``{path: pids}`` for those of ``paths`` that some process holds open for writing (one scan)."""
        keys: dict[tuple[int, int], list[str]] = {}
        for p in paths:
            try:
                st = os.stat(p)
            except OSError:
                continue
            keys.setdefault((st.st_dev, st.st_ino), []).append(p)
        if not keys:
            return {}
        out: dict[str, list[int]] = {}
        fds = self.scan(keys)
        for key, ps in keys.items():
            pids = writers_in(fds, key)
            if pids:
                out.update({p: pids for p in ps})
        return out


# ------------------------------------------------------------------ step log

class StepLog:
    """An append-only JSON-lines log; every record is one write followed by fsync (``durable``).

    A torn last line (power loss mid-write) is ignored on reading. An exclusive ``flock`` is held while a
    :class:`SafeMover` works, so two runs never interleave on one log.
    """

    def __init__(self, path: str, durable: bool = True) -> None:
        self.path = path
        self.durable = durable
        self._held: list[bytes] = []
        try:
            os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
            self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
            size = os.fstat(self._fd).st_size
            if size:
                with open(path, "rb") as f:
                    f.seek(size - 1)
                    if f.read(1) != b"\n":
                        os.write(self._fd, b"\n")   # seal a torn last line
        except OSError as err:
            raise SafeCopyError(f"cannot open step log {path}: {err.strerror}") from err

    def lock(self, blocking: bool = True) -> None:
        """Take the exclusive lock (released by :meth:`close` or when the process dies)."""
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except OSError as err:
            raise SafeCopyError(f"step log {self.path} is in use by another run") from err

    def record(self, op: str, step: str, sync: bool = True, **fields: Any) -> None:
        """Append one record; durably unless ``sync`` is False: then it is held until :meth:`sync` writes every
        held record at once (nothing may rely on it before that)."""
        line = _JSON.encode({"op": op, "step": step, "t": time.time(), **fields}) + "\n"
        self._held.append(line.encode())
        if sync:
            self.sync()

    def sync(self) -> None:
        """Write the held records (one write) and make them durable (one fdatasync)."""
        if not self._held:
            return
        data = b"".join(self._held)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(self._fd, view):]
            if self.durable:
                os.fdatasync(self._fd)
        except OSError as err:
            raise SafeCopyError(f"cannot write step log {self.path}: {err.strerror}") from err
        self._held.clear()

    def records(self) -> list[dict[str, Any]]:
        """Every complete record, in order."""
        out = []
        try:
            with open(self.path, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            return out
        for raw in data.split(b"\n"):
            if not raw:
                continue
            try:
                rec = json.loads(raw)
            except ValueError:
                continue
            if isinstance(rec, dict) and "op" in rec and "step" in rec:
                out.append(rec)
        return out

    def ops(self) -> dict[str, dict[str, Any]]:
        """Per operation: the begin record's fields merged with later ones; ``step`` is the last step."""
        ops: dict[str, dict[str, Any]] = {}
        for rec in self.records():
            ops.setdefault(rec["op"], {}).update(rec)
        return ops

    def rotate(self, max_bytes: int) -> bool:
        """When every op is final and the log is larger than ``max_bytes``, keep it as ``.1`` and start anew."""
        if os.fstat(self._fd).st_size <= max_bytes or any(o["step"] in OPEN_STEPS for o in self.ops().values()):
            return False
        os.replace(self.path, self.path + ".1")
        new = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        fcntl.flock(new, fcntl.LOCK_EX)
        os.close(self._fd)
        self._fd = new
        fsync_dir(os.path.dirname(self.path) or ".")
        return True

    def close(self) -> None:
        """Write what is held, close (and unlock)."""
        if self._fd >= 0:
            try:
                self.sync()
            finally:
                os.close(self._fd)
            self._fd = -1


# ------------------------------------------------------------------ throttle

class Throttle:
    """Bandwidth limit: :meth:`consume` sleeps so that bytes / elapsed stays under ``rate`` bytes/s."""

    def __init__(self, rate: float | None, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.rate = rate if rate and rate > 0 else None
        self.clock, self.sleep = clock, sleep
        self._start: float | None = None
        self._bytes = 0

    def consume(self, n: int) -> None:
        """Account for ``n`` bytes; sleep when ahead of the allowed rate."""
        if self.rate is None:
            return
        now = self.clock()
        if self._start is None or now - (self._start + self._bytes / self.rate) > 1.0:
            self._start, self._bytes = now, 0   # (re)start after idle time: credit at most 1 s of burst
        self._bytes += n
        ahead = self._start + self._bytes / self.rate - now
        if ahead > 0:
            self.sleep(ahead)


# ------------------------------------------------------------------ the mover

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


@dataclass
class Recovery:
    """What :meth:`SafeMover.recover` did with the operations a crash left open."""

    finished: list[str] = field(default_factory=list)
    rolled_back: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)


class _Abort(Exception):
    def __init__(self, status: str, reason: str, err: int = 0) -> None:
        super().__init__(reason)
        self.status, self.reason, self.errno = status, reason, err


def tmp_path_for(dst: str, op: str) -> str:
    """The temporary file of operation ``op`` beside ``dst``."""
    return os.path.join(os.path.dirname(dst), f"{TMP_PREFIX}{op}.{os.path.basename(dst)}"[:255])


def quarantine_tmp_for(qdir: str, op: str) -> str:
    """The partial cross-filesystem quarantine copy of operation ``op``."""
    return os.path.join(qdir, f"{TMP_PREFIX}{op}.q")


def link_tmp_for(src: str, op: str) -> str:
    """The temporary symlink of operation ``op`` beside ``src``."""
    return os.path.join(os.path.dirname(src), f"{TMP_PREFIX}{op}.lnk")


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
    pending: tuple[Future[str], Future[str]] | None = None   # big files: (source, read-back) digests in the pool


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
        self.writers = writers if writers is not None else ProcWriters()
        self.progress = progress
        self.chunk = chunk
        self.hash_threads = hash_threads  # blake3 threads for files of BIG bytes and more
        self.preallocate = preallocate   # fallocate the temp file first: a full disk fails before any copying
        self.batch_files, self.batch_bytes = max(1, batch_files or BATCH_FILES), batch_bytes
        self.hooks = dict(hooks or {})   # test seams: called after the named step's records
        self._buf = bytearray(chunk)
        self._pool: ThreadPoolExecutor | None = None
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
        _unlink_quiet(o.tmp)
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
            if self._source_action(o.id, o.src, o.dst, o.mv.after, o.st.st_dev, o.st.st_ino, sync=False):
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
                self._copy(o, fsync=alone)
                live.append(o)
            except _Abort as err:
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
            if again != o.digest:
                self._fail(o, "failed", f"verification failed: written {again[:16]} != read {o.digest[:16]}")
                continue
            checked.append(o)
        return checked

    def _verify_all(self, live: list[_Op]) -> list[_Op]:
        busy = self.writers([o.src for o in live]) if live else {}
        out = []
        for o in live:
            try:
                if o.mv.expect is not None and o.digest != o.mv.expect:
                    raise _Abort("failed", f"content hash {o.digest[:16]} does not match the expected "
                                           f"{o.mv.expect[:16]}")
                self._check_source(o.src, o.st)
                if busy.get(o.src):
                    raise _Abort("skipped", f"opened for writing during copy by pid {busy[o.src][0]}")
                if o.replace and o.mv.quarantine is not None:
                    _quarantine(o.dst, o.mv.quarantine, o.id)
            except _Abort as err:
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
                self._place(o.tmp, o.dst, o.replace)
            except _Abort as err:
                self._fail(o, err.status, err.reason, err.errno)
                continue
            except OSError as err:   # tmp may already be in place: settle it exactly as after a crash
                self.log.sync()
                status = self._recover_one(o.id, self.log.ops()[o.id])
                o.result = Result(o.id, o.src, o.dst, status, f"placing failed: {err.strerror}", errno=err.errno or 0)
                continue
            placed.append(o)
        for d in sorted({os.path.dirname(o.dst) for o in placed}):
            fsync_dir(d)
        if placed:
            self._hook("placed")
        return placed

    def _copy(self, o: _Op, fsync: bool) -> None:
        """src -> tmp with throttle and progress; metadata; fsync when ``fsync``; the digests to compare.

        Small files: read, hash, write through one buffer, then read back and compare (sets ``o.digest``).
        Files of ``BIG`` bytes and more: the kernel copies (copy_file_range) while the helper pool hashes the
        source and then the read-back; ``o.pending`` holds both digests, compared by :meth:`_copy_all` after
        the batch's ``syncfs`` (which they overlap). Where the kernel cannot copy, the loop is used.
        """
        st = o.st
        try:
            sfd = os.open(o.src, os.O_RDONLY | os.O_NOATIME | os.O_CLOEXEC)
        except PermissionError:
            sfd = os.open(o.src, os.O_RDONLY | os.O_CLOEXEC)
        try:
            tfd = os.open(o.tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOATIME | os.O_CLOEXEC, 0o600)
            try:
                if st.st_size > self.chunk and self.preallocate:   # (one write: that write fails just as early)
                    try:
                        os.posix_fallocate(tfd, 0, st.st_size)   # ENOSPC before any copying
                    except OSError as err:
                        if err.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
                            raise
                src_hash = self._copy_range(sfd, tfd, st.st_size) if st.st_size >= BIG else None
                if src_hash is not None:
                    vfd = os.open(o.tmp, os.O_RDONLY | os.O_NOATIME | os.O_CLOEXEC)   # atime stays as set
                    o.pending = (src_hash, self._executor().submit(_hash_and_close, vfd, st.st_size,
                                                                   self.hash_threads))
                else:
                    o.digest = self._copy_loop(sfd, tfd, st.st_size)
                    again = self._hash_fd(tfd, st.st_size)    # before utime: this read may move the atime
                    if again != o.digest:
                        raise _Abort("failed", f"verification failed: written {again[:16]} != read {o.digest[:16]}")
                _copy_meta(sfd, tfd, st, o.warnings)
                if fsync:
                    os.fsync(tfd)
            finally:
                os.close(tfd)
        finally:
            os.close(sfd)

    def _executor(self) -> ThreadPoolExecutor:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(2, thread_name_prefix="safecopy-hash")
        return self._pool

    def _account(self, n: int) -> None:
        self.throttle.consume(n)
        if self.progress is not None:
            self.progress(n)

    def _copy_loop(self, sfd: int, tfd: int, size: int) -> str:
        """Copy and hash the ``size`` bytes the source had (growth since is caught by :meth:`_check_source`)."""
        h = blake3.blake3()
        mv = memoryview(self._buf)
        total = 0
        while total < size and (n := os.readv(sfd, [mv[:size - total]])):
            h.update(mv[:n])
            written = 0
            while written < n:
                written += os.write(tfd, mv[written:n])
            total += n
            self._account(n)
        if total != size:
            raise _Abort("failed", f"source changed size during copy ({size} -> {total})")
        return h.hexdigest()

    def _copy_range(self, sfd: int, tfd: int, size: int) -> Future[str] | None:
        """Kernel copy while the pool hashes the source (its digest: the future); None when copy_file_range is
        not possible here (nothing copied). A source that shrinks gives an empty digest."""
        off = 0
        fut = None
        while off < size:
            try:
                n = os.copy_file_range(sfd, tfd, min(RANGE_CHUNK, size - off), off, off)
            except OSError as err:
                if off == 0 and err.errno in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
                    return None
                raise
            if fut is None:      # the kernel can: hash the source alongside (through its own descriptor)
                fut = self._executor().submit(_hash_and_close, os.dup(sfd), size, self.hash_threads)
            if n == 0:
                break
            off += n
            self._account(n)
        if off != size or fut is None:
            raise _Abort("failed", f"source changed size during copy ({size} -> {off})")
        return fut

    def _hash_fd(self, fd: int, size: int) -> str:
        """blake3 of the first ``size`` bytes of an open file (pread: the file offset is not used)."""
        return _hash_fd_range(fd, size, self.hash_threads if size >= BIG else 1, None, self._buf) or ""

    @staticmethod
    def _check_source(src: str, st: os.stat_result) -> None:
        now = os.stat(src, follow_symlinks=False)
        if (now.st_dev, now.st_ino, now.st_size, now.st_mtime_ns, now.st_ctime_ns) != (
                st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns):
            raise _Abort("failed", "source changed during copy")

    @staticmethod
    def _place(tmp: str, dst: str, replace: bool) -> None:
        """tmp -> dst: rename when replacing, else link (never replaces) + unlink. The caller fsyncs the dir."""
        if replace:
            os.rename(tmp, dst)
            return
        try:
            if _rename_noreplace(tmp, dst):
                return
            os.link(tmp, dst)          # never replaces: EEXIST if dst appeared meanwhile
        except OSError as err:
            if err.errno == errno.EEXIST:
                raise _Abort("skipped", "destination appeared during copy") from err
            if err.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.EMLINK):
                raise
            if os.path.lexists(dst):
                raise _Abort("skipped", "destination appeared during copy") from err
            os.rename(tmp, dst)
        else:
            os.unlink(tmp)

    def _source_action(self, op: str, src: str, dst: str, after: str, dev: int, ino: int,
                       sync: bool = True) -> bool:
        """Idempotent: unlink src or replace it with a symlink, only while it is still the original inode.
        True when src's directory changed (and, unless ``sync``, still needs an fsync)."""
        if after == "keep":
            return False
        lnk = link_tmp_for(src, op)
        if after == "symlink":
            _unlink_quiet(lnk)      # a crash may have left it
        try:
            cur = os.stat(src, follow_symlinks=False)
        except FileNotFoundError:
            cur = None
        if cur is None or (cur.st_dev, cur.st_ino) != (dev, ino):
            return False  # already done (or the path is someone else's file now: never touch it)
        if after == "symlink":
            os.symlink(dst, lnk)
            os.rename(lnk, src)
        else:
            os.unlink(src)
        if sync:
            fsync_dir(os.path.dirname(src))
        return True

    # ---------------------------------------------------------- recovery

    def recover(self, rotate_bytes: int = 4 << 20) -> Recovery:
        """Finish or roll back every operation the log shows open (idempotent); see the module docstring."""
        out = Recovery()
        for op, o in self.log.ops().items():
            if o["step"] not in OPEN_STEPS:
                continue
            try:
                status = self._recover_one(op, o)
            except OSError as err:
                self.log.record(op, "failed", reason=f"recover: {err.strerror}", errno=err.errno or 0)
                out.failed.append(op)
                continue
            {"done": out.finished, "rolledback": out.rolled_back}.get(status, out.failed).append(op)
        self.log.rotate(rotate_bytes)
        return out

    def _recover_one(self, op: str, o: Mapping[str, Any]) -> str:
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
                self.log.record(op, "failed", reason="recover: destination does not hold the copied data; "
                                "source left untouched")
                return "failed"
            fsync_dir(os.path.dirname(dst))
            step = "renamed"
        if step == "renamed":
            self._source_action(op, src, dst, o["after"], o["dev"], o["ino"])
            self.log.record(op, "done", recovered=True)
            return "done"
        _unlink_quiet(tmp)
        _unlink_quiet(link_tmp_for(src, op))
        if o.get("quarantine"):
            _unlink_quiet(quarantine_tmp_for(o["quarantine"], op))
        fsync_dir(os.path.dirname(dst))
        self.log.record(op, "rolledback", reason=f"crashed at step {o['step']}")
        return "rolledback"

    def close(self) -> None:
        """Release the step log (and the hash threads)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        self.log.close()


# ------------------------------------------------------------------ helpers

def _copy_meta(sfd: int, tfd: int, st: os.stat_result, warnings: list[str]) -> None:
    """Owner, mode, xattrs, then atime/mtime (last: the others would not change them, writes would)."""
    try:
        os.fchown(tfd, st.st_uid, st.st_gid)
    except PermissionError:
        warnings.append("ownership not preserved (not permitted)")
    os.fchmod(tfd, stat.S_IMODE(st.st_mode))
    try:
        names = os.listxattr(sfd)
    except OSError:
        names = []
    for name in names:
        try:
            os.setxattr(tfd, name, os.getxattr(sfd, name))
        except OSError as err:
            warnings.append(f"xattr {name} not preserved: {err.strerror}")
    os.utime(tfd, ns=(st.st_atime_ns, st.st_mtime_ns))


def _quarantine(path: str, qdir: str, op: str) -> str:
    """Keep a copy of ``path`` in ``qdir`` (hard link when on the same filesystem), durably; its new path.
    A cross-filesystem copy is made as ``qdir/.nwtmp.<op>.q`` first (recovery removes a partial one)."""
    os.makedirs(qdir, exist_ok=True)
    name = f"{time.strftime('%Y%m%dT%H%M%S')}.{uuid.uuid4().hex[:8]}.{os.path.basename(path)}"[:255]
    target = os.path.join(qdir, name)
    try:
        os.link(path, target)
    except OSError as err:
        if err.errno != errno.EXDEV:
            raise
        import shutil
        part = quarantine_tmp_for(qdir, op)
        shutil.copy2(path, part)
        fd = os.open(part, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(part, target)
    fsync_dir(qdir)
    return target


_LIBC = ctypes.CDLL(None, use_errno=True)


_AT_FDCWD, _RENAME_NOREPLACE = -100, 1
_renameat2 = getattr(_LIBC, "renameat2", None)


def _rename_noreplace(src: str, dst: str) -> bool:
    """renameat2(RENAME_NOREPLACE): True when renamed; False when this system or filesystem cannot (nothing
    done); OSError otherwise (EEXIST when ``dst`` exists)."""
    if _renameat2 is None:
        return False
    if _renameat2(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst), _RENAME_NOREPLACE) == 0:
        return True
    e = ctypes.get_errno()
    if e in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(e, os.strerror(e), dst)


def syncfs(path: str) -> None:
    """syncfs(2) the filesystem holding ``path``: every dirty page of it on disk, write-back errors reported."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        if _LIBC.syncfs(fd) != 0:
            e = ctypes.get_errno()
            raise OSError(e, os.strerror(e), path)
    finally:
        os.close(fd)


def _hash_fd_range(fd: int, size: int, threads: int, stop: threading.Event | None,
                   buf: bytearray | None = None) -> str | None:
    """blake3 of bytes [0, size) of ``fd``; None when ``stop`` was set first or the file is shorter.

    Large files are memory-mapped (no copy out of the page cache; blake3 hashes the map with ``threads``
    threads, without the GIL); small ones are read with pread (into ``buf`` when given).
    """
    h = blake3.blake3(max_threads=threads) if threads != 1 else blake3.blake3()
    if size >= BIG:
        try:
            if os.fstat(fd).st_size < size:
                return None
            with mmap.mmap(fd, size, access=mmap.ACCESS_READ) as mm:
                mm.madvise(mmap.MADV_SEQUENTIAL)
                view = memoryview(mm)
                try:
                    for off in range(0, size, MAP_STEP):
                        if stop is not None and stop.is_set():
                            return None
                        h.update(view[off:off + MAP_STEP])
                finally:
                    view.release()
        except (OSError, ValueError):
            return None
        return h.hexdigest()
    mv = memoryview(buf if buf is not None else bytearray(min(RANGE_CHUNK, max(size, 1))))
    off = 0
    while off < size:
        n = os.preadv(fd, [mv[:min(len(mv), size - off)]], off)
        if n == 0:
            break
        h.update(mv[:n])
        off += n
    return h.hexdigest() if off == size else None


def make_parents(src: str, dst: str) -> None:
    """Create dst's missing parent directories with the mode and owner of src's (durably)."""
    missing = []
    d, s = os.path.dirname(dst), os.path.dirname(src)
    while not os.path.isdir(d):
        missing.append((d, s))
        d, s = os.path.dirname(d), os.path.dirname(s)
    for d, s in reversed(missing):
        try:
            st = os.stat(s)
            os.mkdir(d, stat.S_IMODE(st.st_mode))
            os.chown(d, st.st_uid, st.st_gid)
        except FileExistsError:
            continue
        except OSError as err:
            if not os.path.isdir(d):
                raise RemediationError(f"cannot create {d}: {err.strerror}") from err
        fsync_dir(os.path.dirname(d))


def _hash_and_close(fd: int, size: int, threads: int) -> str:
    try:
        return _hash_fd_range(fd, size, threads, None) or ""
    finally:
        os.close(fd)


def fsync_dir(path: str) -> None:
    """fsync a directory (makes a rename or unlink in it durable)."""
    fd = os.open(path or ".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _unlink_quiet(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
