"""Wiring: collectors -> store -> exporter, on an APScheduler interval job; signals, reload, systemd.

One tick: kick every collector's worker, wait for each until its deadline, write what arrived into the
store under one timestamp, add self-metrics, render /metrics once. The HTTP side only reads cached bytes.
"""

from __future__ import annotations

import os
import platform
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
from agent.collectors.runner import CollectorRunner, Outcome
from agent.core import config as configmod
from agent.core.config import Config
from agent.core.discovery import LazyClasses, load_remediations
from agent.core.errors import ConfigError, PluginLoadError, RuleError
from agent.core.instance import StateLock
from agent.core.metrics import Collector, CollectorStarts, MetricSpec, Sample
from agent.core.paths import Paths
from agent.engine.rules import RuleEngine
from agent.engine.store import Store
from agent.remediation.journal import Journal
from agent.remediation.policy import Policy, load_policy, used_plugins
from agent.remediation.remediator import Remediator
from agent.serve import routes as serve_routes
from agent.serve.exporter import Exporter
from agent.serve.systemd import Notifier
from agent.serve.web import Server
from agent.serve.webconfig import WebConfig, load_web_config

log = structlog.get_logger("daemon")

SELF_METRICS = [
    MetricSpec("nodewarden_build_info", "gauge", "nodewarden version and Python runtime.", ("version", "python")),
    MetricSpec("nodewarden_collector_success", "gauge", "1 when the collector's last round succeeded.",
               ("collector",)),
    MetricSpec("nodewarden_collector_duration_seconds", "gauge", "Duration of the collector's last round.",
               ("collector",)),
    MetricSpec("nodewarden_tick_lag_seconds", "gauge", "How late the last tick started against its schedule."),
    MetricSpec("nodewarden_tick_duration_seconds", "gauge", "Wall time of the last tick."),
    MetricSpec("nodewarden_last_tick_timestamp_seconds", "gauge", "Unix time of the last completed tick."),
    MetricSpec("nodewarden_store_series", "gauge", "Series held in the in-memory history store."),
    MetricSpec("nodewarden_store_bytes", "gauge", "Approximate bytes held by the history store."),
    MetricSpec("nodewarden_config_last_reload_successful", "gauge", "1 when the last config reload succeeded."),
    MetricSpec("nodewarden_config_last_reload_success_timestamp_seconds", "gauge",
               "Unix time of the last successful config load."),
    MetricSpec("nodewarden_remediation_recovering", "gauge",
               "1 while actions a crash interrupted are being recovered in the background (no new remediation "
               "starts meanwhile; sampling, rules and HTTP go on)."),
]


@dataclass
class Health:
    """Loop liveness, read by /healthz and the systemd watchdog."""

    last_tick_end: float = 0.0  # monotonic
    interval: float = 5.0
    ticks: int = 0

    def check(self, now: float) -> tuple[bool, str]:
        """(on time, reason)."""
        if self.ticks == 0:
            return False, "no tick completed yet"
        late = now - self.last_tick_end
        if late > 2 * self.interval + 1.0:
            return False, f"last tick completed {late:.1f}s ago (interval {self.interval:g}s)"
        return True, f"ok: last tick {late:.1f}s ago"


@dataclass
class Components:
    """Everything built from one Config (rebuilt on reload)."""

    config: Config
    runners: list[CollectorRunner]
    failed: dict[str, str] = field(default_factory=dict)  # collector -> load error


def identity_labels(cfg: Config) -> dict[str, str]:
    """Labels every alert carries outside this node: ``external_labels`` and the node label (hostname)."""
    out = dict(cfg.external_labels)
    if cfg.node_label:
        out.setdefault(cfg.node_label, cfg.hostname or socket.gethostname())
    return out


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
        self.plugin_deps = dict(plugin_deps or {})  # e.g. the simulated NVML for plugins (run --simulate)
        self.speed = speed  # simulation: wall/mono run this many times faster; ticks come as often
        self.collector_factory = collector_factory
        self.notifier = notifier or Notifier()
        self.wall = wall
        self.mono = mono
        self.exporter = Exporter()
        self.health = Health(interval=cfg.interval)
        self.store = Store(cfg.retention, cfg.interval)
        self.reload_ok = 1.0
        self.reload_ok_at = wall()
        self._tick_lock = threading.Lock()
        self._stop = threading.Event()
        self._hup = threading.Event()
        self._last_tick_start = 0.0
        self._lag = 0.0
        self._tick_duration = 0.0
        self._warned: set[str] = set()
        self._outcomes: dict[str, Outcome] = {}
        self.server: Server | None = None
        self.scheduler: BackgroundScheduler | None = None
        self.state_lock = StateLock(cfg.state_dir)
        self._recovery: threading.Thread | None = None
        self._pending: tuple[tuple, Policy, dict[str, Any]] | None = None  # a reload's remediator, built when idle
        self.rules = RuleEngine(os.path.join(cfg.state_dir, "alerts.json"), dict(cfg.external_labels), clock=wall)
        self.rules.restore_state()
        self.rules.load(configmod.rule_paths(cfg))  # RuleError: the caller reports it (exit 2)
        policy = self._policy(cfg)  # ConfigError: exit 2
        self._remediator_key = self._key(cfg, policy)
        self.remediator = self._remediator(cfg, policy, self._plugins(cfg, policy))
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

    @staticmethod
    def _policy(cfg: Config) -> Policy:
        """The remediation policy (an empty one when none is configured); ConfigError when invalid."""
        path = configmod.policy_path(cfg)
        return load_policy(path, LazyClasses()) if path else Policy()

    def _plugins(self, cfg: Config, policy: Policy) -> dict[str, Any]:
        """Construct the plugins; ConfigError when one the policy names (settings or a step) cannot load."""
        # Only the plugins the policy routes to or configures, and those with actions still in force or cut by a
        # crash (they must recover and reconcile): an unused plugin is never imported (throttle alone pulls in
        # pyroute2, ~10 MB).
        used = {s.action for r in policy.routes for s in r.steps} | set(policy.plugins)
        journal = Journal(cfg.state_dir, policy.journal.retention, policy.journal.max_rows)
        try:
            used |= {e.action for e in (*journal.active(), *journal.started())}
        finally:
            journal.close()
        deps = {"paths": cfg.paths.roots(), **self.plugin_deps}
        loaded = load_remediations(policy.plugins, only=used, state_dir=cfg.state_dir, **deps)
        bad = [f"{configmod.policy_path(cfg) or 'policy'}: plugin {name!r} cannot load: {loaded.errors[name]}"
               for name in sorted(used_plugins(policy) & set(loaded.errors))]
        if bad:
            raise ConfigError("\n".join(bad), bad)
        return loaded.plugins

    def _remediator(self, cfg: Config, policy: Policy, plugins: dict[str, Any]) -> Remediator:
        journal = Journal(cfg.state_dir, policy.journal.retention, policy.journal.max_rows, clock=self.wall)
        return Remediator(policy, journal, plugins, mode=cfg.mode, clock=self.wall,
                          pause_flag_path=os.path.join(cfg.state_dir, "paused"), labels=identity_labels(cfg))

    @staticmethod
    def _key(cfg: Config, policy: Policy) -> tuple:
        """What a remediator is built from: a reload that leaves it equal keeps the running remediator."""
        return (policy, cfg.mode, cfg.state_dir, cfg.paths)

    @property
    def recovering(self) -> bool:
        """True while the journal's interrupted actions are being recovered in the background."""
        return self._recovery is not None and self._recovery.is_alive()

    def _start_recovery(self, rem: Remediator) -> None:
        """Recover ``rem``'s journal (finish or roll back what a crash left started), then start its plugins'
        background work, on a thread: the agent serves and ticks meanwhile; remediation waits for it."""
        def work() -> None:
            start = self.mono()
            try:
                rem.recover()
            except Exception as err:  # a failure is data: logged, remediation goes on with what it has
                log.error("recovery_failed", error=f"{type(err).__name__}: {err}")
            rem.start_plugins()
            log.info("recovery_done", seconds=round(self.mono() - start, 3))

        self._recovery = threading.Thread(target=work, name="recovery", daemon=True)
        self._recovery.start()

    def _swap_remediator(self) -> None:
        """Put a reload's new remediator in force once no action of the old one runs (never two movers on one
        plan, never a journal closed under a worker); its recovery then runs in the background."""
        if self._pending is None or self.recovering or self.remediator.in_progress():
            return
        key, policy, plugins = self._pending
        self._pending = None
        cfg = self.config
        old = self.remediator
        old.close(timeout=0.5)
        old.journal.close()
        self.remediator = self._remediator(cfg, policy, plugins)
        self._remediator_key = key
        self.exporter.register([*self.remediator.metrics, *self.remediator.plugin_metrics()])
        log.info("remediator_reloaded", plugins=sorted(plugins))
        self._start_recovery(self.remediator)

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
            "collectors": {r.name: {"busy": r.busy, **self._last_outcome(r.name)} for r in self.components.runners},
            "failed_collectors": self.components.failed,
        }

    def _last_outcome(self, name: str) -> dict[str, Any]:
        out = self._outcomes.get(name)
        if out is None:
            return {}
        return {"status": out.status, "error": out.error or "", "duration_seconds": round(out.duration, 6)}

    # -- the tick ------------------------------------------------------------------------------
    def tick(self) -> None:
        """One sampling round (runs on the scheduler's thread; never overlaps itself)."""
        with self._tick_lock:
            self._tick()

    def _tick(self) -> None:
        cfg = self.config
        start = self.mono()
        if self._last_tick_start:
            self._lag = max(0.0, start - self._last_tick_start - cfg.interval)
        self._last_tick_start = start
        runners = self.components.runners
        kicked = {r.name: r.kick() for r in runners}
        outcomes: dict[str, Outcome] = {}
        for r in runners:
            outcomes[r.name] = r.wait(start + r.timeout) if kicked[r.name] else r.hung_outcome()
        now = round(self.wall(), 3)
        if now <= self.store.now:
            now = self.store.now + 0.001
        self.store.begin_tick(now)
        self_samples: list[Sample] = [
            Sample("nodewarden_build_info", (("version", __version__), ("python", platform.python_version())), 1.0)
        ]
        self._outcomes = outcomes
        for name, out in outcomes.items():
            if out.samples:
                self.store.add(out.samples)
            self._report(name, out)
            lbl = (("collector", name),)
            self_samples.append(Sample("nodewarden_collector_success", lbl, 1.0 if out.success else 0.0))
            self_samples.append(Sample("nodewarden_collector_duration_seconds", lbl, round(out.duration, 6)))
        for name in self.components.failed:
            lbl = (("collector", name),)
            self_samples.append(Sample("nodewarden_collector_success", lbl, 0.0))
            self_samples.append(Sample("nodewarden_collector_duration_seconds", lbl, 0.0))
        if self.store.tick % 60 == 59:
            self.store.gc()
        self._swap_remediator()
        remediating = not self.recovering  # the remediator is not touched while its recovery runs
        self_samples += [
            Sample("nodewarden_tick_lag_seconds", (), round(self._lag, 6)),
            Sample("nodewarden_tick_duration_seconds", (), round(self._tick_duration, 6)),
            Sample("nodewarden_last_tick_timestamp_seconds", (), now),
            Sample("nodewarden_store_series", (), float(self.store.series_count())),
            Sample("nodewarden_store_bytes", (), float(self.store.nbytes())),
            Sample("nodewarden_config_last_reload_successful", (), self.reload_ok),
            Sample("nodewarden_config_last_reload_success_timestamp_seconds", (), round(self.reload_ok_at, 3)),
            Sample("nodewarden_remediation_recovering", (), 0.0 if remediating else 1.0),
        ]
        self.store.add(self_samples)
        # Everything rules may read must be in this tick before evaluation: a series not yet written in the
        # current tick reads as stale. Remediation/plugin samples (e.g. integrity scrub results) go in first,
        # and again after on_tick so /metrics shows this tick's decisions.
        if remediating:
            self.store.add(self.remediator.samples())
        self.store.add(self.rules.evaluate(self.store, now))  # recording rules, ALERTS, engine metrics
        if remediating:
            self.remediator.on_tick(self.rules.alerts(), now)  # decides and journals; actions run off this thread
            self.store.add(self.remediator.samples())
        self._tick_duration = self.mono() - start
        self.exporter.render(self.store)
        first = self.health.ticks == 0
        self.health.last_tick_end = self.mono()
        self.health.ticks += 1
        if first:
            self.notifier.ready(f"first tick done; {self.store.series_count()} series")
            log.info("ready", series=self.store.series_count(), tick_seconds=round(self._tick_duration, 4))

    def _report(self, name: str, out: Outcome) -> None:
        """Log a collector's failure once per change of state (not every tick)."""
        key = f"{name}:{out.status}"
        if out.success:
            if any(w.startswith(f"{name}:") for w in self._warned):
                log.info("collector_recovered", collector=name)
                self._warned = {w for w in self._warned if not w.startswith(f"{name}:")}
            return
        if key not in self._warned:
            self._warned = {w for w in self._warned if not w.startswith(f"{name}:")} | {key}
            log.error("collector_failed", collector=name, status=out.status, error=out.error,
                      duration=round(out.duration, 3))

    # -- lifecycle -----------------------------------------------------------------------------
    def start(self) -> None:
        """Bind the HTTP endpoint and start sampling (first tick immediately)."""
        cfg = self.config
        os.makedirs(cfg.state_dir, exist_ok=True)
        self.state_lock.acquire()  # StateDirLocked (names the holder's PID) before anything touches the journal
        # Actions a crash left 'started' are finished or rolled back in the background; then plugins start.
        self._start_recovery(self.remediator)
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
                 remediator="reloading when idle" if self._pending else "unchanged")
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
        policy = self._policy(cfg)
        key = self._key(cfg, policy)
        pending = None if key == self._remediator_key else (key, policy, self._plugins(cfg, policy))
        files = configmod.rule_paths(cfg)
        defs = self.rules.prepare(files)  # all-or-nothing; outside the tick lock
        return cfg, web, pending, defs, files

    def _swap(self, cfg: Config, web: WebConfig, pending: Any, defs: list[Any], files: list[str],
              built: list[Collector], failed: dict[str, str]) -> None:
        """Put a loaded reload in force (under the tick lock)."""
        self.rules.swap(defs, files)  # keeps the state of unchanged rules
        self.rules.external_labels = dict(cfg.external_labels)
        self._pending = pending  # None: the policy is unchanged and the remediator keeps running as it is
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
            if self._recovery is not None:
                self._recovery.join(max(0.0, timeout - 2.0))
            if self.recovering:  # a plugin's recover() is still at work: it is recovered again at the next start
                log.warning("stopping_during_recovery", note="journal left open for the recovery thread")
            else:
                self.remediator.close(timeout=max(0.0, timeout - 2.0))
                self.remediator.journal.close()
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

