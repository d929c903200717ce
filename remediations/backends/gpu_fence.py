"""gpu-fence backend of ``rebalance`` (local): stop new work landing on one bad GPU.

Sets the GPU's compute mode to PROHIBITED through NVML (no new CUDA contexts; running ones keep going)
and reports which processes still use it; revert restores the mode it had before. A GPU that was already
PROHIBITED is left alone. After a crash between the change and the journal update the old mode is unknown
and revert restores DEFAULT. Needs root (NVML refuses compute-mode changes otherwise).
"""

from __future__ import annotations

from contextlib import contextmanager, suppress
from typing import Any

from agent.core.errors import RemediationError
from agent.core.plugin import Entry, Outcome, Plan, check_gpu, check_node, default_recover

MODE_NAMES = {0: "DEFAULT", 1: "EXCLUSIVE_THREAD", 2: "PROHIBITED", 3: "EXCLUSIVE_PROCESS"}


class GpuFenceBackend:
    """Compute-mode fencing through an NVML module (``pynvml`` by default; tests inject a fake)."""

    def __init__(self, nvml=None) -> None:
        self._nvml = nvml

    @property
    def nvml(self):
        if self._nvml is None:
            import pynvml

            self._nvml = pynvml
        return self._nvml

    @contextmanager
    def _device(self, gpu: str):
        n = self.nvml
        try:
            n.nvmlInit()
        except n.NVMLError as err:
            raise RemediationError(f"NVML init failed: {err}") from err
        try:
            gpu = check_gpu(gpu)
            yield (n.nvmlDeviceGetHandleByUUID(gpu) if gpu.startswith("GPU-")
                   else n.nvmlDeviceGetHandleByIndex(int(gpu)))
        except n.NVMLError as err:
            raise RemediationError(f"NVML GPU {gpu}: {err}") from err
        finally:
            with suppress(n.NVMLError):
                n.nvmlShutdown()

    # ---- plugin protocol

    def plan(self, node: str, params) -> Plan:
        """Pure; needs ``gpu``."""
        if params.gpu is None:
            raise RemediationError("gpu-fence needs the gpu param (index or UUID)")
        return Plan(action="rebalance", target=f"gpu/{check_node(node)}/{params.gpu}", scope="gpu", reversible=True,
                    changes=[f"set GPU {params.gpu} compute mode to PROHIBITED (no new CUDA contexts)"],
                    params={"backend": "gpu-fence", "node": node, "gpu": params.gpu, "reason": params.reason})

    def pids(self, gpu: str) -> list[int]:
        """PIDs of the compute processes on one GPU; RemediationError when NVML cannot tell."""
        with self._device(gpu) as h:
            return sorted(p.pid for p in self.nvml.nvmlDeviceGetComputeRunningProcesses(h))

    def apply(self, plan: Plan) -> Outcome:
        """Set PROHIBITED, remember the old mode, list the processes still on the GPU."""
        n = self.nvml
        with self._device(plan.params["gpu"]) as h:
            old = n.nvmlDeviceGetComputeMode(h)
            if old == n.NVML_COMPUTEMODE_PROHIBITED:
                return Outcome(f"GPU {plan.params['gpu']} already PROHIBITED; left alone", {"owned": False})
            n.nvmlDeviceSetComputeMode(h, n.NVML_COMPUTEMODE_PROHIBITED)
            pids = sorted(p.pid for p in n.nvmlDeviceGetComputeRunningProcesses(h))
        used = f"; still used by pids {', '.join(map(str, pids))}" if pids else "; no processes on it"
        return Outcome(f"GPU {plan.params['gpu']} compute mode {MODE_NAMES.get(old, old)} -> PROHIBITED{used}",
                       {"owned": True, "old_mode": old, "pids": pids})

    def verify(self, plan: Plan) -> bool:
        """The mode is PROHIBITED."""
        with self._device(plan.params["gpu"]) as h:
            return self.nvml.nvmlDeviceGetComputeMode(h) == self.nvml.NVML_COMPUTEMODE_PROHIBITED

    def revert(self, plan: Plan) -> Outcome:
        """Restore the old mode when the GPU is still PROHIBITED and the fence was ours."""
        n = self.nvml
        if plan.undo.get("owned") is False:
            return Outcome("the fence was not ours; left as it is")
        old: Any = plan.undo.get("old_mode", n.NVML_COMPUTEMODE_DEFAULT)
        with self._device(plan.params["gpu"]) as h:
            if n.nvmlDeviceGetComputeMode(h) != n.NVML_COMPUTEMODE_PROHIBITED:
                return Outcome("compute mode was changed by someone else; left as it is")
            n.nvmlDeviceSetComputeMode(h, old)
        return Outcome(f"GPU {plan.params['gpu']} compute mode restored to {MODE_NAMES.get(old, old)}")

    def recover(self, entry: Entry) -> str:
        """Idempotent: verify, else apply again."""
        return default_recover(self, entry)
