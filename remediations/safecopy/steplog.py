"""The step log: an append-only, fsynced JSON-lines file recording each operation's steps before the next."""

from __future__ import annotations

import fcntl
import json
import os
import time
from typing import Any

from remediations.safecopy.errors import SafeCopyError
from remediations.safecopy.fsops import fsync_dir

OPEN_STEPS = ("begin", "copied", "renamed")
FINAL_STEPS = ("done", "failed", "skipped", "rolledback")
_JSON = json.JSONEncoder(separators=(",", ":"))   # one encoder (json.dumps with options builds one per call)

class StepLog:
    """An append-only JSON-lines log; every record is one write followed by fsync (``durable``).

    A torn last line (power loss mid-write) is ignored on reading. An exclusive ``flock`` is held while a
    :class:`SafeMover` works, so two runs never interleave on one log.
    """

    def __init__(self, path: str, durable: bool = True) -> None:
        self.path = path
        self.durable = durable
        self._held: list[bytes] = []
        try:
            os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
            self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
            size = os.fstat(self._fd).st_size
            if size:
                with open(path, "rb") as f:
                    f.seek(size - 1)
                    if f.read(1) != b"\n":
                        os.write(self._fd, b"\n")   # seal a torn last line
        except OSError as err:
            raise SafeCopyError(f"cannot open step log {path}: {err.strerror}") from err

    def lock(self, blocking: bool = True) -> None:
        """Take the exclusive lock (released by :meth:`close` or when the process dies)."""
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except OSError as err:
            raise SafeCopyError(f"step log {self.path} is in use by another run") from err

    def record(self, op: str, step: str, sync: bool = True, **fields: Any) -> None:
        """Append one record; durably unless ``sync`` is False: then it is held until :meth:`sync` writes every
        held record at once (nothing may rely on it before that)."""
        line = _JSON.encode({"op": op, "step": step, "t": time.time(), **fields}) + "\n"
        self._held.append(line.encode())
        if sync:
            self.sync()

    def sync(self) -> None:
        """Write the held records (one write) and make them durable (one fdatasync)."""
        if not self._held:
            return
        data = b"".join(self._held)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(self._fd, view):]
            if self.durable:
                os.fdatasync(self._fd)
        except OSError as err:
            raise SafeCopyError(f"cannot write step log {self.path}: {err.strerror}") from err
        self._held.clear()

    def records(self) -> list[dict[str, Any]]:
        """Every complete record, in order."""
        out = []
        try:
            with open(self.path, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            return out
        for raw in data.split(b"\n"):
            if not raw:
                continue
            try:
                rec = json.loads(raw)
            except ValueError:
                continue
            if isinstance(rec, dict) and "op" in rec and "step" in rec:
                out.append(rec)
        return out

    def ops(self) -> dict[str, dict[str, Any]]:
        """Per operation: the begin record's fields merged with later ones; ``step`` is the last step."""
        ops: dict[str, dict[str, Any]] = {}
        for rec in self.records():
            ops.setdefault(rec["op"], {}).update(rec)
        return ops

    def rotate(self, max_bytes: int) -> bool:
        """When every op is final and the log is larger than ``max_bytes``, keep it as ``.1`` and start anew."""
        if os.fstat(self._fd).st_size <= max_bytes or any(o["step"] in OPEN_STEPS for o in self.ops().values()):
            return False
        os.replace(self.path, self.path + ".1")
        new = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        fcntl.flock(new, fcntl.LOCK_EX)
        os.close(self._fd)
        self._fd = new
        fsync_dir(os.path.dirname(self.path) or ".")
        return True

    def close(self) -> None:
        """Write what is held, close (and unlock)."""
        if self._fd >= 0:
            try:
                self.sync()
            finally:
                os.close(self._fd)
            self._fd = -1


