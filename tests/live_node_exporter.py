"""Run Debian's prometheus-node-exporter on a fixture tree and scrape it once (a live oracle)."""

from __future__ import annotations

import subprocess
import time
import urllib.request
from pathlib import Path

from tests.conftest import free_port, require_binary


def scrape_node_exporter(procfs: Path, sysfs: Path, flags: list[str], timeout: float = 15.0) -> str:
    """Start node_exporter on 127.0.0.1 with only ``flags``' collectors, return one /metrics body."""
    binary = require_binary("prometheus-node-exporter")
    port = free_port()
    argv = [
        binary,
        f"--path.procfs={procfs}",
        f"--path.sysfs={sysfs}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--collector.disable-defaults",
        *flags,
    ]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as resp:
                    return resp.read().decode()
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    err = proc.stderr.read().decode() if proc.poll() is not None else "timed out"
                    raise RuntimeError(f"node_exporter did not answer: {err[-2000:]}") from None
                time.sleep(0.05)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
        proc.stderr.close()
