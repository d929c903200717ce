"""Hostile-load HTTP benchmark: nodewarden's endpoint beside node_exporter's, same machine, same run.

    .venv/bin/python bench/http_bench.py [--scrapers 200] [--rounds 5] [--idle 500] [--slow 500] [--no-tls]

Scenarios (each against a real ``nodewarden run`` with its embedded defaults, and against
``prometheus-node-exporter``, both on loopback; plain HTTP, then TLS with the same web config file):

Peers: node_exporter with its defaults (``--web.max-requests=40``: 503 beyond 40 scrapes in flight) and with
``--web.max-requests=0``; ratios are against the latter.

- ``fleet``: ``--scrapers`` clients connect at once and each scrapes /metrics ``--rounds`` times on its
  keep-alive connection: errors (connect or read failures, non-200), latency p50/p99/max.
- ``auth_flood`` (plain HTTP, bcrypt cost 10): ``--attackers`` clients each send a new wrong password per
  request while one client scrapes with the right one: its latency p50/p99, what the attackers got.
- ``hostile``: ``--idle`` connections that never send a byte (over TLS: never a ClientHello) and ``--slow``
  ones that trickle a request head one byte every 0.5 s are held open; meanwhile one client scrapes /metrics
  200 times (p50/p99). Server threads (``/proc/PID/status``) before and while held.

The load generator is one asyncio process (so its cost does not depend on the server's threads); it raises its
own RLIMIT_NOFILE. Prints one JSON document; docs/benchmarks.md ("HTTP under hostile load") has the numbers.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import resource
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def threads(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Threads:"):
            return int(line.split()[1])
    return -1


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return round(s[min(len(s) - 1, int(len(s) * q))], 2)


async def _read_response(reader: asyncio.StreamReader, sizes: list[int] | None = None) -> int:
    """Status code of one response (body read: Content-Length or chunked; its size appended to ``sizes``)."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.lower(): v.strip() for k, _, v in (h.partition(":") for h in lines[1:] if h)}
    n = 0
    if "content-length" in headers:
        n = len(await reader.readexactly(int(headers["content-length"])))
    elif headers.get("transfer-encoding") == "chunked":
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            await reader.readexactly(size + 2)
            n += size
            if size == 0:
                break
    if sizes is not None:
        sizes.append(n)
    return status


REQUEST = b"GET /metrics HTTP/1.1\r\nHost: bench\r\nAccept: text/plain\r\n\r\n"


async def _client(port: int, ctx: ssl.SSLContext | None, rounds: int, lat: list[float], errors: list[str],
                  start: asyncio.Event, sizes: list[int] | None = None) -> None:
    await start.wait()
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(
            "127.0.0.1", port, ssl=ctx, server_hostname="127.0.0.1" if ctx else None, limit=1 << 24), 30)
    except (OSError, TimeoutError) as err:
        errors.append(f"connect: {type(err).__name__}")
        return
    try:
        for _ in range(rounds):
            t0 = time.perf_counter()
            try:
                writer.write(REQUEST)
                status = await asyncio.wait_for(_read_response(reader, sizes), 30)
            except (OSError, TimeoutError, asyncio.IncompleteReadError, ValueError) as err:
                errors.append(f"read: {type(err).__name__}")
                return
            if status != 200:
                errors.append(f"status {status}")
                return
            lat.append((time.perf_counter() - t0) * 1000)
    finally:
        writer.close()


async def fleet(port: int, ctx: ssl.SSLContext | None, scrapers: int, rounds: int) -> dict:
    lat: list[float] = []
    errors: list[str] = []
    start = asyncio.Event()
    tasks = [asyncio.create_task(_client(port, ctx, rounds, lat, errors, start)) for _ in range(scrapers)]
    t0 = time.perf_counter()
    start.set()
    await asyncio.gather(*tasks)
    wall = time.perf_counter() - t0
    return {"requests": len(lat), "errors": len(errors), "error_kinds": sorted(set(errors)),
            "p50_ms": pct(lat, 0.5), "p99_ms": pct(lat, 0.99), "max_ms": round(max(lat, default=0), 1),
            "requests_per_s": round(len(lat) / wall, 1)}


async def hostile(port: int, pid: int, ctx: ssl.SSLContext | None, n_idle: int, n_slow: int,
                  scrapes: int) -> dict:
    before = threads(pid)
    held: list[asyncio.StreamWriter] = []
    raw: list[socket.socket] = []
    async def idle_one() -> socket.socket | None:
        s = socket.socket()
        s.setblocking(False)
        try:
            await asyncio.wait_for(asyncio.get_running_loop().sock_connect(s, ("127.0.0.1", port)), 10)
        except (OSError, TimeoutError):
            s.close()
            return None
        return s

    for i in range(0, n_idle, 100):     # 100 at a time, each bounded (a full backlog refuses or times out)
        raw += [s for s in await asyncio.gather(*(idle_one() for _ in range(min(100, n_idle - i)))) if s]
    async def slow_one() -> asyncio.StreamWriter | None:
        try:
            _, w = await asyncio.wait_for(asyncio.open_connection(
                "127.0.0.1", port, ssl=ctx, server_hostname="127.0.0.1" if ctx else None), 20)
        except (OSError, TimeoutError):
            return None
        w.write(b"GET /metrics HTTP/1.1\r\nX-Slow: ")
        return w

    for i in range(0, n_slow, 100):     # 100 at a time, each bounded (a server may never accept them)
        held += [w for w in await asyncio.gather(*(slow_one() for _ in range(min(100, n_slow - i)))) if w]
    stop = asyncio.Event()

    async def trickle() -> None:
        while not stop.is_set():
            for w in held:
                if not w.is_closing():
                    w.write(b"a")
            await asyncio.sleep(0.5)

    trickler = asyncio.create_task(trickle())
    await asyncio.sleep(0.5)
    during = threads(pid)
    lat: list[float] = []
    errors: list[str] = []
    start = asyncio.Event()
    start.set()
    sizes: list[int] = []
    await _client(port, ctx, scrapes, lat, errors, start, sizes)
    during = max(during, threads(pid))
    stop.set()
    await trickler
    slow_open = sum(1 for w in held if not w.is_closing())
    for w in held:
        w.close()
    for s in raw:
        s.close()
    return {"body_bytes": max(sizes, default=0), "idle_requested": n_idle, "idle": len(raw),
            "slow_requested": n_slow, "slow": len(held),
            "slow_still_open_after": slow_open, "scrapes": len(lat),
            "errors": len(errors), "error_kinds": sorted(set(errors)), "p50_ms": pct(lat, 0.5),
            "p99_ms": pct(lat, 0.99), "max_ms": round(max(lat, default=0), 1),
            "threads_before": before, "threads_while_held": during}


def _auth_request(user: str, password: str) -> bytes:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return (f"GET /metrics HTTP/1.1\r\nHost: bench\r\nAuthorization: Basic {token}\r\n\r\n").encode()


async def auth_flood(port: int, attackers: int, seconds: float, good_scrapes: int) -> dict:
    """``attackers`` clients send a new wrong password per request (each needs a bcrypt check) while a good
    client (known before the flood) scrapes with the right one: its latency, what the attackers got, and how
    many tries a client new during the flood needs."""
    stop = asyncio.Event()
    statuses: dict[int, int] = {}

    async def attacker(i: int) -> None:
        n = 0
        while not stop.is_set():
            try:
                reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 30)
            except (OSError, TimeoutError):
                await asyncio.sleep(0.1)
                continue
            try:
                while not stop.is_set():
                    writer.write(_auth_request("prom", f"wrong-{i}-{n}"))
                    n += 1
                    st = await asyncio.wait_for(_read_response(reader), 30)
                    statuses[st] = statuses.get(st, 0) + 1
            except (OSError, TimeoutError, asyncio.IncompleteReadError, ValueError):
                pass
            finally:
                writer.close()

    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(_auth_request("prom", "good"))        # Prometheus scraped before the flood: its password is known
    warm = await asyncio.wait_for(_read_response(reader), 30)
    tasks = [asyncio.create_task(attacker(i)) for i in range(attackers)]
    await asyncio.sleep(1.0)           # the flood is on before the measured scrapes start
    cold_attempts = 0                  # a client new during the flood (another address), retrying every 0.2 s
    cold_started = time.perf_counter()
    while cold_attempts < 100:
        cold_attempts += 1
        r2, w2 = await asyncio.open_connection("127.0.0.1", port, local_addr=("127.0.0.2", 0))  # another host
        w2.write(_auth_request("prom2", "good2"))
        st = await asyncio.wait_for(_read_response(r2), 30)
        w2.close()
        if st == 200:
            break
        await asyncio.sleep(0.2)
    cold_s = time.perf_counter() - cold_started
    lat: list[float] = []
    errors: list[str] = [] if warm == 200 else [f"warm status {warm}"]
    t_end = time.monotonic() + seconds
    for _ in range(good_scrapes):
        t0 = time.perf_counter()
        writer.write(_auth_request("prom", "good"))
        try:
            st = await asyncio.wait_for(_read_response(reader), 30)
        except (OSError, TimeoutError, asyncio.IncompleteReadError) as err:
            errors.append(type(err).__name__)
            break
        if st != 200:
            errors.append(f"status {st}")
        lat.append((time.perf_counter() - t0) * 1000)
        if time.monotonic() > t_end:
            break
        await asyncio.sleep(0.02)
    writer.close()
    stop.set()
    await asyncio.gather(*tasks, return_exceptions=True)
    return {"attackers": attackers, "cold_client_attempts": cold_attempts, "cold_client_s": round(cold_s, 2),
            "good_scrapes": len(lat), "good_errors": len(errors),
            "good_p50_ms": pct(lat, 0.5), "good_p99_ms": pct(lat, 0.99), "good_max_ms": round(max(lat, default=0), 1),
            "attacker_statuses": {str(k): v for k, v in sorted(statuses.items())}}


def wait_up(port: int, ctx: ssl.SSLContext | None, timeout: float = 60, ok: tuple[int, ...] = (200,)) -> None:
    import http.client
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            conn = (http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=2) if ctx
                    else http.client.HTTPConnection("127.0.0.1", port, timeout=2))
            conn.request("GET", "/metrics")
            if conn.getresponse().status in ok:
                conn.close()
                return
        except OSError:
            pass
        time.sleep(0.3)
    raise SystemExit(f"server on {port} did not come up")


def start_server(kind: str, tmp: Path, web: Path | None, repo: Path = REPO) -> tuple[subprocess.Popen, int]:
    port = free_port()
    log = open(tmp / f"{kind}.log", "ab")  # noqa: SIM115 (closed with the process)
    if kind == "nodewarden":
        argv = [sys.executable, "-m", "agent.cli", "run", "--listen", f"127.0.0.1:{port}", "--state-dir",
                str(tmp / "state"), "--log-level", "warning"]
        if web:
            argv += ["--web.config.file", str(web)]
        proc = subprocess.Popen(argv, cwd=repo, stdout=log, stderr=subprocess.STDOUT,
                                env={**os.environ, "PYTHONPATH": str(repo)})
    else:
        exe = shutil.which("prometheus-node-exporter") or shutil.which("node_exporter")
        if exe is None:
            raise SystemExit("prometheus-node-exporter is not installed")
        argv = [exe, f"--web.listen-address=127.0.0.1:{port}"]
        if kind == "node_exporter_unlimited":
            argv.append("--web.max-requests=0")     # its default (40 in flight) answers 503 beyond
        if web:
            argv.append(f"--web.config.file={web}")
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
    return proc, port


def make_cert(tmp: Path) -> tuple[Path, Path]:
    key, crt = tmp / "key.pem", tmp / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out",
                    str(crt), "-days", "1", "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True, timeout=60)
    return crt, key


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scrapers", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--idle", type=int, default=500)
    ap.add_argument("--slow", type=int, default=500)
    ap.add_argument("--scrapes", type=int, default=200)
    ap.add_argument("--no-tls", action="store_true")
    ap.add_argument("--attackers", type=int, default=50)
    ap.add_argument("--auth-only", action="store_true", help="only the wrong-password flood")
    ap.add_argument("--repo", type=Path, default=REPO, help="the nodewarden checkout to run (e.g. an older one)")
    ap.add_argument("--no-peer", action="store_true", help="nodewarden only (no node_exporter)")
    args = ap.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))   # run the finally blocks: stop the servers
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    out: dict = {"nofile_client": hard}
    with tempfile.TemporaryDirectory(prefix="nw-httpbench-") as d:
        tmp = Path(d)
        crt, key = make_cert(tmp)
        web = tmp / "web.yml"
        web.write_text(f"tls_server_config:\n  cert_file: {crt}\n  key_file: {key}\n")
        ctx = ssl.create_default_context(cafile=str(crt))
        import bcrypt
        auth = tmp / "auth.yml"
        auth.write_text("basic_auth_users:\n" + "".join(
            f"  {u}: {bcrypt.hashpw(pw, bcrypt.gensalt(rounds=10)).decode()}\n" for u, pw in
            (("prom", b"good"), ("prom2", b"good2"))))
        for kind in ("nodewarden",) if args.no_peer else ("nodewarden", "node_exporter_unlimited"):
            proc, port = start_server(kind, tmp, auth, args.repo)
            try:
                wait_up(port, None, ok=(401,))
                out.setdefault("auth_flood", {})[kind] = asyncio.run(auth_flood(port, args.attackers, 10.0, 200))
            finally:
                proc.terminate()
                proc.wait(15)
        if args.auth_only:
            print(json.dumps(out, indent=1))
            return
        variants = [("http", None, None)] + ([] if args.no_tls else [("https", web, ctx)])
        for scheme, web_cfg, sctx in variants:
            kinds = ("nodewarden",) if args.no_peer else ("nodewarden", "node_exporter", "node_exporter_unlimited")
            for kind in kinds:
                proc, port = start_server(kind, tmp, web_cfg, args.repo)
                try:
                    wait_up(port, sctx)
                    time.sleep(1.0)
                    res = {"fleet": asyncio.run(fleet(port, sctx, args.scrapers, args.rounds))}
                    time.sleep(1.0)
                    res["hostile"] = asyncio.run(hostile(port, proc.pid, sctx, args.idle, args.slow, args.scrapes))
                    out.setdefault(scheme, {})[kind] = res
                finally:
                    proc.terminate()
                    try:
                        proc.wait(15)
                    except subprocess.TimeoutExpired:
                        proc.kill()
                        proc.wait(5)
            if args.no_peer:
                continue
            nw, ne = out[scheme]["nodewarden"], out[scheme]["node_exporter_unlimited"]
            out[scheme]["ratio_p99_hostile_node_exporter_over_nodewarden"] = round(
                ne["hostile"]["p99_ms"] / nw["hostile"]["p99_ms"], 2) if nw["hostile"]["p99_ms"] else None
            out[scheme]["ratio_p99_fleet_node_exporter_over_nodewarden"] = round(
                ne["fleet"]["p99_ms"] / nw["fleet"]["p99_ms"], 2) if nw["fleet"]["p99_ms"] else None
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
