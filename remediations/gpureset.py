"""``gpu-reset``: reset one GPU (``nvidia-smi --gpu-reset``) for the XID catalogue's ``reset_gpu`` bucket, guarded.

A reset kills every context on the GPU, so the plan is refused (journaled ``refused:<reason>``, and the alert's
escalation moves on after the step's ``wait``) unless, checked at plan time and again just before the reset:

- the node is drained: Slurm reports the node ``DRAIN`` with nothing allocated (``IDLE+DRAIN``, not ``MIXED+DRAIN``
  while jobs finish), or Kubernetes reports it unschedulable (``drain_check: none`` skips this for nodes an
  operator drains by hand);
- no process holds the GPU: NVML lists no compute and no graphics process on it.

The default policy puts it after the ``rebalance`` step (drain first, reset once the node is empty). Not
reversible. ``recover`` never resets twice: an interrupted reset is ``succeeded`` when the GPU answers NVML
again, ``failed`` otherwise. Needs root.
"""

from __future__ import annotations

import socket
from contextlib import suppress
from typing import Any, Literal

from pydantic import Field, field_validator

from agent.core.alerts import Alert
from agent.core.errors import RemediationError
from agent.core.plugin import (
    REASON_RE,
    Entry,
    Outcome,
    ParamsModel,
    Plan,
    Refused,
    Runner,
    check_gpu,
    check_node,
    run_argv,
)

NAME = "gpu-reset"


class Params(ParamsModel):
    """A step's params (templated from the alert's labels)."""

    gpu: str = Field(description="GPU index or UUID")
    reason: str = "reset_gpu"

    @field_validator("gpu")
    @classmethod
    def _gpu(cls, v: str) -> str:
        return check_gpu(v)

    @field_validator("reason")
    @classmethod
    def _reason(cls, v: str) -> str:
        v = " ".join(v.split())
        if not REASON_RE.match(v):
            raise ValueError("reason must be 1-200 printable ASCII characters")
        return v


class Config(ParamsModel):
    """The plugin's section of the policy's ``plugins:``."""

    drain_check: Literal["slurm", "kubernetes", "none"] = "slurm"
    node_name: str | None = None
    nvidia_smi: str = "nvidia-smi"
    scontrol: str = "scontrol"
    kubeconfig: str | None = None
    host: str | None = Field(None, description="Kubernetes API server URL without kubeconfig")
    timeout: float = Field(120.0, gt=0, description="deadline of nvidia-smi --gpu-reset")

    @field_validator("node_name")
    @classmethod
    def _node(cls, v: str | None) -> str | None:
        return None if v is None else check_node(v)


class GpuReset:
    """The plugin. ``nvml``, ``runner`` and ``k8s_api`` are injectable (tests: fake NVML, fake runner)."""

    NAME = NAME
    Params = Params
    Config = Config

    def __init__(self, config: Config, nvml: Any = None, runner: Runner | None = None, k8s_api: Any = None,
                 **_: Any) -> None:
        self.name = NAME
        self.config = config
        self._nvml = nvml
        self.runner = runner or run_argv
        self._k8s = k8s_api
        self.node = config.node_name or check_node(socket.gethostname().split(".")[0])

    @property
    def nvml(self) -> Any:
        if self._nvml is None:
            import pynvml

            self._nvml = pynvml
        return self._nvml

    def _gpu(self, gpu: str) -> tuple[str, str, list[int]]:
        """(PCI bus id, UUID, pids using it) of one GPU."""
        n = self.nvml
        try:
            n.nvmlInit()
        except n.NVMLError as err:
            raise RemediationError(f"NVML init failed: {err}") from err
        try:
            h = n.nvmlDeviceGetHandleByUUID(gpu) if gpu.startswith("GPU-") else n.nvmlDeviceGetHandleByIndex(int(gpu))
            bus = _text(n.nvmlDeviceGetPciInfo(h).busId)
            uuid = _text(n.nvmlDeviceGetUUID(h))
            pids = {p.pid for p in n.nvmlDeviceGetComputeRunningProcesses(h)}
            pids |= {p.pid for p in n.nvmlDeviceGetGraphicsRunningProcesses(h)}
            return bus, uuid, sorted(pids)
        except n.NVMLError as err:
            raise RemediationError(f"NVML GPU {gpu}: {err}") from err
        finally:
            with suppress(n.NVMLError):
                n.nvmlShutdown()

    def drained(self, node: str) -> tuple[bool, str]:
        """(drained, what the scheduler says)."""
        kind = self.config.drain_check
        if kind == "none":
            return True, "drain check disabled"
        if kind == "slurm":
            res = self.runner([self.config.scontrol, "--oneliner", "show", "node", check_node(node)], 15.0)
            if res.returncode != 0:
                raise RemediationError(f"scontrol show node {node}: {res.stderr.strip() or res.returncode}")
            state = next((w.split("=", 1)[1] for w in res.stdout.split() if w.startswith("State=")), "")
            flags = set(state.split("+"))
            busy = flags & {"ALLOCATED", "ALLOC", "MIXED", "COMPLETING"}
            return (any(f.startswith("DRAIN") for f in flags) and not busy), f"Slurm state {state or '?'}"
        api = self._api()
        try:
            body = api.read_node(check_node(node), _request_timeout=15.0)
        except Exception as err:  # the client raises ApiException / urllib3 errors: report, refuse
            raise RemediationError(f"kubernetes read node {node}: {err}") from err
        cordoned = bool(getattr(body.spec, "unschedulable", False))
        return cordoned, "unschedulable" if cordoned else "schedulable"

    def _api(self) -> Any:
        if self._k8s is None:
            from kubernetes import client, config

            if self.config.host:
                cfg = client.Configuration()
                cfg.host = self.config.host
                self._k8s = client.CoreV1Api(client.ApiClient(cfg))
            else:
                if self.config.kubeconfig:
                    config.load_kube_config(config_file=self.config.kubeconfig)
                else:
                    config.load_incluster_config()
                self._k8s = client.CoreV1Api()
        return self._k8s

    def _guard(self, gpu: str) -> tuple[str, str]:
        drained, why = self.drained(self.node)
        if not drained:
            raise Refused("not_drained", f"node {self.node} is not drained ({why}); reset only an empty node")
        bus, uuid, pids = self._gpu(gpu)
        if pids:
            raise Refused("gpu_busy", f"GPU {gpu} is used by pid {', '.join(map(str, pids))}")
        return bus, uuid

    # ---------------------------------------------------------------- plugin protocol
    def plan(self, alert: Alert | None, params: Params) -> Plan:
        """Read-only: refuses unless the node is drained and the GPU idle."""
        bus, uuid = self._guard(params.gpu)
        return Plan(action=NAME, target=f"gpu/{self.node}/{params.gpu}", scope="gpu", reversible=False,
                    changes=[f"reset GPU {params.gpu} ({uuid}, {bus}): {self.config.nvidia_smi} --gpu-reset -i {bus}"],
                    params={"gpu": params.gpu, "uuid": uuid, "bus": bus, "reason": params.reason})

    def apply(self, plan: Plan) -> Outcome:
        """Check the guards again (the node may have taken work since the plan), then reset."""
        bus, _ = self._guard(plan.params["gpu"])
        res = self.runner([self.config.nvidia_smi, "--gpu-reset", "-i", bus], self.config.timeout)
        if res.returncode != 0:
            raise RemediationError(f"nvidia-smi --gpu-reset -i {bus} failed ({res.returncode}): "
                                   f"{(res.stderr or res.stdout).strip()[:300]}")
        return Outcome(f"GPU {plan.params['gpu']} ({bus}) reset: {res.stdout.strip()[:200]}")

    def verify(self, plan: Plan) -> bool:
        """The GPU answers NVML again."""
        try:
            self._gpu(plan.params["uuid"])
        except RemediationError:
            return False
        return True

    def revert(self, plan: Plan) -> Outcome:
        """A reset cannot be undone."""
        raise RemediationError("a GPU reset cannot be reverted")

    def recover(self, entry: Entry) -> str:
        """Never reset twice: succeeded when the GPU is back, failed otherwise (a human decides)."""
        return "succeeded" if self.verify(entry.get_plan()) else "failed"


def _text(v: Any) -> str:
    return v.decode("utf-8", "replace").rstrip("\x00") if isinstance(v, bytes) else str(v)
