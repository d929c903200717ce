"""NVML GPM (Hopper and later) for one GPU: two samples per scope (the whole GPU and each MIG instance), one
taken each tick, and DCGM's profiling metrics (``DCGM_FI_PROF_*``) between the last two."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterable
from typing import Any

from agent.collectors.gpu_catalogue import GPM_METRICS, GPM_METRICS_GET_VERSION
from agent.collectors.nvml import UNSUPPORTED, Nvml
from agent.core.metrics import Labels, Sample

Scope = int | None  # None: the whole GPU, else a GPU instance id


class GpmSampler:
    """The GPM sample pairs of one GPU and which scopes have a baseline; built by :meth:`open`."""

    def __init__(self, pairs: dict[Scope, list[Any]]) -> None:
        self.pairs = pairs  # scope -> [previous, current] nvmlGpmSample_t
        self.ready: set[Scope] = set()  # scopes whose previous sample is a baseline

    @classmethod
    def open(cls, nvml: Nvml, handle: Any, mig_scopes: Iterable[int]) -> GpmSampler | None:
        """Allocate two samples per scope; None when the GPU does not support GPM (runs in the NVML worker).

        An allocation that fails keeps the scopes allocated so far."""
        nv = nvml.nv
        support = nvml.get(nv.nvmlGpmQueryDeviceSupport, handle)
        if support is None or support is UNSUPPORTED or not getattr(support, "isSupportedDevice", 0):
            return None
        pairs: dict[Scope, list[Any]] = {}
        for scope in [None, *(gi for gi in mig_scopes if gi >= 0)]:
            pair = [nvml.get(nv.nvmlGpmSampleAlloc), nvml.get(nv.nvmlGpmSampleAlloc)]
            if any(x is None or x is UNSUPPORTED for x in pair):
                break
            pairs[scope] = pair
        return cls(pairs)

    def sample(self, nvml: Nvml, handle: Any, scopes: Iterable[tuple[Scope, Labels]], out: list[Sample],
               unsupported: Callable[[str], None]) -> None:
        """Take this tick's sample per scope; with a baseline, append the metrics between the two.

        A scope whose sample NVML does not support is dropped for good and reported to ``unsupported``."""
        nv = nvml.nv
        get = nvml.get
        for scope, labels in scopes:
            pair = self.pairs.get(scope)
            if pair is None:
                continue
            cur = pair[1]
            got = get(nv.nvmlGpmSampleGet, handle, cur) if scope is None else \
                get(nv.nvmlGpmMigSampleGet, handle, scope, cur)
            if got is None or got is UNSUPPORTED:
                self.ready.discard(scope)
                if got is UNSUPPORTED:
                    del self.pairs[scope]
                    unsupported("gpm" if scope is None else f"gpm_mig_{scope}")
                continue
            if scope in self.ready:
                self._metrics(nvml, pair[0], cur, labels, out)
            pair.reverse()  # the current sample becomes the baseline
            self.ready.add(scope)

    @staticmethod
    def _metrics(nvml: Nvml, before: Any, after: Any, labels: Labels, out: list[Sample]) -> None:
        nv = nvml.nv
        mg = nv.c_nvmlGpmMetricsGet_t()
        mg.version = GPM_METRICS_GET_VERSION
        mg.numMetrics = len(GPM_METRICS)
        mg.sample1, mg.sample2 = before, after
        for k, (mid, _, _) in enumerate(GPM_METRICS):
            mg.metrics[k].metricId = mid
        res = nvml.get(nv.nvmlGpmMetricsGet, mg)
        if res is not None and res is not UNSUPPORTED:
            for k, (_, name, scale) in enumerate(GPM_METRICS):
                m = mg.metrics[k]
                if m.nvmlReturn == 0 and not math.isnan(m.value):
                    out.append(Sample(name, labels, m.value * scale))

    def free(self, nv: Any) -> None:
        """Free every sample (NVML errors ignored: this runs on shutdown)."""
        for pair in self.pairs.values():
            for sample in pair:
                with contextlib.suppress(Exception):
                    nv.nvmlGpmSampleFree(sample)
        self.pairs = {}
        self.ready = set()
