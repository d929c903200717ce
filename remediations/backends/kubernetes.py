"""Kubernetes backend of ``rebalance``: cordon + taint the node, evict the pods holding GPUs; undo on revert.

Uses the official ``kubernetes`` client (CoreV1Api). Evictions go through the Eviction API, so
PodDisruptionBudgets are respected: a 429 answer (the budget forbids it now) is reported, not forced.
What we changed is recorded on the node itself (annotation ``<taint_key>-cordoned: "true"`` when the node
was schedulable before), so revert only uncordons a node we cordoned, even after a crash lost the journal's
undo data.

Which pods: with a ``gpu`` param (and ``evict_scope: gpu``, the default) only the pods holding that GPU are
evicted. They are found without the kubelet: NVML lists the compute processes on the GPU, and each process's
``/proc/PID/cgroup`` names its pod UID (``pod<uid>`` with the cgroupfs driver, ``pod<uid_with_underscores>.slice``
with systemd), matched against the node's pods. When that cannot be determined (NVML cannot reach the GPU —
e.g. it fell off the bus — or no process maps to a pod), every pod on the node requesting ``gpu_resource`` is
evicted, and the output says so.

Blast radius under concurrency (:meth:`KubernetesBackend.claim`): one ``coordination.k8s.io/v1`` Lease per
slot (``nodewarden-slot-0`` .. ``-{allowed-1}`` in ``lease_namespace``). Creating an object is atomic in the
API server: of two agents creating the same slot, one gets 201 and the other 409 AlreadyExists and tries the
next slot; no free slot refuses. The slot is deleted on revert (with a resourceVersion precondition, so a
slot someone else re-took meanwhile is never deleted).
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

from agent.core.errors import RemediationError
from agent.core.paths import Paths
from agent.core.plugin import Cap, Entry, Outcome, Plan, check_node, default_recover

SLOT = "nodewarden-slot-"
MANAGED = {"app.kubernetes.io/managed-by": "nodewarden"}

_POD_UID = re.compile(r"pod([0-9a-f]{8}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{12})")


def pod_uid_from_cgroup(text: str) -> str | None:
    """The Kubernetes pod UID in a ``/proc/PID/cgroup`` file (cgroupfs or systemd cgroup driver), or None."""
    m = _POD_UID.search(text)
    return m.group(1).replace("_", "-") if m else None


class KubernetesBackend:
    """Cordon/taint/evict through the API server."""

    def __init__(self, settings, api=None, nvml=None, paths: Paths | None = None) -> None:
        from remediations.backends.gpu_fence import GpuFenceBackend

        self.s = settings
        self._api = api
        self._gpus = GpuFenceBackend(nvml=nvml)  # NVML access: processes on a GPU
        self.paths = paths or Paths()

    @property
    def api(self):
        """CoreV1Api, built on first use (in-cluster, kubeconfig, or a plain host URL)."""
        if self._api is None:
            from kubernetes import client, config

            if self.s.host:
                cfg = client.Configuration()
                cfg.host = self.s.host
                api_client = client.ApiClient(cfg)
            elif self.s.kubeconfig or not self.s.in_cluster:
                api_client = config.new_client_from_config(config_file=self.s.kubeconfig)
            else:
                config.load_incluster_config()
                api_client = client.ApiClient()
            self._api = client.CoreV1Api(api_client)
        return self._api

    @property
    def _mark(self) -> str:
        return f"{self.s.taint_key}-cordoned"

    def _call(self, what: str, fn, *args, **kwargs) -> Any:
        from kubernetes.client.exceptions import ApiException

        try:
            return fn(*args, _request_timeout=self.s.timeout, **kwargs)
        except ApiException as err:
            raise RemediationError(f"kubernetes {what}: HTTP {err.status} {err.reason}") from err
        except _transport_errors() as err:   # API server unreachable (urllib3 gives up after its retries)
            raise RemediationError(f"kubernetes {what}: {err}") from err

    # ---- plugin protocol

    def plan(self, node: str, params) -> Plan:
        """Pure."""
        taint = f"{self.s.taint_key}={_taint_value(params.reason)}:{self.s.taint_effect}"
        changes = [f"cordon node {node}", f"taint node {node} with {taint}"]
        if params.evict and params.gpu is not None and self.s.evict_scope == "gpu":
            changes.append(f"evict the pods on {node} using GPU {params.gpu} (all {self.s.gpu_resource} pods when "
                           "that cannot be determined; PodDisruptionBudgets respected)")
        elif params.evict:
            changes.append(f"evict pods on {node} requesting {self.s.gpu_resource} (PodDisruptionBudgets respected)")
        return Plan(action="rebalance", target=f"node/{node}", scope="node", reversible=True, changes=changes,
                    params={"backend": "kubernetes", "node": check_node(node), "reason": params.reason,
                            "gpu": params.gpu, "evict": params.evict})

    def apply(self, plan: Plan) -> Outcome:
        """Cordon + taint in one patch, then evict."""
        name = check_node(plan.params["node"])
        node = self._call("read node", self.api.read_node, name)
        taints = [t for t in (node.spec.taints or []) if t.key != self.s.taint_key]
        ours = {"key": self.s.taint_key, "value": _taint_value(plan.params["reason"]), "effect": self.s.taint_effect}
        cordoned_by_us = not node.spec.unschedulable or (node.metadata.annotations or {}).get(self._mark) == "true"
        patch: dict[str, Any] = {"spec": {"unschedulable": True,
                                          "taints": [_taint_dict(t) for t in taints] + [ours]}}
        if cordoned_by_us:
            patch["metadata"] = {"annotations": {self._mark: "true"}}
        self._call("patch node", self.api.patch_node, name, patch)
        out = [f"cordoned and tainted {name}" + ("" if cordoned_by_us else " (it was already cordoned)")]
        if plan.params.get("evict"):
            gpu = plan.params.get("gpu") if self.s.evict_scope == "gpu" else None
            out += self._evict(name, gpu)
        return Outcome("; ".join(out), {"cordoned": cordoned_by_us})

    def pods_on_gpu(self, gpu: str) -> set[str] | None:
        """UIDs of the pods whose processes use ``gpu`` (None when that cannot be determined)."""
        try:
            pids = self._gpus.pids(gpu)
        except RemediationError:
            return None
        uids = set()
        for pid in pids:
            try:
                with open(self.paths.proc(str(pid), "cgroup")) as f:
                    uid = pod_uid_from_cgroup(f.read())
            except OSError:
                continue  # the process ended
            if uid:
                uids.add(uid)
        return uids or None

    def _evict(self, name: str, gpu: str | None = None) -> list[str]:
        from kubernetes.client.exceptions import ApiException

        pods = self._call("list pods", self.api.list_pod_for_all_namespaces, field_selector=f"spec.nodeName={name}")
        out = []
        holders = self.pods_on_gpu(gpu) if gpu is not None else None
        if gpu is not None:
            out.append(f"GPU {gpu} is used by pods {', '.join(sorted(holders))}" if holders else
                       f"cannot tell which pods use GPU {gpu}: evicting every {self.s.gpu_resource} pod on {name}")
        for pod in pods.items:
            if not _uses(pod, self.s.gpu_resource) or (pod.status and pod.status.phase in ("Succeeded", "Failed")):
                continue
            if holders is not None and pod.metadata.uid not in holders:
                continue
            ns, pname = pod.metadata.namespace, pod.metadata.name
            body = {"apiVersion": "policy/v1", "kind": "Eviction", "metadata": {"name": pname, "namespace": ns}}
            try:
                self.api.create_namespaced_pod_eviction(pname, ns, body, _request_timeout=self.s.timeout)
                out.append(f"evicted {ns}/{pname}")
            except ApiException as err:
                if err.status == 429:
                    out.append(f"eviction of {ns}/{pname} refused by a PodDisruptionBudget")
                elif err.status == 404:
                    out.append(f"{ns}/{pname} already gone")
                else:
                    raise RemediationError(f"kubernetes evict {ns}/{pname}: HTTP {err.status} {err.reason}") from err
        return out

    def verify(self, plan: Plan) -> bool:
        """Cordoned and carrying our taint."""
        node = self._call("read node", self.api.read_node, check_node(plan.params["node"]))
        return bool(node.spec.unschedulable) and any(t.key == self.s.taint_key for t in node.spec.taints or [])

    def revert(self, plan: Plan) -> Outcome:
        """Remove our taint; uncordon only when we cordoned."""
        name = check_node(plan.params["node"])
        node = self._call("read node", self.api.read_node, name)
        taints = node.spec.taints or []
        ours = (node.metadata.annotations or {}).get(self._mark) == "true"
        patch: dict[str, Any] = {"spec": {"taints": [_taint_dict(t) for t in taints if t.key != self.s.taint_key]}}
        if ours:
            patch["spec"]["unschedulable"] = False
            patch["metadata"] = {"annotations": {self._mark: None}}
        self._call("patch node", self.api.patch_node, name, patch)
        return Outcome(f"removed taint from {name}" + ("; uncordoned" if ours else "; left cordoned (not ours)"))

    def recover(self, entry: Entry) -> str:
        """Apply and revert are idempotent (the node records what was ours)."""
        return default_recover(self, entry)

    def held(self) -> tuple[int, int]:
        """(nodes carrying our taint, all nodes)."""
        nodes = self._call("list nodes", self.api.list_node).items
        return sum(1 for n in nodes if self._tainted(n)), len(nodes)

    def _tainted(self, node) -> bool:
        return bool(node.spec) and any(t.key == self.s.taint_key for t in node.spec.taints or [])

    @property
    def leases(self):
        """CoordinationV1Api on the same connection (built on first use)."""
        if getattr(self, "_leases", None) is None:
            from kubernetes import client

            self._leases = client.CoordinationV1Api(self.api.api_client)
        return self._leases

    def claim(self, plan: Plan, cap: Cap) -> tuple[str, str]:
        """Take a slot Lease (see module docstring); (reason, detail), reason ``""`` when held."""
        from kubernetes.client.exceptions import ApiException

        name = check_node(plan.params["node"])
        nodes = self._call("list nodes", self.api.list_node).items
        allowed = cap.allowed(len(nodes))
        if cap.count_unavailable:
            allowed -= sum(1 for n in nodes if n.metadata.name != name and not self._tainted(n) and _unavailable(n))
        ns = self.s.lease_namespace
        held = self._call("list leases", self.leases.list_namespaced_lease, ns, label_selector=_selector()).items
        mine = [lease.metadata.name for lease in held if (lease.spec and lease.spec.holder_identity) == name]
        if mine:
            return "", f"blast radius: holds lease {ns}/{mine[0]}"
        tainted = sorted(n.metadata.name for n in nodes if n.metadata.name != name and self._tainted(n))
        if len(tainted) >= allowed:
            return "blast_radius", f"{len(tainted)} node(s) held, {allowed} allowed: {', '.join(tainted[:20])}"
        for i in range(max(allowed, 0)):
            body = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                    "metadata": {"name": f"{SLOT}{i}", "namespace": ns, "labels": dict(MANAGED)},
                    "spec": {"holderIdentity": name, "acquireTime": _micro_time()}}
            try:
                self.leases.create_namespaced_lease(ns, body, _request_timeout=self.s.timeout)
            except ApiException as err:
                if err.status == 409:      # AlreadyExists: another node holds this slot
                    continue
                raise RemediationError(f"kubernetes create lease: HTTP {err.status} {err.reason}") from err
            except _transport_errors() as err:
                raise RemediationError(f"kubernetes create lease: {err}") from err
            return "", f"blast radius: lease {ns}/{SLOT}{i} ({i + 1} of {allowed} allowed)"
        holders = sorted((lease.spec.holder_identity or "?") for lease in held if lease.spec)
        return "blast_radius", f"all {max(allowed, 0)} slot lease(s) taken (holders: {', '.join(holders[:20])})"

    def release(self, plan: Plan) -> None:
        """Delete the slot Leases this node holds (only if unchanged since read: resourceVersion precondition)."""
        from kubernetes.client.exceptions import ApiException

        name = check_node(plan.params["node"])
        ns = self.s.lease_namespace
        for lease in self._call("list leases", self.leases.list_namespaced_lease, ns, label_selector=_selector()).items:
            if not lease.spec or lease.spec.holder_identity != name:
                continue
            body = {"preconditions": {"resourceVersion": lease.metadata.resource_version}}
            try:
                self.leases.delete_namespaced_lease(lease.metadata.name, ns, body=body, _request_timeout=self.s.timeout)
            except ApiException as err:
                if err.status not in (404, 409):   # gone already, or re-taken by another node since we read it
                    raise RemediationError(f"kubernetes delete lease: HTTP {err.status} {err.reason}") from err
            except _transport_errors() as err:
                raise RemediationError(f"kubernetes delete lease: {err}") from err

    def maintenance(self, plan: Plan) -> str:
        """``maintenance_label`` as a label or annotation on the plan's node ("" when absent or "false")."""
        key = self.s.maintenance_label
        if not key:
            return ""
        node = self._call("read node", self.api.read_node, check_node(plan.params["node"]))
        for kind, values in (("label", node.metadata.labels), ("annotation", node.metadata.annotations)):
            value = (values or {}).get(key)
            if value is not None and value.lower() != "false":
                return f"node {node.metadata.name} carries {kind} {key}={value}"
        return ""


def _transport_errors() -> tuple[type[BaseException], ...]:
    import urllib3

    return (OSError, urllib3.exceptions.HTTPError)


def _selector() -> str:
    return ",".join(f"{k}={v}" for k, v in MANAGED.items())


def _micro_time() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _unavailable(node) -> bool:
    """Cordoned, or its Ready condition is not True."""
    if node.spec and node.spec.unschedulable:
        return True
    conditions = (node.status.conditions or []) if node.status else []
    return any(c.type == "Ready" and c.status != "True" for c in conditions)


def _taint_value(reason: str) -> str:
    """A label-value-safe rendering of the reason (63 chars of [A-Za-z0-9_.-])."""
    out = "".join(c if c.isalnum() or c in "_.-" else "_" for c in reason)[:63].strip("_.-")
    return out or "unhealthy"


def _taint_dict(t) -> dict[str, Any]:
    d = {"key": t.key, "effect": t.effect}
    if t.value is not None:
        d["value"] = t.value
    return d


def _uses(pod, resource: str) -> bool:
    for c in (pod.spec.containers or []) if pod.spec else []:
        res = c.resources
        if res and ((res.limits or {}).get(resource) or (res.requests or {}).get(resource)):
            return True
    return False
