"""The remediation plugin protocol: what a plugin must have (:class:`Remediation`), every optional hook the
remediator looks for (one small protocol each, below), and the rebalance backends' protocol (:class:`Backend`).

A plugin is a class with a ``NAME`` constant, a ``Params`` pydantic model (the schema of a policy step's
``params``), an optional ``Config`` model (its section under ``plugins:`` in the policy file, see
:class:`agent.core.model.Configurable`), a constructor ``cls(config, **deps)`` (``paths=``, ``state_dir=``;
accept ``**_``), and:

- ``plan(alert, params) -> Plan``: pure. Decides what would change; all that observe mode runs.
- ``apply(plan) -> Outcome``: makes the change. ``Outcome.undo`` carries what ``revert`` needs (e.g. the
  previous GPU compute mode); the remediator journals it and hands it back in ``plan.undo``.
- ``verify(plan) -> bool``: is the change in effect?
- ``revert(plan) -> Outcome``: undo it (idempotent).
- ``recover(entry) -> str``: an entry was left ``started`` by a crash; finish it or roll it back and return
  the final status (``succeeded``, ``failed`` or ``reverted``). Must be idempotent.

Optional hooks, each used only when the plugin has it (``isinstance(plugin, Hook)``; all runtime-checkable):
:class:`Refusal` (a ``plan()`` error with a ``reason``), :class:`Reconciles`, :class:`Expires`,
:class:`ReportsProgress`, :class:`ExportsMetrics`, :class:`Starts`, :class:`Closes`, :class:`HasCluster`.

The remediator, not the plugin, enforces mode, cooldowns, rate limits, concurrency and blast radius.
Plugins run shell-free: external programs are called with argument vectors through an injected runner,
and every label-derived value is validated (:func:`check_node`, :func:`check_gpu`) before it reaches one.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict

from agent.core.alerts import Alert
from agent.core.errors import RemediationError
from agent.core.metrics import Catalogued, Sample

Scope = Literal["node", "gpu", "local"]

NODE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,252}$")
GPU_RE = re.compile(r"^(?:[0-9]{1,3}|GPU-[0-9a-fA-F-]{8,64})$")
REASON_RE = re.compile(r"^[\x20-\x7e]{1,200}$")


def check_node(value: str) -> str:
    """A node/host name safe to pass as one argv element; ValueError otherwise."""
    if not isinstance(value, str) or not NODE_RE.match(value):
        raise ValueError(f"not a valid node name: {value!r}")
    return value


def check_gpu(value: str) -> str:
    """A GPU index (``0``..``999``) or UUID (``GPU-...``); ValueError otherwise."""
    if not isinstance(value, str) or not GPU_RE.match(value):
        raise ValueError(f"not a valid GPU index or UUID: {value!r}")
    return value


class ParamsModel(BaseModel):
    """Base for a plugin's ``Params`` and its settings (``Config`` and the models of its sections): frozen,
    unknown keys rejected, lax types (strings coerced: params are templated, and settings are read the same
    way). Core's own config models use the strict :class:`agent.core.model.Model` instead."""

    model_config = ConfigDict(frozen=True, extra="forbid")


@dataclass(frozen=True, slots=True)
class Plan:
    """What an action would change. JSON-serialisable (it is journaled and recovered after a crash)."""

    action: str                      # plugin name
    target: str                      # what it acts on, e.g. "node/gpu-a1" or "gpu/gpu-a1/3"; cooldown key
    params: Mapping[str, Any]        # the validated params
    changes: Sequence[str]           # human-readable list of changes
    reversible: bool
    scope: Scope = "local"           # "node" plans count against the cluster blast radius
    noop: bool = False               # nothing to do (already in the desired state)
    undo: Mapping[str, Any] = field(default_factory=dict)  # filled after apply from Outcome.undo

    def to_dict(self) -> dict[str, Any]:
        """Plain dict for JSON."""
        d = asdict(self)
        d["params"], d["changes"], d["undo"] = dict(self.params), list(self.changes), dict(self.undo)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Plan:
        """Inverse of :meth:`to_dict`."""
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})

    def with_undo(self, undo: Mapping[str, Any]) -> Plan:
        """A copy carrying ``undo``."""
        return replace(self, undo=dict(undo))


@dataclass(frozen=True, slots=True)
class Outcome:
    """What apply/revert did: text for the journal, plus state revert will need."""

    output: str = ""
    undo: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Entry:
    """One journal row, as handed to ``recover()`` and shown by ``nodewarden history``."""

    id: int
    ts: float
    updated: float
    op: str                 # "apply" | "revert" | "page"
    action: str
    target: str
    status: str             # planned | skipped | started | succeeded | failed | reverted
    mode: str
    reason: str
    fingerprint: str
    alertname: str
    route: str
    step: int
    plan: Mapping[str, Any] | None
    output: str
    parent: int | None

    def get_plan(self) -> Plan:
        """The journaled plan; RemediationError when the row has none."""
        if not self.plan:
            raise RemediationError(f"journal entry {self.id} has no plan")
        return Plan.from_dict(self.plan)


@runtime_checkable
class Remediation(Protocol):
    """A remediation plugin: the required part (see module docstring). Every hook below is optional."""

    name: str
    Params: type[BaseModel]

    def plan(self, alert: Alert | None, params: BaseModel) -> Plan:
        """Required. Pure: what would change; raise ``ValueError``/``NodewardenError`` to refuse."""
        ...

    def apply(self, plan: Plan) -> Outcome:
        """Required. Make the change (enforce mode only, after every guard rail passed)."""
        ...

    def verify(self, plan: Plan) -> bool:
        """Required. Is the change in effect?"""
        ...

    def revert(self, plan: Plan) -> Outcome:
        """Required. Undo the change (idempotent)."""
        ...

    def recover(self, entry: Entry) -> str:
        """Required. Finish or roll back an entry a crash left ``started``; ``succeeded``/``failed``/``reverted``."""
        ...


@runtime_checkable
class Refusal(Protocol):
    """Optional, on an error ``plan()`` raises: ``reason``, a short token (``foreign_qdisc``). The step is
    journaled as skipped with reason ``refused:<reason>`` and the message as output (throttle; raise
    :class:`Refused`)."""

    reason: str


class Refused(RemediationError):
    """Raise from ``plan()`` to refuse on purpose (foreign qdisc, default route, ...): a :class:`Refusal` whose
    ``reason`` is a short token; the message says why in words."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason


@runtime_checkable
class Reconciled(Protocol):
    """Optional, on what ``reconcile()`` returns: ``expired`` journal ids, which the remediator reverts."""

    expired: Iterable[int]


@runtime_checkable
class Reconciles(Protocol):
    """Optional: make the host match the journal once at start, after ``recover()`` (throttle: remove orphan
    qdiscs, re-apply lost ones). ``active`` holds this plugin's succeeded, not reverted entries."""

    def reconcile(self, active: Sequence[Entry]) -> Any:
        """Returns anything loggable; a :class:`Reconciled` result gets its ``expired`` ids reverted."""
        ...


@runtime_checkable
class Expires(Protocol):
    """Optional: a maximum action duration. Asked every few seconds; the ids returned are reverted (reason
    ``expired``) and the alert's escalation goes on with its next step (throttle)."""

    def expired(self, active: Sequence[Entry], now: float) -> Iterable[int]:
        """Journal ids among ``active`` (this plugin's applied entries) that are past their deadline."""
        ...


@runtime_checkable
class ReportsProgress(Protocol):
    """Optional: a settable ``progress`` attribute, None when idle. While ``apply`` runs the remediator sets it to
    a ``progress(done, total)`` callback (bytes) that updates the journal row at most once a second (migrate)."""

    progress: Callable[[int, int], None] | None


@runtime_checkable
class ExportsMetrics(Catalogued, Protocol):
    """Optional: ``metrics`` (class-level catalogue, read by ``docs/metrics.md`` and ``check rules`` without
    constructing the plugin) and ``samples()``, called every tick: exported and visible to rules."""

    def samples(self) -> list[Sample]:
        """This tick's samples of the families in ``metrics``."""
        ...


@runtime_checkable
class Starts(Protocol):
    """Optional: background work started when the daemon starts or reloads (restore's integrity scrubber)."""

    def start(self) -> None:
        """Start it; an error is logged with the plugin's name and the plugin keeps working."""
        ...


@runtime_checkable
class Closes(Protocol):
    """Optional: stop background work on daemon stop and reload."""

    def close(self, timeout: float) -> None:
        """Stop within ``timeout`` seconds."""
        ...


@runtime_checkable
class Cluster(Protocol):
    """The cluster engine's view for the blast-radius cap (the daemon's, or a plugin's :class:`HasCluster`)."""

    def held(self) -> tuple[int, int]:
        """Required. (nodes currently held out of service by nodewarden, total nodes in scope)."""
        ...


@runtime_checkable
class Claims(Protocol):
    """Optional, on a :class:`Cluster`: take and give back a slot under the cap atomically (Slurm: claim by drain
    and rank by the controller's stamps; Kubernetes: one Lease per slot). Without it the cap is only counted."""

    def claim(self, plan: Plan, cap: Cap) -> tuple[str, str]:
        """(reason, detail): ``""`` reason means the slot is granted; ``blast_radius`` (or another reason) refuses."""
        ...

    def release(self, plan: Plan) -> None:
        """Give ``plan``'s slot back (after a revert or a failed apply); a no-op when it holds none."""
        ...


@runtime_checkable
class KnowsMaintenance(Protocol):
    """Optional, on a :class:`Cluster`: whether the plan's node is under maintenance the engine knows about
    (a Slurm MAINT reservation, a Kubernetes maintenance label); raises NodewardenError when it cannot tell."""

    def maintenance(self, plan: Plan) -> str:
        """A non-empty description when the node is under maintenance, ``""`` otherwise."""
        ...


@runtime_checkable
class HasCluster(Protocol):
    """Optional: ``cluster``, the plugin's :class:`Cluster` (or None): the remediator asks it for the blast
    radius of node-scope plans when the daemon was given no cluster of its own (rebalance's Slurm/Kubernetes)."""

    cluster: Cluster | None


@runtime_checkable
class Backend(Protocol):
    """A rebalance backend (``remediations/backends/``: slurm, kubernetes, gpu_fence). The ``rebalance`` plugin
    resolves the node and delegates each step; a backend that can count held nodes is also a :class:`Cluster`
    (optional ``held()``), which rebalance exposes as its ``cluster``."""

    def plan(self, node: str, params: BaseModel) -> Plan:
        """Required. Pure: the change on ``node`` (rebalance's Params)."""
        ...

    def apply(self, plan: Plan) -> Outcome:
        """Required."""
        ...

    def verify(self, plan: Plan) -> bool:
        """Required."""
        ...

    def revert(self, plan: Plan) -> Outcome:
        """Required. Only what is still ours (a drain someone else changed is left alone)."""
        ...

    def recover(self, entry: Entry) -> str:
        """Required."""
        ...


@dataclass(frozen=True, slots=True)
class Cap:
    """The blast-radius cap a cluster engine's ``claim(plan, cap)`` enforces (see docs/remediation.md)."""

    max_nodes: int | None = None
    max_fraction: float | None = None
    count_unavailable: bool = False

    def allowed(self, total: int) -> int:
        """How many nodes may be held out of ``total`` (a fraction rounds down)."""
        out = total
        if self.max_nodes is not None:
            out = min(out, self.max_nodes)
        if self.max_fraction is not None:
            out = min(out, int(self.max_fraction * total + 1e-9))
        return max(out, 0)


def default_recover(plugin: Remediation, entry: Entry) -> str:
    """Recover by idempotent re-run: finish an interrupted apply (re-apply, verify) or revert."""
    plan = entry.get_plan()
    if entry.op == "revert":
        plugin.revert(plan)
        return "reverted"
    if plugin.verify(plan):
        return "succeeded"
    plugin.apply(plan)
    return "succeeded" if plugin.verify(plan) else "failed"


Runner = Callable[[Sequence[str], float], "subprocess.CompletedProcess[str]"]


def run_argv(argv: Sequence[str], timeout: float) -> subprocess.CompletedProcess[str]:
    """Run an argument vector (never a shell) with a timeout; RemediationError on spawn failure or timeout."""
    try:
        return subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, check=False,
                              stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired as err:
        raise RemediationError(f"{argv[0]} timed out after {timeout:g}s") from err
    except OSError as err:
        raise RemediationError(f"cannot run {argv[0]}: {err.strerror}") from err
