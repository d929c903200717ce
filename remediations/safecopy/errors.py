"""The safe-copy core's two exceptions: a public error and the per-operation abort used inside a batch."""

from __future__ import annotations

from agent.core.errors import RemediationError


class SafeCopyError(RemediationError):
    """The step log cannot be used, or recovery met a state it must not guess about."""


class Abort(Exception):
    """One operation ends early with ``status`` (failed or skipped) and ``reason``; the batch goes on."""

    def __init__(self, status: str, reason: str, err: int = 0) -> None:
        super().__init__(reason)
        self.status, self.reason, self.errno = status, reason, err


class OwnershipRefused(RemediationError):
    """Files would not keep their owner (this process may not chown): nothing is moved. ``reason`` is the
    short token the remediator journals (``refused:ownership``)."""

    reason = "ownership"
