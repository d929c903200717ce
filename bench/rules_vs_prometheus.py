"""The default rule library in nodewarden and in a real Prometheus 2.42, over the same series, side by side.

    python bench/rules_vs_prometheus.py                 # 5 s sampling, 15 min of history, 60 s of evaluations
    python bench/rules_vs_prometheus.py --step 1 --seconds 120

Both sides hold the series of bench/rules_bench.py's big node (same names, labels and values) with
``--history`` seconds of samples every ``--step`` s: Prometheus gets the history backfilled
(``promtool tsdb create-blocks-from openmetrics``) and then scrapes a local exporter of the same series
every step, evaluating the same rule files every step; nodewarden's Store is filled the same way. Per rule
group, Prometheus' ``prometheus_rule_group_last_duration_seconds`` (read from its /metrics after every
evaluation) is set against nodewarden's per-group wall time in ``RuleEngine.evaluate()``; medians, and the
ratio nodewarden / Prometheus. Prometheus runs as a child process on 127.0.0.1 and is stopped at the end.
"""

from __future__ import annotations

import argparse
import collections
import json
import math
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from agent.core.config import DEFAULT_RULE_FILES  # noqa: E402
from agent.core.metrics import Sample  # noqa: E402
from agent.engine.rules import RuleEngine  # noqa: E402
from agent.engine.store import Store  # noqa: E402
from bench.rules_bench import node_series, value  # noqa: E402

JOB = "bench"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _labels(labels: tuple, extra: tuple = ()) -> str:
    items = [*labels, *extra]
    if not items:
        return ""
    return "{" + ",".join(f'{k}="{v}"' for k, v in items) + "}"


def _fmt(v: float) -> str:
    return repr(float(v)) if math.isfinite(v) else ("NaN" if v != v else ("+Inf" if v > 0 else "-Inf"))


def backfill_text(series: list[tuple[str, tuple, str]], instance: str, t0: float, step: float, n: int) -> str:
    """OpenMetrics text of ``n`` samples per series at ``t0 + k * step``, grouped by family as it requires."""
    extra = (("instance", instance), ("job", JOB))
    by_name: dict[str, list[tuple[int, tuple, str]]] = {}
    for i, (name, labels, kind) in enumerate(series):
        by_name.setdefault(name, []).append((i, labels, kind))
    out = []
    for name, members in by_name.items():
        for i, labels, kind in members:
            lab = _labels(labels, extra)
            out.extend(f"{name}{lab} {_fmt(value(name, labels, kind, k, i))} {t0 + k * step:.3f}" for k in range(n))
    out.append("# EOF")
    return "\n".join(out) + "\n"


class Exporter:
    """Serves the series' values at the current tick ``(now - t0) / step`` on 127.0.0.1."""

    def __init__(self, series: list[tuple[str, tuple, str]], t0: float, step: float) -> None:
        self.port = free_port()

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                k = int((time.time() - t0) / step)
                body = "".join(
                    f"{n}{_labels(lb)} {_fmt(value(n, lb, kind, k, i))}\n" for i, (n, lb, kind) in enumerate(series)
                ).encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


_DURATION = re.compile(r'^prometheus_rule_group_last_duration_seconds\{rule_group="[^"]*;([^"]*)"\} (\S+)$', re.M)
_EVALS = re.compile(
    r'^prometheus_rule_group_last_evaluation_timestamp_seconds\{rule_group="[^"]*;([^"]*)"\} (\S+)$', re.M
)


def _sanity(port: int, history: int) -> str:
    """What Prometheus saw: samples per series over the history, rule health, active alerts."""
    base = f"http://127.0.0.1:{port}/api/v1"
    query = urllib.parse.quote(f"avg(count_over_time(DCGM_FI_DEV_GPU_TEMP[{history}s]))")
    got = json.loads(urllib.request.urlopen(f"{base}/query?query={query}", timeout=10).read())
    per_series = got["data"]["result"][0]["value"][1] if got["data"]["result"] else "0"
    rules = json.loads(urllib.request.urlopen(f"{base}/rules", timeout=10).read())["data"]["groups"]
    health = {r["health"] for g in rules for r in g["rules"]}
    alerts = sum(len(r.get("alerts", [])) for g in rules for r in g["rules"])
    return f"Prometheus: {per_series} samples per series in {history}s, rule health {sorted(health)}, {alerts} alerts"


def prometheus_side(args: argparse.Namespace, series: list, rule_files: list[str]) -> dict[str, list[float]]:
    """Per group, the last_duration of every evaluation Prometheus made in ``--seconds`` (ms)."""
    prometheus, promtool = shutil.which("prometheus"), shutil.which("promtool")
    if not prometheus or not promtool:
        raise SystemExit("prometheus and promtool (2.42) are needed: apt-get install prometheus")
    step = args.step
    n = int(args.history / step)
    with tempfile.TemporaryDirectory(prefix="nw-prom-bench-") as tmp:
        t0 = math.floor(time.time() / step) * step - n * step  # history ends now
        exporter = Exporter(series, t0, step)
        instance = f"127.0.0.1:{exporter.port}"
        om = Path(tmp, "history.om")
        om.write_text(backfill_text(series, instance, t0, step, n))
        data = Path(tmp, "data")
        subprocess.run([promtool, "tsdb", "create-blocks-from", "openmetrics", str(om), str(data)],
                       check=True, capture_output=True, timeout=600)  # fmt: skip
        cfg = Path(tmp, "prometheus.yml")
        cfg.write_text(
            f"global: {{scrape_interval: {step:g}s, evaluation_interval: {step:g}s}}\n"
            f"rule_files: [{', '.join(repr(f) for f in rule_files)}]\n"
            f"scrape_configs:\n  - job_name: {JOB}\n    static_configs: [{{targets: ['{instance}']}}]\n"
        )
        port = free_port()
        proc = subprocess.Popen(
            [prometheus, f"--config.file={cfg}", f"--storage.tsdb.path={data}",
             f"--web.listen-address=127.0.0.1:{port}", "--storage.tsdb.retention.time=1d"],
            stdout=subprocess.DEVNULL, stderr=open(Path(tmp, "prometheus.log"), "w"),  # noqa: SIM115
        )  # fmt: skip
        durations: dict[str, list[float]] = {}
        last_eval: dict[str, str] = {}
        try:
            deadline = time.time() + args.seconds + 30
            started = None
            while time.time() < deadline:
                time.sleep(step / 4)
                try:
                    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
                except OSError:
                    continue
                evals = dict(_EVALS.findall(text))
                for group, seconds in _DURATION.findall(text):
                    stamp = evals.get(group)
                    if stamp in (None, "0") or last_eval.get(group) == stamp:
                        continue
                    last_eval[group] = stamp
                    if started is None:
                        started = time.time()
                    durations.setdefault(group, []).append(float(seconds) * 1000)
                if started is not None and time.time() - started > args.seconds:
                    break
            checks = _sanity(port, args.history)
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            exporter.close()
        if not durations:
            raise SystemExit("Prometheus evaluated no rule group: see its log (kept only while running)")
        print(checks)
        return {g: d[1:] or d for g, d in durations.items()}  # the first evaluation also warms caches


def nodewarden_side(args: argparse.Namespace, series: list, rule_files: list[str]) -> dict[str, list[float]]:
    """Per group, RuleEngine's wall time per evaluation over the same history (ms)."""
    step = args.step
    store = Store(retention=args.history, interval=step)
    engine = RuleEngine(None)
    engine.load(rule_files)
    t0 = 1_700_000_000.0
    n = int(args.history / step)

    def tick(k: int) -> None:
        store.begin_tick(t0 + k * step)
        store.add([Sample(name, lb, value(name, lb, kind, k, i)) for i, (name, lb, kind) in enumerate(series)])

    for k in range(n):
        tick(k)
        if k % max(1, round(15 / step)) == 0:
            engine.evaluate(store, t0 + k * step)
    durations: dict[str, list[float]] = {}
    for k in range(n, n + int(args.seconds / step)):
        tick(k)
        engine.evaluate(store, t0 + k * step)
        for gs in engine.groups:
            durations.setdefault(gs.group.name, []).append(gs.duration * 1000)
    _OUR_ALERTS.update(a.state for a in engine.alerts())
    return durations


_OUR_ALERTS: collections.Counter[str] = collections.Counter()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--step", type=float, default=5.0, help="sampling = scrape = evaluation interval (s)")
    ap.add_argument("--history", type=int, default=900, help="seconds of history on both sides (default 900)")
    ap.add_argument("--seconds", type=float, default=60.0, help="seconds of evaluations to measure")
    ap.add_argument("--scale", type=int, default=1, help="multiply device counts (default 1 = big node)")
    args = ap.parse_args()
    series = node_series(args.scale)
    rule_files = [str(REPO / f) for f in DEFAULT_RULE_FILES]
    ours = nodewarden_side(args, series, rule_files)
    theirs = prometheus_side(args, series, rule_files)
    print(f"series={len(series)} history={args.history}s step={args.step:g}s measured={args.seconds:g}s")
    print(f"  {'group':28s} {'nodewarden ms':>14s} {'Prometheus ms':>14s} {'ratio':>7s}  (evaluations)")
    total_ours = total_theirs = 0.0
    print(f"nodewarden: {sum(1 for _ in ours)} groups, alerts {_OUR_ALERTS}")
    for group in ours:
        mine = statistics.median(ours[group])
        if group not in theirs:
            print(f"  {group:28s} {mine:14.3f} {'-':>14s}")
            continue
        prom = statistics.median(theirs[group])
        total_ours, total_theirs = total_ours + mine, total_theirs + prom
        print(f"  {group:28s} {mine:14.3f} {prom:14.3f} {mine / prom:7.2f}  ({len(ours[group])}/{len(theirs[group])})")
    if total_theirs:
        print(f"  {'all groups':28s} {total_ours:14.3f} {total_theirs:14.3f} {total_ours / total_theirs:7.2f}")


if __name__ == "__main__":
    main()
