"""Space and inodes per mounted filesystem (node_exporter's filesystem collector), safe on hung mounts.

Mounts come from ``/proc/1/mountinfo`` (the host's mount namespace), or ``/proc/self/mountinfo`` when
``hidepid`` hides pid 1. ``statvfs`` runs on a worker thread under ``stat_timeout``: a mount whose call
does not return in time (a dead NFS server) reports ``node_filesystem_device_error 1`` and no size
series, and is not stat'ed again until the hung call returns, so one hung mount costs one blocked
thread, once (node_exporter's ``stuckMounts``; its issues 244 and 578 are what this avoids).

Default excludes are node_exporter's (mount points under /dev, /proc, /sys, container storage; pseudo
filesystem types) plus ``tmpfs``. Sizes use ``f_frsize``, the unit POSIX gives ``f_blocks`` in (what
``df`` shows); node_exporter multiplies by ``f_bsize``, which is the same number on Linux except for
FUSE filesystems that report the two differently.
"""

from __future__ import annotations

import os
import queue
import re
import threading
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import structlog
from pydantic import Field

from agent.collectors.common import DeviceFilter
from agent.core.config import CollectorConfig, Duration, Regex
from agent.core.errors import CollectorError, NoData
from agent.core.metrics import Labels, MetricSpec, Sample
from agent.core.paths import Paths

NAME = "filesystem"
log = structlog.get_logger(NAME)

# node_exporter's defaults (``^/(...)($|/)`` searched) rewritten for full-match semantics.
DEFAULT_MOUNT_POINTS_EXCLUDE = (
    r"/(dev|proc|run/credentials/.+|sys|var/lib/docker/.+|var/lib/containers/storage/.+)(/.*)?"
)
DEFAULT_FS_TYPES_EXCLUDE = (
    r"autofs|binfmt_misc|bpf|cgroup2?|configfs|debugfs|devpts|devtmpfs|fusectl|hugetlbfs|iso9660|mqueue|nsfs"
    r"|overlay|proc|procfs|pstore|rpc_pipefs|securityfs|selinuxfs|squashfs|erofs|sysfs|tracefs|tmpfs"
)

StatResult = Any  # os.statvfs_result, an Exception the call raised, or None when it timed out
_IDLE_EXIT = 60.0  # an idle worker thread exits after this long; the next round starts a new one
_ESCAPE = re.compile(r"\\([0-7]{3})")


class Mount(NamedTuple):
    """One line of ``/proc/<pid>/mountinfo`` (proc(5)), octal escapes decoded."""

    mount_id: int
    parent_id: int
    major: int
    minor: int
    root: str
    mountpoint: str
    options: tuple[str, ...]
    optional: tuple[str, ...]
    fstype: str
    source: str
    super_options: tuple[str, ...]

    @property
    def readonly(self) -> bool:
        """Mounted read-only, per-mount or for the whole superblock (as node_exporter decides it)."""
        return "ro" in self.options or "ro" in self.super_options


def _unescape(field: str) -> str:
    """Undo the kernel's ``\\ooo`` escapes (space, tab, newline and backslash in paths)."""
    return _ESCAPE.sub(lambda m: chr(int(m.group(1), 8)), field) if "\\" in field else field


def parse_mountinfo(text: str) -> list[Mount]:
    """Parse mountinfo text; malformed lines are skipped.

    Format: ``id parent major:minor root mountpoint options [optional fields...] - fstype source superoptions``.
    """
    mounts = []
    for line in text.split("\n"):
        f = line.split(" ")
        try:
            sep = f.index("-", 6)
            major, minor = f[2].split(":")
            mounts.append(Mount(
                int(f[0]), int(f[1]), int(major), int(minor), _unescape(f[3]), _unescape(f[4]),
                tuple(f[5].split(",")), tuple(f[6:sep]),
                _unescape(f[sep + 1]), _unescape(f[sep + 2]), tuple(f[sep + 3].split(",")),
            ))
        except (ValueError, IndexError):
            continue
    return mounts


def _spec(name: str, help_: str) -> MetricSpec:
    return MetricSpec(f"node_filesystem_{name}", "gauge", help_, ("device", "fstype", "mountpoint"))


SIZE = _spec("size_bytes", "Filesystem size in bytes.")
FREE = _spec("free_bytes", "Filesystem free space in bytes.")
AVAIL = _spec("avail_bytes", "Filesystem space available to non-root users in bytes.")
FILES = _spec("files", "Filesystem total file nodes.")
FILES_FREE = _spec("files_free", "Filesystem total free file nodes.")
READONLY = _spec("readonly", "Filesystem read-only status.")
DEVICE_ERROR = _spec("device_error", "Whether an error occurred while getting statistics for the given device.")


class _Target(NamedTuple):
    labels: Labels
    path: str  # where to statvfs (under rootfs)
    readonly: float


def _label(value: str) -> str:
    """A label value that is valid UTF-8 even when the path is not (surrogateescape'd bytes)."""
    return value if value.isascii() else value.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


class FilesystemConfig(CollectorConfig):
    """node_exporter filesystem collector equivalent."""

    mount_points_include: Regex | None = None
    mount_points_exclude: Regex | None = None
    fs_types_include: Regex | None = None
    fs_types_exclude: Regex | None = None
    stat_timeout: Duration = Field(1.0, gt=0, description="deadline for one statfs() call")


class FilesystemCollector:
    """``node_filesystem_*`` per mount, filtered by fully anchored mount point and fs type regexes.

    An ``*_exclude`` left at null means the default exclude unless the matching ``*_include`` is set
    (as node_exporter); ``""`` excludes nothing. ``statvfs`` is injectable for tests.
    """

    NAME = NAME
    Config = FilesystemConfig
    metrics = [SIZE, FREE, AVAIL, FILES, FILES_FREE, READONLY, DEVICE_ERROR]

    def __init__(
        self,
        config: FilesystemConfig,
        paths: Paths,
        *,
        statvfs: Callable[[str], os.statvfs_result] = os.statvfs,
        **_deps: Any,
    ) -> None:
        self.name = NAME
        self._paths = paths
        self._sources = (paths.proc("1", "mountinfo"), paths.proc("self", "mountinfo"))
        self._mp = DeviceFilter(config.mount_points_include, config.mount_points_exclude, DEFAULT_MOUNT_POINTS_EXCLUDE)
        self._fs = DeviceFilter(config.fs_types_include, config.fs_types_exclude, DEFAULT_FS_TYPES_EXCLUDE)
        self._stat = StatRunner(statvfs, config.stat_timeout)
        self._last_text: str | None = None
        self._targets: list[_Target] = []

    @property
    def stuck_mounts(self) -> frozenset[str]:
        """Paths whose statvfs call timed out and has not returned yet."""
        return self._stat.stuck

    @property
    def threads_started(self) -> int:
        """Worker threads started so far (one, plus one per mount that ever hung)."""
        return self._stat.threads_started

    def close(self) -> None:
        """Let the idle worker thread exit now (it also exits by itself when idle)."""
        self._stat.close()

    def _read_mountinfo(self) -> str:
        err: OSError | None = None
        for path in self._sources:
            try:
                with open(path, "rb", buffering=0) as f:
                    return f.readall().decode("utf-8", "surrogateescape")
            except (FileNotFoundError, PermissionError) as e:  # hidepid hides /proc/1
                err = e
            except OSError as e:
                raise CollectorError(f"cannot read {path}: {e.strerror or e}") from e
        raise CollectorError(f"cannot read {' or '.join(self._sources)}: {err}") from err

    def _strip_rootfs(self, mountpoint: str) -> str:
        root = self._paths.rootfs.rstrip("/")
        if not root:
            return mountpoint
        if mountpoint == root:
            return "/"
        return mountpoint[len(root):] if mountpoint.startswith(root + "/") else mountpoint

    def _select(self, mounts: list[Mount]) -> list[_Target]:
        targets, seen = [], set()
        for m in mounts:
            mountpoint = self._strip_rootfs(m.mountpoint)
            if not (self._mp(mountpoint) and self._fs(m.fstype)):
                continue
            labels = (("device", _label(m.source)), ("fstype", _label(m.fstype)), ("mountpoint", _label(mountpoint)))
            if labels not in seen:  # the same mount listed twice (over-mounts, propagation)
                seen.add(labels)
                targets.append(_Target(labels, self._paths.root(mountpoint), 1.0 if m.readonly else 0.0))
        return targets

    def collect(self) -> list[Sample]:
        """One round: a device_error and readonly sample per mount, sizes for those statvfs answered."""
        text = self._read_mountinfo()
        if text != self._last_text:  # mounts rarely change: parse and filter only when they do
            self._targets = self._select(parse_mountinfo(text))
            self._last_text = text
        targets = self._targets
        if not targets:
            raise NoData("no filesystems left after filtering")
        results = self._stat.run([t.path for t in targets])
        out: list[Sample] = []
        append = out.append
        for t in targets:
            r = results[t.path]
            labels = t.labels
            append(Sample(READONLY.name, labels, t.readonly))
            if r is None or isinstance(r, BaseException):
                append(Sample(DEVICE_ERROR.name, labels, 1.0))
                continue
            append(Sample(DEVICE_ERROR.name, labels, 0.0))
            unit = float(r.f_frsize or r.f_bsize)
            append(Sample(SIZE.name, labels, float(r.f_blocks) * unit))
            append(Sample(FREE.name, labels, float(r.f_bfree) * unit))
            append(Sample(AVAIL.name, labels, float(r.f_bavail) * unit))
            append(Sample(FILES.name, labels, float(r.f_files)))
            append(Sample(FILES_FREE.name, labels, float(r.f_ffree)))
        return out


class _Job:
    __slots__ = ("finished", "paths", "pos", "results", "started")

    def __init__(self, paths: list[str], pos: int, results: dict[str, StatResult]) -> None:
        self.paths, self.pos, self.results = paths, pos, results
        self.started: float | None = None  # when the call on paths[pos] began
        self.finished = threading.Lock()  # released by the worker when the last path is done
        self.finished.acquire()


class _Worker:
    __slots__ = ("abandoned", "busy", "exited", "jobs")

    def __init__(self) -> None:
        self.jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self.abandoned = self.busy = self.exited = False


class StatRunner:
    """Runs a round of statvfs calls on one worker thread, each under ``timeout``.

    The caller waits for the whole round (one hand-off, not one per path). When a call outlives
    ``timeout`` the round marks that path stuck, leaves the worker blocked in the call and goes on with
    a new worker. The abandoned worker clears the mark and exits once the call returns; until then the
    path is answered ``None`` without a call. Threads: one live worker plus one per stuck path.
    """

    def __init__(self, statvfs: Callable[[str], Any], timeout: float) -> None:
        self._statvfs = statvfs
        self._timeout = max(timeout, 0.01)
        self._lock = threading.Lock()
        self._stuck: set[str] = set()
        self._worker: _Worker | None = None
        self.threads_started = 0

    @property
    def stuck(self) -> frozenset[str]:
        """Paths with a call still hung."""
        with self._lock:
            return frozenset(self._stuck)

    def close(self) -> None:
        """Tell the idle worker to exit."""
        with self._lock:
            if self._worker is not None:
                self._worker.jobs.put(None)
                self._worker = None

    def run(self, paths: list[str]) -> dict[str, StatResult]:
        """``{path: statvfs result | exception | None}``; None for a stuck or timed-out path."""
        results: dict[str, StatResult] = {}
        with self._lock:
            todo = []
            for path in dict.fromkeys(paths):
                if path in self._stuck:
                    results[path] = None
                else:
                    todo.append(path)
        pos = 0
        while pos < len(todo):
            pos = self._run_job(todo, pos, results)
        return results

    def _run_job(self, paths: list[str], pos: int, results: dict[str, StatResult]) -> int:
        """Hand ``paths[pos:]`` to a worker; return where the next job must start."""
        job = _Job(paths, pos, results)
        with self._lock:
            w = self._worker
            if w is None or w.exited or w.busy:  # none, gone idle, or busy with another caller's round
                w = self._worker = _Worker()
                threading.Thread(target=self._work, args=(w,), name="nodewarden-statvfs", daemon=True).start()
                self.threads_started += 1
            w.busy = True
            w.jobs.put(job)
        while True:
            with self._lock:
                if job.pos == len(paths):
                    return job.pos
                left = self._timeout if job.started is None else job.started + self._timeout - time.monotonic()
                if left <= 0:
                    hung, resume = paths[job.pos], job.pos + 1
                    self._stuck.add(hung)
                    results[hung] = None
                    w.abandoned = True
                    if self._worker is w:
                        self._worker = None
                    break
            if job.finished.acquire(timeout=left):
                return len(paths)
        log.warning("statvfs_timeout", path=hung, timeout=self._timeout, action="not stat'ed again until it returns")
        return resume

    def _work(self, w: _Worker) -> None:
        lock, statvfs = self._lock, self._statvfs
        while True:
            try:
                job = w.jobs.get(timeout=_IDLE_EXIT)
            except queue.Empty:
                job = None
            with lock:
                if job is None:
                    if not w.jobs.empty():  # a round arrived while we were timing out
                        continue
                    w.exited = True
                    if self._worker is w:
                        self._worker = None
                    return
                job.started = time.monotonic()
            while True:
                path = job.paths[job.pos]
                try:
                    result: StatResult = statvfs(path)
                except Exception as err:  # any failure is this mount's device_error
                    result = err
                with lock:
                    if not w.abandoned:
                        job.results[path] = result
                        job.pos += 1
                        if job.pos < len(job.paths):
                            job.started = time.monotonic()
                            continue
                        w.busy = False
                        w.exited = self._worker is not w  # replaced while busy: don't linger idle
                if w.abandoned:  # the round gave up on this call: unmark the path and go away
                    log.info("statvfs_returned", path=path, note="stuck mount will be stat'ed again")
                    with lock:
                        self._stuck.discard(path)
                    return
                job.finished.release()
                if w.exited:
                    return
                break
