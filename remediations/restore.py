"""``restore``: repair a protected dataset's missing or corrupt files from replicas, the manifest deciding.

Settings (``plugins.restore`` in the policy file)::

    plugins:
      restore:
        state_dir: /var/lib/nodewarden
        rate_mb_s: 200
        scrub_interval: 6h        # background verification of every dataset (0: never); first one at start
        datasets:
          imagenet:
            root: /data/imagenet
            manifest: /data/imagenet/.nodewarden.manifest     # default: ROOT/.nodewarden.manifest
            quarantine: /data/imagenet/.nodewarden-quarantine # default
            replicas:                                         # tried in order
              - {type: local, path: /mnt/nfs/imagenet}
              - {type: local, path: /mnt/backup/imagenet}

``plan`` verifies the dataset (or ``paths``) against the manifest; ``apply`` fetches each missing or corrupt
file from the first replica whose copy has the manifest's size and blake3 digest (a replica that disagrees is
reported and never copied), through the safe-copy core. The damaged local copy is first linked into the
quarantine directory; nothing is deleted. Not reversible.

While the daemon runs, a background scrubber (one thread, :meth:`Restore.start`) verifies each dataset every
``scrub_interval`` at its ``scrub_rate_mb_s`` and exports ``nodewarden_integrity_files{dataset,state}``, so a
rule can fire on corrupt or missing files and a route can call ``restore``.

Replica sources are pluggable: a class with ``name`` and ``locate(rel) -> str | None`` (a local path holding
the replica's copy) registered in :data:`SOURCE_TYPES`; an object store would download into a staging file.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import Annotated, Any, Protocol

import structlog
from pydantic import BeforeValidator, ConfigDict, Field, field_validator, model_validator

from agent.core.alerts import Alert
from agent.core.durations import parse_duration
from agent.core.errors import NodewardenError, RemediationError
from agent.core.metrics import MetricSpec, Sample
from agent.core.plugin import Entry, Outcome, ParamsModel, Plan
from remediations.manifest import DEFAULT_NAME, check_rel, load
from remediations.safecopy import (
    CanChown,
    SafeMover,
    StepLog,
    Writers,
    can_chown,
    check_owners,
    hash_file,
    make_parents,
)
from remediations.scrub import METRICS as SCRUB_METRICS
from remediations.scrub import Scrubber, integrity_samples

log = structlog.get_logger("nodewarden.restore")

NAME = "restore"
LOG_NAME = "restore.steps"
QUARANTINE = ".nodewarden-quarantine"
MAX_CHANGES = 20

METRICS = [
    MetricSpec("nodewarden_restore_files_total", "counter", "Files handled by the restore plugin.",
               ("dataset", "result")),
    MetricSpec("nodewarden_restore_replica_mismatch_total", "counter",
               "Replica copies that disagreed with the manifest (never used).", ("dataset", "replica")),
    MetricSpec("nodewarden_integrity_scrub_errors_total", "counter",
               "Scrubs that could not run (e.g. unreadable manifest).", ("dataset",)),
    *SCRUB_METRICS,
]


class Source(Protocol):
    """A replica source."""

    name: str

    def locate(self, rel: str) -> str | None:
        """A local, readable path holding this replica's copy of ``rel``; None when it has none."""
        ...


class LocalSource:
    """A replica in a local directory (or a mounted NFS export)."""

    def __init__(self, path: str, name: str | None = None) -> None:
        self.root = path
        self.name = name or path

    def locate(self, rel: str) -> str | None:
        """``root/rel`` when it is a regular file."""
        p = os.path.join(self.root, check_rel(rel))
        return p if os.path.isfile(p) else None


SOURCE_TYPES: dict[str, Callable[..., Source]] = {"local": LocalSource}


class Replica(ParamsModel):
    """One replica source: its type (a key of SOURCE_TYPES) and the type's settings.

    The one settings model that allows unknown keys: they are the source type's own settings, passed to its
    constructor (an unknown one fails there, naming the type)."""

    model_config = ConfigDict(frozen=True, extra="allow")
    type: str = "local"
    name: str | None = None

    @field_validator("type")
    @classmethod
    def _type(cls, v: str) -> str:
        if v not in SOURCE_TYPES:
            raise ValueError(f"unknown replica type {v!r} (known: {', '.join(SOURCE_TYPES)})")
        return v

    def build(self) -> Source:
        """Construct the source."""
        return SOURCE_TYPES[self.type](name=self.name, **(self.model_extra or {}))


class Dataset(ParamsModel):
    """A protected dataset."""

    name: str = ""
    root: str
    manifest: str = ""
    quarantine: str = ""
    replicas: list[Replica] = Field(default_factory=list)
    scrub_rate_mb_s: float | None = Field(50.0, gt=0)

    @model_validator(mode="after")
    def _defaults(self) -> Dataset:
        if not os.path.isabs(self.root):
            raise ValueError("dataset root must be absolute")
        if not self.manifest:
            object.__setattr__(self, "manifest", os.path.join(self.root, DEFAULT_NAME))
        if not self.quarantine:
            object.__setattr__(self, "quarantine", os.path.join(self.root, QUARANTINE))
        return self


def _seconds(value: Any) -> Any:
    """A Prometheus duration string (``6h``) or a number of seconds."""
    return parse_duration(value) if isinstance(value, str) else value


class Config(ParamsModel):
    """The plugin's section of the policy's ``plugins:``."""

    datasets: dict[str, Dataset] = Field(default_factory=dict)
    state_dir: str = "var"
    rate_mb_s: float | None = Field(200.0, gt=0)
    scrub_interval: Annotated[float, BeforeValidator(_seconds)] = Field(6 * 3600.0, ge=0)

    @model_validator(mode="after")
    def _names(self) -> Config:
        for name, ds in self.datasets.items():
            if not ds.name:
                object.__setattr__(ds, "name", name)
        return self


class Params(ParamsModel):
    """A step's params: which dataset, optionally which files (comma-separated)."""

    dataset: str
    paths: tuple[str, ...] = ()
    rate_mb_s: float | None = Field(None, gt=0)

    @field_validator("paths", mode="before")
    @classmethod
    def _paths(cls, v: Any) -> Any:
        if isinstance(v, str):
            v = tuple(p.strip() for p in v.split(",") if p.strip())
        return tuple(check_rel(p) for p in v)


class Restore:
    """The plugin (see module docstring)."""

    NAME = NAME
    Params = Params
    Config = Config
    metrics = METRICS

    def __init__(self, config: Config, writers: Writers | None = None,
                 state_dir: str | None = None, chown_probe: CanChown = can_chown, **_: Any) -> None:
        self.name = NAME
        self.chown_probe = chown_probe      # may this process give a restored file its replica's owner
        self.config = config
        self.state_dir = state_dir or config.state_dir
        self.writers = writers
        self._lock = threading.Lock()
        self._files: dict[tuple[str, str], float] = {}
        self._mismatch: dict[tuple[str, str], float] = {}
        self._scrubbed: dict[str, list[Sample]] = {}
        self._scrub_errors: dict[str, float] = {}
        self._stop = threading.Event()
        self._scrub_thread: threading.Thread | None = None

    def start(self) -> None:
        """Start the background scrubber (daemon only; ``nodewarden act`` never calls this)."""
        if self.config.scrub_interval > 0 and self.config.datasets and self._scrub_thread is None:
            self._scrub_thread = threading.Thread(target=self._scrub_loop, name="restore-scrub", daemon=True)
            self._scrub_thread.start()

    def close(self, timeout: float = 2.0) -> None:
        """Stop the scrubber after the file it is reading."""
        self._stop.set()
        if self._scrub_thread is not None:
            self._scrub_thread.join(timeout)

    def scrub_once(self) -> None:
        """Verify every dataset now and keep the results for :meth:`samples`."""
        for name, ds in self.config.datasets.items():
            if self._stop.is_set():
                return
            try:
                result = Scrubber(ds, ds.scrub_rate_mb_s).run()
            except (NodewardenError, OSError) as err:
                log.error("scrub_failed", dataset=name, error=str(err))
                with self._lock:
                    self._scrub_errors[name] = self._scrub_errors.get(name, 0.0) + 1
                continue
            log.info("scrubbed", dataset=name, **result.counts())
            with self._lock:
                self._scrubbed[name] = integrity_samples(result)

    def _scrub_loop(self) -> None:
        while not self._stop.is_set():
            self.scrub_once()
            self._stop.wait(self.config.scrub_interval)

    def _dataset(self, name: str) -> Dataset:
        ds = self.config.datasets.get(name)
        if ds is None:
            known = ", ".join(self.config.datasets) or "none"
            raise RemediationError(f"unknown dataset {name!r} (configured: {known})")
        return ds

    def plan(self, alert: Alert | None, params: Params) -> Plan:
        """Verify the dataset (or ``paths``) now: the damaged files are the plan."""
        ds = self._dataset(params.dataset)
        try:
            result = Scrubber(ds, paths=params.paths or None).run()
        except NodewardenError as err:
            raise RemediationError(f"dataset {ds.name}: {err}") from err
        damaged = result.damaged()
        changes = [f"restore {len(damaged)} of {result.ok + len(damaged)} files of {ds.name} ({ds.root}) from "
                   f"{', '.join(r.name or r.model_extra.get('path', r.type) for r in ds.replicas) or 'no replicas'};"
                   f" damaged copies to {ds.quarantine}"]
        changes += [f"{state}: {rel}" for rel, state in damaged[:MAX_CHANGES]]
        if len(damaged) > MAX_CHANGES:
            changes.append(f"... and {len(damaged) - MAX_CHANGES} more")
        self._check_owners(ds, [rel for rel, _ in damaged])   # refused (refused:ownership) unless kept
        data = {"dataset": ds.name, "paths": list(params.paths), "files": [list(d) for d in damaged],
                "rate_mb_s": params.rate_mb_s or self.config.rate_mb_s}
        return Plan(action=NAME, target=f"dataset/{ds.name}", params=data, changes=changes, reversible=False,
                    scope="local", noop=not damaged)

    def apply(self, plan: Plan) -> Outcome:
        """Fetch each damaged file from the first agreeing replica; RemediationError when any stays damaged."""
        p = plan.params
        ds = self._dataset(p["dataset"])
        manifest = load(ds.manifest)
        sources = [r.build() for r in ds.replicas]
        self._check_owners(ds, [rel for rel, _ in p["files"]], sources)
        mover = SafeMover(StepLog(os.path.join(self.state_dir, LOG_NAME)), rate_mb_s=p.get("rate_mb_s"),
                          writers=self.writers)
        restored, already, unrepaired, notes = 0, 0, [], []
        try:
            mover.recover()
            for rel, _state in p["files"]:
                entry = manifest.get(rel)
                if entry is None:
                    notes.append(f"{rel}: no longer in the manifest")
                    continue
                dst = os.path.join(ds.root, rel)
                if _matches(dst, entry.size, entry.hash):
                    already += 1
                    continue
                ok, why = self._restore_one(mover, ds, sources, rel, dst, entry.size, entry.hash)
                notes += why
                if ok:
                    restored += 1
                else:
                    unrepaired.append(rel)
                self._count(ds.name, "restored" if ok else "failed")
        finally:
            mover.close()
        out = f"restored {restored} files, already good {already}, unrepaired {len(unrepaired)}"
        if notes:
            out += "\n" + "\n".join(notes[:50])
        if unrepaired:
            raise RemediationError(out)
        return Outcome(output=out)

    def _check_owners(self, ds: Dataset, rels: list[str], sources: list[Source] | None = None) -> None:
        """OwnershipRefused unless each file's replica copy (whose owner it gets) could keep its owner."""
        sources = sources if sources is not None else [r.build() for r in ds.replicas]
        paths = []
        for rel in rels:
            for src in sources:
                path = src.locate(rel)
                if path is not None:
                    paths += [path, os.path.dirname(path)]
                    break
        check_owners(paths, self.chown_probe)

    def _restore_one(self, mover: SafeMover, ds: Dataset, sources: list[Source], rel: str, dst: str, size: int,
                     digest: str) -> tuple[bool, list[str]]:
        notes = []
        for src in sources:
            path = src.locate(rel)
            if path is None:
                notes.append(f"{rel}: replica {src.name} has no copy")
                continue
            if os.path.getsize(path) != size:
                notes.append(f"{rel}: replica {src.name} disagrees with the manifest (size); not used")
                self._mismatch_count(ds.name, src.name)
                continue
            make_parents(path, dst)
            res = mover.move(path, dst, after="keep", expect=digest, quarantine=ds.quarantine)
            if res.status == "done":
                return True, notes
            if "does not match the expected" in res.reason:
                notes.append(f"{rel}: replica {src.name} disagrees with the manifest (hash); not used")
                self._mismatch_count(ds.name, src.name)
                continue
            notes.append(f"{rel}: from {src.name}: {res.status}: {res.reason}")
            if res.errno == 28:   # ENOSPC: no other replica would fit either
                break
        return False, notes

    def verify(self, plan: Plan) -> bool:
        """Every planned file matches the manifest now."""
        ds = self._dataset(plan.params["dataset"])
        manifest = load(ds.manifest)
        return all(rel in manifest and _matches(os.path.join(ds.root, rel), manifest[rel].size, manifest[rel].hash)
                   for rel, _ in plan.params["files"])

    def revert(self, plan: Plan) -> Outcome:
        """Nothing to undo: a restore is a repair (the damaged copies are kept in quarantine)."""
        raise RemediationError("restore is not reversible; damaged copies are in the dataset's quarantine directory")

    def recover(self, entry: Entry) -> str:
        """Settle the interrupted file operation, then finish the remaining files."""
        try:
            self.apply(entry.get_plan())
        except RemediationError:
            return "failed"
        return "succeeded"

    def _count(self, ds: str, result: str) -> None:
        with self._lock:
            self._files[(ds, result)] = self._files.get((ds, result), 0.0) + 1

    def _mismatch_count(self, ds: str, replica: str) -> None:
        with self._lock:
            self._mismatch[(ds, replica)] = self._mismatch.get((ds, replica), 0.0) + 1

    def samples(self) -> list[Sample]:
        """Counters of :data:`METRICS` for this process."""
        with self._lock:
            out = [Sample("nodewarden_restore_files_total", (("dataset", d), ("result", r)), v)
                   for (d, r), v in sorted(self._files.items())]
            out += [Sample("nodewarden_restore_replica_mismatch_total", (("dataset", d), ("replica", r)), v)
                    for (d, r), v in sorted(self._mismatch.items())]
            out += [Sample("nodewarden_integrity_scrub_errors_total", (("dataset", d),), v)
                    for d, v in sorted(self._scrub_errors.items())]
            for samples in self._scrubbed.values():
                out += samples
        return out


def _matches(path: str, size: int, digest: str) -> bool:
    try:
        if not os.path.isfile(path) or os.path.islink(path) or os.path.getsize(path) != size:
            return False
        return hash_file(path) == digest
    except (OSError, NodewardenError):
        return False

