"""Kernel-log problem detection (node-problem-detector's kernel monitor, on the shared kmsg reader).

Each kernel-log record goes through every configured NPD monitor config (the shipped
``agent/data/kernel-monitor.json``: NPD's own reasons plus GPU-node ones, and any ``monitors`` files in NPD's
format, loaded unchanged). ``nodewarden_kernel_problems_total{reason}`` counts problem events as NPD's
``problem_counter`` does (every temporary match, and each change of a permanent condition);
``nodewarden_kernel_condition{type,reason}`` is NPD's ``problem_gauge``: 1 while the node condition
``type`` is set by ``reason``. Conditions are kept in the state directory for the current boot, so a
restart neither forgets a permanent problem nor reports it again; a reboot clears them, as in NPD.
"""

from __future__ import annotations

import json
import os
import threading
from importlib import resources
from typing import Any

import structlog
from pydantic import Field

from agent.collectors import npd
from agent.collectors.kmsg import KmsgReader, KmsgRecord
from agent.core.config import CollectorConfig
from agent.core.errors import ConfigError, NoData
from agent.core.metrics import MetricSpec, Sample
from agent.core.paths import Paths

NAME = "kernel"
log = structlog.get_logger("nodewarden.kernel")
CONDITIONS_FILE = "kernel_conditions.json"

METRICS: list[MetricSpec] = [
    MetricSpec("nodewarden_kernel_problems_total", "counter",
               "Kernel-log problem events by reason (NPD problem_counter: temporary matches and condition changes).",
               ("reason",)),
    MetricSpec("nodewarden_kernel_condition", "gauge",
               "1 while the node condition type is set by reason (NPD problem_gauge), 0 otherwise.",
               ("type", "reason")),
    MetricSpec("nodewarden_kernel_log_records_total", "counter", "Kernel-log records read since the agent started."),
    MetricSpec("nodewarden_kernel_log_readable", "gauge", "1 while the kernel log (/dev/kmsg) is being read."),
]


class KernelConfig(CollectorConfig):
    """Kernel-log problem detector settings."""

    default_monitor: bool = Field(True, description="apply the shipped rules (agent/data/kernel-monitor.json)")
    monitors: list[str] = Field(default_factory=list,
                                description="node-problem-detector kernel-monitor JSON files, loaded unchanged")


def default_monitor() -> npd.LogMonitor:
    """The shipped NPD-format config (NPD's kernel-monitor and readonly reasons, plus GPU-node problems)."""
    text = resources.files("agent").joinpath("data", "kernel-monitor.json").read_text(encoding="utf-8")
    monitor = npd.parse_config(text, "agent/data/kernel-monitor.json")
    monitor.name = "default"
    return monitor


def load_monitors(config: KernelConfig) -> list[npd.LogMonitor]:
    """Every configured monitor; ConfigError naming the file, line and column of the first problem."""
    monitors = [default_monitor()] if config.default_monitor else []
    monitors += [npd.load_config(path) for path in config.monitors]
    return monitors


class Detector:
    """Monitors + counters + conditions; thread-safe (records arrive on the reader's thread)."""

    def __init__(self, monitors: list[npd.LogMonitor]) -> None:
        self.monitors = monitors
        self._lock = threading.Lock()
        self.counts: dict[str, float] = {}
        self.conditions: dict[tuple[str, str], float] = {}  # (type, reason) -> 0/1
        for m in monitors:  # NPD initialises every counter to 0 and every permanent gauge to false
            for reason, condition in m.reasons():
                self.counts.setdefault(reason, 0.0)
                if condition:
                    self.conditions.setdefault((condition, reason), 0.0)
        self.records = 0

    def feed(self, message: str, timestamp_us: int = 0) -> list[npd.Problem]:
        """Apply one kernel-log message to every monitor."""
        found: list[npd.Problem] = []
        with self._lock:
            self.records += 1
            for m in self.monitors:
                for p in m.push(message, timestamp_us):
                    found.append(p)
                    self.counts[p.reason] = self.counts.get(p.reason, 0.0) + 1
                    if p.type == "permanent":
                        self._set_condition(p.condition, p.reason)
        return found

    def _set_condition(self, ctype: str, reason: str) -> None:
        for key in self.conditions:
            if key[0] == ctype:
                self.conditions[key] = 0.0
        self.conditions[(ctype, reason)] = 1.0

    def active(self) -> dict[str, str]:
        """Conditions currently set: {type: reason}."""
        with self._lock:
            return {t: r for (t, r), v in self.conditions.items() if v}

    def restore(self, active: dict[str, str]) -> None:
        """Set conditions saved by an earlier run of this boot (no events are counted)."""
        with self._lock:
            for ctype, reason in active.items():
                for m in self.monitors:
                    cond = m.conditions.get(ctype)
                    if cond is not None:
                        cond.active, cond.reason = True, reason
                if any(t == ctype for t, _ in self.conditions):
                    self._set_condition(ctype, reason)

    def samples(self) -> list[Sample]:
        """This round's samples."""
        with self._lock:
            out = [Sample("nodewarden_kernel_problems_total", (("reason", r),), v) for r, v in self.counts.items()]
            out += [Sample("nodewarden_kernel_condition", (("type", t), ("reason", r)), v)
                    for (t, r), v in self.conditions.items()]
            out.append(Sample("nodewarden_kernel_log_records_total", (), float(self.records)))
        return out


class KernelCollector:
    """The ``kernel`` collector (see module docstring); records come from the shared :class:`KmsgReader`."""

    NAME = NAME
    Config = KernelConfig
    name = NAME
    metrics = METRICS

    def __init__(self, config: KernelConfig, paths: Paths, *, kmsg: KmsgReader | None = None,
                 state_dir: str | None = None, **_deps: Any) -> None:
        try:
            self.detector = Detector(load_monitors(config))
        except ConfigError:
            raise
        self._paths = paths
        self._state_path = os.path.join(state_dir, CONDITIONS_FILE) if state_dir else None
        self._persist = kmsg.persist if kmsg is not None else False
        self._boot_id = _read_boot_id(paths)
        self._own_reader = kmsg is None
        self.kmsg_reader = kmsg if kmsg is not None else KmsgReader(
            paths.dev("kmsg"), state_dir, boot_id_path=paths.proc("sys", "kernel", "random", "boot_id"),
            persist=False)
        self.kmsg_reader.subscribe(self._record)
        self._restore()
        self._saved = self.detector.active()

    def start(self) -> None:
        """Start a private reader (the daemon starts the shared one after every collector subscribed)."""
        if self._own_reader:
            self.kmsg_reader.start()

    def close(self) -> None:
        """Stop receiving records (the last consumer of a reader closes it)."""
        self.kmsg_reader.unsubscribe(self._record)
        if self.detector.active() != self._saved:
            self._save()

    def describe(self) -> str:
        """Why there are no problem series (empty when the log is read)."""
        return "" if self.kmsg_reader.readable else self.kmsg_reader.status

    def _record(self, rec: KmsgRecord) -> None:
        for p in self.detector.feed(rec.message, rec.timestamp_us):
            log.warning("kernel problem", reason=p.reason, type=p.type, condition=p.condition or None,
                        message=p.message[-500:])
        if self.detector.active() != self._saved:
            self._save()

    def collect(self) -> list[Sample]:
        """Counters and conditions; NoData without any rule."""
        if not self.detector.monitors:
            raise NoData("no kernel monitor rules configured")
        out = self.detector.samples()
        out.append(Sample("nodewarden_kernel_log_readable", (), 1.0 if self.kmsg_reader.readable else 0.0))
        return out

    # -- conditions across restarts (same boot only) -------------------------------------------------------
    def _restore(self) -> None:
        if not self._state_path:
            return
        try:
            with open(self._state_path, encoding="utf-8") as f:
                doc = json.load(f)
        except (OSError, ValueError):
            return
        if isinstance(doc, dict) and doc.get("boot_id") == self._boot_id and isinstance(doc.get("active"), dict):
            self.detector.restore({str(k): str(v) for k, v in doc["active"].items()})

    def _save(self) -> None:
        active = self.detector.active()
        self._saved = active
        if not self._state_path or not self._persist:
            return
        tmp = f"{self._state_path}.tmp"
        try:
            os.makedirs(os.path.dirname(self._state_path) or ".", exist_ok=True)
            with open(tmp, "w", encoding="utf-8") as f:
                json.dump({"boot_id": self._boot_id, "active": active}, f)
            os.replace(tmp, self._state_path)
        except OSError as err:
            log.warning("cannot save kernel conditions", path=self._state_path, error=err.strerror)


def _read_boot_id(paths: Paths) -> str:
    try:
        with open(paths.proc("sys", "kernel", "random", "boot_id"), encoding="ascii") as f:
            return f.read().strip()
    except OSError:
        return ""
