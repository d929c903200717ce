"""Run one collector's ``collect()`` in its own worker thread, under a deadline.

Each collector gets exactly one worker thread for its lifetime. A call that misses its deadline keeps its
thread; until it returns, later ticks do not start another call for that collector (they report it as
hung). Threads are therefore bounded by the number of collectors, and a hung collector never delays the
others, the tick, or a scrape.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from agent.core.errors import NoData
from agent.core.metrics import Collector, CollectorCloses, PartialSamples, Sample

Status = Literal["ok", "nodata", "error", "timeout", "hung"]


@dataclass(slots=True)
class Outcome:
    """What one collector produced in one tick."""

    status: Status
    samples: list[Sample] = field(default_factory=list)
    duration: float = 0.0
    error: str = ""

    @property
    def success(self) -> bool:
        """ok and nodata count as success (no devices is not a failure)."""
        return self.status in ("ok", "nodata")


class CollectorRunner:
    """One collector, one worker thread, one call at a time."""

    def __init__(self, collector: Collector, timeout: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.collector = collector
        self.name = collector.name
        self.timeout = timeout
        self._clock = clock
        self._cond = threading.Condition()
        self._pending = False  # a call was requested and has not finished
        self._finished = False
        self._started_at = 0.0
        self._outcome = Outcome("ok")
        self._closed = False
        self._thread = threading.Thread(target=self._work, name=f"collector-{self.name}", daemon=True)
        self._thread.start()

    @property
    def busy(self) -> bool:
        """True while a call is in flight (possibly hung)."""
        with self._cond:
            return self._pending

    def kick(self) -> bool:
        """Request one call; False when the previous call is still running (hung)."""
        with self._cond:
            if self._pending:
                return False
            self._pending = True
            self._finished = False
            self._started_at = self._clock()
            self._cond.notify_all()
            return True

    def wait(self, deadline: float) -> Outcome:
        """Wait until the call finishes or the monotonic ``deadline`` passes."""
        with self._cond:
            while not self._finished:
                left = deadline - self._clock()
                if left <= 0:
                    return Outcome("timeout", duration=self._clock() - self._started_at,
                                   error=f"collect() still running after {self.timeout:.3g}s")
                self._cond.wait(left)
            return self._outcome

    def run_once(self) -> Outcome:
        """kick + wait with the runner's own timeout (for ``nodewarden sample``)."""
        if not self.kick():
            return self.hung_outcome()
        return self.wait(self._clock() + self.timeout)

    def hung_outcome(self) -> Outcome:
        """Outcome reported for a tick where the previous call has not returned yet."""
        since = self._clock() - self._started_at
        return Outcome("hung", duration=since, error=f"previous collect() still running for {since:.1f}s")

    def close(self) -> None:
        """Ask the worker to exit after its current call (it is a daemon thread either way)."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        if isinstance(self.collector, CollectorCloses):
            self.collector.close()

    def _work(self) -> None:
        while True:
            with self._cond:
                while not (self._pending and not self._finished) and not self._closed:
                    self._cond.wait()
                if self._closed:
                    return
            t0 = self._clock()
            try:
                outcome = Outcome("ok", list(self.collector.collect()))
            except NoData as err:
                outcome = Outcome("nodata", error=str(err))
            except Exception as err:  # a plugin failure is data: report it, keep the loop running
                # An error may carry partial samples (e.g. the GPU collector's hung-driver report).
                partial = list(err.samples) if isinstance(err, PartialSamples) else []
                outcome = Outcome("error", partial, error=f"{type(err).__name__}: {err}")
            outcome.duration = self._clock() - t0
            with self._cond:
                self._outcome = outcome
                self._finished = True
                self._pending = False
                self._cond.notify_all()
