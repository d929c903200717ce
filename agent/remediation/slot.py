"""The remediator in force and its lifecycle: built from a config and policy, recovered in the background
(finish or roll back what a crash left started, then start plugin work), and replaced by a reload's one only
once no action of the old one runs (never two movers on one plan, never a journal closed under a worker)."""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import structlog

from agent.core import config as configmod
from agent.core.config import Config
from agent.core.discovery import LazyClasses, load_remediations
from agent.core.errors import ConfigError
from agent.remediation.journal import Journal
from agent.remediation.policy import Policy, load_policy, used_plugins
from agent.remediation.remediator import Remediator

log = structlog.get_logger("daemon")

Pending = tuple[tuple, Policy, dict[str, Any]]  # (key, policy, constructed plugins) of a reload's remediator


def identity_labels(cfg: Config) -> dict[str, str]:
    """Labels every alert carries outside this node: ``external_labels`` and the node label (hostname)."""
    out = dict(cfg.external_labels)
    if cfg.node_label:
        out.setdefault(cfg.node_label, cfg.hostname or socket.gethostname())
    return out


def load_policy_of(cfg: Config) -> Policy:
    """The remediation policy (an empty one when none is configured); ConfigError when invalid."""
    path = configmod.policy_path(cfg)
    return load_policy(path, LazyClasses()) if path else Policy()


class RemediatorSlot:
    """Holds the running :class:`Remediator`, the one a reload prepared (``pending``) and the recovery thread.

    ``plugin_deps`` go to every plugin's constructor (e.g. the simulated NVML); ``wall`` is the remediator's
    clock, ``mono`` times the recovery."""

    def __init__(self, cfg: Config, *, plugin_deps: dict[str, Any] | None = None,
                 wall: Callable[[], float] = time.time, mono: Callable[[], float] = time.monotonic) -> None:
        self.plugin_deps = dict(plugin_deps or {})
        self.wall = wall
        self.mono = mono
        policy = load_policy_of(cfg)  # ConfigError: exit 2
        self.key = self.key_of(cfg, policy)
        self.current = self._remediator(cfg, policy, self.plugins(cfg, policy))
        self.pending: Pending | None = None
        self._recovery: threading.Thread | None = None

    @staticmethod
    def key_of(cfg: Config, policy: Policy) -> tuple:
        """What a remediator is built from: a reload that leaves it equal keeps the running remediator."""
        return (policy, cfg.mode, cfg.state_dir, cfg.paths)

    def plugins(self, cfg: Config, policy: Policy) -> dict[str, Any]:
        """Construct the plugins; ConfigError when one the policy names (settings or a step) cannot load."""
        # Only the plugins the policy routes to or configures, and those with actions still in force or cut by a
        # crash (they must recover and reconcile): an unused plugin is never imported (throttle alone pulls in
        # pyroute2, ~10 MB).
        used = used_plugins(policy)
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

    # -- reload ------------------------------------------------------------------------------
    def prepare(self, cfg: Config) -> Pending | None:
        """A reload's remediator parts (policy read, plugins constructed), or None when nothing it is built from
        changed; raises ConfigError. Runs outside the tick lock; :meth:`offer` puts it in line."""
        policy = load_policy_of(cfg)
        key = self.key_of(cfg, policy)
        return None if key == self.key else (key, policy, self.plugins(cfg, policy))

    def offer(self, pending: Pending | None) -> None:
        """The remediator to switch to once idle (None: keep the running one as it is)."""
        self.pending = pending

    def swap_when_idle(self, cfg: Config) -> bool:
        """Put the pending remediator in force if no action of the running one is in progress and no recovery
        runs; its recovery then starts in the background. True when it swapped."""
        if self.pending is None or self.recovering or self.current.in_progress():
            return False
        key, policy, plugins = self.pending
        self.pending = None
        old = self.current
        old.close(timeout=0.5)
        old.journal.close()
        self.current = self._remediator(cfg, policy, plugins)
        self.key = key
        log.info("remediator_reloaded", plugins=sorted(plugins))
        self.start_recovery()
        return True

    # -- recovery and shutdown --------------------------------------------------------------------
    @property
    def recovering(self) -> bool:
        """True while the journal's interrupted actions are being recovered in the background."""
        return self._recovery is not None and self._recovery.is_alive()

    def start_recovery(self) -> None:
        """Recover the running remediator's journal, then start its plugins' background work, on a thread: the
        agent serves and ticks meanwhile; remediation waits for it."""
        rem = self.current

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

    def close(self, timeout: float) -> None:
        """Wait for a recovery (up to ``timeout``), then close the remediator and its journal; while a plugin's
        recover() still runs both are left open (it is recovered again at the next start)."""
        if self._recovery is not None:
            self._recovery.join(max(0.0, timeout))
        if self.recovering:
            log.warning("stopping_during_recovery", note="journal left open for the recovery thread")
            return
        self.current.close(timeout=max(0.0, timeout))
        self.current.journal.close()
