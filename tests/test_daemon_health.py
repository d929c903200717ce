"""Loop health: /healthz turns 503 and WATCHDOG=1 stops when ticks stop (in-process daemon, real HTTP)."""

from __future__ import annotations

import contextlib
import socket
import time
import urllib.error
import urllib.request

from agent.core.config import Config
from agent.daemon import Daemon
from agent.serve.systemd import Notifier


def _get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def test_healthz_and_watchdog_follow_the_loop(tmp_path):
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(tmp_path / "n.sock"))
    sock.settimeout(0.2)
    notifier = Notifier({"NOTIFY_SOCKET": str(tmp_path / "n.sock"), "WATCHDOG_USEC": "500000"})
    cfg = Config.model_validate({"interval": "1s", "listen": "127.0.0.1:0", "state_dir": str(tmp_path / "s")})
    daemon = Daemon(cfg, collector_factory=lambda c: ([], {}), notifier=notifier)
    assert daemon.health.check(time.monotonic()) == (False, "no tick completed yet")
    daemon.start()
    try:
        port = daemon.server.port

        def received(seconds: float) -> list[str]:
            got, end = [], time.monotonic() + seconds
            while time.monotonic() < end:
                with contextlib.suppress(TimeoutError):
                    got += sock.recv(1024).decode().splitlines()
            return got

        assert "WATCHDOG=1" in received(2.0)
        assert _get(port, "/healthz")[0] == 200
        daemon.scheduler.pause()  # the sampling loop stops ticking
        received(3.2)  # > 2 intervals + 1 s grace; drains what was sent while still on time
        status, body = _get(port, "/healthz")
        assert status == 503 and "last tick completed" in body
        assert "WATCHDOG=1" not in received(1.5)
        daemon.scheduler.resume()
        assert "WATCHDOG=1" in received(3.0)
        assert _get(port, "/healthz")[0] == 200
    finally:
        daemon.stop()
        sock.close()
