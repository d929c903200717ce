"""One process per state directory: an exclusive ``flock`` on ``STATE_DIR/nodewarden.lock``.

``nodewarden run``, ``act`` and ``migrate`` take it before they recover the journal, so a second instance
never settles (or repeats) an action the first one is still running. The lock file holds the owner's PID
for the refusal message; the kernel drops the lock when the process dies (kill -9 included), so a stale
file never blocks a restart.
"""

from __future__ import annotations

import fcntl
import os

from agent.core.errors import NodewardenError

FILENAME = "nodewarden.lock"


class StateDirLocked(NodewardenError):
    """Another live process holds the state directory."""


class StateLock:
    """The state directory's single-instance lock. ``acquire()``, then ``release()`` (or use ``with``)."""

    def __init__(self, state_dir: str) -> None:
        self.path = os.path.join(state_dir, FILENAME)
        self._fd: int | None = None

    def acquire(self) -> StateLock:
        """Take the lock (non-blocking); StateDirLocked naming the holder's PID when another process has it."""
        if self._fd is not None:
            return self
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise StateDirLocked(f"state dir {os.path.dirname(self.path)} is in use by another nodewarden "
                                 f"(PID {holder}, lock {self.path}); stop it first or use another --state-dir"
                                 ) from None
        except OSError:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        """Drop the lock (the file stays; its PID is only read while someone holds it)."""
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    @property
    def held(self) -> bool:
        """True while this object holds the lock."""
        return self._fd is not None

    def __enter__(self) -> StateLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
