"""Kernel clock discipline from ``adjtimex(2)`` (node_exporter's timex collector: sync state and offset).

``node_timex_sync_status`` is 0 while the kernel reports TIME_ERROR (clock not synchronised), the offset
and jitter are in seconds (nanoseconds with STA_NANO, else microseconds), frequencies in ppm/65536 as
node_exporter converts them. The syscall is injected (``adjtimex=``); parsing is :func:`timex_samples`.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
from collections.abc import Callable
from typing import Any

from agent.core.config import CollectorConfig
from agent.core.errors import CollectorError, NoData
from agent.core.metrics import MetricSpec, Sample
from agent.core.paths import Paths

NAME = "timex"
TIME_ERROR = 5
STA_NANO = 0x2000
PPM16FRAC = 1000000.0 * 65536.0


class Timex(ctypes.Structure):
    """``struct timex`` (Linux, LP64 and ILP32 alike: ctypes applies the C alignment)."""

    _fields_ = [
        ("modes", ctypes.c_uint), ("offset", ctypes.c_long), ("freq", ctypes.c_long), ("maxerror", ctypes.c_long),
        ("esterror", ctypes.c_long), ("status", ctypes.c_int), ("constant", ctypes.c_long),
        ("precision", ctypes.c_long), ("tolerance", ctypes.c_long), ("time_sec", ctypes.c_long),
        ("time_usec", ctypes.c_long), ("tick", ctypes.c_long), ("ppsfreq", ctypes.c_long), ("jitter", ctypes.c_long),
        ("shift", ctypes.c_int), ("stabil", ctypes.c_long), ("jitcnt", ctypes.c_long), ("calcnt", ctypes.c_long),
        ("errcnt", ctypes.c_long), ("stbcnt", ctypes.c_long), ("tai", ctypes.c_int), ("_pad", ctypes.c_int * 11),
    ]


# (metric, type, help, field, scale: "div" = offset divisor, "us", "ppm" or 1)
FIELDS: tuple[tuple[str, str, str, str, str], ...] = (
    ("node_timex_offset_seconds", "gauge", "Time offset in between local system and reference clock.", "offset",
     "div"),
    ("node_timex_frequency_adjustment_ratio", "gauge", "Local clock frequency adjustment.", "freq", "ratio"),
    ("node_timex_maxerror_seconds", "gauge", "Maximum error in seconds.", "maxerror", "us"),
    ("node_timex_estimated_error_seconds", "gauge", "Estimated error in seconds.", "esterror", "us"),
    ("node_timex_status", "gauge", "Value of the status array bits.", "status", "1"),
    ("node_timex_loop_time_constant", "gauge", "Phase-locked loop time constant.", "constant", "1"),
    ("node_timex_tick_seconds", "gauge", "Seconds between clock ticks.", "tick", "us"),
    ("node_timex_pps_frequency_hertz", "gauge", "Pulse per second frequency.", "ppsfreq", "ppm"),
    ("node_timex_pps_jitter_seconds", "gauge", "Pulse per second jitter.", "jitter", "div"),
    ("node_timex_pps_shift_seconds", "gauge", "Pulse per second interval duration.", "shift", "1"),
    ("node_timex_pps_stability_hertz", "gauge", "Pulse per second stability, average of recent frequency changes.",
     "stabil", "ppm"),
    ("node_timex_pps_jitter_total", "counter", "Pulse per second count of jitter limit exceeded events.", "jitcnt",
     "1"),
    ("node_timex_pps_calibration_total", "counter", "Pulse per second count of calibration intervals.", "calcnt",
     "1"),
    ("node_timex_pps_error_total", "counter", "Pulse per second count of calibration errors.", "errcnt", "1"),
    ("node_timex_pps_stability_exceeded_total", "counter", "Pulse per second count of stability limit exceeded "
     "events.", "stbcnt", "1"),
    ("node_timex_tai_offset_seconds", "gauge", "International Atomic Time (TAI) offset.", "tai", "1"),
)
SYNC = MetricSpec("node_timex_sync_status", "gauge", "Is clock synchronized to a reliable server (1 = yes, 0 = no).")
METRICS: list[MetricSpec] = [SYNC, *(MetricSpec(n, t, h) for n, t, h, _, _ in FIELDS)]  # type: ignore[arg-type]


def timex_samples(state: int, tx: dict[str, int]) -> list[Sample]:
    """Samples from adjtimex's return value and struct fields, with node_exporter's conversions."""
    divisor = 1e9 if tx["status"] & STA_NANO else 1e6
    out = [Sample(SYNC.name, (), 0.0 if state == TIME_ERROR else 1.0)]
    for name, _, _, field, scale in FIELDS:
        v = float(tx[field])
        if scale == "div":
            v /= divisor
        elif scale == "us":
            v /= 1e6
        elif scale == "ppm":
            v /= PPM16FRAC
        elif scale == "ratio":
            v = 1 + v / PPM16FRAC
        out.append(Sample(name, (), v))
    return out


@functools.cache
def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


_NAMES = tuple(name for name, _ in Timex._fields_ if name != "_pad")


def adjtimex() -> tuple[int, dict[str, int]]:
    """Read the kernel clock state (modes 0: changes nothing); OSError on failure."""
    libc = _libc()
    tx = Timex()
    state = libc.adjtimex(ctypes.byref(tx))
    if state < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"adjtimex: {os.strerror(err)}")
    return state, {name: getattr(tx, name) for name in _NAMES}


class TimexConfig(CollectorConfig):
    """Clock discipline state (node_exporter timex)."""


class TimexCollector:
    """``node_timex_*``."""

    NAME = NAME
    Config = TimexConfig
    metrics = METRICS

    def __init__(self, config: TimexConfig, paths: Paths, *,
                 adjtimex: Callable[[], tuple[int, dict[str, int]]] = adjtimex, **_deps: Any) -> None:
        self.name = NAME
        self._adjtimex = adjtimex

    def collect(self) -> list[Sample]:
        """One round."""
        try:
            state, tx = self._adjtimex()
        except PermissionError as err:
            raise NoData("adjtimex not permitted") from err
        except OSError as err:
            raise CollectorError(str(err)) from err
        return timex_samples(state, tx)
