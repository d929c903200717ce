"""``nodewarden check rules`` on a big valid rule file beside ``promtool check rules`` on the same file.

    python bench/check_rules_bench.py                 # 10 MB file, 3 alternating runs of each
    python bench/check_rules_bench.py --mb 1 --runs 5

The file (written to a temporary directory) is groups of 20 rules, alerting and recording, with selectors,
regex matchers, aggregations, ``for``, labels and templated annotations, the shape SREs write. Both tools run
as subprocesses, alternating, in the same run; each run reports wall time, CPU time (user + system) and peak
RSS. Printed: the medians and the ratios nodewarden / promtool. ``--no-catalogue`` leaves out nodewarden's
extra metric-catalogue warnings (promtool has none); the default run includes them.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def rule_file(path: Path, size: int) -> int:
    """Write a valid rule file of about ``size`` bytes; returns the number of rules."""
    out, total, g, n = ["groups:"], 0, 0, 0
    while total < size:
        lines = [f"- name: group_{g}", "  interval: 30s", "  rules:"]
        for r in range(20):
            if r % 2:
                lines += [f"  - alert: HighErrorRate_{g}_{r}",
                          f'    expr: sum by (instance, job) (rate(http_requests_total{{job="api-{r}",code=~"5.."}}'
                          f'[5m])) / sum by (instance, job) (rate(http_requests_total{{job="api-{r}"}}[5m])) > 0.05',
                          "    for: 10m", "    labels:", "      severity: page", f"      team: team-{g % 7}",
                          "    annotations:", "      summary: 'High error rate on {{ $labels.instance }}'",
                          "      description: 'Error rate is {{ $value | humanizePercentage }} for {{ $labels.job }}'"]
            else:
                lines += [f"  - record: job:http_requests:rate5m_{g}_{r}",
                          f'    expr: sum by (job) (rate(http_requests_total{{job=~"api-.*",instance!="x{r}"}}[5m]))',
                          "    labels:", f"      tier: t{r}"]
            n += 1
        block = "\n".join(lines)
        out.append(block)
        total += len(block) + 1
        g += 1
    path.write_text("\n".join(out) + "\n")
    return n


def measure(argv: list[str]) -> tuple[float, float, float, int]:
    """(wall s, CPU s user+system, peak RSS MB, exit code) of one child run (os.wait4: that child's own rusage)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, status, ru = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    return wall, ru.ru_utime + ru.ru_stime, ru.ru_maxrss / 1024, proc.returncode


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mb", type=float, default=10.0, help="rule file size in MB (default 10)")
    ap.add_argument("--runs", type=int, default=3, help="runs of each tool, alternating (default 3)")
    ap.add_argument("--no-catalogue", action="store_true", help="nodewarden without the catalogue warnings")
    args = ap.parse_args()
    promtool = shutil.which("promtool")
    if not promtool:
        print("promtool not found (apt-get install prometheus)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "big.rules.yml"
        n = rule_file(path, int(args.mb * 1e6))
        print(f"rule file: {path.stat().st_size / 1e6:.1f} MB, {n:,} rules; {args.runs} alternating runs each")
        ours = [sys.executable, "-m", "agent.cli", "check", "rules", *(["--no-catalogue"] if args.no_catalogue
                                                                       else []), str(path)]
        theirs = [promtool, "check", "rules", str(path)]
        results: dict[str, list[tuple[float, float, float, int]]] = {"nodewarden": [], "promtool": []}
        for _ in range(args.runs):
            for name, argv in (("promtool", theirs), ("nodewarden", ours)):
                results[name].append(measure(argv))
        env_ok = all(code == 0 for runs in results.values() for *_, code in runs)
        for name, runs in results.items():
            print(f"{name:10s}  wall {statistics.median(r[0] for r in runs):6.2f} s  "
                  f"cpu {statistics.median(r[1] for r in runs):6.2f} s  peak RSS {max(r[2] for r in runs):6.0f} MB  "
                  f"exit {[r[3] for r in runs]}")
        wall_ratio = statistics.median(r[0] for r in results["nodewarden"]) / statistics.median(
            r[0] for r in results["promtool"])
        cpu_ratio = statistics.median(r[1] for r in results["nodewarden"]) / statistics.median(
            r[1] for r in results["promtool"])
        print(f"ratio nodewarden/promtool: wall {wall_ratio:.2f}x, cpu {cpu_ratio:.2f}x "
              f"(target: within 3x); both valid: {env_ok}")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    os.chdir(REPO)
    raise SystemExit(main())
