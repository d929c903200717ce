"""Cost of the host collectors (issue 14): per-collector CPU, tick CPU and scrape figures before/after, beside
node_exporter on the same tree, in one run.

    .venv/bin/python bench/host_collectors.py [--ticks 300] [--scrapes 300]

The tree is bench/scaled_tree.py's big node (16 disks, 8 NICs, 8 IB ports) with node_exporter's own host
fixtures laid over it (/proc stat, meminfo, loadavg, pressure, vmstat, cpuinfo, net/snmp6; /sys cpu, hwmon,
thermal, edac, nvme, powercap, clocksource, with the fixture's symlinks restored). "before" is the collector
set and settings main had (disk, filesystem, network without netclass attributes, netstat with two fields,
infiniband); "after" is every collector with its defaults. Each configuration runs in a fresh process.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.run import bench_node_exporter, cpu_seconds, rss_mb, scrape  # noqa: E402
from bench.scaled_tree import build_scaled_tree  # noqa: E402

FIXTURES = Path(os.environ.get("NODEWARDEN_FIXTURES", REPO.parent / "shared" / "fixtures")) / "node_exporter"
OLD = ("disk", "filesystem", "network", "netstat", "infiniband")
PROC_FILES = ("stat", "meminfo", "loadavg", "vmstat", "cpuinfo", "pressure", "net/snmp6")
SYS_DIRS = ("devices", "class/hwmon", "class/thermal", "class/nvme", "class/powercap")


def overlay_host_fixtures(root: Path) -> None:
    """Lay node_exporter's host fixtures over the scaled tree (links restored, see tests/nefixture.py)."""
    from tests.nefixture import relink

    for name in PROC_FILES:
        src, dst = FIXTURES / "proc" / name, root / "proc" / name
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            shutil.copytree(src, dst, dirs_exist_ok=True)
        else:
            shutil.copyfile(src, dst)
    for name in SYS_DIRS:
        shutil.copytree(FIXTURES / "sys" / name, root / "sys" / name, dirs_exist_ok=True, symlinks=True)
    for d, _, files in os.walk(root / "sys"):
        os.chmod(d, 0o755)
        for f in files:
            p = Path(d) / f
            if not p.is_symlink():
                os.chmod(p, 0o644)
    relink(root / "sys")


def run_child(root: Path, mode: str, ticks: int, scrapes: int) -> dict[str, float]:
    from agent.core import logs
    from agent.core.config import config_model
    from agent.core.discovery import discover
    from agent.daemon import Daemon
    from agent.serve.web import Server

    logs.setup("error", "json", sys.stderr)
    collectors: dict[str, dict] = {"gpu": {"enabled": False}}
    if mode == "before":
        collectors |= {n: {"enabled": False} for n in discover("nodewarden.collectors") if n not in OLD}
        collectors |= {"network": {"netclass_attributes": False}, "netstat": {"fields": "^Tcp_(RetransSegs|OutSegs)$"}}
    cfg = config_model().model_validate({
        "interval": "1s", "retention": "15m", "rule_files": [], "state_dir": str(root / f"state-{mode}"),
        "paths": {"procfs": str(root / "proc"), "sysfs": str(root / "sys"), "rootfs": str(root),
                  "devfs": str(root / "dev")},
        "collectors": collectors,
    })
    clock = [time.time()]
    daemon = Daemon(cfg, wall=lambda: clock[0])
    cpu = []
    for _ in range(ticks):
        clock[0] += 1.0
        t0 = time.process_time()
        daemon.tick()
        cpu.append(time.process_time() - t0)
    per = {}
    for r in daemon.components.runners:
        t0 = time.process_time()
        for _ in range(200):
            list(r.collector.collect())
        per[r.name] = (time.process_time() - t0) / 200 * 1000
    server = Server("127.0.0.1", 0, daemon.routes(), gzip_body=daemon.exporter.gzipped)
    server.start()
    c0 = cpu_seconds(os.getpid())
    s = scrape(f"http://127.0.0.1:{server.port}/metrics", scrapes)
    s["cpu_ms_per_scrape"] = (cpu_seconds(os.getpid()) - c0) / scrapes * 1000
    server.stop()
    for r in daemon.components.runners:
        r.close()
    cpu.sort()
    s |= {"tick_cpu_ms_p50": cpu[len(cpu) // 2] * 1000, "tick_cpu_ms_p99": cpu[int(len(cpu) * 0.99) - 1] * 1000,
          "rss_mb": rss_mb(), "store_series": daemon.store.series_count()}
    s |= {f"collect_ms[{k}]": v for k, v in sorted(per.items())}
    return s


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--ticks", type=int, default=300)
    ap.add_argument("--scrapes", type=int, default=300)
    ap.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(run_child(Path(args.child[0]), args.child[1], args.ticks, args.scrapes)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        build_scaled_tree(root, disks=16, nics=8, ib_ports=8)
        overlay_host_fixtures(root)
        (root / "dev").mkdir()
        (root / "dev" / "kmsg").write_text((FIXTURES.parent / "gpud" / "kmsg.1.log").read_text().rstrip() + "\n")
        ne = bench_node_exporter(root, args.scrapes) or {}
        res = {}
        for mode in ("before", "after"):
            out = subprocess.run([sys.executable, __file__, "--child", str(root), mode, "--ticks", str(args.ticks),
                                  "--scrapes", str(args.scrapes)], capture_output=True, text=True, check=True,
                                 timeout=1200)
            res[mode] = json.loads(out.stdout.strip().splitlines()[-1])
    b, a = res["before"], res["after"]
    print(f"scaled node + node_exporter host fixtures; {args.ticks} ticks; {args.scrapes} scrapes")
    print(f"{'':28}{'before':>10}{'after':>10}{'node_exporter':>15}{'ne/after':>10}")
    for key in ("series", "p50_ms", "p99_ms", "cpu_ms_per_scrape", "rss_mb", "tick_cpu_ms_p50", "tick_cpu_ms_p99"):
        x, y, z = b.get(key), a.get(key), ne.get(key)
        ratio = f"{z / y:.1f}x" if (y and z) else "-"
        zs = f"{z:.3f}" if z is not None else "-"
        print(f"{key:28}{x:>10.3f}{y:>10.3f}{zs:>15}{ratio:>10}")
    for key, v in a.items():
        if key.startswith("collect_ms"):
            print(f"{key:28}{b.get(key, float('nan')):>10.3f}{v:>10.3f}")


if __name__ == "__main__":
    main()
