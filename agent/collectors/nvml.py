"""NVML facade: loads ``pynvml`` (or the simulation fake), runs calls under a deadline, translates errors.

* Every NVML call runs in a worker thread. The caller waits at most ``call_timeout`` *per call*: a batch
  of calls submitted together (one tick) keeps a progress stamp that each call refreshes, so one
  thread hand-off per tick suffices. A worker stuck in the driver is abandoned (it exits as soon as its
  call returns); at most ``max_abandoned`` may exist at once — beyond that calls are refused with
  :class:`NvmlHung` without starting threads, and they resume when a stuck call comes back.
* ``NVMLError`` never leaves this module untranslated: NotSupported → :data:`UNSUPPORTED` (field absent),
  GpuIsLost → :class:`GpuLost`, Uninitialized / LibraryNotFound / DriverNotLoaded → :class:`NvmlUnavailable`,
  anything else → ``None`` for that field this round (counted in :attr:`Nvml.errors`).
"""

from __future__ import annotations

import importlib
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

from agent.core.errors import CollectorError, NoData

T = TypeVar("T")

# NVML return codes (nvml.h); the same in pynvml and the fake.
NOT_SUPPORTED = 3
NO_PERMISSION = 4
NOT_FOUND = 6
DRIVER_NOT_LOADED = 9
TIMEOUT = 10
LIBRARY_NOT_FOUND = 12
FUNCTION_NOT_FOUND = 13
GPU_IS_LOST = 15
UNINITIALIZED = 1
_UNAVAILABLE = {
    UNINITIALIZED: "NVML is not initialized",
    DRIVER_NOT_LOADED: "the NVIDIA driver is not loaded",
    LIBRARY_NOT_FOUND: "libnvidia-ml.so.1 not found",
    NO_PERMISSION: "no permission to use NVML",
}


class _Unsupported:
    def __repr__(self) -> str:
        return "UNSUPPORTED"


UNSUPPORTED: Any = _Unsupported()  # what Nvml.get returns for NVML_ERROR_NOT_SUPPORTED


class NvmlUnavailable(NoData):
    """No usable NVML on this node (no library, no driver, no GPUs): the agent runs on without GPUs."""


class GpuLost(CollectorError):
    """NVML says the GPU is lost (fallen off the bus, needs a reset)."""


class NvmlHung(CollectorError):
    """An NVML call did not return within its deadline (or too many are still stuck)."""


class _Abandoned(Exception):
    """Raised inside an abandoned batch so it stops making calls."""


_SHARED: dict[tuple[str, int], Any] = {}
_SHARED_LOCK = threading.Lock()


def load_module(simulate: str | None = None, clock: Callable[[], float] = time.monotonic) -> Any:
    """``pynvml``, or a fake NVML module for the simulation scenario ``simulate``.

    One fake per (scenario, clock) in a process: the GPU collector and the remediation plugins of a simulated
    agent see the same simulated GPUs (a power cap a plugin sets is what the collector then reads)."""
    if simulate:
        from agent.collectors import fakenvml

        key = (simulate, id(clock))
        with _SHARED_LOCK:
            if key not in _SHARED:
                _SHARED[key] = fakenvml.load(simulate, clock)
            return _SHARED[key]
    try:
        return importlib.import_module("pynvml")
    except ImportError as err:
        raise NvmlUnavailable("no NVML: the nvidia-ml-py package (pynvml) is not installed") from err


def forget(module: Any) -> None:
    """Drop a shared fake (its collector closed it); the next load_module starts the scenario afresh."""
    with _SHARED_LOCK:
        for key in [k for k, v in _SHARED.items() if v is module]:
            del _SHARED[key]


def unavailable_reason(code: int) -> str:
    """Human reason for an init-time NVML error code."""
    return "no NVML: " + _UNAVAILABLE.get(code, f"NVML error {code}")


class _Job:
    __slots__ = ("abandoned", "args", "done", "error", "fn", "result", "stamp")

    def __init__(self, fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
        self.fn = fn
        self.args = args
        self.done = threading.Event()
        self.result: Any = None
        self.error: BaseException | None = None
        self.abandoned = False
        self.stamp = time.monotonic()


class _Worker:
    """One thread running jobs in order; abandoned when a job overruns."""

    def __init__(self, pool: Caller, name: str) -> None:
        self.pool = pool
        self.jobs: list[_Job] = []
        self.cv = threading.Condition()
        self.abandoned = False
        self.current: _Job | None = None
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)
        self.thread.start()

    def submit(self, job: _Job) -> None:
        with self.cv:
            self.jobs.append(job)
            self.cv.notify()

    def stop(self) -> None:
        with self.cv:
            self.jobs.append(None)  # type: ignore[arg-type]
            self.cv.notify()

    def _run(self) -> None:
        local = self.pool._local
        while True:
            with self.cv:
                while not self.jobs:
                    self.cv.wait()
                job = self.jobs.pop(0)
            if job is None:
                return
            self.current = job
            local.job = job
            try:
                job.result = job.fn(*job.args)
            except BaseException as err:  # handed to the waiting thread
                job.error = err
            local.job = None
            self.current = None
            job.done.set()
            if self.abandoned:
                self.pool._returned(self)
                return


class Caller:
    """Runs functions in an abandonable worker thread with a per-call deadline (see module docstring)."""

    def __init__(self, timeout: float, max_abandoned: int, name: str = "nvml") -> None:
        self.timeout = timeout
        self.max_abandoned = max_abandoned
        self.name = name
        self._lock = threading.Lock()
        self._worker: _Worker | None = None
        self._stuck: set[_Worker] = set()
        self._local = threading.local()
        self._serial = 0
        self.hung_total = 0  # calls that overran their deadline since start

    @property
    def abandoned(self) -> int:
        """Workers still stuck in a call."""
        return len(self._stuck)

    def progress(self) -> None:
        """Mark progress of the current batch (call before each NVML call made inside :meth:`run`)."""
        job = getattr(self._local, "job", None)
        if job is not None:
            if job.abandoned:
                raise _Abandoned
            job.stamp = time.monotonic()

    def run(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(*args)`` in the worker; NvmlHung if a call inside makes no progress for ``timeout``."""
        with self._lock:
            if len(self._stuck) >= self.max_abandoned:
                raise NvmlHung(f"{len(self._stuck)} NVML calls still hung (limit {self.max_abandoned})")
            worker = self._worker
            if worker is None:
                self._serial += 1
                worker = self._worker = _Worker(self, f"{self.name}-{self._serial}")
        job = _Job(fn, args)
        worker.submit(job)
        while True:
            left = job.stamp + self.timeout - time.monotonic()
            if left <= 0:
                break
            if job.done.wait(left):
                if job.error is not None:
                    raise job.error
                return job.result
        with self._lock:
            job.abandoned = True
            if not job.done.is_set():
                worker.abandoned = True
                self._stuck.add(worker)
                if self._worker is worker:
                    self._worker = None
                self.hung_total += 1
                raise NvmlHung(f"NVML call made no progress for {self.timeout:g}s; worker abandoned")
        if job.error is not None:  # finished just as the deadline passed
            raise job.error
        return job.result

    def _returned(self, worker: _Worker) -> None:
        with self._lock:
            self._stuck.discard(worker)

    def close(self) -> None:
        """Stop the live worker (stuck ones exit when their call returns)."""
        with self._lock:
            worker, self._worker = self._worker, None
        if worker is not None:
            worker.stop()
            worker.thread.join(timeout=1.0)


class Nvml:
    """The facade the GPU collector talks to: one NVML module, one :class:`Caller`, error translation."""

    def __init__(self, module: Any, call_timeout: float = 2.0, max_abandoned: int = 4) -> None:
        self.nv = module
        self.caller = Caller(call_timeout, max_abandoned)
        self._error_cls = module.NVMLError
        self.errors = 0  # field reads that failed with an unexpected NVML error

    def run(self, fn: Callable[..., T], *args: Any) -> T:
        """Run a batch of calls (a function using :meth:`get`) under the per-call deadline."""
        return self.caller.run(fn, *args)

    def get(self, fn: Callable[..., T], *args: Any) -> T | None:
        """One NVML call, translated: its value; UNSUPPORTED; None when it failed otherwise.

        Raises GpuLost or NvmlUnavailable.

        Must run inside :meth:`run` (the worker thread)."""
        self.caller.progress()
        try:
            return fn(*args)
        except self._error_cls as err:
            return self._translate(err)

    def _translate(self, err: Any) -> Any:
        code = getattr(err, "value", None)
        if code == NOT_SUPPORTED:
            return UNSUPPORTED
        if code == GPU_IS_LOST:
            raise GpuLost("GPU is lost") from err
        if code in (UNINITIALIZED, DRIVER_NOT_LOADED, LIBRARY_NOT_FOUND):
            raise NvmlUnavailable(unavailable_reason(code)) from err
        self.errors += 1
        return None

    def code(self, err: BaseException) -> int | None:
        """NVML return code of an NVMLError (None for other exceptions)."""
        return getattr(err, "value", None) if isinstance(err, self._error_cls) else None

    def close(self) -> None:
        """Stop the worker thread."""
        self.caller.close()


def text(v: Any) -> str:
    """An NVML string value as ``str`` (bytes decoded, NULs stripped); empty for None and UNSUPPORTED."""
    if v is None or v is UNSUPPORTED:
        return ""
    if isinstance(v, bytes):
        return v.decode("utf-8", "replace").rstrip("\x00")
    return str(v)


def handle_key(handle: Any) -> Any:
    """A hashable identity for an NVML device handle (ctypes pointers compare by address)."""
    try:
        import ctypes

        return ctypes.cast(handle, ctypes.c_void_p).value
    except Exception:
        return handle
