"""The HTTP/1.1 wire of the endpoint: what one client may cost (:class:`Limits`), reading a request head
within those limits, building responses and writing them in slices under a deadline."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from email.utils import formatdate
from http import HTTPStatus


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


class HTTPError(Exception):
    """A request the server answers with ``status`` and closes (bad head, too large, ...)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


async def read_head(reader: asyncio.StreamReader, first: bytes, lim: Limits
                    ) -> tuple[str, str, str, dict[str, str]] | None:
    """(method, target, version, headers with lower-case names) of one request head."""
    lines: list[bytes] = []
    total = 0
    pending = first
    while True:
        try:
            line = pending + await reader.readuntil(b"\n")
        except asyncio.LimitOverrunError as err:
            raise HTTPError(414 if not lines else 431,
                            "request line too long" if not lines else "header line too long") from err
        except asyncio.IncompleteReadError:
            return None
        pending = b""
        total += len(line)
        if len(line) > lim.max_line:
            raise HTTPError(414 if not lines else 431, "request line too long" if not lines else
                            "header line too long")
        if total > lim.max_head:
            raise HTTPError(431, "request header fields too large")
        if line in (b"\r\n", b"\n"):
            if not lines:
                continue              # RFC 9112: ignore empty lines before the request line
            break
        lines.append(line)
        if len(lines) > lim.max_headers + 1:
            raise HTTPError(431, "too many headers")
    parts = lines[0].decode("latin-1").split()
    if len(parts) != 3:
        raise HTTPError(400, "bad request line")
    method, target, version = parts
    if not version.startswith("HTTP/1."):
        raise HTTPError(505 if version.startswith("HTTP/") else 400, "HTTP version not supported")
    headers: dict[str, str] = {}
    for raw in lines[1:]:
        name, sep, value = raw.decode("latin-1").partition(":")
        if not sep or not name or name != name.strip():
            raise HTTPError(400, "bad header line")
        headers[name.lower()] = value.strip()
    return method, target, version, headers


class Responses:
    """Response bytes carrying the configured extra headers (``headers``: already validated)."""

    def __init__(self, headers: dict[str, str]) -> None:
        self._headers = "".join(f"{k}: {v}\r\n" for k, v in headers.items())

    def response(self, status: int, ctype: str, body: bytes, extra: dict[str, str] | None = None,
                 close: bool = False, head: bool = False) -> bytes:
        """An HTTP/1.1 response (only its head with ``head``), with the configured headers."""
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

    def simple(self, status: int, text: str, extra: dict[str, str] | None = None, close: bool = False,
               head: bool = False) -> bytes:
        """A plain-text response."""
        return self.response(status, "text/plain; charset=utf-8", text.encode(), extra, close, head)


async def write(writer: asyncio.StreamWriter, data: bytes, lim: Limits) -> bool:
    """Write within the write deadline, a slice at a time; False when the client failed to take it."""
    step = lim.write_slice
    try:
        async with asyncio.timeout(lim.write_timeout):
            view = memoryview(data)
            for off in range(0, len(view), step):
                writer.write(view[off:off + step])
                await writer.drain()
    except (TimeoutError, OSError, ConnectionError):
        return False
    return True


def loop_time(deadline: float) -> float:
    """A time.monotonic() deadline on the running loop's clock."""
    loop = asyncio.get_running_loop()
    return loop.time() + (deadline - time.monotonic())
