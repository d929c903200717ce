"""Simulation scenarios: YAML files describing a node (GPUs and host), its state over time, injected faults, and
what must happen (``expect``).

GPUs drive :mod:`agent.collectors.fakenvml`; the host part (``node:`` objects, timeline ``host:`` / ``kmsg:`` /
``files:`` entries) drives :mod:`agent.collectors.nodesim`, which renders procfs/sysfs/dev trees that the real
collectors read. Built-in scenarios ship in ``agent/data/scenarios/NAME.yml``;
any other path to a ``.yml`` file works too. Problems are reported as ``file:line:column: message``.
See docs/gpu.md for the format.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from agent.collectors.simgpu import (  # noqa: F401  (re-exported: simulate.GpuSpec, simulate.NUMERIC_FIELDS, ...)
    CLOCK_EVENT_REASONS,
    DEFAULT_BUS_IDS,
    GPM_FIELDS,
    HANGABLE,
    INTEGRATED,
    MIG_PROFILES,
    NUMERIC_FIELDS,
    SUPPORT_FIELDS,
    GpuSpec,
    MigInstance,
    Process,
    check_support,
    mig_profile,
)
from agent.collectors.simhost import HOST_KINDS, check_fields, host_kind  # noqa: F401  (re-exported)
from agent.core import yamlpos
from agent.core.durations import parse_duration
from agent.core.errors import ConfigError

BUILTIN_DIR = ("data", "scenarios")


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


def _seconds(value: Any) -> float:
    if isinstance(value, bool):
        raise ValueError("expected seconds or a duration like 30s")
    if isinstance(value, (int, float)):
        if value < 0:
            raise ValueError("must not be negative")
        return float(value)
    return parse_duration(value)


class HostChange(_Model):
    """What a step does to one host object: ``set`` values, ``add`` to counters, change counter ``rate``s
    (per second), or ``uniform`` [low, high] draws (deterministic per seed, step and time)."""

    set: dict[str, Any] = {}
    add: dict[str, float] = {}
    rate: dict[str, float] = {}
    uniform: dict[str, tuple[float, float]] = {}


class Dataset(_Model):
    """A protected dataset on the simulated host (``root`` relative to the host root), with its files; the
    scenario runner writes them, builds the manifest and configures the ``restore`` plugin's scrubber."""

    root: str
    files: dict[str, str]
    scrub_every: float = 60.0

    @field_validator("root")
    @classmethod
    def _root(cls, v: str) -> str:
        return check_sim_path(v)

    @field_validator("scrub_every", mode="before")
    @classmethod
    def _every(cls, v: Any) -> float:
        return _seconds(v)


class Expect(_Model):
    """What must happen in a scenario run: ``alert`` fires (within ``within``), or never (``never: true``);
    ``action`` is journaled (planned, in observe mode) within ``within``, or never. ``labels`` narrow which
    firing alerts count (alerts only)."""

    alert: str | None = None
    action: str | None = None
    within: float | None = None
    never: bool = False
    labels: dict[str, str] = {}

    @field_validator("within", mode="before")
    @classmethod
    def _within(cls, v: Any) -> Any:
        return None if v is None else _seconds(v)

    @model_validator(mode="after")
    def _one(self) -> Expect:
        if (self.alert is None) == (self.action is None):
            raise ValueError("an expectation names exactly one of alert or action")
        return self


class Step(_Model):
    """A timeline entry: at ``at`` seconds (repeating ``every`` until ``until``), change the target GPUs and the
    host objects, log kernel lines, write files. ``chance`` applies each repetition with that probability."""

    at: float
    every: float | None = None
    until: float | None = None
    gpu: int | list[int] | Literal["all"] = "all"
    set: dict[str, Any] = {}
    add: dict[str, float] = {}
    xid: int | None = Field(None, ge=1, le=9999)
    lost: bool | None = None
    not_supported: list[str] | None = None
    supported: list[str] | None = None
    hang: list[str] | None = None
    uniform: dict[str, tuple[float, float]] = {}
    chance: float = Field(1.0, gt=0, le=1)
    host: dict[str, HostChange] = {}
    kmsg: list[str] = []
    files: dict[str, str] = {}

    @field_validator("uniform")
    @classmethod
    def _uniform(cls, v: dict[str, tuple[float, float]]) -> dict[str, tuple[float, float]]:
        for key, (lo, hi) in v.items():
            if key not in NUMERIC_FIELDS:
                raise ValueError(f"uniform: unknown field {key!r}")
            if hi < lo:
                raise ValueError(f"uniform.{key}: high below low")
        return v

    @field_validator("host")
    @classmethod
    def _host(cls, v: dict[str, HostChange]) -> dict[str, HostChange]:
        for key, change in v.items():
            kind = host_kind(key)
            check_fields(kind, change.set, f"host.{key}.set")
            for part in ("add", "rate", "uniform"):
                check_fields(kind, dict.fromkeys(getattr(change, part), 0), f"host.{key}.{part}")
        return v

    @field_validator("files")
    @classmethod
    def _files(cls, v: dict[str, str]) -> dict[str, str]:
        for path in v:
            check_sim_path(path)
        return v

    def occurs(self, seed: int, index: int, t: float) -> bool:
        """Whether this repetition happens (``chance``), the same answer for every simulator part."""
        return self.chance >= 1.0 or draw(seed, index, t, "chance") < self.chance

    @field_validator("at", "every", "until", mode="before")
    @classmethod
    def _time(cls, v: Any) -> Any:
        return None if v is None else _seconds(v)

    @field_validator("set")
    @classmethod
    def _set(cls, v: dict[str, Any]) -> dict[str, Any]:
        for key, value in v.items():
            if key in NUMERIC_FIELDS:
                if isinstance(value, bool) or not isinstance(value, (int, float)):
                    raise ValueError(f"set.{key}: expected a number")
            elif key == "clocks_event_reasons":
                GpuSpec._reasons(list(value or []))
            elif key == "processes":
                [Process.model_validate(p) for p in value or []]
            else:
                raise ValueError(f"set: unknown field {key!r}")
        return v

    @field_validator("add")
    @classmethod
    def _add(cls, v: dict[str, float]) -> dict[str, float]:
        for key in v:
            if key not in NUMERIC_FIELDS:
                raise ValueError(f"add: unknown field {key!r}")
        return v

    @field_validator("not_supported", "supported")
    @classmethod
    def _sup(cls, v: list[str] | None) -> list[str] | None:
        return None if v is None else check_support(v)

    @field_validator("hang")
    @classmethod
    def _hang(cls, v: list[str] | None) -> list[str] | None:
        for fn in v or []:
            if fn != "all" and fn not in HANGABLE:
                raise ValueError(f"hang: unknown NVML function {fn!r} (use 'all' or one of {sorted(HANGABLE)})")
        return v

    @model_validator(mode="after")
    def _repeat(self) -> Step:
        if self.every is not None and self.every <= 0:
            raise ValueError("every must be positive")
        if self.until is not None and self.until < self.at:
            raise ValueError("until must not be before at")
        return self

    def times(self, horizon: float) -> list[float]:
        """The moments this step applies (``every`` repeats up to ``until`` or ``horizon``, 10,000 at most)."""
        if self.every is None:
            return [self.at]
        end = self.until if self.until is not None else horizon
        out, t = [], self.at
        while t <= end + 1e-9 and len(out) < 10_000:
            out.append(t)
            t += self.every
        return out


def check_sim_path(path: str) -> str:
    """A file path inside the simulated roots: ``proc/...``, ``sys/...``, ``dev/...`` or a host path; no ``..``."""
    parts = path.strip("/").split("/")
    if not path or path.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise ValueError(f"files: {path!r}: give a relative path like proc/loadavg or sys/class/... (no ..)")
    return path


def draw(seed: int, index: int, t: float, what: str) -> float:
    """A deterministic number in [0, 1) for (seed, step index, time, what): the same in every simulator part."""
    import hashlib

    digest = hashlib.blake2b(f"{seed}/{index}/{t:.6f}/{what}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


class Scenario(_Model):
    """A simulated node: GPUs (``gpu``/``gpus``), optionally the host (``node``), a timeline, expectations."""

    name: str
    description: str
    extends: str | None = Field(None, description="a built-in scenario whose node, GPUs and timeline this one "
                                "starts from (expectations and healthy are not inherited)")
    seed: int = 0
    healthy: bool = Field(False, description="no default rule may fire and no action be planned")
    node: dict[str, dict[str, Any]] | None = None
    datasets: dict[str, Dataset] = {}
    expect: list[Expect] = []
    duration: float = 3600.0
    nvml: Literal["ok", "library_not_found", "driver_not_loaded", "no_permission"] = "ok"
    driver_version: str = "550.54.15"
    cuda_version: int = 12040
    nvml_version: str = "12.550.54.15"
    gpu_count: int = Field(8, ge=0, le=64)
    gpu: GpuSpec = GpuSpec()
    gpus: dict[int, GpuSpec] = {}
    timeline: list[Step] = []
    # Filled by the validator: the merged, validated spec of every GPU.
    devices: list[GpuSpec] = []

    @field_validator("duration", mode="before")
    @classmethod
    def _dur(cls, v: Any) -> float:
        return _seconds(v)

    @field_validator("node")
    @classmethod
    def _node(cls, v: dict[str, dict[str, Any]] | None) -> dict[str, dict[str, Any]] | None:
        for key, fields in (v or {}).items():
            kind = host_kind(key)
            fields = dict(fields or {})
            rate = fields.pop("rate", {}) or {}
            if not isinstance(rate, dict):
                raise ValueError(f"node.{key}.rate: expected a mapping of counter: per-second rate")
            check_fields(kind, fields, f"node.{key}")
            check_fields(kind, rate, f"node.{key}.rate")
        return v

    @model_validator(mode="after")
    def _build(self) -> Scenario:
        for idx in self.gpus:
            if not 0 <= idx < self.gpu_count:
                raise ValueError(f"gpus: index {idx} out of range (gpu_count is {self.gpu_count})")
        for step in self.timeline:
            targets = [] if step.gpu == "all" else [step.gpu] if isinstance(step.gpu, int) else step.gpu
            for idx in targets:
                if not 0 <= idx < self.gpu_count:
                    raise ValueError(f"timeline: gpu {idx} out of range (gpu_count is {self.gpu_count})")
        devices = []
        for i in range(self.gpu_count):
            spec = self.gpu
            if i in self.gpus:
                over = self.gpus[i]
                spec = spec.model_copy(update={k: getattr(over, k) for k in over.model_fields_set})
            bus = DEFAULT_BUS_IDS[i] if i < len(DEFAULT_BUS_IDS) else f"{0x20 + i:02x}"
            spec = spec.model_copy(
                update={
                    "uuid": spec.uuid or f"GPU-{_h(self.name, i, 8)}-{_h(self.name, i, 4, 1)}-"
                    f"{_h(self.name, i, 4, 2)}-{_h(self.name, i, 4, 3)}-{_h(self.name, i, 12, 4)}",
                    "pci_bus_id": spec.pci_bus_id or f"00000000:{bus.upper()}:00.0",
                }
            )
            devices.append(spec)
        object.__setattr__(self, "devices", devices)
        return self


def _h(name: str, i: int, n: int, salt: int = 0) -> str:
    import hashlib

    return hashlib.sha256(f"{name}/{i}/{salt}".encode()).hexdigest()[:n]



def load_text(text: str, filename: str = "<scenario>", _depth: int = 0) -> Scenario:
    """Parse and validate a scenario; ConfigError lists every problem as ``file:line:column: message``."""
    sc = yamlpos.load_model(Scenario, text, filename, "a scenario")[0]
    if sc.extends is None:
        return sc
    if _depth >= 4:
        raise ConfigError(f"{filename}:1:1: extends: more than 4 levels (a loop?)")
    base = load_text(builtin_text(sc.extends), f"{sc.extends}.yml", _depth + 1)
    return merge(base, sc, filename)


def merge(base: Scenario, child: Scenario, filename: str = "<scenario>") -> Scenario:
    """``child`` on top of ``base``: node objects and GPU templates merged field by field, timelines
    concatenated (base first), datasets merged; expectations, healthy and the rest from the child."""
    skip = {"devices", "extends"}
    data = base.model_dump(exclude=skip | {"expect", "healthy"})
    own = child.model_dump(exclude=skip, exclude_unset=True)
    node = {k: dict(v) for k, v in (base.node or {}).items()}
    for key, fields in (child.node or {}).items():
        merged = {**node.get(key, {}), **fields}
        if "rate" in fields and "rate" in node.get(key, {}):
            merged["rate"] = {**node[key]["rate"], **fields["rate"]}
        node[key] = merged
    data.update({k: v for k, v in own.items() if k not in ("node", "gpu", "gpus", "timeline", "datasets")})
    data["node"] = node or None
    data["gpu"] = {**base.gpu.model_dump(exclude_unset=True), **child.gpu.model_dump(exclude_unset=True)}
    gpus = {i: g.model_dump(exclude_unset=True) for i, g in base.gpus.items()}
    for i, g in child.gpus.items():
        gpus[i] = {**gpus.get(i, {}), **g.model_dump(exclude_unset=True)}
    data["gpus"] = gpus
    data["timeline"] = [s.model_dump(exclude_unset=True) for s in base.timeline] + \
        [s.model_dump(exclude_unset=True) for s in child.timeline]
    data["datasets"] = {**data.get("datasets", {}), **own.get("datasets", {})}
    try:
        return Scenario.model_validate(data)
    except ValueError as err:
        raise ConfigError(f"{filename}:1:1: extends {base.name}: {err}") from err


def builtin_names() -> list[str]:
    """Names of the scenarios shipped with nodewarden."""
    folder = resources.files("agent").joinpath(*BUILTIN_DIR)
    return sorted(p.name.removesuffix(".yml") for p in folder.iterdir() if p.name.endswith(".yml"))


def builtin_text(name: str) -> str:
    """YAML text of a built-in scenario (ConfigError when unknown)."""
    if name not in builtin_names():
        raise ConfigError(f"unknown scenario {name!r}; built-in: {', '.join(builtin_names())} (or give a .yml path)")
    return resources.files("agent").joinpath(*BUILTIN_DIR, f"{name}.yml").read_text(encoding="utf-8")


def load(name_or_path: str) -> Scenario:
    """A built-in scenario by name, or a scenario file by path."""
    if name_or_path.endswith((".yml", ".yaml")) or "/" in name_or_path:
        path = Path(name_or_path)
        text = yamlpos.read_text(path, "scenario")
        return load_text(text, str(path))
    return load_text(builtin_text(name_or_path), f"{name_or_path}.yml")
