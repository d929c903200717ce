"""Fleet benchmark: N simulated agents scraped by one real Prometheus (file_sd), beside N node_exporters.

Each agent is a real ``nodewarden run --simulate h100-healthy`` (8 simulated H100s, the scaled fixture tree:
16 disks, 8 NICs, 8 IB ports; default rules and policy, observe mode). One Prometheus scrapes them through a
file_sd target file. Measured over the same window: the agents' total CPU (cores) and RSS, and what the
agents cost Prometheus (CPU, RSS above its idle baseline, head series, samples appended per second), per
agent. The peer, in the same run: the same number of node_exporters on the same tree, scraped by a fresh
Prometheus the same way. Last, a 1,000-node extrapolation (per-agent cost x 1,000; Prometheus grows
linearly in series and samples/s at a fixed scrape interval).

    .venv/bin/python bench/fleet.py [--agents 20] [--interval 5] [--warmup 30] [--measure 60] [--no-peer]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.run import cpu_seconds, rss_mb  # noqa: E402
from bench.scaled_tree import build_scaled_tree  # noqa: E402

IB_SOURCE = REPO.parent / "shared" / "fixtures" / "gpud" / "sys-class-infiniband-h100.0"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout: float = 120.0) -> None:
    end = time.monotonic() + timeout
    while True:
        try:
            urllib.request.urlopen(url, timeout=2).close()
            return
        except OSError:
            if time.monotonic() > end:
                raise
            time.sleep(0.3)


def start_agents(n: int, tree: Path, work: Path, interval: int) -> list[tuple[subprocess.Popen, int]]:
    (work / "dev").mkdir(exist_ok=True)
    out = []
    for i in range(n):
        d = work / f"agent{i:03d}"
        d.mkdir()
        port = free_port()
        cfg = {"interval": f"{interval}s", "hostname": f"node{i:03d}", "log": {"level": "warning"},
               "paths": {"procfs": str(tree / "proc"), "sysfs": str(tree / "sys"), "devfs": str(work / "dev")},
               "collectors": {"gpu": {"enabled": True, "kmsg": False}}}
        (d / "config.yml").write_text(json.dumps(cfg))   # JSON is YAML
        cmd = [sys.executable, "-m", "agent.cli", "run", "--listen", f"127.0.0.1:{port}", "--state-dir",
               str(d / "state"), "--config", str(d / "config.yml"), "--simulate", "h100-healthy"]
        with open(d / "log", "wb") as log:      # the child keeps its own copy of the descriptor
            proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=log)
        out.append((proc, port))
    for _, port in out:
        wait_http(f"http://127.0.0.1:{port}/healthz")
    return out


def start_node_exporters(n: int, tree: Path) -> list[tuple[subprocess.Popen, int]]:
    exe = shutil.which("prometheus-node-exporter") or shutil.which("node_exporter")
    if not exe:
        return []
    out = []
    for _ in range(n):
        port = free_port()
        proc = subprocess.Popen([exe, f"--web.listen-address=127.0.0.1:{port}", f"--path.procfs={tree / 'proc'}",
                                 f"--path.sysfs={tree / 'sys'}", f"--path.rootfs={tree}"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        out.append((proc, port))
    for _, port in out:
        wait_http(f"http://127.0.0.1:{port}/metrics")
    return out


class Prometheus:
    """A real Prometheus scraping the targets listed in a file_sd file."""

    def __init__(self, work: Path, interval: int) -> None:
        self.work = work
        work.mkdir()
        self.targets = work / "targets.json"
        self.targets.write_text("[]")
        (work / "prometheus.yml").write_text(json.dumps({
            "global": {"scrape_interval": f"{interval}s", "scrape_timeout": f"{max(1, interval - 1)}s"},
            "scrape_configs": [{"job_name": "fleet", "file_sd_configs": [
                {"files": [str(self.targets)], "refresh_interval": "5s"}]}]}))
        self.port = free_port()
        with open(work / "log", "wb") as log:
            self.proc = subprocess.Popen([shutil.which("prometheus") or "prometheus",
                                          f"--config.file={work / 'prometheus.yml'}",
                                          f"--storage.tsdb.path={work / 'data'}",
                                          f"--web.listen-address=127.0.0.1:{self.port}"],
                                         stdout=subprocess.DEVNULL, stderr=log)
        wait_http(f"http://127.0.0.1:{self.port}/-/ready")

    def scrape_targets(self, ports: list[int]) -> None:
        self.targets.write_text(json.dumps([{"targets": [f"127.0.0.1:{p}" for p in ports]}]))

    def query(self, expr: str) -> float:
        url = f"http://127.0.0.1:{self.port}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
        with urllib.request.urlopen(url, timeout=10) as resp:
            result = json.load(resp)["data"]["result"]
        return float(result[0]["value"][1]) if result else float("nan")

    def own(self, name: str) -> float:
        """One of Prometheus' own metrics (summed over its label sets), read from its /metrics."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=10) as resp:
            values = [float(line.rsplit(" ", 1)[1]) for line in resp.read().decode().splitlines()
                      if line.startswith((name + " ", name + "{"))]
        return sum(values) if values else float("nan")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)


def measure(kind: str, targets: list[tuple[subprocess.Popen, int]], work: Path, interval: int, warmup: float,
            window: float) -> dict[str, float]:
    """One Prometheus: idle baseline, then the targets; what they cost it and what they cost themselves."""
    prom = Prometheus(work / f"prom-{kind}", interval)
    try:
        time.sleep(10)
        base_rss = rss_mb(prom.proc.pid)
        c0 = cpu_seconds(prom.proc.pid)
        time.sleep(10)
        base_cpu = (cpu_seconds(prom.proc.pid) - c0) / 10
        prom.scrape_targets([p for _, p in targets])
        end = time.monotonic() + 60
        while prom.query('count(up{job="fleet"} == 1)') != len(targets):
            if time.monotonic() > end:
                raise RuntimeError(f"{kind}: not every target is up")
            time.sleep(1)
        time.sleep(warmup)
        pids = [p.pid for p, _ in targets]
        a0, p0, t0 = sum(cpu_seconds(p) for p in pids), cpu_seconds(prom.proc.pid), time.monotonic()
        s0 = prom.own("prometheus_tsdb_head_samples_appended_total")
        time.sleep(window)
        dt = time.monotonic() - t0
        agents_cpu = (sum(cpu_seconds(p) for p in pids) - a0) / dt
        prom_cpu = (cpu_seconds(prom.proc.pid) - p0) / dt - base_cpu
        samples_s = (prom.own("prometheus_tsdb_head_samples_appended_total") - s0) / dt
        n = len(targets)
        series = prom.own("prometheus_tsdb_head_series")
        scrape_ms = prom.query('avg(scrape_duration_seconds{job="fleet"})') * 1000
        rss = rss_mb(prom.proc.pid) - base_rss
        return {
            "targets": n,
            "target_cpu_cores_total": round(agents_cpu, 3),
            "target_cpu_cores_per_target": round(agents_cpu / n, 4),
            "target_rss_mb_total": round(sum(rss_mb(p) for p in pids), 1),
            "target_rss_mb_per_target": round(sum(rss_mb(p) for p in pids) / n, 1),
            "series_per_target": round(series / n),
            "scrape_ms_avg": round(scrape_ms, 1),
            "prometheus_samples_per_s_per_target": round(samples_s / n, 1),
            "prometheus_cpu_millicores_per_target": round(1000 * prom_cpu / n, 2),
            "prometheus_rss_mb_per_target": round(rss / n, 2),
        }
    finally:
        prom.stop()


def extrapolate(m: dict[str, float], nodes: int = 1000) -> dict[str, float]:
    """Per-target costs x ``nodes`` (Prometheus ingestion is linear in targets at a fixed interval)."""
    return {
        "nodes": nodes,
        "prometheus_series": round(m["series_per_target"] * nodes),
        "prometheus_samples_per_s": round(m["prometheus_samples_per_s_per_target"] * nodes),
        "prometheus_cpu_cores": round(m["prometheus_cpu_millicores_per_target"] * nodes / 1000, 2),
        "prometheus_rss_gb": round(m["prometheus_rss_mb_per_target"] * nodes / 1024, 2),
        "per_node_cpu_cores": m["target_cpu_cores_per_target"],
        "per_node_rss_mb": m["target_rss_mb_per_target"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--agents", type=int, default=20)
    ap.add_argument("--interval", type=int, default=5, help="agent tick and Prometheus scrape interval (s)")
    ap.add_argument("--warmup", type=float, default=30.0)
    ap.add_argument("--measure", type=float, default=60.0)
    ap.add_argument("--no-peer", action="store_true", help="skip the node_exporter run")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="nw-fleet-bench-"))
    tree = build_scaled_tree(work / "tree", ib_source=IB_SOURCE if IB_SOURCE.is_dir() else None)
    out: dict[str, object] = {"agents": args.agents, "interval_s": args.interval, "cpus": os.cpu_count()}
    procs: list[tuple[subprocess.Popen, int]] = []
    try:
        procs = start_agents(args.agents, tree, work, args.interval)
        out["nodewarden"] = measure("nodewarden", procs, work, args.interval, args.warmup, args.measure)
        for p, _ in procs:
            p.terminate()
        for p, _ in procs:
            p.wait(30)
        procs = []
        if not args.no_peer:
            procs = start_node_exporters(args.agents, tree)
            if procs:
                out["node_exporter"] = measure("node_exporter", procs, work, args.interval, args.warmup,
                                               args.measure)
        nw = out["nodewarden"]
        out["extrapolated_1000_nodes"] = extrapolate(nw)  # type: ignore[arg-type]
        peer = out.get("node_exporter")
        if isinstance(peer, dict):
            out["extrapolated_1000_nodes_node_exporter"] = extrapolate(peer)
            out["ratio_nodewarden_to_node_exporter"] = {
                k: round(nw[k] / peer[k], 2) for k in nw if k != "targets" and peer.get(k)}  # type: ignore[index]
    finally:
        for p, _ in procs:
            p.terminate()
            p.wait(30)
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
