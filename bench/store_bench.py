"""History store memory on realistic data: the whole agent runs the simulator's node-healthy scenario (8 GPUs,
224 CPUs, disks, NICs, IB, noisy values) at 1 s ticks for 15 min, then the compressed store is set beside what the
uncompressed ring store it replaced held for the same series (8 bytes a retained tick + bookkeeping), and the chunk
codec is timed on the store's own chunks.

    .venv/bin/python bench/store_bench.py [--seconds 900] [--interval 1]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from agent.commands.simulate import _load, run_scenario  # noqa: E402
from agent.engine.store import decode_chunk, encode_chunk  # noqa: E402


def codec_us(chunk: int) -> tuple[float, float]:
    """Microseconds to encode and decode one chunk of a counter with irregular increments."""
    from array import array

    vals = array("d", [1e12 + sum((k * 7919) % 1000003 for k in range(i)) for i in range(chunk)])
    n = 2000
    t0 = time.perf_counter()
    for _ in range(n):
        data = encode_chunk(vals)
    t1 = time.perf_counter()
    for _ in range(n):
        decode_chunk(data, chunk)
    t2 = time.perf_counter()
    return (t1 - t0) / n * 1e6, (t2 - t1) / n * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seconds", type=float, default=900.0)
    ap.add_argument("--interval", type=float, default=1.0)
    ap.add_argument("--scenario", default="node-healthy")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        report = run_scenario(_load(args.scenario), tmp, interval=args.interval, duration=args.seconds)
    st = report.store
    cap = st["capacity"]
    plain = st["series"] * (8 * cap + 480) + 8 * cap  # the ring store before compression: Store.nbytes() then
    retained = st["series"] * min(cap, report.ticks)
    enc, dec = codec_us(st["chunk"])
    print(f"{args.scenario}: {report.ticks} ticks of {args.interval:g} s, {st['series']} series, "
          f"ring capacity {cap} ticks, {report.wall_s:.1f} s wall")
    print(f"{'':34}{'compressed':>12}{'plain ring':>12}{'ratio':>8}")
    print(f"{'store bytes (MiB)':34}{st['bytes'] / 2**20:>12.2f}{plain / 2**20:>12.2f}{plain / st['bytes']:>7.1f}x")
    print(f"{'bytes per retained sample':34}{st['bytes'] / retained:>12.2f}{plain / retained:>12.2f}")
    print(f"closed chunks {st['chunks']} holding {st['chunk_bytes'] / 2**20:.2f} MiB "
          f"({st['chunk_bytes'] / max(1, st['chunks']):.0f} B each); rings decoded for readers: {st['rings']}")
    print(f"codec per chunk: encode {enc:.1f} us, decode {dec:.1f} us")


if __name__ == "__main__":
    main()
