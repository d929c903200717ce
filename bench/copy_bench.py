"""Safe-copy throughput vs ``cp``, and scrubber hash throughput vs ``b3sum`` / ``sha256sum``, in one run.

    python bench/copy_bench.py [--dir /tmp] [--large-mb 512] [--small 2000] [--repeat 3]

Two data sets in a temp dir under ``--dir``: *large* (files of 64 MB) and *small* (32 KB files). Each copy
method copies the whole set into a fresh directory on the same filesystem, alternating methods, ``--repeat``
times (median reported). Sources are in the page cache for every method (warm). Peers:

- ``cp -a``: coreutils (copy_file_range; no fsync, no verification);
- ``cp -a`` + ``sync -f``: the same, then the filesystem flushed, so the data is on disk as ours is;
- safecopy: read + blake3 + write (small files) or copy_file_range + blake3 (big ones), re-read verification,
  metadata, no-replace rename, directory fsyncs, four step-log records per file; per batch (group commit): two
  /proc scans for writers, one syncfs, one step-log fdatasync per step.

The scrubber (``remediations.scrub.Scrubber``, unthrottled, one thread) hashes the large set against its
manifest; peers: ``b3sum --num-threads 1``, ``b3sum`` (all cores), ``sha256sum``. Prints JSON; copy methods also
report ``cpu_s`` (user + system CPU seconds, median), steadier than wall time on a machine shared with other jobs.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from remediations.manifest import create, write
from remediations.safecopy import Move, SafeMover, StepLog
from remediations.scrub import Scrubber


@dataclass
class _Dataset:
    name: str
    root: str
    manifest: str


def make(root: Path, n: int, size: int) -> int:
    """``n`` files of ``size`` random bytes in 16 directories; total bytes."""
    chunk = os.urandom(min(size, 1 << 20))
    for i in range(n):
        d = root / f"d{i % 16}"
        d.mkdir(parents=True, exist_ok=True)
        with open(d / f"f{i:05d}", "wb") as f:
            left = size
            while left:
                f.write(chunk[:min(left, len(chunk))])
                left -= min(left, len(chunk))
    return n * size


def files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


def run_cp(src: Path, dst: Path, sync: bool) -> None:
    subprocess.run(["cp", "-a", str(src), str(dst)], check=True, timeout=600)
    if sync:
        subprocess.run(["sync", "-f", str(dst)], check=True, timeout=600)


def run_safecopy(src: Path, dst: Path, state: Path) -> None:
    mover = SafeMover(StepLog(str(state / "bench.steps")))     # the real /proc scan for writers, per batch
    moves = []
    for d, dirs, names in os.walk(src):     # one listing and one mkdir per directory, like cp -a
        dirs.sort()
        out = os.path.join(dst, os.path.relpath(d, src))
        os.makedirs(out, exist_ok=True)
        moves += [Move(os.path.join(d, n), os.path.join(out, n), after="keep") for n in sorted(names)]
    try:
        for res in mover.move_many(moves):
            if res.status != "done":
                raise SystemExit(f"safecopy failed: {res}")
    finally:
        mover.close()


def _cpu() -> float:
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def timed(fn: Callable[[], None], cpu: list[float] | None = None) -> float:
    """Wall seconds of ``fn``; its CPU seconds (user + system, this process and its children) go to ``cpu``."""
    subprocess.run(["sync"], check=True, timeout=600)   # start each method with no dirty pages of the last
    c0, t0 = _cpu(), time.perf_counter()
    fn()
    t = time.perf_counter() - t0
    if cpu is not None:
        cpu.append(_cpu() - c0)
    return t


def copy_bench(src: Path, work: Path, total: int, repeat: int) -> dict[str, dict[str, float]]:
    times: dict[str, list[float]] = {"cp": [], "cp+sync": [], "safecopy": []}
    cpus: dict[str, list[float]] = {name: [] for name in times}
    for r in range(repeat):
        for name in (list(times) if r % 2 == 0 else list(reversed(times))):
            dst = work / f"{name}-{r}"
            state = work / f"state-{name}-{r}"
            state.mkdir()
            if name == "safecopy":
                times[name].append(timed(lambda d=dst, s=state: run_safecopy(src, d, s), cpus[name]))
            else:
                times[name].append(timed(lambda d=dst, n=name: run_cp(src, d, n == "cp+sync"), cpus[name]))
            shutil.rmtree(dst)
            shutil.rmtree(state)
    out = {}
    for name, ts in times.items():
        med = statistics.median(ts)
        out[name] = {"seconds": round(med, 3), "MB_s": round(total / med / 1e6, 1),
                     "cpu_s": round(statistics.median(cpus[name]), 3)}
    for peer in ("cp", "cp+sync"):
        out["safecopy"][f"vs_{peer}"] = round(out["cp" if peer == "cp" else "cp+sync"]["seconds"]
                                              / out["safecopy"]["seconds"], 2)
    return out


def hash_bench(src: Path, total: int, repeat: int) -> dict[str, dict[str, float]]:
    manifest = src.parent / f"{src.name}.manifest"
    write(str(manifest), create(str(src)))
    ds = _Dataset("bench", str(src), str(manifest))
    paths = [str(p) for p in files(src)]
    peers: dict[str, Callable[[], None]] = {
        "scrubber": lambda: _check_scrub(Scrubber(ds).run()),
        "scrubber_2threads": lambda: _check_scrub(Scrubber(ds, threads=2).run()),
        "b3sum_1thread": lambda: subprocess.run(["b3sum", "--num-threads", "1", *paths], check=True,
                                                stdout=subprocess.DEVNULL, timeout=600),
        "b3sum": lambda: subprocess.run(["b3sum", *paths], check=True, stdout=subprocess.DEVNULL, timeout=600),
        "sha256sum": lambda: subprocess.run(["sha256sum", *paths], check=True, stdout=subprocess.DEVNULL,
                                            timeout=600),
    }
    if not shutil.which("b3sum"):
        del peers["b3sum_1thread"], peers["b3sum"]
    out = {}
    for name, fn in peers.items():
        ts = [timed(fn) for _ in range(repeat)]
        med = statistics.median(ts)
        out[name] = {"seconds": round(med, 3), "MB_s": round(total / med / 1e6, 1)}
    return out


def _check_scrub(res) -> None:
    if res.missing or res.corrupt:
        raise SystemExit(f"scrub found damage in the bench data: {res.counts()}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", default=tempfile.gettempdir(), help="where to put the data (one filesystem)")
    ap.add_argument("--large-mb", type=int, default=512, help="size of the large set (64 MB files)")
    ap.add_argument("--small", type=int, default=2000, help="number of 32 KB files in the small set")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="nw-copy-bench-") as tmp:
        work = Path(tmp)
        large_total = make(work / "large", max(1, args.large_mb // 64), 64 << 20)
        small_total = make(work / "small", args.small, 32 << 10)
        result = {
            "filesystem": subprocess.run(["stat", "-f", "-c", "%T", tmp], capture_output=True, text=True,
                                         timeout=30).stdout.strip(),
            "large": {"files": max(1, args.large_mb // 64), "bytes": large_total,
                      **copy_bench(work / "large", work, large_total, args.repeat)},
            "small": {"files": args.small, "bytes": small_total,
                      **copy_bench(work / "small", work, small_total, args.repeat)},
            "hash": {"bytes": large_total, **hash_bench(work / "large", large_total, args.repeat)},
        }
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
