"""Which job or pod a GPU process belongs to: ``/proc/PID/cgroup`` and the container runtime's state files.

Pure parsers (tested on literal strings) plus one small resolver that reads through the configured roots:

- Slurm: slurmstepd puts every step in a cgroup whose path holds ``job_<ID>`` (cgroup v1 ``/slurm/uid_U/job_ID/
  step_S``, v2 ``/system.slice/slurmstepd.scope/job_ID/step_S/...``).
- Kubernetes: the kubelet's cgroup for a pod holds the pod UID (cgroupfs ``pod<uid>``, systemd
  ``pod<uid_with_underscores>.slice``) and the container's id (``cri-containerd-<id>.scope``, ``crio-<id>.scope``,
  ``docker-<id>.scope`` or a bare 64-hex directory). Namespace and pod name are not in the cgroup: they are
  annotations in the runtime's OCI bundle ``config.json`` (containerd: ``io.kubernetes.cri.sandbox-namespace`` /
  ``-name``; CRI-O: ``io.kubernetes.pod.namespace`` / ``.name``), read under the host root.
"""

from __future__ import annotations

import json
import re
from typing import NamedTuple

from agent.core.paths import Paths

_SLURM_JOB = re.compile(r"/job_([0-9]+)(?:/|$)")
_POD_UID = re.compile(r"pod([0-9a-fA-F]{8}[-_][0-9a-fA-F]{4}[-_][0-9a-fA-F]{4}[-_][0-9a-fA-F]{4}[-_][0-9a-fA-F]{12})")
_CONTAINER = re.compile(r"(?:cri-containerd-|crio-|docker-)?([0-9a-f]{64})(?:\.scope)?$")

# Where runtimes keep a running container's OCI config (under the host root), and the annotation keys.
BUNDLES: tuple[tuple[str, str, str], ...] = (
    ("run/containerd/io.containerd.runtime.v2.task/k8s.io/{id}/config.json",
     "io.kubernetes.cri.sandbox-namespace", "io.kubernetes.cri.sandbox-name"),
    ("run/containers/storage/overlay-containers/{id}/userdata/config.json",
     "io.kubernetes.pod.namespace", "io.kubernetes.pod.name"),
)


class Workload(NamedTuple):
    """What a process runs for: a Slurm job, or a Kubernetes pod (namespace/pod empty when unresolved)."""

    job_id: str = ""
    pod_uid: str = ""
    container_id: str = ""
    namespace: str = ""
    pod: str = ""


def parse_cgroup(text: str) -> Workload:
    """The Slurm job id or the pod UID and container id in a ``/proc/PID/cgroup`` file (empty Workload if none)."""
    for line in text.splitlines():
        path = line.split(":", 2)[-1]
        m = _SLURM_JOB.search(path)
        if m:
            return Workload(job_id=m.group(1))
        m = _POD_UID.search(path)
        if m:
            uid = m.group(1).replace("_", "-")
            last = path.rstrip("/").rsplit("/", 1)[-1]
            c = _CONTAINER.search(last)
            return Workload(pod_uid=uid, container_id=c.group(1) if c else "")
    return Workload()


def parse_bundle(text: str, ns_key: str, name_key: str) -> tuple[str, str]:
    """(namespace, pod) from an OCI ``config.json``'s annotations; empty strings when absent or unreadable."""
    try:
        ann = json.loads(text).get("annotations") or {}
    except (ValueError, AttributeError):
        return "", ""
    if not isinstance(ann, dict):
        return "", ""
    return str(ann.get(ns_key, "")), str(ann.get(name_key, ""))


class Resolver:
    """Maps PIDs to workloads through the procfs and host roots; results are cached per PID (bounded)."""

    def __init__(self, paths: Paths, max_cache: int = 4096) -> None:
        self.paths = paths
        self.max_cache = max_cache
        self._cache: dict[int, Workload] = {}

    def workload(self, pid: int) -> Workload:
        """The process's workload; an empty Workload when its cgroup cannot be read."""
        hit = self._cache.get(pid)
        if hit is not None:
            return hit
        try:
            with open(self.paths.proc(str(pid), "cgroup"), encoding="utf-8", errors="replace") as f:
                w = parse_cgroup(f.read(65536))
        except OSError:
            return Workload()  # gone or not visible: not cached, it may appear next round
        if w.container_id:
            w = w._replace(**dict(zip(("namespace", "pod"), self._names(w.container_id), strict=True)))
        if len(self._cache) >= self.max_cache:
            self._cache.clear()
        self._cache[pid] = w
        return w

    def forget_except(self, pids: set[int]) -> None:
        """Drop cached PIDs that no GPU lists any more (PIDs are reused)."""
        for pid in [p for p in self._cache if p not in pids]:
            del self._cache[pid]

    def _names(self, container_id: str) -> tuple[str, str]:
        for pattern, ns_key, name_key in BUNDLES:
            path = self.paths.root("/" + pattern.format(id=container_id))
            try:
                with open(path, encoding="utf-8") as f:
                    text = f.read(1 << 20)
            except OSError:
                continue
            found = parse_bundle(text, ns_key, name_key)
            if found[1]:
                return found
        return "", ""


def job_labels(w: Workload) -> tuple[tuple[str, str], ...] | None:
    """The extra labels of ``nodewarden_gpu_job_info`` for a workload (None when it is neither job nor pod)."""
    if w.job_id:
        return (("job_id", w.job_id),)
    if w.pod_uid:
        return (("namespace", w.namespace), ("pod", w.pod), ("pod_uid", w.pod_uid))
    return None
