"""The web config file (Prometheus exporter-toolkit's ``--web.config.file`` format): its model, its validation
with file:line:column problems, and the TLS context it describes.

TLS certificate and key (optionally client certificates), basic-auth users with bcrypt hashes and a few
response headers, so the endpoint is secured exactly the way SREs already secure node_exporter.
"""

from __future__ import annotations

import os
import ssl
from typing import Literal

from agent.core import yamlpos
from agent.core.config import Model
from agent.core.errors import ConfigError

_TLS_VERSIONS = {"TLS10": ssl.TLSVersion.TLSv1, "TLS11": ssl.TLSVersion.TLSv1_1,
                 "TLS12": ssl.TLSVersion.TLSv1_2, "TLS13": ssl.TLSVersion.TLSv1_3}

# exporter-toolkit's http_server_config.headers: only these names, some with fixed values (web/handler.go).
ALLOWED_HEADERS: dict[str, tuple[str, ...]] = {
    "Strict-Transport-Security": (),
    "X-Content-Type-Options": ("nosniff",),
    "X-Frame-Options": ("deny", "sameorigin"),
    "X-XSS-Protection": (),
    "Content-Security-Policy": (),
}


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


def header_problem(name: str, value: str) -> str | None:
    """Why a configured response header is refused (exporter-toolkit's rules, plus no control characters in
    the value: CR/LF would split the response); None when it is fine."""
    allowed = ALLOWED_HEADERS.get(name)
    if allowed is None:
        return f"HTTP header {name!r} can not be configured (allowed: {', '.join(ALLOWED_HEADERS)})"
    if any((ord(c) < 0x20 and c != "\t") or ord(c) == 0x7F for c in value):
        return f"value of {name} contains a control character (CR, LF, ...)"
    if allowed and value not in allowed:
        return f"invalid value for {name}: expected one of {', '.join(allowed)}, got {value!r}"
    return None


def load_web_config(path: str) -> WebConfig:
    """Read and validate a web config file; ConfigError with file:line:column problems.

    Relative certificate paths are relative to the file's directory (as exporter-toolkit). The TLS files are
    loaded here, so a missing or bad one is reported with the key that names it.
    """
    text = yamlpos.read_text(path, "web config")  # size-limited; a non-UTF-8 byte is a located error
    cfg, root = yamlpos.load_model(WebConfig, text, path, "web config")
    problems: list[str] = []

    def at(*loc: str | int) -> str:
        line, col = yamlpos.position(root, loc)
        return f"{path}:{line}:{col}: {'.'.join(map(str, loc))}"

    for user, hashed in cfg.basic_auth_users.items():
        if not hashed.startswith(("$2a$", "$2b$", "$2y$")):
            problems.append(f"{at('basic_auth_users', user)}: password must be a bcrypt hash")
    for name, value in cfg.http_server_config.headers.items():
        why = header_problem(name, value)
        if why:
            problems.append(f"{at('http_server_config', 'headers', name)}: {why}")
    tls = cfg.tls_server_config
    if tls is not None:
        base = os.path.dirname(os.path.abspath(path))
        files = {k: os.path.join(base, v) for k in ("cert_file", "key_file", "client_ca_file")
                 if (v := getattr(tls, k))}
        tls = tls.model_copy(update=files)
        cfg = cfg.model_copy(update={"tls_server_config": tls})
        order = list(_TLS_VERSIONS)
        if tls.max_version and order.index(tls.max_version) < order.index(tls.min_version):
            problems.append(f"{at('tls_server_config', 'max_version')}: max_version {tls.max_version} is below "
                            f"min_version {tls.min_version}")
        if "Verify" in tls.client_auth_type and not tls.client_ca_file:
            problems.append(f"{at('tls_server_config', 'client_auth_type')}: client_ca_file is required for "
                            "client certificate verification")
        missing = False
        for key, file in files.items():
            try:
                with open(file, "rb"):
                    pass
            except OSError as err:
                missing = True
                problems.append(f"{at('tls_server_config', key)}: cannot read {file}: {err.strerror}")
        if not missing and not problems:
            try:
                ssl_context(tls)
            except (ssl.SSLError, OSError, ValueError) as err:
                why = (err.reason if isinstance(err, ssl.SSLError) else None) or err
                problems.append(f"{at('tls_server_config', 'cert_file')}: cannot load the certificate, key or CA "
                                f"({tls.cert_file}, {tls.key_file}): {why}")
    if problems:
        raise ConfigError("\n".join(problems), problems)
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
