"""Start ``nodewarden run`` as a real subprocess on a free loopback port, for end-to-end tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from tests.conftest import free_port

NODEWARDEN = [sys.executable, "-m", "agent.cli"]


def write_yaml(path: Path, data: Any) -> Path:
    """Dump ``data`` as YAML to ``path``."""
    with path.open("w") as fh:
        yaml.safe_dump(data, fh, sort_keys=False)
    return path


def fixture_config(tree: Path, **extra: Any) -> dict[str, Any]:
    """A config that samples a fixture tree (see tests/trees.py) every second, GPUs off."""
    cfg: dict[str, Any] = {
        "interval": "1s",
        "paths": {"procfs": str(tree / "proc"), "sysfs": str(tree / "sys")},
        "collectors": {"gpu": {"enabled": False}},
    }
    cfg.update(extra)
    return cfg


class AgentProcess:
    """A running agent; use as a context manager. Output goes to ``log_path``."""

    def __init__(self, tmp: Path, config: dict[str, Any] | None = None, args: list[str] | None = None,
                 env: dict[str, str] | None = None) -> None:
        self.tmp = tmp
        self.port = free_port()
        self.config_path = write_yaml(tmp / "config.yml", config or {}) if config is not None else None
        self.log_path = tmp / "agent.log"
        self.args = args or []
        self.env = {**os.environ, **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        cmd = [*NODEWARDEN, "run", "--listen", f"127.0.0.1:{self.port}",
               "--state-dir", str(self.tmp / "state")]
        if self.config_path:
            cmd += ["--config", str(self.config_path)]
        return cmd + self.args

    def start(self, wait: bool = True) -> AgentProcess:
        self._log = self.log_path.open("ab")
        self.proc = subprocess.Popen(self.command(), stdout=self._log, stderr=subprocess.STDOUT, env=self.env,
                                     cwd=self.tmp)
        if wait:
            self.wait_healthy()
        return self

    def wait_healthy(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"agent exited with {self.proc.returncode}:\n{self.log()}")
            try:
                status, _ = self.get("/healthz")
                if status == 200:
                    return
            except OSError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"agent not healthy after {timeout}s:\n{self.log()}")

    def get(self, path: str, timeout: float = 5.0, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
        req = urllib.request.Request(self.url + path, headers=headers or {})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                return resp.status, resp.read()
        except urllib.error.HTTPError as err:
            return err.code, err.read()

    def metrics(self) -> str:
        status, body = self.get("/metrics")
        assert status == 200
        return body.decode()

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self, timeout: float = 10.0) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._log.close()
        return self.proc.returncode

    def __enter__(self) -> AgentProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def wait_for(predicate, timeout: float = 15.0, interval: float = 0.2, what: str = "condition"):
    """Poll ``predicate`` until it returns a truthy value (returned) or fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


def sample_value(text: str, name: str, **labels: str) -> float | None:
    """The value of the first exposition line of ``name`` carrying all ``labels`` (None when absent)."""
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return None
