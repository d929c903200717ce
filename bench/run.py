"""Backbone benchmark: CPU per tick, /metrics latency, RSS with 15 min of 1 s history — and node_exporter's
scrape figures on the same scaled fixture tree, in the same run.

    .venv/bin/python bench/run.py [--ticks 900] [--scrapes 500]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from agent.core.config import Config  # noqa: E402
from agent.core.errors import CollectorError, NoData  # noqa: E402
from agent.core.metrics import MetricSpec, Sample  # noqa: E402
from agent.daemon import Daemon, build_collectors  # noqa: E402
from agent.serve.web import Server  # noqa: E402
from bench.scaled_tree import build_scaled_tree  # noqa: E402


def rss_mb(pid: int | str = "self") -> float:
    """Resident set size in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def cpu_seconds(pid: int) -> float:
    """utime+stime of a process in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def scrape(url: str, n: int) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, str(REPO / "bench" / "scrape.py"), url, str(n)],
        capture_output=True,
        text=True,
        check=True,
        timeout=600,
    )
    return json.loads(out.stdout)


class PadCollector:
    """Synthetic GPU-like series that bring the node up to a target series count (values change every tick)."""

    name = "pad"

    def __init__(self, n: int) -> None:
        self.metrics = [MetricSpec("bench_pad_value", "gauge", "Synthetic padding series.", ("gpu", "field"))]
        self.labels = [(("gpu", str(i % 8)), ("field", f"f{i}")) for i in range(n)]
        self.k = 0

    def collect(self) -> list[Sample]:
        self.k += 1
        return [Sample("bench_pad_value", lbl, float(self.k + i)) for i, lbl in enumerate(self.labels)]


def bench_nodewarden(root: Path, ticks: int, scrapes: int, pad: int = 0) -> dict[str, float]:
    cfg = Config.model_validate(
        {
            "interval": "1s",
            "retention": "15m",
            "paths": {"procfs": str(root / "proc"), "sysfs": str(root / "sys"), "rootfs": str(root)},
            "collectors": {"gpu": {"enabled": False}},
        }
    )
    clock = [time.time()]

    def factory(c: Config):
        built, failed = build_collectors(c)
        return ([*built, PadCollector(pad)] if pad else built), failed

    daemon = Daemon(cfg, wall=lambda: clock[0], collector_factory=factory)
    cpu = []
    for _ in range(ticks):
        clock[0] += 1.0
        t0 = time.process_time()
        daemon.tick()
        cpu.append(time.process_time() - t0)
    per_collector = {}
    for r in daemon.components.runners:
        t0 = time.process_time()
        try:
            for _ in range(200):
                list(r.collector.collect())
        except (NoData, CollectorError):  # nothing of this kind on the tree (e.g. host files it lacks)
            continue
        per_collector[r.name] = (time.process_time() - t0) / 200 * 1000
    server = Server("127.0.0.1", 0, daemon.routes(), gzip_body=daemon.exporter.gzipped)
    server.start()
    pid = os.getpid()
    c0 = cpu_seconds(pid)
    s = scrape(f"http://127.0.0.1:{server.port}/metrics", scrapes)
    s["cpu_ms_per_scrape"] = (cpu_seconds(pid) - c0) / scrapes * 1000
    server.stop()
    cpu.sort()
    s.update(
        {
            "tick_cpu_ms_p50": cpu[len(cpu) // 2] * 1000,
            "tick_cpu_ms_mean": statistics.fmean(cpu) * 1000,
            "tick_cpu_ms_p99": cpu[int(len(cpu) * 0.99) - 1] * 1000,
            "rss_mb": rss_mb(),
            "store_series": daemon.store.series_count(),
            "store_mb": daemon.store.nbytes() / 2**20,
            "history_ticks": min(ticks, daemon.store.capacity),
        }
    )
    s.update({f"collect_cpu_ms[{k}]": v for k, v in per_collector.items()})
    return s


def bench_node_exporter(root: Path, scrapes: int) -> dict[str, float] | None:
    exe = shutil.which("prometheus-node-exporter") or shutil.which("node_exporter")
    if not exe:
        return None
    import socket

    with socket.socket() as sk:
        sk.bind(("127.0.0.1", 0))
        port = sk.getsockname()[1]
    proc = subprocess.Popen(
        [
            exe,
            f"--web.listen-address=127.0.0.1:{port}",
            f"--path.procfs={root / 'proc'}",
            f"--path.sysfs={root / 'sys'}",
            f"--path.rootfs={root}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                scrape(f"http://127.0.0.1:{port}/metrics", 1)
                break
            except subprocess.CalledProcessError:
                time.sleep(0.2)
        scrape(f"http://127.0.0.1:{port}/metrics", 20)  # warm up
        c0 = cpu_seconds(proc.pid)
        s = scrape(f"http://127.0.0.1:{port}/metrics", scrapes)
        s["cpu_ms_per_scrape"] = (cpu_seconds(proc.pid) - c0) / scrapes * 1000
        s["rss_mb"] = rss_mb(proc.pid)
        return s
    finally:
        proc.terminate()
        proc.wait(10)


def child(root: Path, args: argparse.Namespace, pad: int) -> dict[str, float]:
    """Run one nodewarden configuration in a fresh interpreter and return its figures."""
    out = subprocess.run(
        [
            sys.executable,
            __file__,
            "--child",
            str(root),
            "--pad",
            str(pad),
            "--ticks",
            str(args.ticks),
            "--scrapes",
            str(args.scrapes),
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=1200,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--ticks", type=int, default=900, help="ticks of 1 s history to fill (900 = 15 min)")
    ap.add_argument("--scrapes", type=int, default=500)
    ap.add_argument("--series", type=int, default=2000, help="second run: pad the store up to this many series")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--pad", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        from agent.core import logs

        logs.setup("error", "json", sys.stderr)
        print(json.dumps(bench_nodewarden(Path(args.child), args.ticks, args.scrapes, args.pad)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        build_scaled_tree(root, disks=16, nics=8, ib_ports=8)
        ne = bench_node_exporter(root, args.scrapes)
        nw = child(root, args, 0)  # each configuration in its own process: clean RSS
        big = child(root, args, max(0, args.series - int(nw["store_series"])))
    print(f"scaled node: 16 disks, 8 NICs, 8 IB ports; {args.ticks} ticks of 1 s history; {args.scrapes} scrapes")
    print(f"{'':30}{'nodewarden':>12}{'nw+padding':>12}{'node_exporter':>15}{'ne/nw':>8}{'ne/nw+pad':>10}")
    for key in (
        "series",
        "p50_ms",
        "p99_ms",
        "cpu_ms_per_scrape",
        "rss_mb",
        "tick_cpu_ms_p50",
        "tick_cpu_ms_p99",
        "store_mb",
    ):
        a, p = nw.get(key), big.get(key)
        b = ne.get(key) if ne else None
        r1 = f"{b / a:.1f}x" if (a and b) else "-"
        r2 = f"{b / p:.1f}x" if (p and b) else "-"
        bs = f"{b:.3f}" if b is not None else "-"
        print(f"{key:30}{a:>12.3f}{p:>12.3f}{bs:>15}{r1:>8}{r2:>10}")
    for key, v in nw.items():
        if key.startswith("collect_"):
            print(f"{key:30}{v:>12.3f}")
    if ne:
        print(f"scrape p99 target: <= 2 ms and <= node_exporter p50 / 6 = {ne['p50_ms'] / 6:.3f} ms")


if __name__ == "__main__":
    main()
