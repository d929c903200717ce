"""``rebalance``: move work away from a sick GPU or node.

The backend is chosen in the plugin's settings (``plugins.rebalance.backend`` in the policy file):

- ``slurm``: drain the node with a reason starting ``nodewarden:``; optionally requeue the jobs on the bad
  GPU; undrain on revert (only when the drain is still ours). Never ``DOWN``.
- ``kubernetes``: cordon and taint the node, evict (Eviction API, PDBs respected) the pods holding GPUs;
  uncordon and untaint on revert.
- ``gpu-fence``: set one GPU's compute mode to PROHIBITED through NVML; restore the old mode on revert.
"""

from __future__ import annotations

import socket
from typing import Any, Literal

from pydantic import Field, field_validator

from agent.core.alerts import Alert
from agent.core.paths import Paths
from agent.core.plugin import REASON_RE, Backend, Cluster, Entry, Outcome, ParamsModel, Plan, check_gpu, check_node

NAME = "rebalance"
PREFIX = "nodewarden:"


class Params(ParamsModel):
    """A step's params (templated from the alert's labels)."""

    node: str | None = Field(None, description="node to act on; default: this node")
    gpu: str | None = Field(None, description="GPU index or UUID (gpu-fence: required; slurm: for requeue)")
    reason: str = Field("unhealthy GPU", description=f"why; recorded with the prefix {PREFIX!r}")
    requeue: bool = Field(False, description="slurm: requeue the jobs running on the bad GPU")
    evict: bool = Field(True, description="kubernetes: evict the pods holding GPUs on the node")

    @field_validator("node")
    @classmethod
    def _node(cls, v: str | None) -> str | None:
        return None if v is None else check_node(v)

    @field_validator("gpu")
    @classmethod
    def _gpu(cls, v: str | None) -> str | None:
        return None if v in (None, "") else check_gpu(v)

    @field_validator("reason")
    @classmethod
    def _reason(cls, v: str) -> str:
        v = " ".join(v.split())
        if not REASON_RE.match(v):
            raise ValueError("reason must be 1-200 printable ASCII characters")
        return v


class SlurmSettings(ParamsModel):
    """Where the Slurm client programs are and which partition the blast radius counts."""

    scontrol: str = "scontrol"
    sinfo: str = "sinfo"
    squeue: str = "squeue"
    partition: str | None = None
    timeout: float = Field(15.0, gt=0)


class KubernetesSettings(ParamsModel):
    """API access (in-cluster config by default) and what the taint looks like."""

    kubeconfig: str | None = None
    host: str | None = Field(None, description="API server URL without kubeconfig (tests, proxies)")
    in_cluster: bool = True
    taint_key: str = "nodewarden.io/unhealthy"
    taint_effect: Literal["NoSchedule", "NoExecute", "PreferNoSchedule"] = "NoSchedule"
    gpu_resource: str = "nvidia.com/gpu"
    evict_scope: Literal["gpu", "node"] = Field(
        "gpu", description="gpu: only the pods using the alert's GPU (NVML processes -> cgroup pod UID); "
                           "node: every GPU pod on the node")
    timeout: float = Field(15.0, gt=0)
    lease_namespace: str = Field("kube-system", description="where the blast-radius slot Leases live")
    maintenance_label: str | None = Field(
        "nodewarden.io/maintenance", description="a node carrying this label or annotation (any value but "
                                                 "\"false\") is under maintenance: actions on it are held")


class Config(ParamsModel):
    """The plugin's section of the policy's ``plugins:``."""

    backend: Literal["slurm", "kubernetes", "gpu-fence"] = "slurm"
    node_name: str | None = Field(None, description="this node's name in the scheduler; default: short hostname")
    slurm: SlurmSettings = SlurmSettings()
    kubernetes: KubernetesSettings = KubernetesSettings()

    @field_validator("node_name")
    @classmethod
    def _node(cls, v: str | None) -> str | None:
        return None if v is None else check_node(v)


class Rebalance:
    """The plugin: a thin dispatcher over the configured backend."""

    NAME = NAME
    Params = Params
    Config = Config

    def __init__(self, config: Config, runner=None, nvml=None, k8s_api=None, paths: Paths | None = None,
                 **_: Any) -> None:
        self.name = NAME
        self.config = config
        self.node = config.node_name or check_node(socket.gethostname().split(".")[0])
        self.backend: Backend  # see agent.core.plugin.Backend
        if config.backend == "slurm":
            from remediations.backends.slurm import SlurmBackend
            self.backend = SlurmBackend(config.slurm, runner=runner)
        elif config.backend == "kubernetes":
            from remediations.backends.kubernetes import KubernetesBackend
            self.backend = KubernetesBackend(config.kubernetes, api=k8s_api, nvml=nvml, paths=paths)
        else:
            from remediations.backends.gpu_fence import GpuFenceBackend
            self.backend = GpuFenceBackend(nvml=nvml)
        self.cluster = self.backend if isinstance(self.backend, Cluster) else None

    def plan(self, alert: Alert | None, params: Params) -> Plan:
        """Pure: what the backend would change."""
        node = params.node or self.node
        return self.backend.plan(node, params)

    def apply(self, plan: Plan) -> Outcome:
        """Make the change."""
        return self.backend.apply(plan)

    def verify(self, plan: Plan) -> bool:
        """Is it in effect?"""
        return self.backend.verify(plan)

    def revert(self, plan: Plan) -> Outcome:
        """Undo (only what is still ours)."""
        return self.backend.revert(plan)

    def recover(self, entry: Entry) -> str:
        """Finish or roll back an interrupted entry."""
        return self.backend.recover(entry)
