"""sd_notify over the AF_UNIX datagram socket named by $NOTIFY_SOCKET (no libsystemd needed)."""

from __future__ import annotations

import os
import socket


class Notifier:
    """Sends READY / RELOADING / STOPPING / WATCHDOG / STATUS messages to systemd; a no-op outside it."""

    def __init__(self, environ: dict[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        addr = env.get("NOTIFY_SOCKET", "")
        if addr.startswith("@"):  # abstract namespace
            addr = "\0" + addr[1:]
        self.address = addr or None
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        mine = not pid or pid == str(os.getpid())
        self.watchdog_interval = int(usec) / 1e6 if usec.isdigit() and mine else None
        self._sock: socket.socket | None = None

    @property
    def enabled(self) -> bool:
        """True when running under systemd with Type=notify."""
        return self.address is not None

    def send(self, *fields: str) -> bool:
        """Send ``KEY=VALUE`` lines; return False when not under systemd or the send failed."""
        if self.address is None:
            return False
        if self._sock is None:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        try:
            self._sock.sendto("\n".join(fields).encode(), self.address)
        except OSError:
            return False
        return True

    def ready(self, status: str = "") -> bool:
        """READY=1 (plus STATUS)."""
        return self.send("READY=1", *([f"STATUS={status}"] if status else []))

    def reloading(self) -> bool:
        """RELOADING=1 with the monotonic timestamp systemd 253+ expects."""
        import time

        return self.send("RELOADING=1", f"MONOTONIC_USEC={int(time.monotonic() * 1e6)}")

    def stopping(self) -> bool:
        """STOPPING=1."""
        return self.send("STOPPING=1")

    def watchdog(self) -> bool:
        """WATCHDOG=1: call only while the sampling loop is on time."""
        return self.send("WATCHDOG=1")

    def status(self, text: str) -> bool:
        """STATUS=... shown by systemctl status."""
        return self.send(f"STATUS={text}")
