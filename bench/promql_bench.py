"""Rule-evaluation cost of agent.engine.promql: N alert-style expressions over M series with 15 min of 1 s history.

    python bench/promql_bench.py                       # 50/500/5000 rules x 2,000/20,000 series
    python bench/promql_bench.py --rules 500 --series 2000 --history 900

Series come in families of 16 (``device`` d0..d15, like disks/NICs/GPUs of one node), half counters, half
gauges. Rule i uses template i % 10 (the shapes of the default rule library) on family i % families.
Times are CPU time of this process (``time.process_time``), so other load on the machine does not inflate
them. Prints per configuration: one evaluation of every rule (ms per tick), the per-rule mean, the first
(cold-cache) pass, and a per-template breakdown, which is the cost model: cost ~ sum over rules of
(selected series x (c_series + c_point x points in the window)).
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

from agent.core.metrics import Sample
from agent.engine.promql import compile_expr
from agent.engine.store import Store

FAMILY = 16
TEMPLATES = [
    ("rate>", "rate(bench_counter_{f}_total[5m]) > 1000"),
    ("increase regex", 'increase(bench_counter_{f}_total{{device=~"d1.*"}}[5m]) > 0'),
    ("ratio group_left", "bench_gauge_{f} / on(device) group_left bench_gauge_{g} > 0.9"),
    ("avg_over_time", "avg_over_time(bench_gauge_{f}[5m]) > 85"),
    ("predict_linear", "predict_linear(bench_gauge_{f}[10m], 4 * 3600) < 0"),
    ("absent", 'absent(bench_gauge_{f}{{device="d0"}})'),
    ("sum by rate", "sum by (instance) (rate(bench_counter_{f}_total[5m])) > 1e9"),
    ("max-min_over_time", "max_over_time(bench_gauge_{f}[10m]) - min_over_time(bench_gauge_{f}[10m]) > 50"),
    ("threshold", "bench_gauge_{f} > 90"),
    ("irate", "irate(bench_counter_{f}_total[1m]) > 1e6"),
]


def build_store(n_series: int, history: int, step: float = 1.0) -> Store:
    """A store with ``n_series`` series sampled every ``step`` seconds for ``history`` seconds."""
    families = max(1, n_series // FAMILY)
    store = Store(retention=history, interval=step)
    series = []
    for f in range(families):
        kind = "counter" if f % 2 == 0 else "gauge"
        name = f"bench_counter_{f // 2}_total" if kind == "counter" else f"bench_gauge_{f // 2}"
        for d in range(FAMILY):
            series.append((name, (("device", f"d{d}"), ("instance", "node-1")), kind, f * FAMILY + d))
    t0 = 1_700_000_000.0
    for k in range(int(history / step) + 1):
        store.begin_tick(t0 + k * step)
        store.add(
            [
                Sample(name, labels, k * (1 + i % 7) if kind == "counter" else 50 + 40 * math.sin(k / 60 + i))
                for name, labels, kind, i in series
            ]
        )
    return store


SHAPES_242 = [  # constructs added with the whole 2.42 language (issue 13), each over one 16-series family
    ("subquery rate 10m:1m", "max_over_time(rate(bench_counter_{f}_total[5m])[10m:1m]) > 1000"),
    ("subquery gauge 10m:30s", "avg_over_time(bench_gauge_{f}[10m:30s]) > 85"),
    ("nested subquery", "max_over_time(max_over_time(bench_gauge_{f}[2m:10s])[10m:1m]) > 85"),
    ("@ end() rate", "rate(bench_counter_{f}_total[5m] @ end()) > 1000"),
    (
        "histogram_quantile",
        'histogram_quantile(0.9, label_replace(rate(bench_counter_{f}_total[5m]), "le", "$1", "device", "d(.*)"))',
    ),
    ("holt_winters 10m", "holt_winters(bench_gauge_{f}[10m], 0.3, 0.6) > 85"),
    ("sin + day_of_week", "sin(bench_gauge_{f}) + day_of_week()"),
]


def run_shapes(n_series: int, history: int, step: float, repeat: int) -> None:
    """us per evaluation of each 2.42 shape, next to the plain 5 m rate it is built on."""
    store = build_store(n_series, history, step)
    now = store.now
    shapes = [("rate 5m (reference)", "rate(bench_counter_{f}_total[5m]) > 1000"), *SHAPES_242]
    print(f"2.42 shapes over 16 series ({n_series} in the store, {history} s of {step:g} s history):")
    for label, template in shapes:
        q = compile_expr(template.format(f=0))
        q.eval(store, now)
        samples = []
        for _ in range(max(3, repeat)):
            t = time.process_time()
            q.eval(store, now)
            samples.append(time.process_time() - t)
        print(f"        {label:<24} {statistics.median(samples) * 1e6:9.1f} us/rule")


def rules(n_rules: int, n_series: int) -> list[tuple[str, str]]:
    pairs = max(1, n_series // FAMILY // 2)  # counter/gauge family pairs
    out = []
    for i in range(n_rules):
        label, template = TEMPLATES[i % len(TEMPLATES)]
        f = (i // len(TEMPLATES)) % pairs
        out.append((label, template.format(f=f, g=(f + 1) % pairs)))
    return out


def run(n_rules: int, n_series: int, history: int, repeat: int, step: float) -> None:
    t_build = time.process_time()
    store = build_store(n_series, history, step)
    t_build = time.process_time() - t_build
    exprs = rules(n_rules, n_series)
    queries = [(label, compile_expr(text)) for label, text in exprs]
    now = store.now
    per_template: dict[str, list[float]] = {label: [] for label, _ in TEMPLATES}
    t = time.process_time()
    for _, q in queries:
        q.eval(store, now)
    cold = time.process_time() - t
    totals = []
    for _ in range(repeat):
        start = time.process_time()
        for label, q in queries:
            t = time.process_time()
            q.eval(store, now)
            per_template[label].append(time.process_time() - t)
        totals.append(time.process_time() - start)
    total = statistics.median(totals)
    print(
        f"{n_rules:>5} rules x {n_series:>6} series ({history} s of {step:g} s history; built in {t_build:.1f} s): "
        f"{total * 1e3:8.1f} ms CPU per evaluation of all rules, {total / n_rules * 1e6:6.1f} us/rule "
        f"(cold first pass {cold * 1e3:.1f} ms)"
    )
    peer = PlainStore(store)
    start = time.process_time()
    for _, q in queries:
        q.eval(peer, now)
    plain = time.process_time() - start
    for label, samples in per_template.items():
        if samples:
            print(f"        {label:<20} {statistics.mean(samples) * 1e6:8.1f} us/rule")
    print(
        f"        peer: the same rules through Store's plain reading API only (no ring slices, no selection cache): "
        f"{plain * 1e3:.1f} ms ({plain / total:.1f}x)"
    )


class PlainStore:
    """The store behind only its documented per-series reading API (instant, points, family, by_name)."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self.by_name = store.by_name
        self.family = store.family
        self.points = store.points
        self.instant = store.instant


_NODE = [  # (metric-name prefix, base label sets): a big node of 8 GPUs, 16 disks and filesystems, 8 NICs, 8 IB ports
    (("nodewarden_gpu", "DCGM_", "gpu_xid:"), [{"gpu": str(i), "UUID": f"GPU-{i:04d}"} for i in range(8)]),
    (("node_disk_",), [{"device": f"nvme{i}n1"} for i in range(16)]),
    (
        ("node_filesystem_",),
        [{"device": f"/dev/nvme{i}n1", "mountpoint": f"/mnt/d{i}", "fstype": "ext4"} for i in range(16)],
    ),
    (("node_network_",), [{"device": f"eth{i}"} for i in range(8)]),
    (("node_infiniband_",), [{"device": f"mlx5_{i}", "port": "1"} for i in range(8)]),
]


def library_store(exprs: list[str], history: int, step: float) -> Store:
    """Series for every selector of ``exprs`` on a big node: label sets by metric prefix, times the
    alternatives of the selector's ``=`` / ``=~`` matchers (so every rule selects data)."""
    wanted: dict[str, list[dict[str, str]]] = {}
    for text in exprs:
        for sel in compile_expr(text).selectors:
            if sel.name is None:
                continue
            base = next((sets for prefixes, sets in _NODE if sel.name.startswith(prefixes)), [{}])
            for label, op, value in sel.matchers:
                if op in ("=", "=~") and label != "__name__":
                    base = [{**b, label: alt} for b in base for alt in value.split("|")]
            wanted.setdefault(sel.name, []).extend(base)
    series = []
    for name, sets in wanted.items():
        seen = {tuple(sorted(s.items())) for s in sets}
        series.extend((name, labels, i) for i, labels in enumerate(sorted(seen)))
    store = Store(retention=history, interval=step)
    t0 = 1_700_000_000.0
    for k in range(int(history / step) + 1):
        store.begin_tick(t0 + k * step)
        store.add(
            [
                Sample(name, labels, k * step * (i + 1) if name.endswith("_total") else 1.0 + (k + i) % 3)
                for name, labels, i in series
            ]
        )
    return store


def run_library(paths: list[str], history: int, step: float, repeat: int) -> None:
    """Evaluate every rule expression of rule files ``paths`` once per tick on a big synthetic node."""
    import yaml

    exprs = []
    for path in paths:
        with open(path) as fh:
            for group in yaml.safe_load(fh)["groups"]:
                exprs.extend(rule["expr"] for rule in group["rules"])
    store = library_store(exprs, history, step)
    queries = [compile_expr(e) for e in exprs]
    now = store.now
    totals = []
    for _ in range(repeat + 1):
        start = time.process_time()
        for q in queries:
            q.eval(store, now)
        totals.append(time.process_time() - start)
    cold, warm = totals[0], statistics.median(totals[1:])
    print(
        f"rule library: {len(exprs)} rules over {store.series_count()} series ({history} s of {step:g} s history): "
        f"{warm * 1e3:.2f} ms CPU per tick (cold first pass {cold * 1e3:.2f} ms)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rules", default="50,500,5000")
    parser.add_argument("--series", default="2000,20000")
    parser.add_argument("--history", type=int, default=900)
    parser.add_argument("--step", type=float, default=1.0, help="sampling interval in seconds")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--library", nargs="*", help="rule files: time their expressions on a big node instead")
    parser.add_argument("--shapes", action="store_true", help="time the 2.42 shapes (subqueries, @, ...) instead")
    args = parser.parse_args()
    if args.shapes:
        run_shapes(int(args.series.split(",")[0]), args.history, args.step, args.repeat)
        return
    if args.library:
        run_library(args.library, args.history, args.step, max(1, args.repeat))
        return
    for n_series in (int(x) for x in args.series.split(",")):
        for n_rules in (int(x) for x in args.rules.split(",")):
            run(n_rules, n_series, args.history, args.repeat, args.step)


if __name__ == "__main__":
    main()
