"""Per-tick CPU cost of the GPU collector.

    python bench/gpu_bench.py                 # 8 fake H100s, all fields (target < 2 ms CPU per tick)
    python bench/gpu_bench.py --scenario h100-mig --ticks 2000
    python bench/gpu_bench.py --real          # the real NVML on this machine (needs an NVIDIA driver)
    python bench/gpu_bench.py --real --fields --record fields.json   # which fields this driver supports

``--fields`` prints, per catalogue metric, what GPU 0 (and its first MIG instance) reads, or that the driver
does not support it — the table docs/gpu.md asks to be filled in from a real machine (the GPM metrics need
two ticks; ``--interval`` sets the real time between them).

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
        ("nvmlDeviceGetPowerManagementLimit", lambda: nv.nvmlDeviceGetPowerManagementLimit(h)),
        ("nvmlDeviceGetEnforcedPowerLimit", lambda: nv.nvmlDeviceGetEnforcedPowerLimit(h)),
        ("nvmlDeviceGetEncoderUtilization", lambda: nv.nvmlDeviceGetEncoderUtilization(h)),
        ("nvmlDeviceGetDecoderUtilization", lambda: nv.nvmlDeviceGetDecoderUtilization(h)),
        ("nvmlDeviceGetCurrPcieLinkGeneration", lambda: nv.nvmlDeviceGetCurrPcieLinkGeneration(h)),
        ("nvmlDeviceGetCurrPcieLinkWidth", lambda: nv.nvmlDeviceGetCurrPcieLinkWidth(h)),
        ("nvmlDeviceGetGridLicensableFeatures", lambda: nv.nvmlDeviceGetGridLicensableFeatures(h)),
        ("nvmlGpmSampleGet", lambda: nv.nvmlGpmSampleGet(h, g.gpm.pairs[None][1]) if g.gpm and g.gpm.pairs else None),
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
    ap.add_argument("--fields", action="store_true", help="print which metrics GPU 0 reports and their values")
    ap.add_argument("--record", metavar="FILE", help="with --fields: also write them as JSON")
    ap.add_argument("--interval", type=float, default=1.0, help="--fields --real: seconds between the two ticks")
    args = ap.parse_args()
    if args.fields:
        return fields(args)

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


def fields(args: argparse.Namespace) -> int:
    """Two ticks, then every catalogue metric: GPU 0's value(s) or 'absent', plus the probed unsupported set."""
    import json

    from agent.collectors.gpu_catalogue import METRICS

    clock = _Clock() if not args.real else time.monotonic
    module = load_module(None if args.real else args.scenario, clock)
    collector = GpuCollector(GpuConfig(kmsg=False), Paths(), "bench", nvml_module=module, clock=clock)
    try:
        list(collector.collect())
        if args.real:
            time.sleep(args.interval)
        else:
            clock.t += args.interval
        samples = list(collector.collect())
    finally:
        collector.close()
    gpu0 = [s for s in samples if dict(s.labels).get("gpu") in ("0", None)]
    out: dict[str, object] = {"driver": next((dict(s.labels) for s in samples
                                              if s.name == "nodewarden_gpu_driver_info"), {}),
                              "model": next((dict(s.labels).get("modelName") for s in gpu0
                                             if "modelName" in dict(s.labels)), ""),
                              "unsupported": collector.unsupported.get("0", []), "metrics": {}}
    for spec in METRICS:
        rows = [s for s in gpu0 if s.name == spec.name]
        whole = [s.value for s in rows if "GPU_I_ID" not in dict(s.labels)]
        mig = [s.value for s in rows if "GPU_I_ID" in dict(s.labels)]
        value = whole[0] if len(whole) == 1 else (len(whole) or None)
        out["metrics"][spec.name] = {"gpu0": value, "mig0": mig[0] if mig else None}  # type: ignore[index]
        shown = "absent" if value is None else f"{value:g}"
        print(f"{spec.name:<48} {shown:>16}{'   MIG: ' + format(mig[0], 'g') if mig else ''}")
    print(f"unsupported on GPU 0: {', '.join(out['unsupported']) or 'none'}")  # type: ignore[arg-type]
    if args.record:
        Path(args.record).write_text(json.dumps(out, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
