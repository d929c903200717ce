"""Run Debian's prometheus-node-exporter once on loopback and return one scrape (an oracle for collectors)."""

from __future__ import annotations

import subprocess
import tempfile
import time
import urllib.request

from tests.conftest import free_port, require_binary


def scrape_node_exporter(*flags: str, timeout: float = 15.0) -> str:
    """Start node_exporter with ``flags`` on a free 127.0.0.1 port, scrape /metrics once, stop it."""
    binary = require_binary("prometheus-node-exporter")
    port = free_port()
    argv = [binary, f"--web.listen-address=127.0.0.1:{port}", *flags]
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=log)
        try:
            deadline = time.monotonic() + timeout
            while True:
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
                        return resp.read().decode()
                except OSError:
                    if proc.poll() is not None or time.monotonic() > deadline:
                        log.seek(0)
                        raise RuntimeError(f"node_exporter did not serve: {log.read().decode()[-2000:]}") from None
                    time.sleep(0.05)
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
