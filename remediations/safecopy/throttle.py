"""Bandwidth limit of a copy (and of the scrubber's reads)."""

from __future__ import annotations

import time
from collections.abc import Callable


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


