"""The agent's configuration: one validated, frozen object.

YAML is read with ruamel.yaml (so errors carry line and column) and validated with pydantic (typed,
frozen models, unknown keys rejected). Every problem is reported as ``file:line:column: message``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, field_validator, model_validator

from agent.core import yamlpos
from agent.core.durations import parse_duration
from agent.core.errors import ConfigError
from agent.core.paths import Paths

DEFAULT_LISTEN = "127.0.0.1:9842"
# The default rule library (top-level rules/); rules/remediations.yml is the policy, not a rule file.
DEFAULT_RULE_FILES = ("rules/gpu.yml", "rules/network.yml", "rules/storage.yml")
DEFAULT_POLICY = "rules/remediations.yml"


def _duration(value: Any) -> float:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        raise ValueError(f"duration must be a string like 30s or 5m, got {value!r}")
    return parse_duration(value)


def _regex(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError("expected a regular expression string")
    try:
        re.compile(value)
    except re.error as err:
        raise ValueError(f"invalid regular expression {value!r}: {err}") from err
    return value


Duration = Annotated[float, BeforeValidator(_duration)]
Regex = Annotated[str, BeforeValidator(_regex)]


class Model(BaseModel):
    """Base for every config section: frozen, strict types, unknown keys rejected."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)


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


class DiskConfig(DeviceFilterConfig):
    """node_exporter diskstats collector equivalent."""


class FilesystemConfig(CollectorConfig):
    """node_exporter filesystem collector equivalent."""

    mount_points_include: Regex | None = None
    mount_points_exclude: Regex | None = None
    fs_types_include: Regex | None = None
    fs_types_exclude: Regex | None = None
    stat_timeout: Duration = Field(1.0, gt=0, description="deadline for one statfs() call")


class NetworkConfig(DeviceFilterConfig):
    """node_exporter netdev + netclass equivalent."""


class NetstatConfig(CollectorConfig):
    """TCP counters from /proc/net/snmp."""


class InfinibandConfig(DeviceFilterConfig):
    """InfiniBand / RoCE port counters from sysfs."""


class GpuConfig(CollectorConfig):
    """NVIDIA GPUs through NVML."""

    simulate: str | None = Field(None, description="scenario name or file: fake NVML instead of pynvml")
    call_timeout: Duration = 2.0
    max_abandoned_calls: int = Field(4, ge=1, le=64)
    kmsg: bool = Field(True, description="also read NVRM Xid lines from /dev/kmsg (root only)")
    xid_dedup_window: Duration = Field(10.0, description="an XID seen by NVML and kmsg within this counts once")
    export_process_memory: bool = Field(False, description="export per-process GPU memory with a pid label")


class CollectorsConfig(Model):
    """Per-collector settings, keyed by collector name (third-party collectors by their entry-point name)."""

    model_config = ConfigDict(frozen=True, extra="allow", strict=True)

    disk: DiskConfig = DiskConfig()
    filesystem: FilesystemConfig = FilesystemConfig()
    network: NetworkConfig = NetworkConfig()
    netstat: NetstatConfig = NetstatConfig()
    infiniband: InfinibandConfig = InfinibandConfig()
    gpu: GpuConfig = GpuConfig()

    @model_validator(mode="after")
    def _third_party(self) -> CollectorsConfig:
        from agent.collectors import discover

        known = discover()
        for name, value in (self.model_extra or {}).items():
            if name not in known:
                names = ", ".join(sorted(set(known) | set(type(self).model_fields)))
                raise ValueError(f"unknown collector {name!r} (installed: {names})")
            self.model_extra[name] = CollectorConfig.model_validate(value)
        return self

    def get(self, name: str) -> CollectorConfig:
        """The section for collector ``name`` (defaults for a third-party one not configured)."""
        if name in type(self).model_fields:
            return getattr(self, name)
        return (self.model_extra or {}).get(name) or CollectorConfig()


class PathsConfig(Model):
    """Roots of the pseudo filesystems (point them at fixture trees or a container's host mounts)."""

    procfs: str = "/proc"
    sysfs: str = "/sys"
    devfs: str = "/dev"
    rootfs: str = "/"

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
    return yamlpos.load_model(Config, text, filename, "config")[0]


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
