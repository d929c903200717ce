"""Wiring: collectors -> store -> rules -> remediator -> exporter, on an APScheduler interval job; signals,
reload, systemd. The only module that sees every layer.

The tick's work and its state are :class:`agent.daemon_tick.Tick`; the remediator's lifecycle (recovery,
the swap to a reload's one when idle) is :class:`agent.remediation.slot.RemediatorSlot`. This module builds
the parts from a config, runs the scheduler, the HTTP server and the watchdog, and reloads.
"""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import structlog
from apscheduler.schedulers.background import BackgroundScheduler

from agent import __version__, collectors
from agent.collectors.kmsg import KmsgReader, start_readers
from agent.collectors.runner import CollectorRunner
from agent.core import config as configmod
from agent.core.config import Config
from agent.core.errors import ConfigError, PluginLoadError, RuleError
from agent.core.instance import StateLock
from agent.core.metrics import Collector, CollectorStarts, MetricSpec
from agent.core.paths import Paths
from agent.daemon_tick import SELF_METRICS, Health, Tick
from agent.engine.rules import RuleEngine
from agent.engine.store import Store
from agent.remediation.remediator import Remediator
from agent.remediation.slot import RemediatorSlot, identity_labels
from agent.serve import routes as serve_routes
from agent.serve.exporter import Exporter
from agent.serve.systemd import Notifier
from agent.serve.web import Server
from agent.serve.webconfig import WebConfig, load_web_config

log = structlog.get_logger("daemon")

@dataclass
class Components:
    """Everything built from one Config (rebuilt on reload)."""

    config: Config
    runners: list[CollectorRunner]
    failed: dict[str, str] = field(default_factory=dict)  # collector -> load error


def build_collectors(cfg: Config, paths: Paths | None = None, hostname: str | None = None, *,
                     kmsg_persist: bool = True) -> tuple[list[Collector], dict[str, str]]:
    """Instantiate every enabled collector; load errors are returned, not raised.

    Collectors that read the kernel log share one :class:`KmsgReader` (``kmsg=``), started by
    :func:`agent.collectors.kmsg.start_readers` once they have all subscribed; ``kmsg_persist=False`` leaves
    the saved kernel-log position alone (``nodewarden sample``).
    """
    paths = paths or cfg.paths.roots()
    hostname = hostname or cfg.hostname or socket.gethostname()
    kmsg = KmsgReader(paths.dev("kmsg"), cfg.state_dir, boot_id_path=paths.proc("sys", "kernel", "random", "boot_id"),
                      persist=kmsg_persist)
    built: list[Collector] = []
    failed: dict[str, str] = {}
    for name, ep in sorted(collectors.discover().items()):
        section = cfg.collectors.get(name)
        if not section.enabled:
            continue
        try:
            cls = collectors.load(ep)
            built.append(cls(section, paths, hostname=hostname, kmsg=kmsg, state_dir=cfg.state_dir))
        except PluginLoadError as err:
            failed[name] = str(err)
        except Exception as err:
            failed[name] = f"collector {name} failed to start: {type(err).__name__}: {err}"
    return built, failed


def collector_timeout(cfg: Config, name: str) -> float:
    """The collector's deadline: its own ``timeout`` or 80% of the interval."""
    own = cfg.collectors.get(name).timeout
    return own if own else 0.8 * cfg.interval


class Daemon:
    """The running agent. Construct, :meth:`start`, then :meth:`run_forever` or :meth:`stop`."""

    def __init__(self, cfg: Config, *, config_path: str | None = None, overrides: dict[str, Any] | None = None,
                 collector_factory: Callable[[Config], tuple[list[Collector], dict[str, str]]] = build_collectors,
                 notifier: Notifier | None = None, wall: Callable[[], float] = time.time,
                 mono: Callable[[], float] = time.monotonic, plugin_deps: dict[str, Any] | None = None,
                 speed: float = 1.0) -> None:
        self.config_path = config_path
        self.overrides = overrides or {}
        self.speed = speed  # simulation: wall/mono run this many times faster; ticks come as often
        self.collector_factory = collector_factory
        self.notifier = notifier or Notifier()
        self.wall = wall
        self.mono = mono
        self.exporter = Exporter()
        self.ticks = Tick(cfg.interval, wall=wall, mono=mono)
        self.store = Store(cfg.retention, cfg.interval)
        self.reload_ok = 1.0
        self.reload_ok_at = wall()
        self._tick_lock = threading.Lock()
        self._stop = threading.Event()
        self._hup = threading.Event()
        self.server: Server | None = None
        self.scheduler: BackgroundScheduler | None = None
        self.state_lock = StateLock(cfg.state_dir)
        self.rules = RuleEngine(os.path.join(cfg.state_dir, "alerts.json"), dict(cfg.external_labels), clock=wall)
        self.rules.restore_state()
        self.rules.load(configmod.rule_paths(cfg))  # RuleError: the caller reports it (exit 2)
        # e.g. the simulated NVML for plugins (run --simulate); ConfigError: exit 2
        self.slot = RemediatorSlot(cfg, plugin_deps=plugin_deps, wall=wall, mono=mono)
        self.components = self._build(cfg)
        self.web = self._web_config(cfg)

    # -- construction ------------------------------------------------------------------------
    def _build(self, cfg: Config, collectors: tuple[list[Collector], dict[str, str]] | None = None) -> Components:
        built, failed = collectors if collectors is not None else self.collector_factory(cfg)
        runners = []
        for coll in built:
            if isinstance(coll, CollectorStarts):
                coll.start()
            # Accelerated simulation: collectors keep real-time deadlines (a slow tick lags; it does not lose data).
            clock = self.mono if self.speed == 1.0 else time.monotonic
            runners.append(CollectorRunner(coll, collector_timeout(cfg, coll.name), clock=clock))
        start_readers(built)  # after every consumer subscribed: the records found at start reach them all
        for name, why in failed.items():
            log.error("collector_load_failed", collector=name, error=why)
        self.exporter.reset()
        self.exporter.register(SELF_METRICS)
        for coll in built:
            self.exporter.register(list(coll.metrics), export=cfg.collectors.get(coll.name).export)
        self._register_rule_metrics()
        self.exporter.register([*self.remediator.metrics, *self.remediator.plugin_metrics()])
        return Components(cfg, runners, failed)

    def _register_rule_metrics(self) -> None:
        """The rule engine's own families, and one untyped family per recording rule."""
        self.exporter.register(list(self.rules.metrics))
        for gs in self.rules.groups:
            for r in gs.group.rules:
                if r.kind == "recording" and self.exporter.spec(r.name) is None:
                    self.exporter.register([MetricSpec(r.name, "untyped", f"Recording rule (group {gs.group.name}).")])

    @property
    def remediator(self) -> Remediator:
        """The remediator in force."""
        return self.slot.current

    @property
    def recovering(self) -> bool:
        """True while the journal's interrupted actions are being recovered in the background."""
        return self.slot.recovering

    @property
    def health(self) -> Health:
        """Loop liveness (/healthz, the systemd watchdog)."""
        return self.ticks.health

    def _swap_remediator(self) -> None:
        """A reload's remediator takes over once the running one is idle (its metrics families with it)."""
        if self.slot.swap_when_idle(self.config):
            self.exporter.register([*self.remediator.metrics, *self.remediator.plugin_metrics()])

    @staticmethod
    def _web_config(cfg: Config) -> WebConfig:
        return load_web_config(cfg.web_config_file) if cfg.web_config_file else WebConfig()

    @property
    def config(self) -> Config:
        """The config in force."""
        return self.components.config

    # -- HTTP ----------------------------------------------------------------------------------
    def routes(self) -> dict[str, Callable[[], tuple[int, str, bytes]]]:
        """GET routes served by the HTTP endpoint (agent/serve/routes.py)."""
        return serve_routes.build(self)

    def health_check(self) -> tuple[bool, str]:
        """(loop on time, reason), for /healthz."""
        return self.health.check(self.mono())

    def api_rules(self) -> dict[str, Any]:
        """The rule groups in the Prometheus API shape."""
        return self.rules.api_rules()

    def recent_remediations(self, limit: int) -> list[Any]:
        """The newest ``limit`` journal entries, newest first."""
        return self.remediator.journal.query(order=f"id DESC LIMIT {int(limit)}")

    def hostname(self) -> str:
        """This node's name (config ``hostname`` or the system's)."""
        return self.config.hostname or socket.gethostname()

    def status(self) -> dict[str, Any]:
        """A summary for `nodewarden status` and /api/v1/status."""
        ok, reason = self.health.check(self.mono())
        return {
            "version": __version__,
            "mode": self.config.mode,
            "remediation_paused": self.remediator.paused(),
            "remediations_in_progress": self.remediator.in_progress(),
            "healthy": ok,
            "health": reason,
            "ticks": self.health.ticks,
            "series": self.store.series_count(),
            "collectors": {r.name: {"busy": r.busy, **self.ticks.last_outcome(r.name)}
                           for r in self.components.runners},
            "failed_collectors": self.components.failed,
        }

    # -- the tick ------------------------------------------------------------------------------
    def tick(self) -> None:
        """One sampling round (runs on the scheduler's thread; never overlaps itself)."""
        with self._tick_lock:
            self._tick()

    def _tick(self) -> None:
        c = self.components
        first = self.ticks.run(interval=c.config.interval, runners=c.runners, failed=c.failed, store=self.store,
                               rules=self.rules, slot=self.slot, exporter=self.exporter, reload_ok=self.reload_ok,
                               reload_ok_at=self.reload_ok_at, swap=self._swap_remediator)
        if first:
            self.notifier.ready(f"first tick done; {self.store.series_count()} series")

    # -- lifecycle -----------------------------------------------------------------------------
    def start(self) -> None:
        """Bind the HTTP endpoint and start sampling (first tick immediately)."""
        cfg = self.config
        os.makedirs(cfg.state_dir, exist_ok=True)
        self.state_lock.acquire()  # StateDirLocked (names the holder's PID) before anything touches the journal
        # Actions a crash left 'started' are finished or rolled back in the background; then plugins start.
        self.slot.start_recovery()
        host, port = configmod.parse_listen(cfg.listen)
        self.server = Server(host, port, self.routes(), self.web, gzip_body=self.exporter.gzipped)
        self.server.start()
        log.info("listening", address=f"{host}:{self.server.port}", tls=self.web.tls_server_config is not None,
                 mode=cfg.mode, interval=cfg.interval, state_dir=cfg.state_dir,
                 rule_files=self.rules.files, rules=sum(len(g.rules) for g in self.rules.groups))
        self.scheduler = BackgroundScheduler(
            job_defaults={"max_instances": 1, "coalesce": True, "misfire_grace_time": None}, timezone="UTC")
        self.scheduler.add_job(self.tick, "interval", seconds=cfg.interval / self.speed, id="tick",
                               next_run_time=_utcnow())
        self.scheduler.start()
        if self.notifier.watchdog_interval:
            threading.Thread(target=self._watchdog_loop, name="watchdog", daemon=True).start()

    def _watchdog_loop(self) -> None:
        period = min(self.notifier.watchdog_interval / 2, 1.0)  # type: ignore[operator]
        while not self._stop.wait(period):
            ok, _ = self.health.check(self.mono())
            if ok:
                self.notifier.watchdog()

    def reload(self) -> bool:
        """Re-read the config file and everything it names; a bad input of any kind keeps everything as it was.

        The slow part (reading and validating config, web config, policy and rule files, constructing plugins
        and collectors) runs outside the tick lock, so ticks and /healthz go on; the swap under it is quick.
        Running actions are left alone: a changed policy takes over once none runs. Returns success.
        """
        self.notifier.reloading()
        try:
            cfg, web, pending, defs, files = self._load_for_reload()
        except (ConfigError, RuleError) as err:
            return self._reload_failed(err.problems, "configuration and rules")
        except Exception as err:  # any failure of the load phase: report it, keep the old state
            where = self.config_path or "configuration"
            return self._reload_failed([f"{where}: reload failed: {type(err).__name__}: {err}"],
                                       "configuration and rules")
        try:
            built, failed = self.collector_factory(cfg)
        except Exception as err:
            return self._reload_failed([f"collectors: reload failed: {type(err).__name__}: {err}"],
                                       "configuration and rules")
        with self._tick_lock:
            try:
                self._swap(cfg, web, pending, defs, files, built, failed)
            except Exception as err:  # e.g. the new listen address is taken; the daemon stays up
                return self._reload_failed([f"reload could not be applied: {type(err).__name__}: {err}"],
                                           "state where the swap stopped")
        self.reload_ok = 1.0
        self.reload_ok_at = self.wall()
        log.info("reloaded", collectors=[r.name for r in self.components.runners],
                 remediator="reloading when idle" if self.slot.pending else "unchanged")
        self.notifier.ready("reloaded")
        return True

    def _load_for_reload(self) -> tuple[Config, WebConfig, Any, list[Any], list[str]]:
        """Everything a reload needs, read and validated; raises on the first bad input."""
        if self.config_path:
            cfg = configmod.with_overrides(configmod.load_file(self.config_path), **self.overrides)
        else:
            cfg = self.config
        if cfg.state_dir != self.config.state_dir:
            raise ConfigError(f"{self.config_path}:1:1: state_dir cannot change on reload "
                              f"({self.config.state_dir} -> {cfg.state_dir}); restart the agent")
        web = self._web_config(cfg)
        pending = self.slot.prepare(cfg)
        files = configmod.rule_paths(cfg)
        defs = self.rules.prepare(files)  # all-or-nothing; outside the tick lock
        return cfg, web, pending, defs, files

    def _swap(self, cfg: Config, web: WebConfig, pending: Any, defs: list[Any], files: list[str],
              built: list[Collector], failed: dict[str, str]) -> None:
        """Put a loaded reload in force (under the tick lock)."""
        self.rules.swap(defs, files)  # keeps the state of unchanged rules
        self.rules.external_labels = dict(cfg.external_labels)
        self.slot.offer(pending)  # None: the policy is unchanged and the remediator keeps running as it is
        old = self.components
        for r in old.runners:
            r.close()
        if (cfg.interval, cfg.retention) != (old.config.interval, old.config.retention):
            self.store = Store(cfg.retention, cfg.interval)
            log.warning("store_reset", reason="interval or retention changed")
        self.components = self._build(cfg, (built, failed))
        self.health.interval = cfg.interval
        if self.scheduler and cfg.interval != old.config.interval:
            self.scheduler.reschedule_job("tick", trigger="interval", seconds=cfg.interval / self.speed)
        if self.server and (web != self.web or cfg.listen != old.config.listen):
            self.server.stop()
            host, port = configmod.parse_listen(cfg.listen)
            self.server = Server(host, port, self.routes(), web, gzip_body=self.exporter.gzipped)
            self.server.start()
        self.web = web

    def _reload_failed(self, problems: list[str], kept: str) -> bool:
        self.reload_ok = 0.0
        log.error("reload_failed", error="\n".join(problems), problems=problems, kept=f"previous {kept}")
        self.notifier.ready(f"reload failed; previous {kept} kept")
        return False

    def api_alerts(self) -> dict[str, Any]:
        """The rule engine's alerts; those whose remediation escalation is used up carry remediation="exhausted"."""
        doc = self.rules.api_alerts()
        exhausted = self.remediator.exhausted
        if exhausted:
            from agent.core.alerts import fingerprint

            for a in doc["data"]["alerts"]:
                if fingerprint(a["labels"]) in exhausted:
                    a["labels"] = {**a["labels"], "remediation": "exhausted"}
        identity = identity_labels(self.config)
        for a in doc["data"]["alerts"]:
            a["labels"] = {**identity, **a["labels"]}   # the alert's own labels win, as in Prometheus
        return doc

    def stop(self, timeout: float = 4.0) -> None:
        """Stop sampling and serving; bounded by ``timeout`` seconds."""
        self.notifier.stopping()
        self._stop.set()
        if self.scheduler:
            self.scheduler.shutdown(wait=False)
        if self.server:
            self.server.stop()
        acquired = self._tick_lock.acquire(timeout=timeout)
        try:
            for r in self.components.runners:
                r.close()
            self.rules.save_state()
            self.slot.close(timeout - 2.0)
        finally:
            if acquired:
                self._tick_lock.release()
            self.state_lock.release()
        log.info("stopped")

    def run_forever(self) -> int:
        """Install signal handlers and block until SIGTERM/SIGINT; SIGHUP reloads."""
        signal.signal(signal.SIGHUP, lambda *_: self._hup.set())
        signal.signal(signal.SIGTERM, lambda *_: self._stop.set())
        signal.signal(signal.SIGINT, lambda *_: self._stop.set())
        self.start()
        while not self._stop.is_set():
            if self._hup.wait(0.2):
                self._hup.clear()
                self.reload()
        self.stop()
        return 0


def _utcnow() -> Any:
    from datetime import UTC, datetime

    return datetime.now(UTC)

