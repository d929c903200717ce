"""Hostile HTTP clients on loopback: idle, trickling and handshake-stalling connections, floods past the
connection cap, wrong-password floods. Scrapes and /healthz keep being answered and threads stay bounded.

Every client here is bounded in count and time; no assertion is about speed: "answered" means the request
completed within a generous client timeout, which it could not while a thread or the accept loop was held.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import os
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import bcrypt
import pytest

from agent.core.errors import ConfigError
from agent.serve.http1 import Limits
from agent.serve.web import Server
from agent.serve.webconfig import WebConfig, load_web_config
from tests.agentproc import NODEWARDEN, AgentProcess, write_yaml
from tests.test_web_config import _cert

ROUTES = {"/metrics": lambda: (200, "text/plain", b"up 1\n" * 2000), "/healthz": lambda: (200, "text/plain", b"ok\n")}


@contextlib.contextmanager
def serving(web_cfg: WebConfig | None = None, **limits: object) -> Iterator[Server]:
    srv = Server("127.0.0.1", 0, ROUTES, web_cfg, limits=Limits(**limits))  # type: ignore[arg-type]
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


def get(port: int, path: str = "/metrics", ctx: ssl.SSLContext | None = None, auth: str | None = None,
        timeout: float = 10.0) -> tuple[int, dict[str, str], bytes]:
    conn = (http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=timeout) if ctx
            else http.client.HTTPConnection("127.0.0.1", port, timeout=timeout))
    try:
        headers = {"Authorization": "Basic " + base64.b64encode(auth.encode()).decode()} if auth else {}
        conn.request("GET", path, headers=headers)
        resp = conn.getresponse()
        return resp.status, dict(resp.getheaders()), resp.read()
    finally:
        conn.close()


def idle(port: int, n: int) -> list[socket.socket]:
    return [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(n)]


def partial(port: int, n: int) -> list[socket.socket]:
    """Connections that sent half a request head (busy, not idle)."""
    out = idle(port, n)
    for s in out:
        s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
    return out


def closed_by_server(s: socket.socket, budget: float) -> bool:
    """Read until the server closes (True) or ``budget`` seconds pass (False)."""
    s.settimeout(0.5)
    end = time.monotonic() + budget
    while time.monotonic() < end:
        try:
            if s.recv(65536) == b"":
                return True
        except TimeoutError:
            continue
        except OSError:
            return True
    return False


def close_all(socks: list[socket.socket]) -> None:
    for s in socks:
        s.close()


def test_idle_and_trickling_clients_hold_no_threads():
    with serving() as srv:
        get(srv.port)
        before = threading.active_count()
        socks = idle(srv.port, 150) + partial(srv.port, 50)
        try:
            for _ in range(20):
                assert get(srv.port)[0] == 200
                assert get(srv.port, "/healthz")[0] == 200
            assert srv.connections >= 200
            assert threading.active_count() <= before + 1, "a thread per connection"
        finally:
            close_all(socks)


def test_trickling_client_is_cut_off_by_the_whole_head_deadline():
    with serving(header_timeout=1.0) as srv:
        s = socket.create_connection(("127.0.0.1", srv.port), timeout=10)
        s.sendall(b"GET /metrics HTTP/1.1\r\n")
        cut = False
        for _ in range(100):  # one header byte every 0.1 s: each read is quick, the head never completes
            try:
                s.sendall(b"X")
            except OSError:
                cut = True
                break
            time.sleep(0.1)
        cut = cut or closed_by_server(s, 2)
        s.close()
        assert cut, "a client trickling a byte at a time held the connection for 10 s"


def test_connection_cap_displaces_idle_then_answers_503():
    with serving(max_connections=8) as srv:
        held = idle(srv.port, 8)
        try:
            assert get(srv.port)[0] == 200          # room made by closing the oldest idle connection
            assert srv.evicted >= 1
        finally:
            close_all(held)
        time.sleep(0.5)
        busy = partial(srv.port, 8)
        try:
            time.sleep(0.5)
            status, headers, body = get(srv.port)
            assert status == 503 and headers.get("Retry-After") == "1", (status, headers, body)
            assert b"too many connections" in body
        finally:
            close_all(busy)


def test_listen_backlog_sized_for_a_fleet():
    with serving() as srv:
        out = subprocess.run(["ss", "-Hltn", f"sport = :{srv.port}"], capture_output=True, text=True, timeout=10,
                             check=True).stdout.split()
        somaxconn = int(Path("/proc/sys/net/core/somaxconn").read_text())
        assert int(out[2]) == min(4096, somaxconn), out   # Send-Q of a listening socket is its backlog


def test_request_limits_and_methods():
    with serving() as srv:
        def raw(data: bytes) -> bytes:
            with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as s:
                s.sendall(data)
                chunks = []
                while chunk := s.recv(65536):
                    chunks.append(chunk)
                return b"".join(chunks)

        assert raw(b"GET /" + b"a" * 20000 + b" HTTP/1.1\r\n\r\n").startswith(b"HTTP/1.1 414")
        assert raw(b"GET / HTTP/1.1\r\n" + b"X-A: b\r\n" * 200 + b"\r\n").startswith(b"HTTP/1.1 431")
        assert raw(b"GET / HTTP/1.1\r\nX: " + b"b" * 20000 + b"\r\n\r\n").startswith(b"HTTP/1.1 431")
        assert raw(b"POST /metrics HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc").startswith(b"HTTP/1.1 405")
        assert raw(b"OPTIONS / HTTP/1.1\r\n\r\n").startswith(b"HTTP/1.1 501")
        assert raw(b"nonsense\r\n\r\n").startswith(b"HTTP/1.1 400")
        assert raw(b"GET /nope HTTP/1.0\r\n\r\n").startswith(b"HTTP/1.1 404")
        head = raw(b"HEAD /metrics HTTP/1.0\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200") and head.endswith(b"\r\n\r\n") and b"Content-Length: 10000" in head
        two = raw(b"GET /healthz HTTP/1.1\r\n\r\nGET /healthz HTTP/1.1\r\nConnection: close\r\n\r\n")
        assert two.count(b"HTTP/1.1 200") == 2     # keep-alive, pipelined


def test_tls_handshake_has_a_deadline_and_runs_per_connection(tmp_path):
    crt, key = _cert(tmp_path)
    cfg = WebConfig.model_validate({"tls_server_config": {"cert_file": str(crt), "key_file": str(key)}})
    ctx = ssl.create_default_context(cafile=str(crt))
    with serving(cfg, handshake_timeout=1.0) as srv:
        stalled = idle(srv.port, 20)
        try:
            assert get(srv.port, ctx=ctx)[0] == 200     # the accept loop is not held by a pending handshake
            assert get(srv.port, "/healthz", ctx=ctx)[0] == 200
            assert all(closed_by_server(s, 10) for s in stalled[:3]), "stalled handshakes never time out"
        finally:
            close_all(stalled)


def _hash(password: bytes, rounds: int = 10) -> str:
    return bcrypt.hashpw(password, bcrypt.gensalt(rounds=rounds)).decode()


def test_failed_auth_is_cached_and_its_cost_bounded(monkeypatch):
    cfg = WebConfig.model_validate({"basic_auth_users": {"prom": _hash(b"good"), "ops": _hash(b"second")}})
    calls = []
    real = bcrypt.checkpw

    def counting(pw: bytes, hashed: bytes) -> bool:
        calls.append(pw)
        return real(pw, hashed)

    monkeypatch.setattr(bcrypt, "checkpw", counting)  # webauth imports it on the first check
    with serving(cfg, auth_waiting=4) as srv:
        assert get(srv.port, auth="prom:good")[0] == 200
        for _ in range(10):
            assert get(srv.port, auth="prom:wrong")[0] == 401
            assert get(srv.port, auth="nobody:wrong")[0] == 401
        assert calls.count(b"wrong") == 2, "a repeated wrong password costs one bcrypt check, not one per try"
        # 50 clients with distinct wrong passwords at once: at most one bcrypt runs, a few wait, the rest get 429;
        # the good (cached) client is answered all along.
        stop = threading.Event()

        def attacker(i: int) -> set[int]:
            seen, n = set(), 0
            while not stop.is_set() and n < 40:
                seen.add(get(srv.port, auth=f"prom:bad{i}-{n}")[0])
                n += 1
            return seen

        def new_client_from_another_host() -> int:   # its password is not cached yet: it needs a bcrypt slot
            conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=30, source_address=("127.0.0.2", 0))
            try:
                token = base64.b64encode(b"ops:second").decode()
                conn.request("GET", "/metrics", headers={"Authorization": f"Basic {token}"})
                return conn.getresponse().status
            finally:
                conn.close()

        with ThreadPoolExecutor(50) as pool:
            futs = [pool.submit(attacker, i) for i in range(50)]
            try:
                time.sleep(0.5)
                good = [get(srv.port, auth="prom:good")[0] for _ in range(20)]
                other = new_client_from_another_host()
            finally:
                stop.set()
            statuses = set().union(*(f.result() for f in futs))
        assert good == [200] * 20
        assert other == 200, "a flood from one address took every bcrypt slot"
        assert statuses <= {401, 429} and 429 in statuses, statuses


def test_header_values_validated_with_position(tmp_path):
    f = tmp_path / "web.yml"
    f.write_text('http_server_config:\n  headers:\n    X-Frame-Options: "deny\\r\\nSet-Cookie: a=b"\n')
    with pytest.raises(ConfigError) as info:
        load_web_config(str(f))
    assert f"{f}:3:22: http_server_config.headers.X-Frame-Options: value of X-Frame-Options contains a control " \
           "character" in str(info.value)
    f.write_text("http_server_config:\n  headers:\n    Set-Cookie: a=b\n    X-Frame-Options: allow\n")
    with pytest.raises(ConfigError) as info:
        load_web_config(str(f))
    assert info.value.problems == [
        f"{f}:3:17: http_server_config.headers.Set-Cookie: HTTP header 'Set-Cookie' can not be configured "
        "(allowed: Strict-Transport-Security, X-Content-Type-Options, X-Frame-Options, X-XSS-Protection, "
        "Content-Security-Policy)",
        f"{f}:4:22: http_server_config.headers.X-Frame-Options: invalid value for X-Frame-Options: expected one of "
        "deny, sameorigin, got 'allow'",
    ]
    f.write_text("http_server_config:\n  headers:\n    X-Frame-Options: deny\n"
                 "    Strict-Transport-Security: max-age=1\n")
    cfg = load_web_config(str(f))
    with serving(cfg) as srv:
        _, headers, _ = get(srv.port)
        assert headers["X-Frame-Options"] == "deny" and headers["Strict-Transport-Security"] == "max-age=1"


def test_missing_tls_file_is_named_with_position(tmp_path):
    crt, _ = _cert(tmp_path)
    f = tmp_path / "web.yml"
    f.write_text(f"tls_server_config:\n  cert_file: {crt}\n  key_file: nokey.pem\n")
    with pytest.raises(ConfigError) as info:
        load_web_config(str(f))
    assert info.value.problems == [
        f"{f}:3:13: tls_server_config.key_file: cannot read {tmp_path}/nokey.pem: No such file or directory"]
    res = subprocess.run([*NODEWARDEN, "run", "--web.config.file", str(f), "--state-dir", str(tmp_path / "s")],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 2 and f"{tmp_path}/nokey.pem: No such file or directory" in res.stderr


def _threads(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("Threads:"))


def test_daemon_over_tls_serves_while_idle_and_slow_clients_hold_connections(tmp_path):
    crt, key = _cert(tmp_path)
    cfg = write_yaml(tmp_path / "web.yml", {"tls_server_config": {"cert_file": str(crt), "key_file": str(key)}})
    agent = AgentProcess(tmp_path, {"interval": "1s"}, args=["--web.config.file", str(cfg)]).start(wait=False)
    ctx = ssl.create_default_context(cafile=str(crt))
    socks: list[socket.socket] = []
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if get(agent.port, "/healthz", ctx=ctx, timeout=5)[0] == 200:
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.3)
        assert agent.proc is not None
        before = _threads(agent.proc.pid)
        socks = idle(agent.port, 100)                         # TCP only: no ClientHello ever
        tls = [ctx.wrap_socket(socket.create_connection(("127.0.0.1", agent.port), timeout=10),
                               server_hostname="127.0.0.1") for _ in range(20)]
        for s in tls:
            s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")  # and never the blank line
        socks += tls
        for _ in range(10):
            assert get(agent.port, "/metrics", ctx=ctx)[0] == 200
            assert get(agent.port, "/healthz", ctx=ctx)[0] == 200
        status = subprocess.run([*NODEWARDEN, "status", "--url", f"https://127.0.0.1:{agent.port}"],
                                capture_output=True, text=True, timeout=30,
                                env={**os.environ, "SSL_CERT_FILE": str(crt)})
        assert status.returncode in (0, 1), status.stderr       # answered (healthy or not), not hung
        assert _threads(agent.proc.pid) <= before + 2
    finally:
        close_all(socks)
        assert agent.stop() == 0


def test_check_web_config_command(tmp_path):
    crt, key = _cert(tmp_path)
    good = write_yaml(tmp_path / "good.yml", {"tls_server_config": {"cert_file": crt.name, "key_file": key.name},
                                              "basic_auth_users": {"prom": _hash(b"x", 4)}})
    res = subprocess.run([*NODEWARDEN, "check", "web-config", str(good)], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0 and f"{good}: SUCCESS" in res.stdout, res.stderr
    bad = tmp_path / "bad.yml"
    bad.write_text("tls_server_config:\n  cert_file: gone.pem\n  key_file: " + str(key) + "\n"
                   "basic_auth_users:\n  prom: plain\nhttp_server_config:\n  headers:\n"
                   "    X-Frame-Options: \"a\\nb\"\n")
    res = subprocess.run([*NODEWARDEN, "check", "web-config", str(bad)], capture_output=True, text=True, timeout=60)
    assert res.returncode == 2, res
    assert res.stderr.splitlines() == [
        f"{bad}:5:9: basic_auth_users.prom: password must be a bcrypt hash",
        f"{bad}:8:22: http_server_config.headers.X-Frame-Options: value of X-Frame-Options contains a control "
        "character (CR, LF, ...)",
        f"{bad}:2:14: tls_server_config.cert_file: cannot read {tmp_path}/gone.pem: No such file or directory",
    ]
    junk = tmp_path / "junk.yml"
    junk.write_bytes(b"basic_auth_users:\n  \xff: x\n")
    res = subprocess.run([*NODEWARDEN, "check", "web-config", str(junk)], capture_output=True, text=True, timeout=60)
    assert res.returncode == 2 and res.stderr.startswith(f"{junk}:2:3: ") and "Traceback" not in res.stderr
    order = tmp_path / "order.yml"
    order.write_text(f"tls_server_config:\n  cert_file: {crt}\n  key_file: {key}\n  min_version: TLS13\n"
                     "  max_version: TLS12\n")
    res = subprocess.run([*NODEWARDEN, "check", "web-config", str(order)], capture_output=True, text=True, timeout=60)
    assert res.returncode == 2 and res.stderr.startswith(f"{order}:5:16: tls_server_config.max_version: "
                                                         "max_version TLS12 is below min_version TLS13"), res.stderr
    notpem = tmp_path / "notpem.yml"
    notpem.write_text(f"tls_server_config:\n  cert_file: {junk}\n  key_file: {key}\n")
    res = subprocess.run([*NODEWARDEN, "check", "web-config", str(notpem)], capture_output=True, text=True, timeout=60)
    assert res.returncode == 2 and res.stderr.startswith(f"{notpem}:2:14: tls_server_config.cert_file: cannot load "
                                                         f"the certificate, key or CA ({junk}, {key}):"), res.stderr
