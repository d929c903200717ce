"""Read-only HTTP endpoint: /metrics (cached bytes), /healthz, /, and JSON routes the daemon adds.

Access control uses the Prometheus exporter-toolkit web config format (``--web.config.file``): TLS
certificate and key (optionally client certificates) and basic-auth users with bcrypt hashes, so the
endpoint can be secured exactly the way SREs already secure node_exporter.

Hostile clients cost bounded time, memory and threads. One event-loop thread owns every connection: it
accepts, runs each TLS handshake (with a deadline), reads request heads (a whole-head deadline, not a
per-read one) and writes responses (in slices, with a deadline); only the route callables run in a small
worker pool, and uncached bcrypt checks in one lane of their own. So idle, trickling or handshake-stalling
clients hold a socket and a few KiB, never a thread. At the connection cap a new client displaces the
oldest idle one; when none is idle it gets ``503`` with ``Retry-After``. See :class:`~agent.serve.http1.Limits`.

The parts: the web config file (:mod:`~agent.serve.webconfig`), basic auth and its admission
(:mod:`~agent.serve.webauth`), the HTTP/1.1 wire (:mod:`~agent.serve.http1`); this module is the server: the
listening socket, the loop thread, the connection table and each connection's request loop and routing.
"""

from __future__ import annotations

import asyncio
import contextlib
import resource
import socket
import ssl
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import structlog

from agent.serve import http1
from agent.serve.http1 import HTTPError, Limits, Responses, loop_time
from agent.serve.webauth import AuthGate
from agent.serve.webconfig import WebConfig, header_problem, ssl_context

log = structlog.get_logger("web")

Response = tuple[int, str, bytes]
Route = Callable[[], Response]

def raise_nofile_limit() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit (as the Go runtime does for node_exporter); the soft
    limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard != resource.RLIM_INFINITY else 1 << 20
    if soft != resource.RLIM_INFINITY and soft < want:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
            soft = want
    return soft


class _Conn:
    """One client connection's state on the loop."""

    __slots__ = ("idle", "since", "writer")

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self.writer = writer
        self.idle = True           # nothing of a request in progress (handshaking or between requests)
        self.since = time.monotonic()


_READ_ONLY = {"POST", "PUT", "DELETE", "PATCH"}


class Server:
    """An HTTP(S) server over a table of GET routes: one event-loop thread plus a small worker pool."""

    def __init__(self, host: str, port: int, routes: dict[str, Route], web: WebConfig | None = None,
                 gzip_body: Callable[[], bytes] | None = None, limits: Limits | None = None) -> None:
        self.routes = routes
        self.web = web or WebConfig()
        self.limits = limits or Limits()
        lim = self.limits
        self.auth = AuthGate(self.web.basic_auth_users, lim.auth_waiting, lim.auth_waiting_per_ip) \
            if self.web.basic_auth_users else None
        self.gzip_body = gzip_body
        self._responses = Responses({k: v for k, v in self.web.http_server_config.headers.items()
                                     if header_problem(k, v) is None})
        self._ssl = ssl_context(self.web.tls_server_config) if self.web.tls_server_config else None
        nofile = raise_nofile_limit()
        self.max_connections = max(1, min(self.limits.max_connections, nofile - 64))
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
            sock.listen(self.limits.backlog)
        except OSError:
            sock.close()
            raise
        sock.setblocking(False)
        self._sock = sock
        self.port = sock.getsockname()[1]
        self._conns: dict[_Conn, None] = {}          # insertion order: oldest first
        self._rejecting = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.base_events.Server | None = None
        self._pool = ThreadPoolExecutor(self.limits.workers, thread_name_prefix="http-worker")
        self.rejected = 0        # connections answered 503 at the cap
        self.evicted = 0         # idle connections closed to make room

    # ---------------------------------------------------------- lifecycle

    def start(self) -> None:
        """Serve in a background thread (the event loop)."""
        loop = asyncio.new_event_loop()
        self._loop = loop
        ready = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(loop)
            try:
                self._server = loop.run_until_complete(asyncio.start_server(
                    self._client, sock=self._sock, backlog=self.limits.backlog, limit=self.limits.max_line))
            finally:
                ready.set()
            try:
                loop.run_forever()
            finally:
                tasks = asyncio.all_tasks(loop)
                for t in tasks:
                    t.cancel()
                loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
                loop.close()

        self._thread = threading.Thread(target=run, name="http", daemon=True)
        self._thread.start()
        ready.wait(10)

    def stop(self) -> None:
        """Stop serving: close the listening socket and every connection."""
        loop = self._loop
        if loop is not None and self._thread is not None and self._thread.is_alive():
            fut = asyncio.run_coroutine_threadsafe(self._shutdown(), loop)
            with contextlib.suppress(Exception):
                fut.result(5)
            loop.call_soon_threadsafe(loop.stop)
            self._thread.join(5)
        else:
            self._sock.close()
        self._pool.shutdown(wait=False, cancel_futures=True)
        if self.auth is not None:
            self.auth.close()

    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
        for c in list(self._conns):
            c.writer.close()

    @property
    def connections(self) -> int:
        """Open connections now."""
        return len(self._conns)

    # ---------------------------------------------------------- one connection

    def _admit(self) -> bool:
        """Room for one more connection: evict the oldest idle one at the cap; False when none is idle."""
        if len(self._conns) < self.max_connections:
            return True
        for c in self._conns:
            if c.idle:
                self.evicted += 1
                del self._conns[c]
                c.writer.close()
                return True
        return False

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        lim = self.limits
        if not self._admit():
            await self._reject(writer)
            return
        conn = _Conn(writer)
        self._conns[conn] = None
        peername = writer.get_extra_info("peername")
        peer = str(peername[0]) if peername else ""
        try:
            with contextlib.suppress(OSError):
                writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self._ssl is not None:
                try:
                    async with asyncio.timeout(lim.handshake_timeout):
                        await writer.start_tls(self._ssl, ssl_handshake_timeout=lim.handshake_timeout)
                except (OSError, ssl.SSLError, TimeoutError, asyncio.IncompleteReadError, ConnectionError):
                    return
            deadline = time.monotonic() + lim.header_timeout   # first request: its head counts from accept
            first_request = True
            while conn in self._conns:
                conn.idle = True
                try:
                    async with asyncio.timeout_at(loop_time(deadline)):
                        first = await reader.readexactly(1)
                except (asyncio.IncompleteReadError, TimeoutError, OSError, ConnectionError):
                    return
                conn.idle = False
                conn.since = time.monotonic()
                if not first_request:               # keep-alive: the head counts from its first byte
                    deadline = conn.since + lim.header_timeout
                first_request = False
                try:
                    async with asyncio.timeout_at(loop_time(deadline)):
                        head = await http1.read_head(reader, first, lim)
                except TimeoutError:
                    await http1.write(writer, self._responses.simple(408, "request head not received in time\n",
                                                                    close=True), lim)
                    return
                except HTTPError as err:
                    await http1.write(writer, self._responses.simple(err.status, f"{err}\n", close=True), lim)
                    return
                except (asyncio.IncompleteReadError, OSError, ConnectionError):
                    return
                if head is None:
                    return
                data, keep = await self._handle(*head, peer)
                if not await http1.write(writer, data, lim) or not keep:
                    return
                deadline = time.monotonic() + lim.idle_timeout
        except Exception as err:  # never let one connection's surprise reach the loop
            log.error("connection_failed", error=repr(err))
        finally:
            self._conns.pop(conn, None)
            writer.close()

    async def _reject(self, writer: asyncio.StreamWriter) -> None:
        """At the cap with no idle connection to displace: 503 + Retry-After (after the TLS handshake, with a
        short deadline), or a plain close while many rejections are already in flight (fds stay bounded)."""
        self.rejected += 1
        if self._rejecting >= 64:
            writer.close()
            return
        self._rejecting += 1
        try:
            if self._ssl is not None:
                async with asyncio.timeout(min(2.0, self.limits.handshake_timeout)):
                    await writer.start_tls(self._ssl)
            await http1.write(writer, self._responses.simple(503, "too many connections; retry later\n",
                                                             {"Retry-After": "1"}, close=True), self.limits)
        except (OSError, ssl.SSLError, TimeoutError, ConnectionError):
            pass
        finally:
            self._rejecting -= 1
            writer.close()

    async def _handle(self, method: str, target: str, version: str, headers: dict[str, str], peer: str = ""
                      ) -> tuple[bytes, bool]:
        """The response bytes and whether the connection stays open."""
        tokens = {t.strip().lower() for t in headers.get("connection", "").split(",")}
        keep = "keep-alive" in tokens if version == "HTTP/1.0" else "close" not in tokens
        if headers.get("transfer-encoding") or headers.get("content-length", "0") not in ("", "0"):
            keep = False                  # a body we do not read: answer, then close
        head = method == "HEAD"
        if method in _READ_ONLY:
            return self._responses.simple(405, "read-only endpoint: only GET and HEAD\n", {"Allow": "GET, HEAD"},
                                close=not keep), keep
        if method not in ("GET", "HEAD"):
            return self._responses.simple(501, f"unsupported method ({method})\n", close=True), False
        if self.auth is not None:
            denied = await self.auth.authorize(headers.get("authorization"), peer)
            if denied is not None:
                return self._responses.simple(*denied, close=not keep, head=head), keep
        path = target.split("?", 1)[0]
        route = self.routes.get(path)
        if route is None:
            return self._responses.simple(404, "404 page not found\n", close=not keep, head=head), keep
        gzip = path == "/metrics" and self.gzip_body is not None and "gzip" in headers.get("accept-encoding", "")
        loop = asyncio.get_running_loop()
        try:
            status, ctype, body, extra = await loop.run_in_executor(self._pool, self._call, route, gzip)
        except Exception as err:  # a failing route is a 500, never a dead connection loop
            log.error("route_failed", path=path, error=str(err))
            return self._responses.simple(500, "internal error\n", close=not keep, head=head), keep
        if keep and version == "HTTP/1.0":
            extra = {**extra, "Connection": "keep-alive"}
        return self._responses.response(status, ctype, body, extra, close=not keep, head=head), keep

    def _call(self, route: Route, gzip: bool) -> tuple[int, str, bytes, dict[str, str]]:
        status, ctype, body = route()
        if gzip and self.gzip_body is not None:
            return status, ctype, self.gzip_body(), {"Content-Encoding": "gzip"}
        return status, ctype, body, {}
