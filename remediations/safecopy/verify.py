"""Hashing and verification: blake3 digests of files and descriptors, and the source-identity check.

Large files are memory-mapped (no copy out of the page cache; blake3 hashes the map with several threads,
without the GIL); small ones are read with pread.
"""

from __future__ import annotations

import mmap
import os
import threading
from typing import Any

from agent.core.errors import RemediationError
from remediations.safecopy.errors import Abort

BIG = 8 << 20             # files this large: kernel copy + hashing in a helper thread, multithreaded blake3
RANGE_CHUNK = 8 << 20
MAP_STEP = 64 << 20       # hash a memory map in steps of this (a stop request is seen between steps)


def hasher(threads: int = 1) -> Any:
    """A fresh blake3 hasher (``threads`` > 1: multithreaded). blake3 is imported on first use: an agent whose
    policy routes restore but protects no dataset never hashes, and does not load it."""
    import blake3

    return blake3.blake3(max_threads=threads) if threads != 1 else blake3.blake3()


def hash_file(path: str, threads: int = 1) -> str:
    """blake3 hex digest of a file (memory-mapped; ``threads`` > 1 hashes large files in parallel)."""
    h = hasher(threads)
    try:
        if os.path.getsize(path) == 0:
            return h.hexdigest()
        h.update_mmap(path)
    except OSError as err:
        raise RemediationError(f"cannot read {path}: {err.strerror}") from err
    return h.hexdigest()


def hash_fd_range(fd: int, size: int, threads: int, stop: threading.Event | None,
                  buf: bytearray | None = None) -> str | None:
    """blake3 of bytes [0, size) of ``fd``; None when ``stop`` was set first or the file is shorter.

    Files of ``BIG`` bytes and more are memory-mapped and hashed with ``threads`` threads; smaller ones are
    read with pread (into ``buf`` when given).
    """
    h = hasher(threads)
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


def hash_and_close(fd: int, size: int, threads: int) -> str:
    """:func:`hash_fd_range` of a descriptor this call owns (closed after); '' when the file is shorter."""
    try:
        return hash_fd_range(fd, size, threads, None) or ""
    finally:
        os.close(fd)


def check_digests(written: str, read: str) -> None:
    """:class:`Abort` (failed) unless the read-back digest equals the source's."""
    if written != read:
        raise Abort("failed", f"verification failed: written {written[:16]} != read {read[:16]}")


def check_source(src: str, st: os.stat_result) -> None:
    """:class:`Abort` (failed) when ``src`` is no longer the file ``st`` described (inode, size, times)."""
    now = os.stat(src, follow_symlinks=False)
    if (now.st_dev, now.st_ino, now.st_size, now.st_mtime_ns, now.st_ctime_ns) != (
            st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns):
        raise Abort("failed", "source changed during copy")


def check_expected(digest: str, expect: str | None) -> None:
    """:class:`Abort` (failed) when a manifest digest is given and the content does not have it."""
    if expect is not None and digest != expect:
        raise Abort("failed", f"content hash {digest[:16]} does not match the expected {expect[:16]}")
