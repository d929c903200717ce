"""Where the agent's memory goes: RSS after each import and build step in a fresh interpreter, then with 15 min of
1 s history at 2,000 series, beside the running agent (`nodewarden run`) and node_exporter, in the same run.

    .venv/bin/python bench/rss_breakdown.py [--ticks 900] [--series 2000]
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

# In the order the daemon pulls them in; each figure is the growth over everything before it.
STEPS = ["structlog", "pydantic", "promql_parser", "importlib.metadata", "sqlite3",
         "apscheduler.schedulers.background", "psutil", "agent.core.config",
         "agent.engine.rules", "agent.remediation.remediator", "agent.serve.web", "agent.daemon"]


def rss_mb(pid: int | str = "self") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def child(root: Path, ticks: int, series: int) -> list[tuple[str, float]]:
    out = [("interpreter", rss_mb())]
    for mod in STEPS:
        importlib.import_module(mod)
        out.append((f"import {mod}", rss_mb()))
    from agent.core import logs
    from agent.core.config import Config
    from agent.daemon import Daemon, build_collectors
    from bench.run import PadCollector

    logs.setup("error", "json", sys.stderr)
    cfg = Config.model_validate({"interval": "1s", "retention": "15m", "collectors": {"gpu": {"enabled": False}},
                                 "paths": {"procfs": str(root / "proc"), "sysfs": str(root / "sys"),
                                           "rootfs": str(root)}})
    pad = [0]
    clock = [time.time()]

    def factory(c: Config):
        built, failed = build_collectors(c)
        return ([*built, PadCollector(pad[0])] if pad[0] else built), failed

    daemon = Daemon(cfg, wall=lambda: clock[0], collector_factory=factory)
    out.append(("Daemon built (default rules + policy, routed plugins)", rss_mb()))
    clock[0] += 1
    daemon.tick()
    out.append((f"first tick ({daemon.store.series_count()} series)", rss_mb()))
    pad[0] = max(0, series - daemon.store.series_count())
    daemon.components = daemon._build(cfg)
    for _ in range(ticks):
        clock[0] += 1
        daemon.tick()
    st = daemon.store.stats()
    out.append((f"{ticks} ticks, {daemon.store.series_count()} series (store {daemon.store.nbytes() / 2**20:.1f} MiB, "
                f"{st['rings']} rings decoded, chunks {st['chunk_bytes'] / 2**20:.2f} MiB)",
                rss_mb()))
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_metrics(url: str, proc: subprocess.Popen, timeout: float = 30) -> bool:
    import urllib.request  # not at the top: it pulls in ssl and email, which would count as "interpreter"

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return True
        except OSError:
            time.sleep(0.2)
    return False


def running_agent(root: Path, tmp: Path, seconds: float) -> float | None:
    """RSS of a real `nodewarden run` (default rules and policy, scaled tree) after ``seconds`` of ticks."""
    port = free_port()
    cfg = tmp / "config.yml"
    cfg.write_text(json.dumps({"interval": "1s", "collectors": {"gpu": {"enabled": False}},
                               "rule_files": [str(REPO / "rules" / f) for f in ("gpu.yml", "network.yml",
                                                                                "storage.yml")],
                               "remediation_policy": str(REPO / "rules" / "remediations.yml"),
                               "paths": {"procfs": str(root / "proc"), "sysfs": str(root / "sys"),
                                         "rootfs": str(root)}}))
    proc = subprocess.Popen([sys.executable, "-m", "agent.cli", "run", "--config", str(cfg), "--listen",
                             f"127.0.0.1:{port}", "--state-dir", str(tmp / "state"), "--log-level", "error"],
                            cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        if not wait_metrics(f"http://127.0.0.1:{port}/metrics", proc):
            return None
        time.sleep(seconds)
        return rss_mb(proc.pid)
    finally:
        proc.terminate()
        proc.wait(10)


def node_exporter(root: Path) -> float | None:
    exe = shutil.which("prometheus-node-exporter") or shutil.which("node_exporter")
    if not exe:
        return None
    port = free_port()
    proc = subprocess.Popen([exe, f"--web.listen-address=127.0.0.1:{port}", f"--path.procfs={root / 'proc'}",
                             f"--path.sysfs={root / 'sys'}", f"--path.rootfs={root}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        if not wait_metrics(f"http://127.0.0.1:{port}/metrics", proc):
            return None
        import urllib.request

        for _ in range(20):
            urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read()
        return rss_mb(proc.pid)
    finally:
        proc.terminate()
        proc.wait(10)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--ticks", type=int, default=900)
    ap.add_argument("--series", type=int, default=2000)
    ap.add_argument("--agent-seconds", type=float, default=30.0)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(Path(args.child), args.ticks, args.series)))
        return
    from bench.scaled_tree import build_scaled_tree

    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        root = tmp / "tree"
        build_scaled_tree(root, disks=16, nics=8, ib_ports=8)
        out = subprocess.run([sys.executable, __file__, "--child", str(root), "--ticks", str(args.ticks),
                              "--series", str(args.series)], capture_output=True, text=True, check=True,
                             timeout=1800, cwd=REPO, env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})
        steps = json.loads(out.stdout.strip().splitlines()[-1])
        agent = running_agent(root, tmp, args.agent_seconds)
        ne = node_exporter(root)
    print(f"{'step':72}{'RSS MB':>8}{'+MB':>7}")
    prev = 0.0
    for name, mb in steps:
        print(f"{name:72}{mb:>8.1f}{mb - prev:>+7.1f}")
        prev = mb
    print(f"{'nodewarden run (default rules and policy), after ' + str(args.agent_seconds) + ' s':72}"
          f"{agent if agent is not None else float('nan'):>8.1f}")
    print(f"{'prometheus-node-exporter, same tree, after 20 scrapes':72}{ne if ne is not None else float('nan'):>8.1f}")


if __name__ == "__main__":
    main()
