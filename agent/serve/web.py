"""Read-only HTTP endpoint: /metrics (cached bytes), /healthz, /, and JSON routes the daemon adds.

Access control uses the Prometheus exporter-toolkit web config format (``--web.config.file``): TLS
certificate and key (optionally client certificates) and basic-auth users with bcrypt hashes, so the
endpoint can be secured exactly the way SREs already secure node_exporter.

Hostile clients cost bounded time, memory and threads. One event-loop thread owns every connection: it
accepts, runs each TLS handshake (with a deadline), reads request heads (a whole-head deadline, not a
per-read one) and writes responses (in slices, with a deadline); only the route callables run in a small
worker pool, and uncached bcrypt checks in one lane of their own. So idle, trickling or handshake-stalling
clients hold a socket and a few KiB, never a thread. At the connection cap a new client displaces the
oldest idle one; when none is idle it gets ``503`` with ``Retry-After``. See :class:`Limits`.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import resource
import socket
import ssl
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from email.utils import formatdate
from http import HTTPStatus

import bcrypt
import structlog

from agent.serve.webconfig import WebConfig, header_problem, ssl_context

log = structlog.get_logger("web")

Response = tuple[int, str, bytes]
Route = Callable[[], Response]

class BasicAuth:
    """bcrypt checks (~50-300 ms each) behind two caches and one lane, as exporter-toolkit does.

    Outcomes are cached by a digest of (user, password, hash): successes in their own LRU (which failed
    attempts cannot evict), failures in another, so a client repeating a wrong password costs a lookup.
    Uncached checks run one at a time (:meth:`verify` holds a lock), so wrong-password floods use at most
    one core; the server also bounds how many wait (429 beyond). An unknown user is checked against a dummy
    hash, costing the same as a known one.
    """

    _DUMMY = b"$2b$10$e3cZJTE7hgilpkrJePEPUeVxoAPzxX01WWTnsy1gq3UQbSXuero.W"   # cost 10, matches no password

    def __init__(self, users: dict[str, str], cache_size: int = 1024) -> None:
        self.users = users
        self.cache_size = cache_size
        self._ok: OrderedDict[bytes, None] = OrderedDict()
        self._bad: OrderedDict[bytes, None] = OrderedDict()
        self._lock = threading.Lock()      # guards the caches
        self._lane = threading.Lock()      # one bcrypt at a time

    @staticmethod
    def parse(header: str | None) -> tuple[str, str] | None:
        """(user, password) of a ``Basic`` Authorization header; None when absent or malformed."""
        if not header or not header.startswith("Basic "):
            return None
        try:
            user, sep, password = base64.b64decode(header[6:], validate=True).decode().partition(":")
        except (ValueError, UnicodeDecodeError):
            return None
        return (user, password) if sep else None

    def _key(self, user: str, password: str) -> bytes:
        hashed = self.users.get(user, "")
        return hashlib.sha256(f"{user}\0{password}\0{hashed}".encode()).digest()

    def cached(self, user: str, password: str) -> bool | None:
        """The cached outcome; None when this (user, password) needs a bcrypt check."""
        key = self._key(user, password)
        with self._lock:
            if key in self._ok:
                self._ok.move_to_end(key)
                return True
            if key in self._bad:
                self._bad.move_to_end(key)
                return False
        return None

    def verify(self, user: str, password: str) -> bool:
        """bcrypt check (one at a time), outcome cached."""
        hashed = self.users.get(user)
        with self._lane:
            try:
                target = hashed.replace("$2y$", "$2b$", 1).encode() if hashed else self._DUMMY
                ok = bcrypt.checkpw(password.encode(), target) and hashed is not None
            except ValueError:
                ok = False
        key = self._key(user, password)
        with self._lock:
            cache = self._ok if ok else self._bad
            cache[key] = None
            while len(cache) > self.cache_size:
                cache.popitem(last=False)
        return ok

    def check(self, header: str | None) -> bool:
        """True when the Authorization header carries a valid user and password."""
        creds = self.parse(header)
        if creds is None:
            return False
        got = self.cached(*creds)
        return self.verify(*creds) if got is None else got


@dataclass(frozen=True)
class Limits:
    """What one client may cost. Times in seconds; sizes in bytes."""

    max_connections: int = 1024    # open connections (clipped to the fd limit); beyond: evict idle or 503
    handshake_timeout: float = 10.0
    header_timeout: float = 10.0   # the whole request head, from the connection (or its first byte)
    idle_timeout: float = 120.0    # keep-alive wait for the next request
    write_timeout: float = 30.0    # the whole response
    workers: int = 4               # threads running routes
    auth_waiting: int = 8          # uncached bcrypt checks allowed to wait for the lane; beyond: 429
    auth_waiting_per_ip: int = 2   # of those, from one client address (a flood from one host leaves room)
    max_line: int = 16 << 10       # request line (414 beyond) and each header line (431)
    max_head: int = 64 << 10       # request line + headers (431 beyond)
    max_headers: int = 100
    backlog: int = 4096            # listen(2) backlog (the kernel caps it at net.core.somaxconn)
    write_slice: int = 64 << 10    # a slow reader holds at most about this much of a response in memory


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


class _HTTPError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


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
        self.auth = BasicAuth(self.web.basic_auth_users) if self.web.basic_auth_users else None
        self.gzip_body = gzip_body
        self._headers = "".join(f"{k}: {v}\r\n" for k, v in self.web.http_server_config.headers.items()
                                if header_problem(k, v) is None)
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
        self._auth_waiting = 0
        self._auth_by_ip: dict[str, int] = {}
        self._rejecting = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.base_events.Server | None = None
        self._pool = ThreadPoolExecutor(self.limits.workers, thread_name_prefix="http-worker")
        self._auth_pool = ThreadPoolExecutor(1, thread_name_prefix="http-auth")
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
        self._auth_pool.shutdown(wait=False, cancel_futures=True)

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
                    async with asyncio.timeout_at(_loop_time(deadline)):
                        first = await reader.readexactly(1)
                except (asyncio.IncompleteReadError, TimeoutError, OSError, ConnectionError):
                    return
                conn.idle = False
                conn.since = time.monotonic()
                if not first_request:               # keep-alive: the head counts from its first byte
                    deadline = conn.since + lim.header_timeout
                first_request = False
                try:
                    async with asyncio.timeout_at(_loop_time(deadline)):
                        head = await self._read_head(reader, first)
                except TimeoutError:
                    await self._write(writer, self._simple(408, "request head not received in time\n", close=True))
                    return
                except _HTTPError as err:
                    await self._write(writer, self._simple(err.status, f"{err}\n", close=True))
                    return
                except (asyncio.IncompleteReadError, OSError, ConnectionError):
                    return
                if head is None:
                    return
                data, keep = await self._handle(*head, peer)
                if not await self._write(writer, data) or not keep:
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
            await self._write(writer, self._simple(503, "too many connections; retry later\n",
                                                   {"Retry-After": "1"}, close=True))
        except (OSError, ssl.SSLError, TimeoutError, ConnectionError):
            pass
        finally:
            self._rejecting -= 1
            writer.close()

    async def _read_head(self, reader: asyncio.StreamReader, first: bytes
                         ) -> tuple[str, str, str, dict[str, str]] | None:
        """(method, target, version, headers with lower-case names) of one request head."""
        lim = self.limits
        lines: list[bytes] = []
        total = 0
        pending = first
        while True:
            try:
                line = pending + await reader.readuntil(b"\n")
            except asyncio.LimitOverrunError as err:
                raise _HTTPError(414 if not lines else 431,
                                 "request line too long" if not lines else "header line too long") from err
            except asyncio.IncompleteReadError:
                return None
            pending = b""
            total += len(line)
            if len(line) > lim.max_line:
                raise _HTTPError(414 if not lines else 431, "request line too long" if not lines else
                                 "header line too long")
            if total > lim.max_head:
                raise _HTTPError(431, "request header fields too large")
            if line in (b"\r\n", b"\n"):
                if not lines:
                    continue              # RFC 9112: ignore empty lines before the request line
                break
            lines.append(line)
            if len(lines) > lim.max_headers + 1:
                raise _HTTPError(431, "too many headers")
        parts = lines[0].decode("latin-1").split()
        if len(parts) != 3:
            raise _HTTPError(400, "bad request line")
        method, target, version = parts
        if not version.startswith("HTTP/1."):
            raise _HTTPError(505 if version.startswith("HTTP/") else 400, "HTTP version not supported")
        headers: dict[str, str] = {}
        for raw in lines[1:]:
            name, sep, value = raw.decode("latin-1").partition(":")
            if not sep or not name or name != name.strip():
                raise _HTTPError(400, "bad header line")
            headers[name.lower()] = value.strip()
        return method, target, version, headers

    async def _handle(self, method: str, target: str, version: str, headers: dict[str, str], peer: str = ""
                      ) -> tuple[bytes, bool]:
        """The response bytes and whether the connection stays open."""
        tokens = {t.strip().lower() for t in headers.get("connection", "").split(",")}
        keep = "keep-alive" in tokens if version == "HTTP/1.0" else "close" not in tokens
        if headers.get("transfer-encoding") or headers.get("content-length", "0") not in ("", "0"):
            keep = False                  # a body we do not read: answer, then close
        head = method == "HEAD"
        if method in _READ_ONLY:
            return self._simple(405, "read-only endpoint: only GET and HEAD\n", {"Allow": "GET, HEAD"},
                                close=not keep), keep
        if method not in ("GET", "HEAD"):
            return self._simple(501, f"unsupported method ({method})\n", close=True), False
        if self.auth is not None:
            denied = await self._authorize(headers.get("authorization"), peer)
            if denied is not None:
                return self._simple(*denied, close=not keep, head=head), keep
        path = target.split("?", 1)[0]
        route = self.routes.get(path)
        if route is None:
            return self._simple(404, "404 page not found\n", close=not keep, head=head), keep
        gzip = path == "/metrics" and self.gzip_body is not None and "gzip" in headers.get("accept-encoding", "")
        loop = asyncio.get_running_loop()
        try:
            status, ctype, body, extra = await loop.run_in_executor(self._pool, self._call, route, gzip)
        except Exception as err:  # a failing route is a 500, never a dead connection loop
            log.error("route_failed", path=path, error=str(err))
            return self._simple(500, "internal error\n", close=not keep, head=head), keep
        if keep and version == "HTTP/1.0":
            extra = {**extra, "Connection": "keep-alive"}
        return self._response(status, ctype, body, extra, close=not keep, head=head), keep

    def _call(self, route: Route, gzip: bool) -> tuple[int, str, bytes, dict[str, str]]:
        status, ctype, body = route()
        if gzip and self.gzip_body is not None:
            return status, ctype, self.gzip_body(), {"Content-Encoding": "gzip"}
        return status, ctype, body, {}

    async def _authorize(self, header: str | None, peer: str = "") -> tuple[int, str, dict[str, str]] | None:
        """None when authorized; else (status, body, headers): 401, or 429 when too many checks wait (in all,
        or from this client address)."""
        assert self.auth is not None
        unauthorized = (401, "Unauthorized\n", {"WWW-Authenticate": 'Basic realm="nodewarden"'})
        creds = self.auth.parse(header)
        if creds is None:
            return unauthorized
        got = self.auth.cached(*creds)
        if got is None:
            lim = self.limits
            if (self._auth_waiting >= lim.auth_waiting
                    or self._auth_by_ip.get(peer, 0) >= lim.auth_waiting_per_ip):
                return 429, "too many authentication attempts; retry later\n", {"Retry-After": "1"}
            self._auth_waiting += 1
            self._auth_by_ip[peer] = self._auth_by_ip.get(peer, 0) + 1
            try:
                got = await asyncio.get_running_loop().run_in_executor(self._auth_pool, self.auth.verify, *creds)
            finally:
                self._auth_waiting -= 1
                left = self._auth_by_ip[peer] - 1
                if left:
                    self._auth_by_ip[peer] = left
                else:
                    del self._auth_by_ip[peer]
        return None if got else unauthorized

    # ---------------------------------------------------------- responses

    def _response(self, status: int, ctype: str, body: bytes, extra: dict[str, str] | None = None,
                  close: bool = False, head: bool = False) -> bytes:
        try:
            reason = HTTPStatus(status).phrase
        except ValueError:
            reason = ""
        lines = [f"HTTP/1.1 {status} {reason}\r\nServer: nodewarden\r\nDate: {formatdate(usegmt=True)}\r\n"
                 f"Content-Type: {ctype}\r\nContent-Length: {len(body)}\r\n", self._headers]
        for k, v in (extra or {}).items():
            lines.append(f"{k}: {v}\r\n")
        if close:
            lines.append("Connection: close\r\n")
        lines.append("\r\n")
        out = "".join(lines).encode("latin-1")
        return out if head else out + body

    def _simple(self, status: int, text: str, extra: dict[str, str] | None = None, close: bool = False,
                head: bool = False) -> bytes:
        return self._response(status, "text/plain; charset=utf-8", text.encode(), extra, close, head)

    async def _write(self, writer: asyncio.StreamWriter, data: bytes) -> bool:
        """Write within the write deadline, a slice at a time; False when the client failed to take it."""
        step = self.limits.write_slice
        try:
            async with asyncio.timeout(self.limits.write_timeout):
                view = memoryview(data)
                for off in range(0, len(view), step):
                    writer.write(view[off:off + step])
                    await writer.drain()
        except (TimeoutError, OSError, ConnectionError):
            return False
        return True


def _loop_time(deadline: float) -> float:
    """A time.monotonic() deadline on the running loop's clock."""
    loop = asyncio.get_running_loop()
    return loop.time() + (deadline - time.monotonic())
