"""``powercap``: lower GPU power limits instead of losing the node to heat or a blown power budget.

``apply`` sets ``nvmlDeviceSetPowerManagementLimit`` on one GPU (or every GPU) to an absolute limit or a
fraction of the GPU's default limit, clamped to the GPU's constraints (``nvmlDeviceGetPowerManagementLimit
Constraints``) and never below ``min_fraction`` of the default. The previous limit is written to a state file
(``<state_dir>/powercap.json``, fsync'ed, atomic rename) *before* the limit changes, so it is known after any
crash; ``revert`` restores it (only while the limit is still ours: an operator's later change is left alone).

Every cap expires: ``duration`` (capped by ``max_duration``) is journaled as ``expires_after``; the
remediator's ``expired`` hook reverts it then. At start :meth:`PowerCap.reconcile` restores caps that the
state file holds but no active journal entry owns, re-applies active caps a driver reload undid, and reports
the expired ones. Needs root (NVML refuses limit changes otherwise: NO_PERMISSION is reported, not retried).
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from typing import Any

from pydantic import Field, field_validator, model_validator

from agent.core.alerts import Alert
from agent.core.durations import format_duration, parse_duration
from agent.core.errors import RemediationError
from agent.core.metrics import MetricSpec, Sample
from agent.core.plugin import REASON_RE, Entry, Outcome, ParamsModel, Plan, check_gpu, check_node

NAME = "powercap"
STATE_FILE = "powercap.json"
TOLERANCE_MW = 1000  # a limit within 1 W of ours is ours (drivers round to their own step)


def _seconds(v: Any) -> float | None:
    if v is None or v == "":
        return None
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return float(v)
    return parse_duration(str(v))


class Params(ParamsModel):
    """A step's params (templated from the alert's labels)."""

    gpu: str = Field("all", description="GPU index, UUID, or 'all' (every GPU of the node)")
    limit_w: float | None = Field(None, gt=0, description="new limit in W (clamped to the GPU's constraints)")
    fraction: float | None = Field(None, gt=0, le=1, description="new limit as a fraction of the default limit")
    duration: float | None = Field(None, description="restore after this long (capped by max_duration)")
    reason: str = "power cap"

    @field_validator("gpu")
    @classmethod
    def _gpu(cls, v: str) -> str:
        return v if v == "all" else check_gpu(v)

    @field_validator("duration", mode="before")
    @classmethod
    def _duration(cls, v: Any) -> float | None:
        return _seconds(v)

    @field_validator("reason")
    @classmethod
    def _reason(cls, v: str) -> str:
        v = " ".join(v.split())
        if not REASON_RE.match(v):
            raise ValueError("reason must be 1-200 printable ASCII characters")
        return v

    @model_validator(mode="after")
    def _one(self) -> Params:
        if self.limit_w is not None and self.fraction is not None:
            raise ValueError("give limit_w or fraction, not both")
        return self


class Config(ParamsModel):
    """The plugin's section of the policy's ``plugins:``."""

    max_duration: float = Field(7200.0, description="no cap stays longer (seconds or a duration like 2h)")
    default_fraction: float = Field(0.8, gt=0, le=1, description="fraction of the default limit when a step "
                                    "gives neither limit_w nor fraction")
    min_fraction: float = Field(0.5, gt=0, le=1, description="never cap below this fraction of the default limit")
    node_name: str | None = None

    @field_validator("max_duration", mode="before")
    @classmethod
    def _dur(cls, v: Any) -> float:
        s = _seconds(v)
        if s is None or s <= 0:
            raise ValueError("max_duration must be positive")
        return s


METRICS = [
    MetricSpec("nodewarden_powercap_active", "gauge", "1 while nodewarden holds this GPU's power limit lowered.",
               ("gpu", "UUID")),
    MetricSpec("nodewarden_powercap_limit_watts", "gauge", "The power limit nodewarden set (W).", ("gpu", "UUID")),
    MetricSpec("nodewarden_powercap_previous_limit_watts", "gauge", "The limit restored when the cap ends (W).",
               ("gpu", "UUID")),
]


@dataclass
class Reconciled:
    """What :meth:`PowerCap.reconcile` did."""

    restored: list[str] = field(default_factory=list)     # UUIDs whose orphaned cap was removed
    reapplied: list[str] = field(default_factory=list)    # UUIDs whose active cap was set again
    expired: list[int] = field(default_factory=list)      # journal ids past expires_after

    def __str__(self) -> str:
        return f"restored={self.restored} reapplied={self.reapplied} expired={self.expired}"


class PowerCap:
    """The plugin (see module docstring). ``nvml``: the NVML module (pynvml by default; tests inject the fake)."""

    NAME = NAME
    Params = Params
    Config = Config
    metrics = METRICS

    def __init__(self, config: Config, nvml: Any = None, state_dir: str | None = None,
                 clock: Callable[[], float] = time.time, **_: Any) -> None:
        self.name = NAME
        self.config = config
        self._nvml = nvml
        self.node = config.node_name or check_node(socket.gethostname().split(".")[0])
        self.state_path = os.path.join(state_dir or ".", STATE_FILE)
        self.clock = clock
        self._lock = threading.Lock()

    # ---------------------------------------------------------------- NVML access
    @property
    def nvml(self) -> Any:
        if self._nvml is None:
            import pynvml

            self._nvml = pynvml
        return self._nvml

    @contextmanager
    def _session(self) -> Iterator[Any]:
        n = self.nvml
        try:
            n.nvmlInit()
        except n.NVMLError as err:
            raise RemediationError(f"NVML init failed: {err}") from err
        try:
            yield n
        except n.NVMLError as err:
            raise RemediationError(f"NVML: {err}") from err
        finally:
            with suppress(n.NVMLError):
                n.nvmlShutdown()

    def _handles(self, n: Any, gpu: str) -> list[tuple[str, str, Any]]:
        """[(index, uuid, handle)] for ``gpu`` (an index, a UUID or 'all')."""
        if gpu == "all":
            out = []
            for i in range(n.nvmlDeviceGetCount()):
                h = n.nvmlDeviceGetHandleByIndex(i)
                out.append((str(i), _text(n.nvmlDeviceGetUUID(h)), h))
            return out
        if gpu.startswith("GPU-"):
            h = n.nvmlDeviceGetHandleByUUID(gpu)
            return [(str(n.nvmlDeviceGetIndex(h)), gpu, h)]
        h = n.nvmlDeviceGetHandleByIndex(int(gpu))
        return [(gpu, _text(n.nvmlDeviceGetUUID(h)), h)]

    # ---------------------------------------------------------------- state file (the previous limits)
    def _load(self) -> dict[str, dict[str, Any]]:
        try:
            with open(self.state_path, encoding="utf-8") as f:
                doc = json.load(f)
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as err:
            raise RemediationError(f"{self.state_path}: unreadable power-cap state: {err}") from err
        return doc if isinstance(doc, dict) else {}

    def _save(self, doc: dict[str, dict[str, Any]]) -> None:
        directory = os.path.dirname(self.state_path) or "."
        os.makedirs(directory, exist_ok=True)
        tmp = f"{self.state_path}.tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(doc, f, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.state_path)
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    # ---------------------------------------------------------------- plugin protocol
    def plan(self, alert: Alert | None, params: Params) -> Plan:
        """Read-only: the clamped target limit per GPU; a GPU already at or below it is left out."""
        fraction = params.fraction if params.fraction is not None else \
            (None if params.limit_w is not None else self.config.default_fraction)
        caps, changes = [], []
        with self._session() as n:
            for index, uuid, h in self._handles(n, params.gpu):
                current = int(n.nvmlDeviceGetPowerManagementLimit(h))
                default = int(n.nvmlDeviceGetPowerManagementDefaultLimit(h))
                lo, hi = (int(x) for x in n.nvmlDeviceGetPowerManagementLimitConstraints(h))
                want = round(params.limit_w * 1000) if params.limit_w is not None else round(default * fraction)
                floor = max(lo, round(default * self.config.min_fraction))
                target = max(floor, min(want, hi))
                if target >= current - TOLERANCE_MW:
                    changes.append(f"GPU {index}: limit {current / 1000:g} W already at or below "
                                   f"{target / 1000:g} W; left alone")
                    continue
                clamp = "" if target == want else f" (asked {want / 1000:g} W, clamped to {lo / 1000:g}-" \
                                                  f"{hi / 1000:g} W, floor {floor / 1000:g} W)"
                changes.append(f"GPU {index} ({uuid}): power limit {current / 1000:g} W -> {target / 1000:g} W"
                               f"{clamp}")
                caps.append({"gpu": index, "uuid": uuid, "limit_mw": target})
        duration = min(params.duration or self.config.max_duration, self.config.max_duration)
        changes.append(f"restore the previous limits after {format_duration(duration)} at the latest")
        return Plan(action=NAME, target=f"gpu/{self.node}/{params.gpu}", scope="gpu", reversible=True,
                    noop=not caps, changes=changes,
                    params={"gpu": params.gpu, "caps": caps, "expires_after": duration, "reason": params.reason})

    def apply(self, plan: Plan) -> Outcome:
        """Persist each GPU's previous limit, then lower it."""
        done, undo = [], {}
        with self._lock, self._session() as n:
            state = self._load()
            for cap in plan.params["caps"]:
                h = n.nvmlDeviceGetHandleByUUID(cap["uuid"])
                current = int(n.nvmlDeviceGetPowerManagementLimit(h))
                held = state.get(cap["uuid"])
                previous = int(held["previous_mw"]) if held else current  # a cap on a cap restores the original
                state[cap["uuid"]] = {"gpu": cap["gpu"], "previous_mw": previous, "limit_mw": cap["limit_mw"],
                                      "since": self.clock()}
                self._save(state)  # before the change: a crash after it still knows the previous limit
                if abs(current - cap["limit_mw"]) > TOLERANCE_MW:
                    try:
                        n.nvmlDeviceSetPowerManagementLimit(h, cap["limit_mw"])
                    except n.NVMLError as err:
                        if held is None:  # nothing changed: forget the entry again
                            del state[cap["uuid"]]
                            self._save(state)
                        raise RemediationError(f"GPU {cap['gpu']}: cannot set the power limit: {err}") from err
                undo[cap["uuid"]] = previous
                done.append(f"GPU {cap['gpu']}: {current / 1000:g} W -> {cap['limit_mw'] / 1000:g} W")
        return Outcome("; ".join(done) or "nothing to cap", {"previous_mw": undo})

    def verify(self, plan: Plan) -> bool:
        """Every capped GPU's limit is the one we set."""
        with self._session() as n:
            for cap in plan.params["caps"]:
                h = n.nvmlDeviceGetHandleByUUID(cap["uuid"])
                if abs(int(n.nvmlDeviceGetPowerManagementLimit(h)) - cap["limit_mw"]) > TOLERANCE_MW:
                    return False
        return True

    def revert(self, plan: Plan) -> Outcome:
        """Restore the previous limits (journal undo, else the state file, else the default) where still ours."""
        out = []
        undo = dict(plan.undo.get("previous_mw") or {})
        with self._lock, self._session() as n:
            state = self._load()
            for cap in plan.params["caps"]:
                uuid = cap["uuid"]
                held = state.get(uuid)
                h = n.nvmlDeviceGetHandleByUUID(uuid)
                current = int(n.nvmlDeviceGetPowerManagementLimit(h))
                previous = undo.get(uuid, held["previous_mw"] if held else None)
                if previous is None:
                    previous = int(n.nvmlDeviceGetPowerManagementDefaultLimit(h))
                if abs(current - cap["limit_mw"]) > TOLERANCE_MW:
                    out.append(f"GPU {cap['gpu']}: limit is {current / 1000:g} W, not ours; left as it is")
                else:
                    n.nvmlDeviceSetPowerManagementLimit(h, int(previous))
                    out.append(f"GPU {cap['gpu']}: power limit restored to {int(previous) / 1000:g} W")
                if held is not None:
                    del state[uuid]
                    self._save(state)
        return Outcome("; ".join(out) or "nothing was capped")

    def recover(self, entry: Entry) -> str:
        """An interrupted apply is finished (the state file keeps the original limit); a revert is redone."""
        plan = entry.get_plan()
        if entry.op == "revert":
            self.revert(plan)
            return "reverted"
        if not self.verify(plan):
            self.apply(plan)
        return "succeeded" if self.verify(plan) else "failed"

    # ---------------------------------------------------------------- hooks
    def expired(self, active: Iterable[Entry], now: float | None = None) -> list[int]:
        """Ids of active caps older than their ``expires_after``."""
        now = self.clock() if now is None else now
        return [e.id for e in active if e.action == NAME and e.plan
                and now >= e.ts + float(e.get_plan().params.get("expires_after", self.config.max_duration))]

    def reconcile(self, active: Iterable[Entry], now: float | None = None) -> Reconciled:
        """Make the GPUs match the journal: restore orphaned caps, re-apply lost ones, report expired ones."""
        now = self.clock() if now is None else now
        active = [e for e in active if e.action == NAME and e.plan]
        out = Reconciled(expired=self.expired(active, now))
        owned: dict[str, Entry] = {}
        for e in active:
            for cap in e.get_plan().params.get("caps", []):
                owned[cap["uuid"]] = e
        with self._lock, self._session() as n:
            state = self._load()
            for uuid, held in list(state.items()):
                if uuid in owned:
                    continue
                with suppress(n.NVMLError):
                    h = n.nvmlDeviceGetHandleByUUID(uuid)
                    if abs(int(n.nvmlDeviceGetPowerManagementLimit(h)) - int(held["limit_mw"])) <= TOLERANCE_MW:
                        n.nvmlDeviceSetPowerManagementLimit(h, int(held["previous_mw"]))
                del state[uuid]
                self._save(state)
                out.restored.append(uuid)
        for e in active:
            if e.id in out.expired:
                continue
            plan = e.get_plan()
            try:
                if not self.verify(plan):
                    self.apply(plan)
                    out.reapplied.extend(c["uuid"] for c in plan.params["caps"])
            except RemediationError:
                continue  # the GPU is gone or NVML is down: the entry is reverted when it expires or resolves
        return out

    def samples(self) -> list[Sample]:
        """The caps the state file holds."""
        try:
            state = self._load()
        except RemediationError:
            return []
        out = []
        for uuid, held in sorted(state.items()):
            labels = (("gpu", str(held.get("gpu", ""))), ("UUID", uuid))
            out.append(Sample("nodewarden_powercap_active", labels, 1.0))
            out.append(Sample("nodewarden_powercap_limit_watts", labels, int(held["limit_mw"]) / 1000.0))
            out.append(Sample("nodewarden_powercap_previous_limit_watts", labels, int(held["previous_mw"]) / 1000.0))
        return out


def _text(v: Any) -> str:
    return v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)
