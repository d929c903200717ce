"""Cost of the default rule library per tick on a big node, through RuleEngine.evaluate().

    python bench/rules_bench.py                  # 8 GPUs, 16 disks + 16 filesystems, 8 NICs, 8 IB ports
    python bench/rules_bench.py --history 900 --ticks 60 --scale 2 --step 5
    python bench/rules_bench.py --against ../main --rounds 3   # before/after: interleaved runs of both trees

The store holds ``--history`` seconds of ``--step`` s samples (default 1 s) for every series the library
reads (names and labels as the collectors emit them); a few series are driven into alert conditions so
templating, ALERTS output and the state machine are part of the cost. Each measured tick opens a new store
tick, adds one round of samples and evaluates every group (the engine's own work only is timed, as CPU time
of this process, so other load on the machine does not inflate it). Prints ms per tick (median, p95, max),
the number of rules and series, and the per-group split (wall time).
"""

from __future__ import annotations

import argparse
import math
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

from agent.core.config import DEFAULT_RULE_FILES
from agent.core.metrics import Sample
from agent.engine.rules import RuleEngine
from agent.engine.store import Store

REPO = Path(__file__).resolve().parents[1]
GPU_GAUGES = [
    "DCGM_FI_DEV_GPU_TEMP",
    "DCGM_FI_DEV_MEMORY_TEMP",
    "DCGM_FI_DEV_ROW_REMAP_FAILURE",
    "DCGM_FI_DEV_RETIRED_PENDING",
    "nodewarden_gpu_row_remap_pending",
    "nodewarden_gpu_up",
]
GPU_COUNTERS = [
    "DCGM_FI_DEV_ECC_DBE_VOL_TOTAL",
    "DCGM_FI_DEV_NVLINK_CRC_FLIT_ERROR_COUNT_TOTAL",
    "DCGM_FI_DEV_NVLINK_CRC_DATA_ERROR_COUNT_TOTAL",
    "DCGM_FI_DEV_NVLINK_REPLAY_ERROR_COUNT_TOTAL",
    "DCGM_FI_DEV_NVLINK_RECOVERY_ERROR_COUNT_TOTAL",
]
REASONS = ["gpu_idle", "sw_power_cap", "hw_slowdown", "sw_thermal_slowdown", "hw_thermal_slowdown", "hw_power_brake"]
DISK = [
    "node_disk_reads_completed_total",
    "node_disk_writes_completed_total",
    "node_disk_read_time_seconds_total",
    "node_disk_write_time_seconds_total",
    "node_disk_io_time_seconds_total",
]
NET = [
    "node_network_receive_bytes_total",
    "node_network_transmit_bytes_total",
    "node_network_receive_packets_total",
    "node_network_transmit_packets_total",
    "node_network_receive_errs_total",
    "node_network_transmit_errs_total",
    "node_network_receive_drop_total",
    "node_network_carrier_changes_total",
]
IB = [
    "node_infiniband_port_transmit_wait_total",
    "node_infiniband_symbol_error_total",
    "node_infiniband_link_downed_total",
    "node_infiniband_rp_cnp_packets_handled_total",
    "node_infiniband_np_ecn_marked_roce_packets_received_total",
]


FAULT_COUNTERS = ("err", "drop", "ECC", "NVLINK", "symbol", "downed", "xid", "carrier", "Retrans", "cnp", "ecn", "wait")


def node_series(scale: int) -> list[tuple[str, tuple, str]]:
    """(name, labels, kind) of every series a big node exposes to the default library."""
    out: list[tuple[str, tuple, str]] = []
    for g in range(8 * scale):
        gl = (
            ("gpu", str(g)),
            ("UUID", f"GPU-{g:04d}"),
            ("pci_bus_id", f"0000:{g:02x}:00.0"),
            ("device", f"nvidia{g}"),
            ("modelName", "NVIDIA H100 80GB HBM3"),
            ("hostname", "bench"),
        )
        out += [(n, gl, "gauge") for n in GPU_GAUGES] + [(n, gl, "counter") for n in GPU_COUNTERS]
        out += [("nodewarden_gpu_clocks_event_active", (*gl, ("reason", r)), "flag") for r in REASONS]
        out += [
            ("nodewarden_gpu_xid_errors_total", (("gpu", str(g)), ("UUID", f"GPU-{g:04d}"), ("xid", x)), "counter")
            for x in ("13", "48", "74", "79")
        ]
    for d in range(16 * scale):
        out += [(n, (("device", f"nvme{d}n1"),), "counter") for n in DISK]
        fl = (("device", f"/dev/nvme{d}n1p1"), ("fstype", "xfs"), ("mountpoint", f"/data{d}"))
        out += [
            (n, fl, "gauge")
            for n in (
                "node_filesystem_avail_bytes",
                "node_filesystem_size_bytes",
                "node_filesystem_files",
                "node_filesystem_files_free",
                "node_filesystem_readonly",
                "node_filesystem_device_error",
            )
        ]
    for n_ in range(8 * scale):
        dl = (("device", f"eth{n_}"),)
        out += [(n, dl, "counter") for n in NET] + [
            ("node_network_speed_bytes", dl, "gauge"),
            ("node_network_up", dl, "gauge"),
        ]
    for p in range(8 * scale):
        pl = (("device", f"mlx5_{p}"), ("port", "1"))
        out += [(n, pl, "counter") for n in IB] + [("node_infiniband_physical_state_id", pl, "gauge")]
    out += [("node_netstat_Tcp_RetransSegs", (), "counter"), ("node_netstat_Tcp_OutSegs", (), "counter")]
    return out


def value(name: str, labels: tuple, kind: str, k: int, i: int) -> float:
    """Plausible values; GPU 0 runs hot and eth0 is saturated so some alerts are pending/firing."""
    lab = dict(labels)
    if kind == "counter":
        if any(w in name for w in FAULT_COUNTERS):
            return float(i % 3)  # fault counters stay flat on a healthy node
        if name.startswith("node_disk_") and "time" in name:
            return k * 0.001 * (1 + i % 5)  # ~1 ms per I/O, a few % busy
        return float(k * 1000 * (1 + i % 5))
    if kind == "flag":
        return 1.0 if lab.get("reason") == "hw_thermal_slowdown" and lab.get("gpu") == "0" else 0.0
    if name == "DCGM_FI_DEV_GPU_TEMP":
        return 90.0 if lab["gpu"] == "0" else 60 + 5 * math.sin(k / 60 + i)
    if name in ("nodewarden_gpu_up", "node_network_up"):
        return 1.0
    if name == "node_network_speed_bytes":
        return 1.0 if lab["device"] == "eth0" else 12.5e9
    if name == "node_filesystem_size_bytes":
        return 4e12
    if name == "node_filesystem_avail_bytes":
        return 2e12 - k * 1e6
    if name == "node_filesystem_files":
        return 1e8
    if name == "node_filesystem_files_free":
        return 9e7
    if name == "node_infiniband_physical_state_id":
        return 5.0
    return 0.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--history", type=int, default=900, help="seconds of history (default 900)")
    ap.add_argument("--step", type=float, default=1.0, help="sampling interval in seconds (default 1)")
    ap.add_argument("--ticks", type=int, default=60, help="measured ticks (default 60)")
    ap.add_argument("--scale", type=int, default=1, help="multiply device counts (default 1 = big node)")
    ap.add_argument("-v", "--verbose", action="store_true", help="list the alerts that end up active")
    ap.add_argument("--against", help="another checkout (e.g. main): run both, interleaved, and print the ratio")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved runs of each tree with --against")
    args = ap.parse_args()
    if args.against:
        compare(args)
        return

    series = node_series(args.scale)
    step = args.step
    store = Store(retention=args.history, interval=step)
    engine = RuleEngine(None)
    engine.load([str(REPO / f) for f in DEFAULT_RULE_FILES])
    t0 = 1_700_000_000.0

    def tick(k: int) -> None:
        store.begin_tick(t0 + k * step)
        store.add([Sample(n, lb, value(n, lb, kind, k, i)) for i, (n, lb, kind) in enumerate(series)])

    filled = int(args.history / step)
    for k in range(filled):  # fill the history; evaluate every 15 s so alert state builds up
        tick(k)
        if k % max(1, round(15 / step)) == 0:
            engine.evaluate(store, t0 + k * step)
    times = []
    per_group: dict[str, list[float]] = {}
    for k in range(filled, filled + args.ticks):
        tick(k)
        start = time.process_time()
        engine.evaluate(store, t0 + k * step)
        times.append((time.process_time() - start) * 1000)
        for gs in engine.groups:
            per_group.setdefault(gs.group.name, []).append(gs.duration * 1000)
    n_rules = sum(1 for _ in engine.rule_states())
    times.sort()
    print(f"rules={n_rules} series={store.series_count()} history={args.history}s step={step:g}s ticks={args.ticks}")
    print(
        f"evaluate() per tick: median {statistics.median(times):.2f} ms, "
        f"p95 {times[int(0.95 * (len(times) - 1))]:.2f} ms, max {times[-1]:.2f} ms"
    )
    for name, ds in per_group.items():
        print(f"  {name:28s} {statistics.median(ds):6.2f} ms")
    states = {}
    for a in engine.alerts():
        states[a.state] = states.get(a.state, 0) + 1
    print(f"alerts: {states}")
    if args.verbose:
        print(sorted({a.name for a in engine.alerts()}))


def _run_tree(tree: Path, args: argparse.Namespace) -> float:
    """Median ms per tick of this benchmark run from ``tree`` (its own code) in a subprocess."""
    cmd = [sys.executable, str(tree / "bench" / "rules_bench.py"), "--history", str(args.history), "--step",
           str(args.step), "--ticks", str(args.ticks), "--scale", str(args.scale)]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(tree)}
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env, cwd=tree, timeout=1800).stdout
    m = re.search(r"per tick: median ([0-9.]+) ms", out)
    if m is None:
        raise SystemExit(f"no median in the output of {tree}:\n{out}")
    return float(m.group(1))


def compare(args: argparse.Namespace) -> None:
    """Before/after in one run: ``--rounds`` interleaved runs of the other tree and of this one."""
    other, this = Path(args.against).resolve(), REPO
    results: dict[Path, list[float]] = {other: [], this: []}
    for _ in range(args.rounds):
        for tree in (other, this):
            results[tree].append(_run_tree(tree, args))
    before, after = statistics.median(results[other]), statistics.median(results[this])
    print(f"step={args.step:g}s history={args.history}s ticks={args.ticks} scale={args.scale} rounds={args.rounds}")
    print(f"  {other}: {' '.join(f'{v:.2f}' for v in results[other])} ms/tick (median {before:.2f})")
    print(f"  {this}: {' '.join(f'{v:.2f}' for v in results[this])} ms/tick (median {after:.2f})")
    print(f"  after/before: {after / before:.3f}")


if __name__ == "__main__":
    main()
