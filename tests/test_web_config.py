"""--web.config.file: TLS and bcrypt basic auth in the exporter-toolkit format, through the real daemon."""

from __future__ import annotations

import base64
import ssl
import subprocess
import urllib.error
import urllib.request

import bcrypt
import pytest

from tests.agentproc import NODEWARDEN, AgentProcess, write_yaml
from tests.conftest import require_binary


def _cert(tmp_path):
    openssl = require_binary("openssl")
    key, crt = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run([openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(crt),
                    "-days", "1", "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True, timeout=60)
    return crt, key


def _get(url: str, ctx: ssl.SSLContext, user: str | None = None, password: str | None = None) -> int:
    headers = {}
    if user is not None:
        headers["Authorization"] = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), context=ctx, timeout=10) as r:
            return r.status
    except urllib.error.HTTPError as err:
        return err.code


def test_tls_and_basic_auth(tmp_path):
    crt, key = _cert(tmp_path)
    hashed = bcrypt.hashpw(b"s3cret", bcrypt.gensalt(rounds=4)).decode().replace("$2b$", "$2y$", 1)
    web = write_yaml(tmp_path / "web.yml", {
        "tls_server_config": {"cert_file": str(crt), "key_file": str(key)},
        "basic_auth_users": {"prom": hashed},
    })
    agent = AgentProcess(tmp_path, {"interval": "1s"}, args=["--web.config.file", str(web)]).start(wait=False)
    ctx = ssl.create_default_context(cafile=str(crt))
    base = f"https://127.0.0.1:{agent.port}"
    try:
        import time

        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                if _get(base + "/healthz", ctx, "prom", "s3cret") == 200:
                    break
            except OSError:
                time.sleep(0.2)
        assert _get(base + "/metrics", ctx, "prom", "s3cret") == 200
        assert _get(base + "/metrics", ctx) == 401
        assert _get(base + "/metrics", ctx, "prom", "wrong") == 401
        assert _get(base + "/metrics", ctx, "nobody", "s3cret") == 401
        with pytest.raises(OSError):  # plain HTTP is not served on a TLS port
            urllib.request.urlopen(f"http://127.0.0.1:{agent.port}/metrics", timeout=5).read()
    finally:
        assert agent.stop() == 0


def test_bad_web_config_is_rejected_with_position(tmp_path):
    web = tmp_path / "web.yml"
    web.write_text("tls_server_config:\n  cert_file: a\n  key_file: b\n  client_auth: x\n")
    res = subprocess.run([*NODEWARDEN, "run", "--web.config.file", str(web), "--state-dir", str(tmp_path)],
                         capture_output=True, text=True, timeout=30)
    assert res.returncode == 2
    assert f"{web}:4:3: tls_server_config.client_auth: unknown key 'client_auth'" in res.stderr
    web.write_text("basic_auth_users:\n  prom: plaintext\n")
    res = subprocess.run([*NODEWARDEN, "run", "--web.config.file", str(web), "--state-dir", str(tmp_path)],
                         capture_output=True, text=True, timeout=30)
    assert res.returncode == 2 and "bcrypt" in res.stderr
