"""The remediator: routes alerts to escalation steps, enforces the guard rails, drives plugins, journals it all.

Called once per tick from the sampling thread (:meth:`Remediator.on_tick`), it only decides and journals;
actions run in worker threads with a deadline, so a stuck plugin never stalls sampling, rules or /metrics.

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
import json
import os
import queue
import threading
import time
import urllib.error
import urllib.request
from collections import defaultdict, deque
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import structlog
from pydantic import ValidationError

from agent.core.alerts import Alert
from agent.core.errors import NodewardenError, RemediationError
from agent.core.formatting import rfc3339
from agent.core.metrics import MetricSpec, Sample
from agent.core.plugin import Cluster, Entry, Plan, Remediation
from agent.remediation.journal import Journal
from agent.remediation.policy import PAGE, Guards, Policy, Route, load_policy, render

__all__ = ["Remediator", "load_policy"]

EXPIRY_CHECK_INTERVAL = 5.0  # seconds between checks of plugins' maximum action durations
PROGRESS_INTERVAL = 1.0  # seconds between journal updates of a running action's progress

log = structlog.get_logger("nodewarden.remediator")

METRICS = [
    MetricSpec("nodewarden_remediations_total", "counter", "Remediation decisions and outcomes.", ("action", "result")),
    MetricSpec("nodewarden_remediation_in_progress", "gauge", "Remediation actions running now."),
    MetricSpec("nodewarden_remediation_skipped_total", "counter", "Steps refused by a guard rail.",
               ("action", "reason")),
    MetricSpec("nodewarden_remediation_paused", "gauge", "1 while remediation is paused."),
]


@dataclass
class _Episode:
    """One alert instance's walk down one route's escalation."""

    route: int
    fingerprint: str
    alert: Alert
    step: int = 0
    due: float = 0.0            # when the current step may run
    since: float = 0.0          # when the current step first became due (refusals escalate after its wait)
    busy: int | None = None     # journal id of the job in flight
    skip: str = ""              # last skip reason journaled for this step (journal each reason once)
    applied: list[int] = field(default_factory=list)   # reversible applied entries not yet reverted
    clear_since: float | None = None
    exhausted: bool = False
    paged_at: float | None = None
    detail: str = ""            # message of the last refused plan (journaled with the skip)


@dataclass
class _Job:
    entry_id: int
    action: str
    deadline: float
    thread: threading.Thread
    episode: tuple[int, str] | None
    mode: str = "enforce"
    at: float = 0.0             # dispatch time (the cooldown / rate-limit reservation)
    timed_out: bool = False


@dataclass(frozen=True)
class _Done:
    entry_id: int
    episode: tuple[int, str] | None
    kind: str                   # apply | revert | page | plan
    status: str                 # succeeded | failed | skipped | planned | reverted
    reason: str = ""
    plan: Plan | None = None


class Remediator:
    """Decides and dispatches remediation for the alerts of each tick (see module docstring)."""

    metrics = METRICS

    def __init__(self, policy: Policy, journal: Journal, plugins: Mapping[str, Remediation], mode: str,
                 clock=time.time, pause_flag_path: str | None = None, cluster: Cluster | None = None,
                 post=None) -> None:
        self.policy = policy
        self.journal = journal
        self.plugins = dict(plugins)
        self.mode = mode
        self.clock = clock
        self.pause_flag_path = pause_flag_path
        self.cluster = cluster
        self._post = post or _http_post
        self._paused = False
        self._now: float | None = None   # the latest tick's time
        self._episodes: dict[tuple[int, str], _Episode] = {}
        self._last_firing: dict[str, bool] = {}
        self._changes: dict[str, deque[float]] = defaultdict(deque)
        self._last_start: dict[tuple[str, str, str], float] = {}     # (mode, action, target) -> t
        self._starts: dict[str, deque[tuple[float, str]]] = defaultdict(deque)  # mode -> (t, action)
        self._jobs: dict[int, _Job] = {}
        self._done: queue.SimpleQueue[_Done] = queue.SimpleQueue()
        self._results: dict[tuple[str, str], float] = defaultdict(float)
        self._skips: dict[tuple[str, str], float] = defaultdict(float)
        self._guards = [policy.guards(r) for r in policy.routes]
        self._max_window = max([g.rate_limit.window for g in self._guards] + [policy.defaults.rate_limit.window])
        self._flap_window = max([g.flap.window for g in self._guards] or [0.0])
        self._route_index = {policy.route_name(i): i for i in range(len(policy.routes))}
        self._expiring: dict[int, int] = {}   # revert entry id -> applied entry id, for expired actions
        self._next_expiry_check = 0.0
        self._load_history(self.clock())

    # ------------------------------------------------------------ public

    def on_tick(self, alerts: list[Alert], now: float) -> None:
        """Decide for this tick's alerts: journal decisions and dispatch due steps and reverts to workers."""
        self._now = now
        self._collect(now)
        paused = self.paused()
        firing = {a.fingerprint: a for a in alerts if a.state == "firing"}
        self._track_flaps(alerts, firing, now)
        for fp, alert in firing.items():
            for ri, route in enumerate(self.policy.routes):
                if not route.matches(alert.labels):
                    continue
                key = (ri, fp)
                ep = self._episodes.get(key)
                if ep is None:
                    ep = self._episodes[key] = _Episode(ri, fp, alert, due=now, since=now)
                ep.alert, ep.clear_since = alert, None
                self._advance(ep, route, now, paused)
                if not route.continue_:
                    break
        for key, ep in list(self._episodes.items()):
            if ep.fingerprint in firing and self._still_routed(ep):
                continue
            self._resolved(key, ep, now, paused)
        if now >= self._next_expiry_check:
            self._next_expiry_check = now + EXPIRY_CHECK_INTERVAL
            self._expire(now)

    def recover(self) -> dict[str, Any]:
        """On start: hand entries left ``started`` to their plugin's ``recover()``; rebuild revert state; let
        plugins with ``reconcile(active)`` make the host match the journal (their results are returned by
        plugin name); revert what they report as expired."""
        for entry in self.journal.started():
            plugin = self.plugins.get(entry.action)
            if entry.op == PAGE:
                self.journal.finish(entry.id, "failed", "interrupted page; not resent", reason="interrupted")
                continue
            if plugin is None:
                log.warning("recover_plugin_missing", entry=entry.id, action=entry.action)
                continue  # stays 'started': recovered when the plugin is back
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
            self._results[(entry.action, f"recovered_{status}")] += 1
            log.info("recovered", entry=entry.id, action=entry.action, status=status)
        now = self.clock()
        self._load_history(now)
        for entry in self.journal.active():
            ri = self._route_index.get(entry.route)
            if ri is None or not entry.fingerprint:
                continue
            key = (ri, entry.fingerprint)
            ep = self._episodes.get(key)
            if ep is None:
                alert = Alert(labels={"alertname": entry.alertname}, annotations={}, state="firing",
                              active_at=entry.ts, value=0.0, fingerprint=entry.fingerprint)
                wait = self.policy.routes[ri].steps[min(entry.step, len(self.policy.routes[ri].steps) - 1)].wait
                ep = self._episodes[key] = _Episode(ri, entry.fingerprint, alert, step=entry.step + 1,
                                                    due=entry.ts + wait, since=entry.ts + wait)
            if entry.id not in ep.applied:
                ep.applied.append(entry.id)

        reconciled: dict[str, Any] = {}
        for name, plugin in self.plugins.items():
            reconcile = getattr(plugin, "reconcile", None)
            if not callable(reconcile):
                continue
            try:
                found = reconciled[name] = reconcile([e for e in self.journal.active() if e.action == name])
            except Exception as err:  # a plugin failure is data
                log.error("reconcile_failed", action=name, error=str(err))
                continue
            log.info("reconciled", action=name, result=str(found))
            for eid in getattr(found, "expired", ()):
                self._expire_entry(eid, now)
        return reconciled

    def _expire(self, now: float) -> None:
        """Revert actions past their plugin's maximum duration (plugins with ``expired(active, now)``)."""
        hooks = {n: p for n, p in self.plugins.items() if callable(getattr(p, "expired", None))}
        if not hooks:
            return
        active = self.journal.active()
        for name, plugin in hooks.items():
            try:
                ids = plugin.expired([e for e in active if e.action == name], now)
            except Exception as err:
                log.error("expiry_check_failed", action=name, error=str(err))
                continue
            for eid in ids:
                self._expire_entry(eid, now)

    def _expire_entry(self, eid: int, now: float) -> None:
        """Start reverting one expired action; its episode then goes on to the next step (e.g. page)."""
        if eid in self._expiring.values():
            return
        entry = self.journal.get(eid)
        plugin = self.plugins.get(entry.action) if entry else None
        if entry is None or entry.status != "succeeded" or plugin is None:
            return
        key, ep = next(((k, e) for k, e in self._episodes.items() if eid in e.applied), (None, None))
        if ep is not None and ep.busy is not None:
            return  # something is running for this alert; look again at the next check
        rid = self.journal.add(op="revert", action=entry.action, status="started", target=entry.target,
                               mode="enforce", fingerprint=entry.fingerprint, alertname=entry.alertname,
                               route=entry.route, step=entry.step, plan=entry.get_plan(), parent=entry.id,
                               reason="expired")
        self._expiring[rid] = eid
        if ep is not None:
            ep.busy = rid
        log.info("remediation_expired", id=eid, action=entry.action, revert=rid)
        guards = self._guards[ep.route] if ep is not None else self.policy.defaults
        self._spawn(rid, entry.action, guards, key, self._run_revert, rid, eid, plugin, entry.get_plan(), key)

    def start_plugins(self) -> None:
        """Start plugins' background work (``start()``, e.g. restore's scrubber); the daemon calls this."""
        for name, plugin in self.plugins.items():
            starter = getattr(plugin, "start", None)
            if callable(starter):
                try:
                    starter()
                except Exception as err:  # a plugin failure is data
                    log.error("plugin_start_failed", action=name, error=str(err))

    def close(self, timeout: float) -> None:
        """Wait up to ``timeout`` seconds for actions in flight (they are recovered on the next start if cut);
        stop plugins' background work (``close()``)."""
        end = time.monotonic() + timeout
        for job in list(self._jobs.values()):
            job.thread.join(max(0.0, end - time.monotonic()))
        self._collect(self._now if self._now is not None else self.clock())
        for plugin in self.plugins.values():
            closer = getattr(plugin, "close", None)
            if callable(closer):
                with contextlib.suppress(Exception):
                    closer(max(0.0, end - time.monotonic()))

    def pause(self, paused: bool = True) -> None:
        """Pause (or resume) all remediation in this process; see also the pause file."""
        self._paused = paused

    def paused(self) -> bool:
        """Paused by :meth:`pause` or by the pause file."""
        return self._paused or bool(self.pause_flag_path and os.path.exists(self.pause_flag_path))

    @property
    def exhausted(self) -> set[str]:
        """Fingerprints of firing alerts whose escalation ended in a page (label them remediation="exhausted")."""
        return {ep.fingerprint for ep in self._episodes.values() if ep.exhausted and ep.clear_since is None}

    def in_progress(self) -> int:
        """Actions in flight in this process."""
        return sum(1 for j in self._jobs.values() if j.thread.is_alive())

    def plugin_metrics(self) -> list[MetricSpec]:
        """Catalogue entries of the loaded plugins that export metrics (``metrics`` + ``samples()``)."""
        return [m for p in self.plugins.values() if callable(getattr(p, "samples", None))
                for m in getattr(p, "metrics", [])]

    def samples(self) -> list[Sample]:
        """Self-metrics (see :data:`METRICS`) and the loaded plugins' own samples."""
        out = [Sample("nodewarden_remediations_total", (("action", a), ("result", r)), v)
               for (a, r), v in sorted(self._results.items())]
        out.append(Sample("nodewarden_remediation_in_progress", (), float(self.in_progress())))
        out += [Sample("nodewarden_remediation_skipped_total", (("action", a), ("reason", r)), v)
                for (a, r), v in sorted(self._skips.items())]
        out.append(Sample("nodewarden_remediation_paused", (), 1.0 if self.paused() else 0.0))
        for name, plugin in self.plugins.items():
            sampler = getattr(plugin, "samples", None)
            if callable(sampler):
                try:
                    out += sampler()
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
        reason = ("paused" if self.paused() else self._local_guards(guards, mode, plan, now, in_flight))
        if not reason and plan.scope == "node":
            reason = self._blast_radius(guards, plugin)
        if reason:
            eid = self.journal.add(op="apply", status="skipped", reason=reason, **common)
            self._skips[(action, reason)] += 1
            return self.journal.get(eid)  # type: ignore[return-value]
        self._record_start(mode, plan, now)
        eid = self.journal.add(op="apply", status="started", **common)
        self._run_apply(eid, plugin, plan, None, guards, check_blast=False)
        self._collect(self.clock())
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
        rid = self._start_revert(entry, plan, by_hand=True)
        self._run_revert(rid, entry.id, plugin, plan, None)
        self._collect(self.clock())
        return self.journal.get(rid)  # type: ignore[return-value]

    # ------------------------------------------------------------ escalation

    def _still_routed(self, ep: _Episode) -> bool:
        return self.policy.routes[ep.route].matches(ep.alert.labels)

    def _advance(self, ep: _Episode, route: Route, now: float, paused: bool) -> None:
        if ep.busy is not None or ep.step >= len(route.steps):
            self._resend_page(ep, now)
            return
        if now < ep.due:
            return
        guards = self._guards[ep.route]
        step = route.steps[ep.step]
        mode = "enforce" if (self.mode == "enforce" and guards.mode == "enforce") else "observe"
        reason, plan, plugin = self._check(ep, step, guards, mode, now, paused)
        if reason:
            self._skip(ep, route, step.action, reason, mode, plan, now)
            if reason != "paused" and now - ep.since >= step.wait and ep.step + 1 < len(route.steps):
                self._next_step(ep, now, now)  # refused for longer than its wait: escalate now
                self._advance(ep, route, now, paused)
            return
        self._dispatch(ep, route, step.action, plan, plugin, guards, mode, now)

    def _check(self, ep: _Episode, step, guards: Guards, mode: str, now: float, paused: bool):
        if paused:
            return "paused", None, None
        if self.policy.no_data.blocks(ep.alert):
            return "no_data", None, None
        if step.action == PAGE:  # a flapping alert whose actions were refused still reaches a human
            return "", None, None
        changes = self._changes.get(ep.fingerprint, ())
        if sum(1 for t in changes if t >= now - guards.flap.window) > guards.flap.max_changes:
            return "flapping", None, None
        plugin = self.plugins.get(step.action)
        if plugin is None:
            return "plugin_unavailable", None, None
        try:
            params = plugin.Params.model_validate(render(step.params, ep.alert.labels, ep.alert.value))
        except ValidationError as err:
            log.warning("bad_params", action=step.action, error=str(err).splitlines()[:3])
            return "bad_params", None, None
        try:
            plan = plugin.plan(ep.alert, params)
        except (NodewardenError, ValueError) as err:
            # A plugin that refuses on purpose says why in ``err.reason`` (e.g. throttle's foreign_qdisc).
            why = getattr(err, "reason", "")
            log.warning("plan_refused" if why else "plan_failed", action=step.action, error=str(err))
            ep.detail = str(err)
            return (f"refused:{why}" if why else "plan_failed"), None, None
        reason = self._local_guards(guards, mode, plan, now, self.in_progress())
        return reason, plan, plugin

    def _local_guards(self, guards: Guards, mode: str, plan: Plan, now: float, in_flight: int) -> str:
        if plan.noop:
            return ""
        last = self._last_start.get((mode, plan.action, plan.target))
        if last is not None and now - last < guards.cooldown:
            return "cooldown"
        starts = self._starts[mode]
        rl = guards.rate_limit
        while starts and starts[0][0] <= now - self._max_window:
            starts.popleft()
        recent = [a for t, a in starts if t > now - rl.window]
        if rl.total is not None and len(recent) >= rl.total:
            return "rate_limit"
        if rl.per_action is not None and sum(1 for a in recent if a == plan.action) >= rl.per_action:
            return "rate_limit"
        if mode == "enforce" and in_flight >= guards.max_concurrent:
            return "concurrency"
        return ""

    def _blast_radius(self, guards: Guards, plugin: Remediation | None) -> str:
        cluster = self.cluster or getattr(plugin, "cluster", None)
        br = guards.blast_radius
        if cluster is None or (br.max_fraction is None and br.max_nodes is None):
            return ""
        try:
            held, total = cluster.held()
        except NodewardenError as err:
            log.warning("blast_radius_unknown", error=str(err))
            return "blast_radius_unknown"  # cannot tell: refuse (fail safe)
        if br.max_nodes is not None and held + 1 > br.max_nodes:
            return "blast_radius"
        if br.max_fraction is not None and (total <= 0 or (held + 1) / total > br.max_fraction):
            return "blast_radius"
        return ""

    def _skip(self, ep: _Episode, route: Route, action: str, reason: str, mode: str, plan: Plan | None,
              now: float) -> None:
        if ep.skip == reason:
            return  # journal each refusal of a step once, not every tick
        ep.skip = reason
        self._skips[(action, reason)] += 1
        self.journal.add(op="page" if action == PAGE else "apply", action=action, status="skipped", reason=reason,
                         mode=mode, target=plan.target if plan else "", fingerprint=ep.fingerprint,
                         alertname=ep.alert.name, route=self.policy.route_name(ep.route), step=ep.step, plan=plan,
                         output=ep.detail)
        ep.detail = ""
        log.info("remediation_skipped", action=action, reason=reason, alert=ep.alert.name, route=route.name)

    def _next_step(self, ep: _Episode, now: float, due: float) -> None:
        ep.step += 1
        ep.due = ep.since = due
        ep.skip = ""

    def _record_start(self, mode: str, plan: Plan, now: float) -> None:
        if plan.noop:
            return
        self._last_start[(mode, plan.action, plan.target)] = now
        self._starts[mode].append((now, plan.action))

    def _release(self, mode: str, plan: Plan, at: float) -> None:
        """Give back a cooldown / rate-limit reservation for a start that was refused in the worker."""
        if self._last_start.get((mode, plan.action, plan.target)) == at:
            del self._last_start[(mode, plan.action, plan.target)]
        with contextlib.suppress(ValueError):
            self._starts[mode].remove((at, plan.action))

    def _dispatch(self, ep: _Episode, route: Route, action: str, plan: Plan | None, plugin: Remediation | None,
                  guards: Guards, mode: str, now: float) -> None:
        common = dict(fingerprint=ep.fingerprint, alertname=ep.alert.name, route=self.policy.route_name(ep.route),
                      step=ep.step, mode=mode)
        key = (ep.route, ep.fingerprint)
        if action == PAGE:
            status = "started" if mode == "enforce" else "planned"
            eid = self.journal.add(op="page", action=PAGE, status=status, target=ep.alert.name, **common)
            ep.exhausted = True
            if mode == "enforce":
                ep.busy, ep.paged_at = eid, now
                self._spawn(eid, PAGE, guards, key, self._run_page, eid, ep.alert, False)
            else:
                self._results[(PAGE, "planned")] += 1
                self._next_step(ep, now, now)
            return
        assert plan is not None and plugin is not None
        self._record_start(mode, plan, now)
        if mode == "observe":
            eid = self.journal.add(op="apply", action=action, status="planned", target=plan.target, plan=plan,
                                   reason="observe mode", **common)
            self._results[(action, "planned")] += 1
            log.info("remediation_planned", action=action, target=plan.target, changes=list(plan.changes))
            self._next_step(ep, now, now + route.steps[ep.step].wait)
            return
        eid = self.journal.add(op="apply", action=action, status="started", target=plan.target, plan=plan, **common)
        ep.busy = eid
        log.info("remediation_started", id=eid, action=action, target=plan.target)
        self._spawn(eid, action, guards, key, self._run_apply, eid, plugin, plan, key, guards, True)

    def _resolved(self, key: tuple[int, str], ep: _Episode, now: float, paused: bool) -> None:
        if ep.busy is not None:
            return
        if ep.clear_since is None:
            ep.clear_since = now
            if ep.exhausted and ep.paged_at is not None and self.policy.alertmanager.url:
                self._spawn(None, PAGE, self.policy.defaults, None, self._run_page, None, ep.alert, True)
        guards = self._guards[ep.route] if ep.route < len(self._guards) else self.policy.defaults
        if not ep.applied or guards.revert_after is None:
            del self._episodes[key]
            return
        if paused or now - ep.clear_since < guards.revert_after:
            return
        eid = ep.applied[0]
        entry = self.journal.get(eid)
        plugin = self.plugins.get(entry.action) if entry else None
        if entry is None or entry.status != "succeeded" or plugin is None:
            ep.applied.pop(0)
            return
        rid = self._start_revert(entry, entry.get_plan(), by_hand=False)
        ep.busy = rid
        self._spawn(rid, entry.action, guards, key, self._run_revert, rid, eid, plugin, entry.get_plan(), key)

    def _start_revert(self, entry: Entry, plan: Plan, by_hand: bool) -> int:
        return self.journal.add(op="revert", action=entry.action, status="started", target=entry.target,
                                mode="enforce", fingerprint=entry.fingerprint, alertname=entry.alertname,
                                route=entry.route, step=entry.step, plan=plan, parent=entry.id,
                                reason="by hand" if by_hand else "alert resolved")

    # ------------------------------------------------------------ workers

    def _spawn(self, eid: int | None, action: str, guards: Guards, key, fn, *args) -> None:
        t = threading.Thread(target=fn, args=args, name=f"remediation-{action}-{eid}", daemon=True)
        if eid is not None:
            now = self._now if self._now is not None else self.clock()
            self._jobs[eid] = _Job(eid, action, now + guards.timeout, t, key, at=now)
        t.start()

    def _run_apply(self, eid: int, plugin: Remediation, plan: Plan, key, guards: Guards, check_blast: bool) -> None:
        if check_blast and plan.scope == "node" and not plan.noop:
            reason = self._blast_radius(guards, plugin)
            if reason:
                self.journal.finish(eid, "skipped", reason=reason)
                self._done.put(_Done(eid, key, "apply", "skipped", reason, plan))
                return
        try:
            with self._progress_to(eid, plugin):
                outcome = plugin.apply(plan)
            plan = plan.with_undo(outcome.undo) if outcome.undo else plan
            ok = plugin.verify(plan)
        except Exception as err:  # a plugin failure is data: journal it and go on
            log.error("remediation_failed", id=eid, action=plan.action, error=str(err))
            self.journal.finish(eid, "failed", str(err), reason="apply_failed")
            self._done.put(_Done(eid, key, "apply", "failed", "apply_failed", plan))
            return
        status = "succeeded" if ok else "failed"
        self.journal.finish(eid, status, outcome.output, plan=plan, reason="" if ok else "verify_failed")
        log.info("remediation_finished", id=eid, action=plan.action, status=status)
        self._done.put(_Done(eid, key, "apply", status, "" if ok else "verify_failed", plan))

    @contextlib.contextmanager
    def _progress_to(self, eid: int, plugin: Remediation) -> Iterator[None]:
        """While ``apply`` runs, journal a plugin's ``progress(done, total)`` calls (bytes) at most once a second.

        Plugins opt in with a settable ``progress`` attribute (migrate does); one action per plugin reports at a
        time, others run without progress rows.
        """
        if not hasattr(plugin, "progress") or getattr(plugin, "progress", None) is not None:
            yield
            return
        last = [0.0]

        def report(done: int, total: int) -> None:
            now = time.monotonic()
            if now - last[0] >= PROGRESS_INTERVAL or done >= total:
                last[0] = now
                pct = f" ({100 * done / total:.0f}%)" if total else ""
                with contextlib.suppress(NodewardenError):
                    self.journal.progress(eid, f"in progress: {done / 1e9:.2f} of {total / 1e9:.2f} GB{pct}")

        plugin.progress = report  # type: ignore[attr-defined]
        try:
            yield
        finally:
            plugin.progress = None  # type: ignore[attr-defined]

    def _run_revert(self, rid: int, applied_id: int, plugin: Remediation, plan: Plan, key) -> None:
        try:
            outcome = plugin.revert(plan)
        except Exception as err:
            log.error("revert_failed", id=rid, action=plan.action, error=str(err))
            self.journal.finish(rid, "failed", str(err), reason="revert_failed")
            self._done.put(_Done(rid, key, "revert", "failed", "revert_failed", plan))
            return
        self.journal.mark_reverted(rid, applied_id, outcome.output)
        log.info("remediation_reverted", id=rid, applied=applied_id, action=plan.action)
        self._done.put(_Done(rid, key, "revert", "reverted", "", plan))

    def _run_page(self, eid: int | None, alert: Alert, resolved: bool) -> None:
        am = self.policy.alertmanager
        status, output = "succeeded", "no alertmanager url configured; journaled only"
        if am.url:
            try:
                self._post(am.url.rstrip("/") + "/api/v2/alerts", [_am_alert(alert, resolved, self.clock())],
                           am.timeout)
                output = f"pushed to {am.url}" + (" (resolved)" if resolved else "")
            except (OSError, urllib.error.URLError, ValueError) as err:
                status, output = "failed", f"alertmanager push failed: {err}"
                log.error("page_failed", error=str(err))
        if eid is not None:
            self.journal.finish(eid, status, output, reason="" if status == "succeeded" else "push_failed")
            self._done.put(_Done(eid, None, "page", status))

    def _resend_page(self, ep: _Episode, now: float) -> None:
        am = self.policy.alertmanager
        if ep.exhausted and ep.paged_at is not None and ep.busy is None and am.url and now - ep.paged_at >= am.resend:
            ep.paged_at = now
            self._spawn(None, PAGE, self.policy.defaults, None, self._run_page, None, ep.alert, False)

    def _collect(self, now: float) -> None:
        """Fold finished jobs back into the episodes; time out jobs past their deadline."""
        while True:
            try:
                d = self._done.get_nowait()
            except queue.Empty:
                break
            job = self._jobs.pop(d.entry_id, None)
            action = d.plan.action if d.plan else (job.action if job else PAGE)
            if d.episode is None and d.entry_id in self._expiring and not any(
                    e.busy == d.entry_id for e in self._episodes.values()):
                self._expiring.pop(d.entry_id)
            self._results[(action, d.status)] += 1
            if d.status == "skipped":
                self._skips[(action, d.reason)] += 1
                if job is not None and d.plan is not None:
                    self._release(job.mode, d.plan, job.at)
            ep = self._episodes.get(d.episode) if d.episode else None
            if ep is None:
                for e in self._episodes.values():
                    if e.busy == d.entry_id:
                        ep = e
                if ep is None:
                    continue
            ep.busy = None
            expired = self._expiring.pop(d.entry_id, None)
            if d.kind == "revert" and expired is not None:
                if d.status == "reverted" and expired in ep.applied:
                    ep.applied.remove(expired)
                    # Expired, not resolved: the alert may still fire, so the escalation goes on (e.g. page).
                    route = self.policy.routes[ep.route]
                    if ep.step < len(route.steps):
                        ep.due = ep.since = now
                        ep.skip = ""
                continue
            if d.kind == "revert":
                if d.status == "reverted" and ep.applied:
                    ep.applied.pop(0)
                    if not ep.applied:  # all undone: a new firing starts the escalation afresh
                        ep.step, ep.due, ep.since, ep.skip, ep.exhausted = 0, now, now, "", False
                else:
                    ep.clear_since = now  # try again after another revert_after
                continue
            route = self.policy.routes[ep.route]
            wait = route.steps[min(ep.step, len(route.steps) - 1)].wait
            if d.status == "succeeded" and d.kind == "apply" and d.plan and d.plan.reversible and not d.plan.noop:
                ep.applied.append(d.entry_id)
            if d.status == "skipped":  # refused in the worker (blast radius): retry later, escalate after wait
                ep.skip = d.reason
                ep.due = now + self._guards[ep.route].retry_interval
                if now - ep.since >= wait and ep.step + 1 < len(route.steps):
                    self._next_step(ep, now, now)
            elif d.status == "failed":
                self._next_step(ep, now, now)  # a failed step escalates at once
            else:
                self._next_step(ep, now, now + wait)
        for job in list(self._jobs.values()):
            if not job.timed_out and now > job.deadline and job.thread.is_alive():
                job.timed_out = True
                self.journal.finish(job.entry_id, "failed", "deadline exceeded; still running", reason="timeout")
                self._results[(job.action, "timeout")] += 1
                log.error("remediation_timeout", id=job.entry_id, action=job.action)

    def _track_flaps(self, alerts: list[Alert], firing: Mapping[str, Alert], now: float) -> None:
        window = self._flap_window
        seen = {a.fingerprint for a in alerts} | set(self._last_firing)
        for fp in seen:
            state = fp in firing
            prev = self._last_firing.get(fp)
            changes = self._changes[fp]
            if prev is not None and prev != state:
                changes.append(now)
            while changes and changes[0] < now - window:
                changes.popleft()
            if state or changes:
                self._last_firing[fp] = state
            else:
                self._last_firing.pop(fp, None)
                self._changes.pop(fp, None)

    def _load_history(self, now: float) -> None:
        """Rebuild cooldown and rate-limit memory from the journal (so a restart does not reset them)."""
        horizon = max([g.cooldown for g in self._guards] + [self.policy.defaults.cooldown, self._max_window])
        self._last_start.clear()
        self._starts.clear()
        rows = self.journal.query("op = 'apply' AND ts >= ? AND status IN ('planned','started','succeeded','failed')",
                                  (now - horizon,))
        for e in rows:
            mode = "observe" if e.status == "planned" else "enforce"
            if e.plan and e.plan.get("noop"):
                continue
            self._last_start[(mode, e.action, e.target)] = e.ts
            self._starts[mode].append((e.ts, e.action))


def _am_alert(alert: Alert, resolved: bool, now: float) -> dict[str, Any]:
    labels = {**alert.labels, "remediation": "exhausted"}
    out: dict[str, Any] = {"labels": labels, "annotations": dict(alert.annotations),
                           "startsAt": rfc3339(alert.fired_at or alert.active_at)}
    if resolved:
        out["endsAt"] = rfc3339(now)
    return out


def _http_post(url: str, body: Any, timeout: float) -> None:
    """POST JSON; raises OSError/URLError on failure or a non-2xx status."""
    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        if resp.status // 100 != 2:
            raise OSError(f"HTTP {resp.status}")
