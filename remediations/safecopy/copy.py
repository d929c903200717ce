"""The data copy of one file (source -> temporary file beside the destination): bytes, digests, metadata.

Small files: read, hash and write through one buffer, then read back and compare. Files of ``BIG`` bytes and
more: the kernel copies (copy_file_range) while a helper pool hashes the source and then the read-back; the
caller compares both digests later (after its ``syncfs``, which they overlap). Where the kernel cannot copy,
the loop is used.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

from remediations.safecopy.errors import Abort
from remediations.safecopy.throttle import Throttle
from remediations.safecopy.verify import BIG, RANGE_CHUNK, check_digests, hash_and_close, hash_fd_range, hasher

CHUNK = 1 << 20

Progress = Callable[[int], None]
Pending = tuple[Future[str], Future[str]]    # big files: (source, read-back) digests computed in the pool


class Copier:
    """Copies files with a bandwidth limit and progress; owns its buffer and its hash threads."""

    def __init__(self, throttle: Throttle, progress: Progress | None = None, chunk: int = CHUNK,
                 hash_threads: int = 4, preallocate: bool = True) -> None:
        self.throttle = throttle
        self.progress = progress
        self.chunk = chunk
        self.hash_threads = hash_threads  # blake3 threads for files of BIG bytes and more
        self.preallocate = preallocate   # fallocate the temp file first: a full disk fails before any copying
        self._buf = bytearray(chunk)
        self._pool: ThreadPoolExecutor | None = None

    def copy(self, src: str, tmp: str, st: os.stat_result, fsync: bool, warnings: list[str]) -> str | Pending:
        """src -> tmp (created, must not exist) with metadata; fsync when ``fsync``. The verified digest of a
        small file, or the pending (source, read-back) digests of a big one. :class:`Abort` or OSError."""
        try:
            sfd = os.open(src, os.O_RDONLY | os.O_NOATIME | os.O_CLOEXEC)
        except PermissionError:
            sfd = os.open(src, os.O_RDONLY | os.O_CLOEXEC)
        try:
            tfd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOATIME | os.O_CLOEXEC, 0o600)
            try:
                if st.st_size > self.chunk and self.preallocate:   # (one write: that write fails just as early)
                    try:
                        os.posix_fallocate(tfd, 0, st.st_size)   # ENOSPC before any copying
                    except OSError as err:
                        if err.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
                            raise
                src_hash = self._copy_range(sfd, tfd, st.st_size) if st.st_size >= BIG else None
                out: str | Pending
                if src_hash is not None:
                    vfd = os.open(tmp, os.O_RDONLY | os.O_NOATIME | os.O_CLOEXEC)   # atime stays as set
                    out = (src_hash, self._executor().submit(hash_and_close, vfd, st.st_size, self.hash_threads))
                else:
                    out = self._copy_loop(sfd, tfd, st.st_size)
                    check_digests(self._hash_fd(tfd, st.st_size), out)   # before utime: may move the atime
                copy_meta(sfd, tfd, st, warnings)
                if fsync:
                    os.fsync(tfd)
            finally:
                os.close(tfd)
        finally:
            os.close(sfd)
        return out

    def close(self) -> None:
        """Stop the hash threads (waiting for running hashes)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None

    def _executor(self) -> ThreadPoolExecutor:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(2, thread_name_prefix="safecopy-hash")
        return self._pool

    def _account(self, n: int) -> None:
        self.throttle.consume(n)
        if self.progress is not None:
            self.progress(n)

    def _copy_loop(self, sfd: int, tfd: int, size: int) -> str:
        """Copy and hash the ``size`` bytes the source had (growth since is caught by the re-stat)."""
        h = hasher()
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
            raise Abort("failed", f"source changed size during copy ({size} -> {total})")
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
                fut = self._executor().submit(hash_and_close, os.dup(sfd), size, self.hash_threads)
            if n == 0:
                break
            off += n
            self._account(n)
        if off != size or fut is None:
            raise Abort("failed", f"source changed size during copy ({size} -> {off})")
        return fut

    def _hash_fd(self, fd: int, size: int) -> str:
        """blake3 of the first ``size`` bytes of an open file (pread: the file offset is not used)."""
        return hash_fd_range(fd, size, self.hash_threads if size >= BIG else 1, None, self._buf) or ""


def copy_meta(sfd: int, tfd: int, st: os.stat_result, warnings: list[str]) -> None:
    """Owner, mode, xattrs, then atime/mtime (last: the others would not change them, writes would).
    A copy that cannot have the source's owner is refused (:class:`Abort`): ownership is user data."""
    try:
        tst = os.fstat(tfd)
        if (tst.st_uid, tst.st_gid) != (st.st_uid, st.st_gid):   # (a no-op chown could still be filtered)
            os.fchown(tfd, st.st_uid, st.st_gid)
    except PermissionError as err:
        raise Abort("failed", f"cannot keep the owner {st.st_uid}:{st.st_gid}: chown not permitted "
                              f"({err.strerror}); file left as it was", err.errno or 0) from err
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
