"""The agent's configuration: one validated, frozen object.

YAML is read with ruamel.yaml (so errors carry line and column) and validated with pydantic (typed,
frozen models, unknown keys rejected). Every problem is reported as ``file:line:column: message``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import ConfigDict, Field, ValidationError, field_validator, model_validator

from agent.core import yamlpos
from agent.core.errors import ConfigError
from agent.core.model import Configurable, Duration, Model, Regex
from agent.core.paths import Paths

DEFAULT_LISTEN = "127.0.0.1:9842"
# The default rule library (top-level rules/); rules/remediations.yml is the policy, not a rule file.
DEFAULT_RULE_FILES = (
    "rules/gpu.yml", "rules/network.yml", "rules/storage.yml", "rules/host.yml", "rules/kernel.yml",
)
DEFAULT_POLICY = "rules/remediations.yml"


class CollectorConfig(Model):
    """Settings every collector has."""

    enabled: bool = True
    export: bool = Field(True, description="false: sample for rules but leave out of /metrics")
    timeout: Duration | None = Field(None, description="deadline per collect(); default 80% of interval")


class DeviceFilterConfig(CollectorConfig):
    """Include/exclude regexes on device names (fully anchored, like node_exporter's flags).

    ``device_exclude: null`` (the default) means the collector's node_exporter default exclude.
    """

    device_include: Regex | None = None
    device_exclude: Regex | None = None


class CollectorsConfig(Model):
    """Per-collector settings, keyed by collector name (built-in and third-party alike).

    Each collector owns its settings model (its class's ``Config`` attribute, like remediation plugins).
    :func:`config_model` builds the schema with one field per installed collector, so a problem is located
    at ``collectors.NAME.key``; a section not configured reads as that collector's defaults.
    """

    model_config = ConfigDict(frozen=True, extra="allow", strict=True)

    @model_validator(mode="after")
    def _installed(self) -> CollectorsConfig:
        from agent.core import discovery

        known = discovery.discover(discovery.COLLECTORS)
        fields = type(self).model_fields
        for name, value in (self.model_extra or {}).items():
            if name not in known:
                names = ", ".join(sorted(set(known) | set(fields)))
                raise ValueError(f"unknown collector {name!r} (installed: {names})")
            if not isinstance(value, CollectorConfig):
                self.model_extra[name] = section_model(name).model_validate(value)
        return self

    def get(self, name: str) -> CollectorConfig:
        """The settings of collector ``name``: as configured, or its defaults."""
        if name in type(self).model_fields:
            return getattr(self, name)
        found = (self.model_extra or {}).get(name)
        return found if found is not None else section_model(name)()


def section_model(name: str) -> type[CollectorConfig]:
    """The settings model collector ``name`` declares (``CollectorConfig`` when it declares none or fails to load)."""
    from agent.core import discovery

    cls = discovery.collector_class(name)
    model = cls.Config if isinstance(cls, Configurable) else None
    return model if isinstance(model, type) and issubclass(model, CollectorConfig) else CollectorConfig


_MODELS: dict[tuple[str, ...], type[Config]] = {}


def config_model() -> type[Config]:
    """:class:`Config` with ``collectors`` typed per installed collector (built once per set of collectors)."""
    from pydantic import create_model

    from agent.core import discovery

    names = tuple(sorted(discovery.discover(discovery.COLLECTORS)))
    if names not in _MODELS:
        fields: dict[str, Any] = {n: (section_model(n), section_model(n)()) for n in names}
        sections = create_model("CollectorsConfig", __base__=CollectorsConfig, **fields)
        _MODELS[names] = create_model("Config", __base__=Config, collectors=(sections, sections()))
    return _MODELS[names]


_ROOTS = Paths()


class PathsConfig(Model):
    """Roots of the pseudo filesystems (point them at fixture trees or a container's host mounts)."""

    procfs: str = _ROOTS.procfs  # the defaults live in agent.core.paths only
    sysfs: str = _ROOTS.sysfs
    devfs: str = _ROOTS.devfs
    rootfs: str = _ROOTS.rootfs

    def roots(self) -> Paths:
        """The :class:`agent.core.paths.Paths` collectors and plugins take."""
        return Paths(self.procfs, self.sysfs, self.devfs, self.rootfs)


class LogConfig(Model):
    """Logging: JSON lines for journald, a readable console on a TTY."""

    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["auto", "json", "console"] = "auto"


class Config(Model):
    """Everything the daemon needs. Built once, never mutated; a reload builds a new one."""

    listen: str = DEFAULT_LISTEN
    state_dir: str = "var"
    mode: Literal["observe", "enforce"] = "observe"
    interval: Duration = 5.0
    retention: Duration = 900.0
    hostname: str | None = None
    web_config_file: str | None = None
    rule_files: list[str] = Field(
        default_factory=lambda: list(DEFAULT_RULE_FILES),
        description="Prometheus rule files (globs), relative to the config file's directory")
    external_labels: dict[str, str] = Field(
        default_factory=dict, description="$externalLabels in templates; added to every alert sent to "
                                          "Alertmanager and shown on /api/v1/alerts")
    node_label: str | None = Field(
        "instance", pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
        description="label naming this node (value: hostname) on every alert sent and on /api/v1/alerts; null: none")
    remediation_policy: str | None = Field(
        DEFAULT_POLICY, description="remediation policy file (relative to the config file's directory); null: none")
    paths: PathsConfig = PathsConfig()
    log: LogConfig = LogConfig()
    collectors: CollectorsConfig = CollectorsConfig()

    @field_validator("interval")
    @classmethod
    def _interval_range(cls, v: float) -> float:
        if not 1.0 <= v <= 3600.0:
            raise ValueError("interval must be between 1s and 1h")
        return v

    @field_validator("retention")
    @classmethod
    def _retention_range(cls, v: float) -> float:
        if not 60.0 <= v <= 86400.0:
            raise ValueError("retention must be between 1m and 24h")
        return v

    @field_validator("listen")
    @classmethod
    def _listen(cls, v: str) -> str:
        parse_listen(v)
        return v


def parse_listen(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT`` too) to a tuple; ValueError when malformed."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"listen address must be HOST:PORT, got {text!r}")
    return host.strip("[]") or "0.0.0.0", int(port)


def load_text(text: str, filename: str = "<config>") -> Config:
    """Parse and validate YAML text; ConfigError lists every problem with its position."""
    return yamlpos.load_model(config_model(), text, filename, "config")[0]


def load_file(path: str | Path) -> Config:
    """Read and validate a config file; relative rule_files are resolved against its directory."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as err:
        raise ConfigError(f"{path}:1:1: cannot read config: {err.strerror}") from err
    cfg = load_text(text, str(path))
    base = Path(path).resolve().parent
    if "rule_files" in cfg.model_fields_set:
        files = [f if Path(f).is_absolute() else str(base / f) for f in cfg.rule_files]
        cfg = cfg.model_copy(update={"rule_files": files})
    if "remediation_policy" in cfg.model_fields_set and cfg.remediation_policy:
        cfg = cfg.model_copy(update={"remediation_policy": str(base / cfg.remediation_policy)})
    return cfg


def policy_path(cfg: Config) -> str | None:
    """The remediation policy to load: a configured path (must exist), or the default when it exists."""
    if not cfg.remediation_policy:
        return None
    if "remediation_policy" in cfg.model_fields_set or Path(cfg.remediation_policy).exists():
        return cfg.remediation_policy
    return None


def rule_paths(cfg: Config) -> list[str]:
    """Expand rule_files globs (sorted per pattern). A configured file that does not exist is returned as is,
    so loading it reports the missing file; the built-in default list only uses the files that exist."""
    import glob

    explicit = "rule_files" in cfg.model_fields_set
    out: list[str] = []
    for pattern in cfg.rule_files:
        matches = sorted(glob.glob(pattern))
        if matches:
            out += [m for m in matches if m not in out]
        elif explicit and not glob.has_magic(pattern):
            out.append(pattern)
    return out


def with_overrides(cfg: Config, **overrides: Any) -> Config:
    """A new Config with top-level command-line overrides (None values ignored), each validated."""
    given = {k: v for k, v in overrides.items() if v is not None}
    try:
        Config.model_validate(given)  # validates just these keys (the rest take defaults)
    except ValidationError as err:
        raise ConfigError("\n".join(f"command line: {e['loc'][0]}: {e['msg']}" for e in err.errors())) from err
    return cfg.model_copy(update=given)
