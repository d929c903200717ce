"""Per-tick CPU cost of the GPU collector.

    python bench/gpu_bench.py                 # 8 fake H100s, all fields (target < 2 ms CPU per tick)
    python bench/gpu_bench.py --scenario h100-mig --ticks 2000
    python bench/gpu_bench.py --real          # the real NVML on this machine (needs an NVIDIA driver)

CPU is process CPU time (all threads: the collect() caller and the NVML worker) divided by the number of
ticks. With the fake it includes the fake NVML's own Python cost, printed separately so the collector's
share can be read off; with ``--real`` it also prints the cost of each NVML call the collector makes.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agent.collectors.gpu import GpuCollector, GpuConfig
from agent.collectors.nvml import load_module
from agent.core.paths import Paths


class _Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def _per_call_costs(module, collector: GpuCollector, repeat: int = 200) -> list[tuple[str, float]]:
    """Mean wall time of each NVML call the collector makes on GPU 0 (runs on this thread)."""
    g = collector._gpus[0]
    h = g.handle
    nv = module
    calls = [
        ("nvmlDeviceGetUtilizationRates", lambda: nv.nvmlDeviceGetUtilizationRates(h)),
        ("nvmlDeviceGetMemoryInfo", lambda: nv.nvmlDeviceGetMemoryInfo(h, g.mem_version or None)),
        ("nvmlDeviceGetClockInfo", lambda: nv.nvmlDeviceGetClockInfo(h, nv.NVML_CLOCK_SM)),
        ("nvmlDeviceGetPcieThroughput", lambda: nv.nvmlDeviceGetPcieThroughput(h, nv.NVML_PCIE_UTIL_TX_BYTES)),
        ("nvmlDeviceGetTemperature", lambda: nv.nvmlDeviceGetTemperature(h, nv.NVML_TEMPERATURE_GPU)),
        ("nvmlDeviceGetPowerUsage", lambda: nv.nvmlDeviceGetPowerUsage(h)),
        ("nvmlDeviceGetCurrentClocksEventReasons", lambda: nv.nvmlDeviceGetCurrentClocksEventReasons(h)),
        (f"nvmlDeviceGetFieldValues({len(g.field_ids)} fields)", lambda: nv.nvmlDeviceGetFieldValues(h, g.field_ids)),
        ("nvmlDeviceGetComputeRunningProcesses", lambda: nv.nvmlDeviceGetComputeRunningProcesses(h)),
    ]
    out = []
    for name, fn in calls:
        try:
            fn()
        except Exception as err:  # unsupported on this GPU
            out.append((f"{name} ({type(err).__name__})", float("nan")))
            continue
        t0 = time.perf_counter()
        for _ in range(repeat):
            fn()
        out.append((name, (time.perf_counter() - t0) / repeat))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scenario", default="h100-healthy", help="simulation scenario (default h100-healthy)")
    ap.add_argument("--ticks", type=int, default=1000)
    ap.add_argument("--real", action="store_true", help="use the real pynvml instead of the fake")
    args = ap.parse_args()

    clock = _Clock() if not args.real else time.monotonic
    module = load_module(None if args.real else args.scenario, clock)
    collector = GpuCollector(GpuConfig(kmsg=False), Paths(), "bench", nvml_module=module, clock=clock)
    first = list(collector.collect())  # discovery + probing of unsupported fields
    gpus = len(collector._gpus)
    calls0 = getattr(module, "calls", 0)
    per_tick = []
    cpu0 = time.process_time()
    for _ in range(args.ticks):
        if not args.real:
            clock.t += 5.0
        t0 = time.process_time()
        collector.collect()
        per_tick.append(time.process_time() - t0)
    cpu = time.process_time() - cpu0
    calls = (getattr(module, "calls", 0) - calls0) / args.ticks
    kind = "real NVML" if args.real else f"fake NVML, scenario {args.scenario}"
    print(f"GPU collector, {gpus} GPUs ({kind}), {len(first)} samples per tick, {args.ticks} ticks")
    print(
        f"  CPU per tick: mean {cpu / args.ticks * 1e3:.3f} ms, "
        f"p50 {statistics.median(per_tick) * 1e3:.3f} ms, "
        f"p99 {sorted(per_tick)[int(len(per_tick) * 0.99) - 1] * 1e3:.3f} ms   (target < 2 ms for 8 GPUs)"
    )
    if not args.real:
        # The fake's own cost: the same calls made directly, without the collector.
        per_call = _per_call_costs(module, collector)
        fake_per_gpu = sum(t for _, t in per_call if t == t)
        print(f"  NVML calls per tick: {calls:.0f}; the fake alone costs ~{fake_per_gpu * gpus * 1e3:.3f} ms of that")
    else:
        print("  per NVML call (GPU 0):")
        for name, t in _per_call_costs(module, collector):
            print(f"    {name:<55} {t * 1e6:9.1f} us")
    collector.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
