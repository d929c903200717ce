"""The integrity scrubber: verify a dataset's files against its manifest, throttled.

    result = Scrubber(dataset, rate_mb_s=50).run()
    result.counts()            # {"ok": 9998, "missing": 1, "corrupt": 1}
    integrity_samples(result)  # nodewarden_integrity_files{dataset,state}, ..._last_scrub_timestamp_seconds

The manifest is authoritative: a file is ``ok`` when its size and blake3 digest match it, ``missing`` when it
is absent (or not a regular file), ``corrupt`` otherwise. Files not in the manifest are ignored.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Protocol

from agent.core.metrics import MetricSpec, Sample
from remediations.manifest import ManifestEntry, load
from remediations.safecopy import CHUNK, Throttle
from remediations.safecopy.verify import hasher

STATES = ("ok", "missing", "corrupt")

METRICS = [
    MetricSpec("nodewarden_integrity_files", "gauge", "Files of a protected dataset by state at the last scrub.",
               ("dataset", "state")),
    MetricSpec("nodewarden_integrity_last_scrub_timestamp_seconds", "gauge",
               "When the last complete scrub of a dataset ended.", ("dataset",)),
]


class DatasetLike(Protocol):
    """What the scrubber needs of a dataset: a name, a root and a manifest file."""

    name: str
    root: str
    manifest: str


@dataclass
class ScrubResult:
    """Outcome of one scrub: per-state file lists (relative paths), bytes read, start and end times."""

    dataset: str
    ok: int = 0
    missing: list[str] = field(default_factory=list)
    corrupt: list[str] = field(default_factory=list)
    bytes: int = 0
    started: float = 0.0
    ended: float = 0.0

    def counts(self) -> dict[str, int]:
        """Files per state."""
        return {"ok": self.ok, "missing": len(self.missing), "corrupt": len(self.corrupt)}

    def damaged(self) -> list[tuple[str, str]]:
        """``(path, state)`` of every missing or corrupt file, sorted by path."""
        return sorted([(p, "missing") for p in self.missing] + [(p, "corrupt") for p in self.corrupt])


def check_file(root: str, entry: ManifestEntry, throttle: Throttle | None = None, buf: bytearray | None = None,
               threads: int = 1) -> tuple[str, int]:
    """``(state, bytes read)`` of one file against its manifest entry."""
    path = os.path.join(root, entry.path)
    try:
        st = os.stat(path, follow_symlinks=False)
    except OSError:
        return "missing", 0
    if not os.path.isfile(path) or os.path.islink(path):
        return "missing", 0
    if st.st_size != entry.size:
        return "corrupt", 0
    h = hasher(threads)
    buf = buf if buf is not None else bytearray(CHUNK)
    mv = memoryview(buf)
    done = 0
    try:
        flags = os.O_RDONLY | os.O_CLOEXEC
        try:
            fd = os.open(path, flags | os.O_NOATIME)
        except PermissionError:
            fd = os.open(path, flags)
    except OSError:
        return "missing", 0
    try:
        while True:
            n = os.readv(fd, [mv])
            if n == 0:
                break
            h.update(mv[:n])
            done += n
            if throttle is not None:
                throttle.consume(n)
    except OSError:
        return "corrupt", done   # EIO: the medium cannot give the data back
    finally:
        os.close(fd)
    return ("ok" if done == entry.size and h.hexdigest() == entry.hash else "corrupt"), done


class Scrubber:
    """Verifies one dataset against its manifest at most ``rate_mb_s`` (None: unthrottled)."""

    def __init__(self, dataset: DatasetLike, rate_mb_s: float | None = None, clock: Callable[[], float] = time.time,
                 sleep: Callable[[float], None] = time.sleep, threads: int = 1,
                 paths: Iterable[str] | None = None) -> None:
        self.dataset = dataset
        self.throttle = Throttle(rate_mb_s * 1e6 if rate_mb_s else None, time.monotonic, sleep)
        self.clock = clock
        self.threads = threads
        self.paths = list(paths) if paths is not None else None

    def run(self) -> ScrubResult:
        """Check every manifest entry (or only ``paths``); ManifestError when the manifest is unusable."""
        manifest = load(self.dataset.manifest)
        res = ScrubResult(self.dataset.name, started=self.clock())
        buf = bytearray(CHUNK)
        entries = manifest.values() if self.paths is None else [manifest[p] for p in self.paths if p in manifest]
        for entry in entries:
            state, n = check_file(self.dataset.root, entry, self.throttle, buf, self.threads)
            res.bytes += n
            if state == "ok":
                res.ok += 1
            else:
                (res.missing if state == "missing" else res.corrupt).append(entry.path)
        res.ended = self.clock()
        return res


def integrity_samples(result: ScrubResult) -> list[Sample]:
    """The gauges of :data:`METRICS` for one scrub result."""
    ds = ("dataset", result.dataset)
    out = [Sample("nodewarden_integrity_files", (ds, ("state", s)), float(n)) for s, n in result.counts().items()]
    out.append(Sample("nodewarden_integrity_last_scrub_timestamp_seconds", (ds,), result.ended))
    return out
