"""``migrate``: move hot and cold data between storage tiers through the safe-copy core.

Tiers are declared in the plugin's settings (``plugins.migrate`` in the policy file)::

    plugins:
      migrate:
        state_dir: /var/lib/nodewarden
        rate_mb_s: 200
        tiers:
          fast:     {path: /mnt/nvme, high: 0.90, low: 0.75}
          capacity: {path: /mnt/hdd,  high: 0.95, low: 0.85}

A file keeps its path relative to its tier root (``/mnt/nvme/ckpt/a.pt`` <-> ``/mnt/hdd/ckpt/a.pt``).
Actions (``params.action``):

- ``demote``: when the source tier's filesystem is above ``low`` (used fraction), move its coldest files
  (atime; mtime where the filesystem is mounted ``noatime``; ``include``/``exclude`` globs) to the other tier
  until it would be at ``low``; leave a symlink at the old path (``leave: symlink``) or nothing (``none``).
- ``promote``: move the named ``paths`` (relative to the tier roots, or absolute) from the capacity tier to
  the fast one, or with ``top: N`` the N most recently read files (atime) under the capacity tier's
  ``promote_root``; replaces the symlink a demotion left. Stops short of the fast tier's ``high`` mark.
- ``evacuate``: move every file off a tier (a failing device) to another; not reversible.

Files open for writing are skipped (and reported); the copy is bandwidth-limited (``rate_mb_s``).
"""

from __future__ import annotations

import errno
import fnmatch
import os
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from agent.core.alerts import Alert
from agent.core.errors import RemediationError
from agent.core.metrics import MetricSpec, Sample
from agent.core.plugin import Entry, Outcome, ParamsModel, Plan
from remediations.safecopy import (
    TMP_PREFIX,
    CanChown,
    Move,
    SafeMover,
    StepLog,
    Writers,
    can_chown,
    check_owners,
    make_parents,
)

NAME = "migrate"
LOG_NAME = "migrate.steps"
MAX_CHANGES = 20

METRICS = [
    MetricSpec("nodewarden_migrate_bytes_total", "counter", "Bytes copied by the migrate plugin (verified).",
               ("source", "destination")),
    MetricSpec("nodewarden_migrate_files_total", "counter", "Files handled by the migrate plugin.",
               ("source", "destination", "result")),
]


class Tier(ParamsModel):
    """One storage tier: a directory tree on one filesystem, with used-space watermarks (fractions)."""

    path: str
    high: float = Field(0.90, gt=0, le=1)
    low: float = Field(0.80, gt=0, le=1)
    promote_root: str | None = Field(None, description="promote top-N picks under here (relative to path)")

    @model_validator(mode="after")
    def _marks(self) -> Tier:
        if self.low > self.high:
            raise ValueError("low watermark must not exceed high")
        if not os.path.isabs(self.path):
            raise ValueError("tier path must be absolute")
        return self


class Config(ParamsModel):
    """The plugin's section of the policy's ``plugins:``."""

    tiers: dict[str, Tier] = Field(default_factory=dict)
    fast: str = Field("fast", description="name of the fast tier (promote target, demote source)")
    capacity: str = Field("capacity", description="name of the capacity tier")
    state_dir: str = Field("var", description="where the step log lives")
    rate_mb_s: float | None = Field(200.0, gt=0, description="default bandwidth limit")
    leave: Literal["symlink", "none"] = "symlink"
    include: tuple[str, ...] = ("*",)
    exclude: tuple[str, ...] = ()


def _split(v: Any) -> Any:
    if isinstance(v, str):
        return tuple(p.strip() for p in v.split(",") if p.strip())
    return v


class Params(ParamsModel):
    """A step's params (templated from an alert's labels, so lists may be comma-separated strings)."""

    action: Literal["demote", "promote", "evacuate"] = "demote"
    tier: str | None = Field(None, description="source tier (default: fast for demote, capacity for promote)")
    to: str | None = Field(None, description="destination tier (default: the other one)")
    paths: tuple[str, ...] = Field((), description="promote: these files or directories")
    top: int = Field(0, ge=0, description="promote: the N most recently read files under promote_root")
    include: tuple[str, ...] | None = None
    exclude: tuple[str, ...] | None = None
    low: float | None = Field(None, gt=0, le=1, description="demote until this used fraction (default: tier's)")
    leave: Literal["symlink", "none"] | None = None
    rate_mb_s: float | None = Field(None, gt=0)
    max_files: int = Field(20_000, gt=0, description="at most this many files per action (the plan lists them)")

    @field_validator("paths", "include", "exclude", mode="before")
    @classmethod
    def _lists(cls, v: Any) -> Any:
        return _split(v)


@dataclass(frozen=True, slots=True)
class Candidate:
    """A file that could move: path relative to the tier root, size, and its heat (access time)."""

    rel: str
    size: int
    heat: float


# ------------------------------------------------------------------ pure selection

def matches(rel: str, include: tuple[str, ...], exclude: tuple[str, ...]) -> bool:
    """Glob filter on a relative path (``*`` crosses directories, as with fnmatch)."""
    return any(fnmatch.fnmatchcase(rel, p) for p in include) and not any(fnmatch.fnmatchcase(rel, p) for p in exclude)


def bytes_to_free(total: int, avail: int, low: float) -> int:
    """Bytes to move off a filesystem of ``total`` bytes with ``avail`` free to get its used fraction to ``low``."""
    used = total - avail
    return max(0, used - int(low * total))


def pick_coldest(cands: list[Candidate], need: int, max_files: int) -> list[Candidate]:
    """Coldest first until ``need`` bytes are covered (ties: larger first, then path)."""
    out, got = [], 0
    for c in sorted(cands, key=lambda c: (c.heat, -c.size, c.rel)):
        if got >= need or len(out) >= max_files:
            break
        out.append(c)
        got += c.size
    return out


def pick_hottest(cands: list[Candidate], top: int, room: int) -> list[Candidate]:
    """The ``top`` hottest that fit in ``room`` bytes."""
    out, used = [], 0
    for c in sorted(cands, key=lambda c: (-c.heat, c.rel)):
        if len(out) >= top:
            break
        if used + c.size > room:
            continue
        out.append(c)
        used += c.size
    return out


# ------------------------------------------------------------------ the plugin

class Migrate:
    """The plugin (see module docstring)."""

    NAME = NAME
    Params = Params
    Config = Config
    metrics = METRICS

    def __init__(self, config: Config, writers: Writers | None = None,
                 progress: Callable[[int, int], None] | None = None, state_dir: str | None = None,
                 statvfs: Callable[[str], os.statvfs_result] = os.statvfs, chown_probe: CanChown = can_chown,
                 **_: Any) -> None:
        self.name = NAME
        self.chown_probe = chown_probe      # may this process give a copy the source's owner
        self.config = config
        self.state_dir = state_dir or config.state_dir
        self.writers = writers
        self.progress = progress            # (bytes done, bytes total) of the running apply
        self.statvfs = statvfs
        self._lock = threading.Lock()
        self._bytes: dict[tuple[str, str], float] = {}
        self._files: dict[tuple[str, str, str], float] = {}

    # ---------------------------------------------------------- plan (pure: reads, never writes)

    def _tier(self, name: str) -> Tier:
        tier = self.config.tiers.get(name)
        if tier is None:
            raise RemediationError(f"unknown tier {name!r} (configured: {', '.join(self.config.tiers) or 'none'})")
        return tier

    def plan(self, alert: Alert | None, params: Params) -> Plan:
        """Which files would move where; raises RemediationError for unknown tiers or bad paths."""
        default_src = self.config.capacity if params.action == "promote" else self.config.fast
        src_name = params.tier or default_src
        dst_name = params.to or (self.config.fast if src_name == self.config.capacity else self.config.capacity)
        if src_name == dst_name:
            raise RemediationError("source and destination tier are the same")
        src, dst = self._tier(src_name), self._tier(dst_name)
        include = params.include if params.include is not None else self.config.include
        exclude = params.exclude if params.exclude is not None else self.config.exclude
        leave = params.leave or self.config.leave
        noatime = _noatime(self.statvfs(src.path))
        note = ""
        if params.action == "demote":
            fs = self.statvfs(src.path)
            low = params.low or src.low
            need = bytes_to_free(fs.f_blocks * fs.f_frsize, fs.f_bavail * fs.f_frsize, low)
            cands = list(scan(src.path, include, exclude, noatime))
            chosen = pick_coldest(cands, need, params.max_files)
            note = f"{src_name} is {_used(fs):.0%} used; free {_gb(need)} to reach {low:.0%}"
            after = "symlink" if leave == "symlink" else "unlink"
        elif params.action == "promote":
            if params.paths:
                chosen = list(_named(src.path, params.paths, include, exclude, noatime))[:params.max_files]
            elif params.top:
                root = os.path.join(src.path, src.promote_root or "")
                prefix = os.path.relpath(root, src.path)
                cands = [Candidate(c.rel if prefix == "." else os.path.join(prefix, c.rel), c.size, c.heat)
                         for c in scan(root, include, exclude, noatime)]
                fs = self.statvfs(dst.path)
                room = max(0, int(dst.high * fs.f_blocks * fs.f_frsize) - (fs.f_blocks - fs.f_bavail) * fs.f_frsize)
                chosen = pick_hottest(cands, params.top, room)
            else:
                raise RemediationError("promote needs paths=... or top=N")
            after = "unlink"
        else:
            chosen = list(scan(src.path, include, exclude, noatime))[:params.max_files]
            after = "symlink" if leave == "symlink" else "unlink"
        total = sum(c.size for c in chosen)
        dfs = self.statvfs(dst.path)
        if total > dfs.f_bavail * dfs.f_frsize:
            raise RemediationError(f"{dst_name} has {_gb(dfs.f_bavail * dfs.f_frsize)} free, "
                                   f"the move needs {_gb(total)}")
        moves = [[os.path.join(src.path, c.rel), os.path.join(dst.path, c.rel), c.size] for c in chosen]
        self._check_owners([m[0] for m in moves])   # refused (journaled: refused:ownership) unless kept
        changes = [f"{params.action} {len(moves)} files ({_gb(total)}) {src_name} ({src.path}) -> "
                   f"{dst_name} ({dst.path}); {'leave symlinks' if after == 'symlink' else 'leave nothing'}"]
        if note:
            changes.append(note)
        changes += [f"{m[0]} -> {m[1]}" for m in moves[:MAX_CHANGES]]
        if len(moves) > MAX_CHANGES:
            changes.append(f"... and {len(moves) - MAX_CHANGES} more")
        data = {**params.model_dump(mode="json"), "src_tier": src_name, "dst_tier": dst_name, "after": after,
                "rate_mb_s": params.rate_mb_s or self.config.rate_mb_s, "moves": moves, "bytes": total}
        return Plan(action=NAME, target=f"tier/{src_name}->{dst_name}", params=data, changes=changes,
                    reversible=params.action != "evacuate", scope="local", noop=not moves)

    # ---------------------------------------------------------- apply / verify / revert / recover

    def _mover(self, rate: float | None, progress: Callable[[int], None] | None) -> SafeMover:
        log = StepLog(os.path.join(self.state_dir, LOG_NAME))
        return SafeMover(log, rate_mb_s=rate, writers=self.writers, progress=progress)

    def _run(self, moves: list[tuple[str, str, str, bool]], rate: float | None, labels: tuple[str, str]) -> Outcome:
        """Move each (src, dst, after, replace_link) not yet moved; stop on ENOSPC; raise when any failed."""
        total = sum(_size(s) for s, d, _, _ in moves if not _settled(s, d))
        done = [0]

        def tick(n: int) -> None:
            done[0] += n
            with self._lock:
                self._bytes[labels] = self._bytes.get(labels, 0.0) + n
            if self.progress is not None:
                self.progress(done[0], total)

        self._check_owners([s for s, d, _, _ in moves if not _settled(s, d)])
        counts = {"done": 0, "already": 0, "skipped": 0, "failed": 0}
        problems: list[str] = []
        moved: list[list[str]] = []
        mover = self._mover(rate, tick)
        try:
            mover.recover()   # never start over an interrupted operation
            todo = []
            for src, dst, after, replace_link in moves:
                if _settled(src, dst):
                    counts["already"] += 1
                    moved.append([src, dst])
                else:
                    todo.append(Move(src, dst, after=after, replace_link=replace_link))  # type: ignore[arg-type]

            def parents_made() -> Iterator[Move]:
                for mv in todo:
                    make_parents(mv.src, mv.dst)
                    yield mv

            for res in mover.move_many(parents_made()):
                key = res.status if res.status in counts else "failed"
                counts[key] += 1
                with self._lock:
                    fk = (*labels, key)
                    self._files[fk] = self._files.get(fk, 0.0) + 1
                if res.status == "done":
                    moved.append([res.src, res.dst])
                else:
                    problems.append(f"{res.src}: {res.status}: {res.reason}")
                    if res.errno == errno.ENOSPC:   # every further copy would fail too
                        break
        finally:
            mover.close()
        out = (f"moved {counts['done']} files ({_gb(done[0])}), already moved {counts['already']}, "
               f"skipped {counts['skipped']}, failed {counts['failed']}")
        if problems:
            out += "\n" + "\n".join(problems[:50])
        if counts["failed"]:
            raise RemediationError(out)
        return Outcome(output=out, undo={"moved": moved})

    def _check_owners(self, sources: list[str]) -> None:
        """OwnershipRefused unless every source (and its directory) could keep its owner when copied."""
        check_owners([*sources, *{os.path.dirname(s) for s in sources}], self.chown_probe)

    def apply(self, plan: Plan) -> Outcome:
        """Move the planned files (idempotent: files already moved are counted, not copied again)."""
        p = plan.params
        moves = [(s, d, p["after"], True) for s, d, _ in p["moves"]]
        return self._run(moves, p.get("rate_mb_s"), (p["src_tier"], p["dst_tier"]))

    def verify(self, plan: Plan) -> bool:
        """Every planned file has moved, or is gone (deleted by its owner)."""
        return all(_settled(s, d) or (not os.path.lexists(s) and not os.path.lexists(d))
                   for s, d, _ in plan.params["moves"])

    def revert(self, plan: Plan) -> Outcome:
        """Move the moved files back (replacing the symlinks left behind). Idempotent."""
        p = plan.params
        back = [(d, s, "unlink", True) for s, d, _ in p["moves"] if _settled(s, d)]
        return self._run(back, p.get("rate_mb_s"), (p["dst_tier"], p["src_tier"]))

    def recover(self, entry: Entry) -> str:
        """Settle the interrupted file operation (step log), then finish the rest (apply) or the revert."""
        plan = entry.get_plan()
        if entry.op == "revert":
            self.revert(plan)
            return "reverted"
        try:
            self.apply(plan)
        except RemediationError:
            return "failed"
        return "succeeded"

    def samples(self) -> list[Sample]:
        """``nodewarden_migrate_bytes_total`` / ``_files_total`` of this process."""
        with self._lock:
            out = [Sample("nodewarden_migrate_bytes_total", (("source", s), ("destination", d)), v)
                   for (s, d), v in sorted(self._bytes.items())]
            out += [Sample("nodewarden_migrate_files_total", (("source", s), ("destination", d), ("result", r)), v)
                    for (s, d, r), v in sorted(self._files.items())]
        return out


# ------------------------------------------------------------------ filesystem helpers

def scan(root: str, include: tuple[str, ...], exclude: tuple[str, ...], noatime: bool = False) -> Iterator[Candidate]:
    """Regular single-link files under ``root`` passing the globs (symlinks and our temp files skipped)."""
    stack = [root]
    while stack:
        top = stack.pop()
        try:
            it = os.scandir(top)
        except OSError:
            continue
        with it:
            for e in it:
                if e.name.startswith(TMP_PREFIX):
                    continue
                try:
                    if e.is_dir(follow_symlinks=False):
                        stack.append(e.path)
                        continue
                    if not e.is_file(follow_symlinks=False):
                        continue
                    st = e.stat(follow_symlinks=False)
                except OSError:
                    continue
                rel = os.path.relpath(e.path, root)
                if st.st_nlink == 1 and matches(rel, include, exclude):
                    yield Candidate(rel, st.st_size, st.st_mtime if noatime else max(st.st_atime, st.st_mtime))


def _named(root: str, paths: tuple[str, ...], include: tuple[str, ...], exclude: tuple[str, ...],
           noatime: bool) -> Iterator[Candidate]:
    real_root = os.path.realpath(root)
    for p in paths:
        full = os.path.realpath(p if os.path.isabs(p) else os.path.join(root, p))
        if os.path.commonpath([full, real_root]) != real_root:
            raise RemediationError(f"{p!r} is not under the tier root {root}")
        rel = os.path.relpath(full, real_root)
        if os.path.isdir(full):
            for c in scan(full, include, exclude, noatime):
                yield Candidate(os.path.normpath(os.path.join(rel, c.rel)), c.size, c.heat)
        elif os.path.isfile(full):
            st = os.stat(full)
            yield Candidate(rel, st.st_size, st.st_atime)


def _settled(src: str, dst: str) -> bool:
    """Moved already: dst is a regular file and src is gone or a symlink to dst."""
    if not os.path.isfile(dst) or os.path.islink(dst):
        return False
    if not os.path.lexists(src):
        return True
    return os.path.islink(src) and os.path.realpath(src) == os.path.realpath(dst)


def _size(path: str) -> int:
    try:
        return os.stat(path, follow_symlinks=False).st_size
    except OSError:
        return 0


def _noatime(fs: os.statvfs_result) -> bool:
    return bool(fs.f_flag & os.ST_NOATIME)


def _used(fs: os.statvfs_result) -> float:
    return 1 - fs.f_bavail / fs.f_blocks if fs.f_blocks else 0.0


def _gb(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1000:
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1000
    return f"{n:.1f} TB"
