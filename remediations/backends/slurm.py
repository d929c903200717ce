"""Slurm backend of ``rebalance``: ``scontrol update NodeName=N State=DRAIN Reason="nodewarden: ..."``.

Revert uses ``State=UNDRAIN`` rather than ``RESUME``: per scontrol(1) UNDRAIN only clears the drain flag
and leaves a node that is ``DOWN`` for another reason down, whereas RESUME would also return a DOWN node to
service. A drain whose reason no longer starts with ``nodewarden:`` belongs to someone else and is never
undone; a node already drained by someone else is left alone (and not counted as ours).

Blast radius under concurrency (:meth:`SlurmBackend.claim`): the drain itself is the claim. slurmctld
serializes updates and stamps each reason with its own clock (``sinfo %H``, one-second resolution), so after
draining, the agent waits until that second has surely passed, re-reads every nodewarden drain and orders
them by (controller stamp, node name), the same order on every node. A node outside the first ``allowed``
undoes its own drain and refuses. The argument is in docs/remediation.md.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from agent.core.errors import RemediationError
from agent.core.plugin import Cap, Entry, Outcome, Plan, Runner, check_node, default_recover, run_argv

PREFIX = "nodewarden:"
CLAIM_SETTLE = 1.1   # seconds after our drain landed: past the one-second resolution of slurmctld's stamp
# sinfo %T base states of a node that is out of service (plus any state flagged not responding, "*")
UNAVAILABLE = {"down", "drained", "draining", "drain", "fail", "failing", "unknown", "future", "inval"}

_STATE = re.compile(r"(?:^|\s)State=(\S+)")
_REASON = re.compile(r"(?:^|\s)Reason=(.*?)(?:\s\[[^\]]*\])?\s*$")
_JOB_ID = re.compile(r"(?:^|\s)JobId=(\d+)")
_NODE_GRES = re.compile(r"(?:^|\s)Nodes=(\S+)\s.*?GRES=(\S+)")


def parse_node(text: str) -> tuple[set[str], str]:
    """(state flags, reason) from ``scontrol show node NAME -o`` output; e.g. ({"IDLE","DRAIN"}, "...")."""
    m = _STATE.search(text)
    if not m:
        raise RemediationError(f"unexpected scontrol output: {text[:200]!r}")
    flags = set(m.group(1).split("+"))
    r = _REASON.search(text)
    return flags, (r.group(1).strip() if r else "")


def parse_reasons(text: str) -> dict[str, str]:
    """node -> reason from ``sinfo -h -N -o %N|%E`` (a node listed per partition appears once)."""
    out = {}
    for line in text.splitlines():
        node, sep, reason = line.partition("|")
        if sep and node:
            out[node.strip()] = reason.strip()
    return out


@dataclass(frozen=True, slots=True)
class NodeRow:
    """One node as ``sinfo -N -o %N|%H|%T|%E`` shows it: stamp is the controller's time of the reason."""

    node: str
    stamp: str      # "2026-12-03T07:40:12" ("" when Slurm has none); compared as text, controller's clock
    state: str      # long state, e.g. "idle", "drained*", "down*"
    reason: str     # "none" when there is no reason

    @property
    def ours(self) -> bool:
        """Held by nodewarden (its reason starts with the prefix)."""
        return self.reason.startswith(PREFIX)

    @property
    def unavailable(self) -> bool:
        """Down, drained, failing or not responding, for whatever reason."""
        base = self.state.rstrip("*~#!%$@^-+").lower()
        return "*" in self.state or base in UNAVAILABLE or "drain" in base or "down" in base


_STAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d$")


def parse_rows(text: str) -> dict[str, NodeRow]:
    """node -> :class:`NodeRow` from ``sinfo -h -N -o %N|%H|%T|%E`` (a node listed per partition appears once)."""
    out = {}
    for line in text.splitlines():
        parts = line.split("|", 3)
        if len(parts) == 4 and parts[0].strip():
            node, stamp, state, reason = (p.strip() for p in parts)
            out[node] = NodeRow(node, stamp if _STAMP.match(stamp) else "", state, reason)
    return out


def expand_hostlist(spec: str) -> list[str]:
    """Slurm hostlist expression to names: ``n[01-03,07],gpu-a1`` -> n01 n02 n03 n07 gpu-a1."""
    out: list[str] = []
    depth, start = 0, 0
    for i, c in enumerate(spec + ","):
        if c == "[":
            depth += 1
        elif c == "]":
            depth -= 1
        elif c == "," and depth == 0:
            part = spec[start:i].strip()
            start = i + 1
            if part and part != "(null)":
                out += _expand_one(part)
    return out


def _expand_one(part: str) -> list[str]:
    lo_b = part.find("[")
    hi_b = part.find("]", lo_b)
    if lo_b < 0 or hi_b < 0:
        return [part]
    head, body, tail = part[:lo_b], part[lo_b + 1:hi_b], part[hi_b + 1:]
    names = []
    for rng in body.split(","):
        lo, _, hi = rng.partition("-")
        if not lo.isdigit() or (hi and not hi.isdigit()):
            raise RemediationError(f"cannot expand Slurm hostlist {part!r}")
        width = len(lo)
        names += [f"{head}{i:0{width}d}" for i in range(int(lo), int(hi or lo) + 1)]
    return [n + t for n in names for t in _expand_one(tail)] if "[" in tail else [n + tail for n in names]


def parse_reservations(text: str) -> list[dict[str, str]]:
    """Reservations from ``scontrol --oneliner show reservation`` (one a line): key -> value."""
    out = []
    for line in text.splitlines():
        if "ReservationName=" not in line:
            continue
        fields = dict(re.findall(r"(?:^|\s)([A-Za-z]+)=(\S*)", line))
        out.append(fields)
    return out


def maintenance_of(reservations: list[dict[str, str]], node: str) -> str:
    """Name of an active reservation with the MAINT flag covering ``node`` ("" when none)."""
    for r in reservations:
        flags = r.get("Flags", "").split(",")
        if "MAINT" in flags and r.get("State") == "ACTIVE" and node in expand_hostlist(r.get("Nodes", "")):
            return r.get("ReservationName", "?")
    return ""


def _indices(spec: str) -> set[int]:
    out: set[int] = set()
    for part in spec.split(","):
        lo, _, hi = part.partition("-")
        if lo.isdigit():
            out.update(range(int(lo), int(hi if hi.isdigit() else lo) + 1))
    return out


def parse_gpu_jobs(text: str, node: str, gpu: int) -> list[str]:
    """Job ids using GPU index ``gpu`` on ``node``, from ``scontrol show job -d -o`` output (one job a line).

    The detail lines carry ``Nodes=N CPU_IDs=.. Mem=.. GRES=gpu:a100:2(IDX:0-1)``; a job whose detail
    has no IDX is not counted (it does not hold a GPU there).
    """
    jobs = []
    for line in text.splitlines():
        m = _JOB_ID.search(line)
        if not m:
            continue
        for nodes, gres in _NODE_GRES.findall(line):
            if node not in _expand_simple(nodes):
                continue
            for idx in re.findall(r"IDX:([0-9,\-]+)", gres):
                if gpu in _indices(idx):
                    jobs.append(m.group(1))
                    break
    return sorted(set(jobs), key=int)


def _expand_simple(nodes: str) -> set[str]:
    """Node list without bracket ranges expanded (``a,b``); bracketed lists match by exact prefix form."""
    return set(nodes.split(","))


class SlurmBackend:
    """Drain/undrain through the Slurm client programs (argument vectors only)."""

    def __init__(self, settings, runner: Runner | None = None, sleep: Callable[[float], None] = time.sleep) -> None:
        self.s = settings
        self._run = runner or run_argv
        self._sleep = sleep

    def _call(self, argv: list[str]) -> str:
        cp = self._run(argv, self.s.timeout)
        if cp.returncode != 0:
            raise RemediationError(f"{' '.join(argv[:3])}: exit {cp.returncode}: {(cp.stderr or cp.stdout).strip()}")
        return cp.stdout

    # ---- plugin protocol

    def plan(self, node: str, params) -> Plan:
        """Pure."""
        reason = f"{PREFIX} {params.reason}"
        changes = [f"drain Slurm node {node} (scontrol update NodeName={node} State=DRAIN Reason={reason!r})"]
        if params.requeue and params.gpu is not None:
            changes.append(f"requeue the jobs holding GPU {params.gpu} on {node}")
        return Plan(action="rebalance", target=f"node/{node}", scope="node", reversible=True, changes=changes,
                    params={"backend": "slurm", "node": check_node(node), "reason": reason,
                            "gpu": params.gpu, "requeue": params.requeue})

    def node_state(self, node: str) -> tuple[set[str], str]:
        """(state flags, reason) of one node."""
        return parse_node(self._call([self.s.scontrol, "--oneliner", "show", "node", check_node(node)]))

    def apply(self, plan: Plan) -> Outcome:
        """Drain (unless someone else already did), then optionally requeue."""
        node, reason = check_node(plan.params["node"]), plan.params["reason"]
        flags, current = self.node_state(node)
        if _drained(flags) and not current.startswith(PREFIX):
            return Outcome(f"{node} already drained by someone else ({current!r}); left alone", {"owned": False})
        self._call([self.s.scontrol, "update", f"NodeName={node}", "State=DRAIN", f"Reason={reason}"])
        out = [f"drained {node}: {reason}"]
        gpu = plan.params.get("gpu")
        if plan.params.get("requeue") and gpu is not None and str(gpu).isdigit():
            for job in self.jobs_on_gpu(node, int(gpu)):
                self._call([self.s.scontrol, "requeue", job])
                out.append(f"requeued job {job}")
        return Outcome("; ".join(out), {"owned": True})

    def verify(self, plan: Plan) -> bool:
        """The node carries a drain flag."""
        flags, _ = self.node_state(plan.params["node"])
        return _drained(flags)

    def revert(self, plan: Plan) -> Outcome:
        """Undrain, only if the drain is still ours."""
        node = check_node(plan.params["node"])
        if plan.undo.get("owned") is False:
            return Outcome(f"{node} was drained by someone else; left as it is")
        flags, current = self.node_state(node)
        if not _drained(flags):
            return Outcome(f"{node} is not drained; nothing to do")
        if not current.startswith(PREFIX):
            return Outcome(f"{node} drain now belongs to someone else ({current!r}); left as it is")
        self._call([self.s.scontrol, "update", f"NodeName={node}", "State=UNDRAIN"])
        return Outcome(f"undrained {node}")

    def recover(self, entry: Entry) -> str:
        """Drain and undrain are idempotent: finish what was started."""
        return default_recover(self, entry)

    # ---- cluster view (blast radius) and helpers

    def held(self) -> tuple[int, int]:
        """(nodes whose reason starts with ``nodewarden:``, all nodes) in the configured partition (or all)."""
        rows = self.rows()
        return sum(1 for r in rows.values() if r.ours), len(rows)

    def rows(self) -> dict[str, NodeRow]:
        """Every node of the configured partition (or all) with its reason, the controller's stamp and state."""
        argv = [self.s.sinfo, "--noheader", "--Node", "--format=%N|%H|%T|%E"]
        if self.s.partition:
            argv.append(f"--partition={self.s.partition}")
        return parse_rows(self._call(argv))

    def claim(self, plan: Plan, cap: Cap) -> tuple[str, str]:
        """Claim a blast-radius slot by draining; (reason, detail), reason ``""`` when the claim holds.

        Refuses without touching the node when the slots are already full (``blast_radius``); otherwise drains
        (unless our drain is already there), waits :data:`CLAIM_SETTLE`, re-reads and ranks every hold by
        (controller stamp, node name). Outside the first ``allowed``: undrains and ``refused:blast_radius``.
        A node drained by someone else holds no slot of ours: nothing to claim.
        """
        node, reason = check_node(plan.params["node"]), plan.params["reason"]
        rows = self.rows()
        me = rows.get(node)
        if me is None:
            raise RemediationError(f"{node} is not a node of {self.s.partition or 'the cluster'} in sinfo")
        allowed = cap.allowed(len(rows))
        flags, current = self.node_state(node)
        if _drained(flags) and not current.startswith(PREFIX):
            return "", f"{node} already drained by someone else ({current!r}); no slot taken"

        def held(r: NodeRow) -> bool:
            return r.ours or (cap.count_unavailable and r.unavailable)

        others = sorted(r.node for r in rows.values() if r.node != node and held(r))
        mine = _drained(flags) and current.startswith(PREFIX)
        if not mine and len(others) >= allowed:
            return "blast_radius", f"{len(others)} node(s) held, {allowed} allowed: {', '.join(others[:20])}"
        if not mine:
            self._call([self.s.scontrol, "update", f"NodeName={node}", "State=DRAIN", f"Reason={reason}"])
        self._sleep(CLAIM_SETTLE)
        rows = self.rows()
        order = [r.node for r in sorted((r for r in rows.values() if held(r)), key=lambda r: (r.stamp, r.node))]
        if node not in order:   # our drain was undone or taken over meanwhile: nothing was claimed
            return "refused:blast_radius", f"claim on {node} lost before it was ranked (undrained or taken over)"
        rank = order.index(node)
        if rank < allowed:
            return "", f"blast radius: claim {rank + 1} of {allowed} allowed"
        self.release(plan)
        return "refused:blast_radius", (f"claim ranked {rank + 1}, {allowed} allowed; held first: "
                                        f"{', '.join(order[:rank][:20])}; own drain undone")

    def release(self, plan: Plan) -> None:
        """Undo our claim: undrain, only while the drain is still ours."""
        node = check_node(plan.params["node"])
        flags, current = self.node_state(node)
        if _drained(flags) and current.startswith(PREFIX):
            self._call([self.s.scontrol, "update", f"NodeName={node}", "State=UNDRAIN"])

    def maintenance(self, plan: Plan) -> str:
        """The active MAINT reservation covering the plan's node ("" when none)."""
        node = check_node(plan.params["node"])
        text = self._call([self.s.scontrol, "--oneliner", "show", "reservation"])
        name = maintenance_of(parse_reservations(text), node)
        return f"{node} is in Slurm reservation {name} (MAINT)" if name else ""

    def jobs_on_gpu(self, node: str, gpu: int) -> list[str]:
        """Running jobs holding GPU index ``gpu`` on ``node``."""
        ids = self._call([self.s.squeue, "--noheader", f"--nodelist={check_node(node)}", "--states=RUNNING",
                          "--format=%A"]).split()
        if not ids:
            return []
        text = self._call([self.s.scontrol, "--details", "--oneliner", "show", "job"])
        return [j for j in parse_gpu_jobs(text, node, gpu) if j in ids]


def _drained(flags: Iterable[str]) -> bool:
    return any(f.startswith("DRAIN") for f in flags)
