"""CPU per collect() of the network, netstat and infiniband collectors, with node_exporter as a peer.

Usage: ``python bench/net_collectors.py [--calls N]``. Trees measured: a scaled big node (8 NICs, 8 IB ports,
built by bench/scaled_tree.py), gpud's real 8xH100 /sys/class/infiniband, node_exporter's fixtures and this
machine's /proc and /sys. The peer figure is node_exporter's own per-collector scrape duration (wall time,
median of 50 scrapes) on the scaled tree, when ``prometheus-node-exporter`` is installed.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agent.collectors.infiniband import InfinibandCollector, InfinibandConfig
from agent.collectors.netstat import NetstatCollector, NetstatConfig
from agent.collectors.network import NetworkCollector, NetworkConfig
from agent.core.errors import CollectorError, NoData
from agent.core.paths import Paths
from bench.scaled_tree import FIXTURES, build_scaled_tree

COLLECTORS = (
    (NetworkCollector, NetworkConfig),
    (NetstatCollector, NetstatConfig),
    (InfinibandCollector, InfinibandConfig),
)


def cpu_per_call(collector, calls: int) -> tuple[float, int] | None:
    """Mean CPU seconds per collect() and the sample count; None when the collector has no data or fails."""
    try:
        n = len(list(collector.collect()))
    except (NoData, CollectorError):
        return None
    start = time.process_time()
    for _ in range(calls):
        collector.collect()
    return (time.process_time() - start) / calls, n


def measure(label: str, paths: Paths, calls: int) -> None:
    total, series = 0.0, 0
    for cls, cfg in COLLECTORS:
        result = cpu_per_call(cls(cfg(), paths), calls)
        if result is None:
            print(f"  {label:<28} {cls.NAME:<11} no data / error")
            continue
        cpu, n = result
        total, series = total + cpu, series + n
        print(f"  {label:<28} {cls.NAME:<11} {cpu * 1e6:8.1f} us CPU  {n:4d} series")
    print(f"  {label:<28} {'total':<11} {total * 1e6:8.1f} us CPU  {series:4d} series")


def node_exporter_durations(tree: Path, scrapes: int = 50) -> dict[str, float] | None:
    """Median per-collector scrape duration node_exporter reports for itself on ``tree``."""
    binary = shutil.which("prometheus-node-exporter") or shutil.which("node_exporter")
    if not binary:
        return None
    port = free_port()
    argv = [
        binary,
        f"--path.procfs={tree / 'proc'}",
        f"--path.sysfs={tree / 'sys'}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--collector.disable-defaults",
        "--collector.netdev",
        "--no-collector.netdev.netlink",
        "--collector.netclass",
        "--collector.netstat",
        "--collector.infiniband",
    ]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    durations: dict[str, list[float]] = {}
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read()
                break
            except OSError:
                if time.monotonic() > deadline:
                    return None
                time.sleep(0.05)
        for _ in range(scrapes):
            body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
            for name, value in re.findall(r'node_scrape_collector_duration_seconds\{collector="(\w+)"\} (\S+)', body):
                durations.setdefault(name, []).append(float(value))
    finally:
        proc.terminate()
        proc.wait(timeout=5)
    return {name: statistics.median(values) for name, values in durations.items()}


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=1000)
    args = parser.parse_args()
    print(f"CPU per collect(), mean of {args.calls} calls (time.process_time)")
    with tempfile.TemporaryDirectory(prefix="nodewarden-bench-") as tmp:
        tree = build_scaled_tree(Path(tmp) / "scaled", disks=16, nics=8, ib_ports=8)
        measure("scaled: 8 NICs + 8 IB ports", Paths(procfs=str(tree / "proc"), sysfs=str(tree / "sys")), args.calls)

        h100 = Path(tmp) / "h100"
        (h100 / "class").mkdir(parents=True)
        os.symlink(FIXTURES / "gpud" / "sys-class-infiniband-h100.0", h100 / "class" / "infiniband")
        measure("gpud 8xH100 IB tree", Paths(procfs=str(tree / "proc"), sysfs=str(h100)), args.calls)

        ne = FIXTURES / "node_exporter"
        measure("node_exporter fixtures", Paths(procfs=str(ne / "proc"), sysfs=str(ne / "sys")), args.calls)
        measure("this machine", Paths(), args.calls)

        peer = node_exporter_durations(tree)
        if peer is None:
            print("node_exporter: not installed, no peer figures")
        else:
            print("node_exporter on the scaled tree, median scrape duration per collector (wall time):")
            for name in sorted(peer):
                print(f"  {name:<11} {peer[name] * 1e6:8.1f} us")
            print(f"  {'total':<11} {sum(peer.values()) * 1e6:8.1f} us")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
