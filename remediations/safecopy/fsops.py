"""Filesystem primitives of the safe-copy protocol: temporary names, durable directory changes, the no-replace
place, the idempotent source action, quarantine and parent directories. No state; every function is one step."""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import shutil
import stat
import time
import uuid

from agent.core.errors import RemediationError
from remediations.safecopy.errors import Abort

TMP_PREFIX = ".nwtmp."

_LIBC = ctypes.CDLL(None, use_errno=True)
_AT_FDCWD, _RENAME_NOREPLACE = -100, 1
_renameat2 = getattr(_LIBC, "renameat2", None)


def tmp_path_for(dst: str, op: str) -> str:
    """The temporary file of operation ``op`` beside ``dst``."""
    return os.path.join(os.path.dirname(dst), f"{TMP_PREFIX}{op}.{os.path.basename(dst)}"[:255])


def quarantine_tmp_for(qdir: str, op: str) -> str:
    """The partial cross-filesystem quarantine copy of operation ``op``."""
    return os.path.join(qdir, f"{TMP_PREFIX}{op}.q")


def link_tmp_for(src: str, op: str) -> str:
    """The temporary symlink of operation ``op`` beside ``src``."""
    return os.path.join(os.path.dirname(src), f"{TMP_PREFIX}{op}.lnk")


def fsync_dir(path: str) -> None:
    """fsync a directory (makes a rename or unlink in it durable)."""
    fd = os.open(path or ".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def syncfs(path: str) -> None:
    """syncfs(2) the filesystem holding ``path``: every dirty page of it on disk, write-back errors reported."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        if _LIBC.syncfs(fd) != 0:
            e = ctypes.get_errno()
            raise OSError(e, os.strerror(e), path)
    finally:
        os.close(fd)


def unlink_quiet(path: str) -> None:
    """unlink, a missing file being fine."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def rename_noreplace(src: str, dst: str) -> bool:
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


def place(tmp: str, dst: str, replace: bool) -> None:
    """tmp -> dst: rename when replacing, else link (never replaces) + unlink. The caller fsyncs the dir.
    :class:`Abort` (skipped) when dst appeared meanwhile."""
    if replace:
        os.rename(tmp, dst)
        return
    try:
        if rename_noreplace(tmp, dst):
            return
        os.link(tmp, dst)          # never replaces: EEXIST if dst appeared meanwhile
    except OSError as err:
        if err.errno == errno.EEXIST:
            raise Abort("skipped", "destination appeared during copy") from err
        if err.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.EMLINK):
            raise
        if os.path.lexists(dst):
            raise Abort("skipped", "destination appeared during copy") from err
        os.rename(tmp, dst)
    else:
        os.unlink(tmp)


def source_action(op: str, src: str, dst: str, after: str, dev: int, ino: int, sync: bool = True) -> bool:
    """Idempotent: unlink src or replace it with a symlink, only while it is still the original inode.
    True when src's directory changed (and, unless ``sync``, still needs an fsync)."""
    if after == "keep":
        return False
    lnk = link_tmp_for(src, op)
    if after == "symlink":
        unlink_quiet(lnk)      # a crash may have left it
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


def quarantine(path: str, qdir: str, op: str) -> str:
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
        except FileExistsError:
            continue
        except OSError as err:
            if not os.path.isdir(d):
                raise RemediationError(f"cannot create {d}: {err.strerror}") from err
            continue   # made by someone else meanwhile
        try:
            os.chown(d, st.st_uid, st.st_gid)
        except OSError as err:   # a directory the source's owner might not be able to use: undo it
            with contextlib.suppress(OSError):
                os.rmdir(d)
            raise RemediationError(f"cannot keep the owner {st.st_uid}:{st.st_gid} of {d}: chown failed "
                                   f"({err.strerror})") from err
        fsync_dir(os.path.dirname(d))
