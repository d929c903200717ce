"""Read-only HTTP endpoint: /metrics (cached bytes), /healthz, /, and JSON routes the daemon adds.

Access control uses the Prometheus exporter-toolkit web config format (``--web.config.file``): TLS
certificate and key (optionally client certificates) and basic-auth users with bcrypt hashes, so the
endpoint can be secured exactly the way SREs already secure node_exporter.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import socket
import ssl
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Literal

import bcrypt
import structlog

from agent.core import yamlpos
from agent.core.config import Model
from agent.core.errors import ConfigError

log = structlog.get_logger("web")

Response = tuple[int, str, bytes]
Route = Callable[[], Response]

_TLS_VERSIONS = {"TLS10": ssl.TLSVersion.TLSv1, "TLS11": ssl.TLSVersion.TLSv1_1,
                 "TLS12": ssl.TLSVersion.TLSv1_2, "TLS13": ssl.TLSVersion.TLSv1_3}


class TLSServerConfig(Model):
    """exporter-toolkit ``tls_server_config``."""

    cert_file: str
    key_file: str
    client_auth_type: Literal["NoClientCert", "RequestClientCert", "RequireAnyClientCert",
                              "VerifyClientCertIfGiven", "RequireAndVerifyClientCert"] = "NoClientCert"
    client_ca_file: str | None = None
    min_version: Literal["TLS10", "TLS11", "TLS12", "TLS13"] = "TLS12"
    max_version: Literal["TLS10", "TLS11", "TLS12", "TLS13"] | None = None


class HTTPServerConfig(Model):
    """exporter-toolkit ``http_server_config`` (headers only; http2 is ignored)."""

    headers: dict[str, str] = {}
    http2: bool = True


class WebConfig(Model):
    """The whole web config file."""

    tls_server_config: TLSServerConfig | None = None
    http_server_config: HTTPServerConfig = HTTPServerConfig()
    basic_auth_users: dict[str, str] = {}


def load_web_config(path: str) -> WebConfig:
    """Read and validate a web config file; ConfigError with file:line:column problems."""
    text = yamlpos.read_text(path, "web config")  # size-limited; a non-UTF-8 byte is a located error
    cfg = yamlpos.load_model(WebConfig, text, path, "web config")[0]
    for user, hashed in cfg.basic_auth_users.items():
        if not hashed.startswith(("$2a$", "$2b$", "$2y$")):
            raise ConfigError(f"{path}:1:1: basic_auth_users.{user}: password must be a bcrypt hash")
    tls = cfg.tls_server_config
    if tls and "Verify" in tls.client_auth_type and not tls.client_ca_file:
        raise ConfigError(f"{path}:1:1: client_ca_file is required for client certificate verification")
    return cfg


def ssl_context(cfg: TLSServerConfig) -> ssl.SSLContext:
    """A server-side SSLContext for the TLS settings."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = _TLS_VERSIONS[cfg.min_version]
    if cfg.max_version:
        ctx.maximum_version = _TLS_VERSIONS[cfg.max_version]
    ctx.load_cert_chain(cfg.cert_file, cfg.key_file)
    if cfg.client_ca_file:
        ctx.load_verify_locations(cfg.client_ca_file)
    if cfg.client_auth_type in ("RequireAndVerifyClientCert", "RequireAnyClientCert"):
        ctx.verify_mode = ssl.CERT_REQUIRED
    elif cfg.client_auth_type != "NoClientCert":
        ctx.verify_mode = ssl.CERT_OPTIONAL
    return ctx


class BasicAuth:
    """bcrypt checks with a cache of successful (user, password) digests: bcrypt costs ~50-300 ms a check."""

    def __init__(self, users: dict[str, str]) -> None:
        self.users = users
        self._ok: set[bytes] = set()
        self._lock = threading.Lock()

    def check(self, header: str | None) -> bool:
        """True when the Authorization header carries a valid user and password."""
        if not header or not header.startswith("Basic "):
            return False
        try:
            user, _, password = base64.b64decode(header[6:], validate=True).decode().partition(":")
        except (ValueError, UnicodeDecodeError):
            return False
        hashed = self.users.get(user)
        if hashed is None:
            return False
        key = hashlib.sha256(f"{user}\0{password}\0{hashed}".encode()).digest()
        with self._lock:
            if key in self._ok:
                return True
        try:
            ok = bcrypt.checkpw(password.encode(), hashed.replace("$2y$", "$2b$", 1).encode())
        except ValueError:
            return False
        if ok:
            with self._lock:
                self._ok.add(key)
        return ok


class Server:
    """A threaded HTTP(S) server over a table of GET routes."""

    def __init__(self, host: str, port: int, routes: dict[str, Route], web: WebConfig | None = None,
                 gzip_body: Callable[[], bytes] | None = None) -> None:
        self.routes = routes
        self.web = web or WebConfig()
        self.auth = BasicAuth(self.web.basic_auth_users) if self.web.basic_auth_users else None
        self.gzip_body = gzip_body
        handler = _make_handler(self)
        self.httpd = ThreadingHTTPServer((host, port), handler, bind_and_activate=False)
        self.httpd.daemon_threads = True
        if ":" in host:
            self.httpd.address_family = socket.AF_INET6
            self.httpd.socket = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        self.httpd.allow_reuse_address = True
        self.httpd.server_bind()
        self.httpd.server_activate()
        if self.web.tls_server_config:
            ctx = ssl_context(self.web.tls_server_config)
            self.httpd.socket = ctx.wrap_socket(self.httpd.socket, server_side=True)
        self.port = self.httpd.server_address[1]
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Serve in a background thread."""
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="http", daemon=True,
                                        kwargs={"poll_interval": 0.2})
        self._thread.start()

    def stop(self) -> None:
        """Stop serving and close the socket."""
        self.httpd.shutdown()
        self.httpd.server_close()


def _make_handler(server: Server) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        timeout = 10  # seconds per connection read: a stuck client cannot hold a thread forever
        protocol_version = "HTTP/1.1"
        server_version = "nodewarden"

        def log_message(self, format: str, *args: object) -> None:
            pass

        def setup(self) -> None:
            super().setup()
            with contextlib.suppress(OSError):
                self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

        def _send(self, status: int, ctype: str, body: bytes, extra: dict[str, str] | None = None) -> None:
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            for k, v in {**server.web.http_server_config.headers, **(extra or {})}.items():
                self.send_header(k, v)
            # Headers and body in one write: two small writes meet Nagle + delayed ACK (~40 ms per scrape).
            self._headers_buffer.append(b"\r\n")
            if self.command != "HEAD":
                self._headers_buffer.append(body)
            self.flush_headers()

        def _authorized(self) -> bool:
            if server.auth is None or server.auth.check(self.headers.get("Authorization")):
                return True
            self._send(401, "text/plain; charset=utf-8", b"Unauthorized\n",
                       {"WWW-Authenticate": 'Basic realm="nodewarden"'})
            return False

        def do_GET(self) -> None:
            if not self._authorized():
                return
            path = self.path.split("?", 1)[0]
            route = server.routes.get(path)
            if route is None:
                self._send(404, "text/plain; charset=utf-8", b"404 page not found\n")
                return
            status, ctype, body = route()
            if (path == "/metrics" and server.gzip_body is not None
                    and "gzip" in self.headers.get("Accept-Encoding", "")):
                self._send(status, ctype, server.gzip_body(), {"Content-Encoding": "gzip"})
                return
            self._send(status, ctype, body)

        do_HEAD = do_GET

        def _read_only(self) -> None:
            self._send(405, "text/plain; charset=utf-8", b"read-only endpoint: only GET and HEAD\n",
                       {"Allow": "GET, HEAD"})

        do_POST = do_PUT = do_DELETE = do_PATCH = _read_only

    return Handler
