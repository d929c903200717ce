"""The remediator: the coordinator of routing, guard rails, execution and paging for the daemon and the CLI.

Called once per tick from the sampling thread (:meth:`Remediator.on_tick`), it only decides and journals;
actions run in worker threads with a deadline, so a stuck plugin never stalls sampling, rules or /metrics.
The pieces, each owning its state: :class:`~agent.remediation.router.Router` (episodes and escalation),
:mod:`~agent.remediation.guards` (local guard rails and the cluster-wide blast radius),
:class:`~agent.remediation.executor.Executor` (workers, deadlines, outcomes) and
:class:`~agent.remediation.pager.Pager` (Alertmanager).

Guard rails, checked in this order for every step (the first that refuses is journaled as the skip reason):
``paused`` (pause file or :meth:`pause`), ``no_data``, ``flapping``, ``bad_params``, ``plan_failed``,
``cooldown`` (per action and target), ``rate_limit`` (per action and total, sliding window),
``concurrency`` (actions in flight), and, in the worker right before apply, ``blast_radius`` (node-scope
plans only; asked of the cluster engine). A step refused for longer than its ``wait`` escalates to the next.

Mode: a step is *enforced* only when the daemon runs with ``mode: enforce`` and the route's effective mode
is ``enforce``; otherwise it is planned and journaled as ``planned`` (would do), guard rails simulated.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Mapping
from typing import Any

import structlog
from pydantic import ValidationError

from agent.core.alerts import Alert
from agent.core.errors import RemediationError
from agent.core.metrics import MetricSpec, Sample
from agent.core.plugin import Closes, Cluster, Entry, ExportsMetrics, Reconciled, Reconciles, Remediation, Starts
from agent.remediation.executor import Executor, Tally
from agent.remediation.guards import BlastRadius, LocalGuards
from agent.remediation.journal import Journal
from agent.remediation.pager import Pager
from agent.remediation.policy import PAGE, Policy, load_policy
from agent.remediation.router import Router

__all__ = ["Remediator", "load_policy"]

log = structlog.get_logger("nodewarden.remediator")

METRICS = [
    MetricSpec("nodewarden_remediations_total", "counter", "Remediation decisions and outcomes.", ("action", "result")),
    MetricSpec("nodewarden_remediation_in_progress", "gauge", "Remediation actions running now."),
    MetricSpec("nodewarden_remediation_skipped_total", "counter", "Steps refused by a guard rail.",
               ("action", "reason")),
    MetricSpec("nodewarden_remediation_paused", "gauge", "1 while remediation is paused."),
]


class Remediator:
    """Decides and dispatches remediation for the alerts of each tick (see module docstring)."""

    metrics = METRICS

    def __init__(self, policy: Policy, journal: Journal, plugins: Mapping[str, Remediation], mode: str,
                 clock=time.time, pause_flag_path: str | None = None, cluster: Cluster | None = None,
                 post=None, labels: Mapping[str, str] | None = None) -> None:
        self.policy = policy
        self.journal = journal
        self.plugins = dict(plugins)
        # optional hooks, looked up once (an isinstance against a Protocol costs ~25 us; samples() runs every tick)
        self._exporters = {n: p for n, p in self.plugins.items() if isinstance(p, ExportsMetrics)}
        self.mode = mode
        self.clock = clock
        self.pause_flag_path = pause_flag_path
        self._paused = False
        self._now: float | None = None   # the latest tick's time
        self.tally = Tally()
        self.guards = LocalGuards(policy)
        self.blast = BlastRadius(cluster)
        self.executor = Executor(journal, clock)
        self.pager = Pager(policy.alertmanager, clock, post=post, labels=labels)
        self.router = Router(policy, journal, self.plugins, mode, self.guards, self.blast, self.executor,
                             self.pager, self.tally)
        self.guards.load_history(journal, self.clock())

    @property
    def cluster(self) -> Cluster | None:
        """The cluster engine injected for the blast radius (None: each plugin's own)."""
        return self.blast.cluster

    @cluster.setter
    def cluster(self, value: Cluster | None) -> None:
        self.blast.cluster = value

    # ------------------------------------------------------------ public

    def on_tick(self, alerts: list[Alert], now: float) -> None:
        """Decide for this tick's alerts: journal decisions and dispatch due steps and reverts to workers."""
        self._now = now
        self.router.collect(now)
        self.router.on_tick(alerts, now, self.paused())

    def recover(self) -> dict[str, Any]:
        """On start: hand entries left ``started`` to their plugin's ``recover()``; rebuild revert state; let
        plugins with ``reconcile(active)`` make the host match the journal (their results are returned by
        plugin name); revert what they report as expired."""
        for entry in self.journal.started():
            self._recover_entry(entry)
        now = self.clock()
        self.guards.load_history(self.journal, now)
        self.router.restore(self.journal.active())
        reconciled: dict[str, Any] = {}
        for name, plugin in self.plugins.items():
            if not isinstance(plugin, Reconciles):
                continue
            try:
                found = reconciled[name] = plugin.reconcile([e for e in self.journal.active() if e.action == name])
            except Exception as err:  # a plugin failure is data
                log.error("reconcile_failed", action=name, error=str(err))
                continue
            log.info("reconciled", action=name, result=str(found))
            for eid in (found.expired if isinstance(found, Reconciled) else ()):
                self.router.expire_entry(eid, now)
        return reconciled

    def _recover_entry(self, entry: Entry) -> None:
        plugin = self.plugins.get(entry.action)
        if entry.op == PAGE:
            self.journal.finish(entry.id, "failed", "interrupted page; not resent", reason="interrupted")
            return
        if plugin is None:
            log.warning("recover_plugin_missing", entry=entry.id, action=entry.action)
            return  # stays 'started': recovered when the plugin is back
        if entry.op == "apply" and self._refused_after_restart(entry, plugin):
            return
        try:
            status = plugin.recover(entry)
        except Exception as err:  # a plugin failure is data
            log.error("recover_failed", entry=entry.id, action=entry.action, error=str(err))
            status = "failed"
            self.journal.finish(entry.id, status, f"recover: {err}", reason="recover_failed")
        else:
            if entry.op == "revert" and status == "reverted" and entry.parent is not None:
                self.journal.mark_reverted(entry.id, entry.parent, "recovered after restart")
            else:
                self.journal.finish(entry.id, status, "recovered after restart", reason="recovered")
        self.tally.result(entry.action, f"recovered_{status}")
        log.info("recovered", entry=entry.id, action=entry.action, status=status)

    def _refused_after_restart(self, entry: Entry, plugin: Remediation) -> bool:
        """An interrupted node-scope apply takes (or confirms) its blast-radius claim again before it is finished."""
        try:
            plan = entry.get_plan()
        except RemediationError:
            return False
        if plan.scope != "node" or plan.noop:
            return False
        guards = self.guards.for_route(self.router.route_index.get(entry.route))
        reason, detail = self.blast.claim(guards, plugin, plan)
        if not reason:
            return False
        self.journal.finish(entry.id, "skipped", f"after restart: {detail}", reason=reason)
        self.tally.skip(entry.action, reason)
        log.info("recover_refused", entry=entry.id, action=entry.action, reason=reason)
        return True

    def start_plugins(self) -> None:
        """Start plugins' background work (``start()``, e.g. restore's scrubber); the daemon calls this."""
        for name, plugin in self.plugins.items():
            if isinstance(plugin, Starts):
                try:
                    plugin.start()
                except Exception as err:  # a plugin failure is data
                    log.error("plugin_start_failed", action=name, error=str(err))

    def close(self, timeout: float) -> None:
        """Wait up to ``timeout`` seconds for actions in flight (they are recovered on the next start if cut);
        stop plugins' background work (``close()``)."""
        end = time.monotonic() + timeout
        self.executor.join(timeout)
        self.router.collect(self._now if self._now is not None else self.clock())
        for plugin in self.plugins.values():
            if isinstance(plugin, Closes):
                with contextlib.suppress(Exception):
                    plugin.close(max(0.0, end - time.monotonic()))

    def pause(self, paused: bool = True) -> None:
        """Pause (or resume) all remediation in this process; see also the pause file."""
        self._paused = paused

    def paused(self) -> bool:
        """Paused by :meth:`pause` or by the pause file."""
        return self._paused or bool(self.pause_flag_path and os.path.exists(self.pause_flag_path))

    @property
    def exhausted(self) -> set[str]:
        """Fingerprints of firing alerts whose escalation ended in a page (label them remediation="exhausted")."""
        return self.router.exhausted

    def in_progress(self) -> int:
        """Actions in flight in this process."""
        return self.executor.in_progress()

    def plugin_metrics(self) -> list[MetricSpec]:
        """Catalogue entries of the loaded plugins that export metrics (``metrics`` + ``samples()``)."""
        return [m for p in self._exporters.values() for m in p.metrics]

    def samples(self) -> list[Sample]:
        """Self-metrics (see :data:`METRICS`) and the loaded plugins' own samples."""
        out = [Sample("nodewarden_remediations_total", (("action", a), ("result", r)), v)
               for (a, r), v in sorted(self.tally.results.items())]
        out.append(Sample("nodewarden_remediation_in_progress", (), float(self.in_progress())))
        out += [Sample("nodewarden_remediation_skipped_total", (("action", a), ("reason", r)), v)
                for (a, r), v in sorted(self.tally.skips.items())]
        out.append(Sample("nodewarden_remediation_paused", (), 1.0 if self.paused() else 0.0))
        for name, plugin in self._exporters.items():
            try:
                out += plugin.samples()
            except Exception as err:
                log.error("plugin_samples_failed", action=name, error=str(err))
        return out

    def act(self, action: str, params: Mapping[str, Any], apply: bool, alert: Alert | None = None) -> Entry:
        """Plan one action by hand and, with ``apply``, run it now through the guard rails and the journal."""
        guards = self.policy.defaults
        now = self.clock()
        plugin = self.plugins.get(action)
        if plugin is None:
            raise RemediationError(f"unknown plugin {action!r} (loaded: {', '.join(sorted(self.plugins)) or 'none'})")
        try:
            plan = plugin.plan(alert, plugin.Params.model_validate(dict(params)))
        except (ValidationError, ValueError) as err:
            raise RemediationError(f"bad params for {action}: {err}") from err
        mode = "enforce" if apply else "observe"
        labels = alert.labels if alert else {}
        common = dict(action=action, target=plan.target, mode=mode, fingerprint=alert.fingerprint if alert else "",
                      alertname=labels.get("alertname", ""), route="(by hand)", plan=plan)
        if not apply:
            eid = self.journal.add(op="apply", status="planned", reason="by hand", **common)
            return self.journal.get(eid)  # type: ignore[return-value]
        in_flight = len(self.journal.started())
        reason = ("paused" if self.paused() else self.guards.check(guards, mode, plan, now, in_flight))
        if reason:
            eid = self.journal.add(op="apply", status="skipped", reason=reason, **common)
            self.tally.skip(action, reason)
            return self.journal.get(eid)  # type: ignore[return-value]
        self.guards.record_start(mode, plan, now)
        eid = self.journal.add(op="apply", status="started", **common)
        self.executor.apply(eid, plugin, plan, None, lambda: self.router.gate(plugin, plan, guards, alert),
                            self.router.releaser(plugin, plan))
        self.router.collect(self.clock())
        return self.journal.get(eid)  # type: ignore[return-value]

    def revert_entry(self, entry_id: int) -> Entry:
        """Revert one applied entry by hand (``nodewarden act --revert ID``); returns the revert row."""
        entry = self.journal.get(entry_id)
        if entry is None or entry.op != "apply":
            raise RemediationError(f"no applied action with id {entry_id}")
        if entry.status != "succeeded":
            raise RemediationError(f"entry {entry_id} is {entry.status}; only succeeded actions can be reverted")
        plugin = self.plugins.get(entry.action)
        if plugin is None:
            raise RemediationError(f"plugin {entry.action!r} is not loaded")
        plan = entry.get_plan()
        if not plan.reversible:
            raise RemediationError(f"entry {entry_id} ({entry.action}) is not reversible")
        rid = self.router.start_revert(entry, plan, "by hand")
        self.executor.revert(rid, entry.id, plugin, plan, None, self.router.releaser(plugin, plan))
        self.router.collect(self.clock())
        return self.journal.get(rid)  # type: ignore[return-value]
