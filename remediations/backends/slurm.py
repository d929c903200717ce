"""Slurm backend of ``rebalance``: ``scontrol update NodeName=N State=DRAIN Reason="nodewarden: ..."``.

Revert uses ``State=UNDRAIN`` rather than ``RESUME``: per scontrol(1) UNDRAIN only clears the drain flag
and leaves a node that is ``DOWN`` for another reason down, whereas RESUME would also return a DOWN node to
service. A drain whose reason no longer starts with ``nodewarden:`` belongs to someone else and is never
undone; a node already drained by someone else is left alone (and not counted as ours).
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from agent.core.errors import RemediationError
from agent.core.plugin import Entry, Outcome, Plan, Runner, check_node, default_recover, run_argv

PREFIX = "nodewarden:"

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

    def __init__(self, settings, runner: Runner | None = None) -> None:
        self.s = settings
        self._run = runner or run_argv

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
        argv = [self.s.sinfo, "--noheader", "--Node", "--format=%N|%E"]
        if self.s.partition:
            argv.append(f"--partition={self.s.partition}")
        reasons = parse_reasons(self._call(argv))
        return sum(1 for r in reasons.values() if r.startswith(PREFIX)), len(reasons)

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
