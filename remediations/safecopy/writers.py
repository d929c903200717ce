"""Which processes hold a file open for writing (such a file is never moved): a scan of ``/proc/*/fd``."""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Container, Iterable, Mapping, Sequence

from agent.core.errors import RemediationError
from agent.core.paths import Paths

Writers = Callable[[Sequence[str]], Mapping[str, list[int]]]   # paths -> {path: pids holding it open for writing}

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


