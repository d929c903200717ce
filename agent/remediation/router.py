"""The router: each firing alert's walk down its route's escalation steps (one :class:`Episode` per alert and route).

Per tick it decides, for every episode, whether its current step is due, asks the guard rails, and hands
actions, reverts and pages to the :class:`~agent.remediation.executor.Executor`; outcomes come back through
:meth:`Router.collect` and move the episode on (next step, retry, escalate, revert after resolution).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import structlog
from pydantic import ValidationError

from agent.core.alerts import Alert
from agent.core.errors import NodewardenError
from agent.core.plugin import Entry, Expires, Plan, Refusal, Remediation
from agent.remediation.executor import Done, Executor, Job, Tally
from agent.remediation.guards import BlastRadius, LocalGuards
from agent.remediation.journal import Journal
from agent.remediation.pager import Pager
from agent.remediation.policy import PAGE, Guards, Policy, Route, render

EXPIRY_CHECK_INTERVAL = 5.0  # seconds between checks of plugins' maximum action durations

log = structlog.get_logger("nodewarden.remediator")


@dataclass
class Episode:
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


class Router:
    """Episodes and their escalation (see module docstring)."""

    def __init__(self, policy: Policy, journal: Journal, plugins: Mapping[str, Remediation], mode: str,
                 guards: LocalGuards, blast: BlastRadius, executor: Executor, pager: Pager, tally: Tally) -> None:
        self.policy = policy
        self.journal = journal
        self.plugins = plugins
        self.mode = mode
        self.guards = guards
        self.blast = blast
        self.executor = executor
        self.pager = pager
        self.tally = tally
        self.episodes: dict[tuple[int, str], Episode] = {}
        self.route_index = {policy.route_name(i): i for i in range(len(policy.routes))}
        self._expiring: dict[int, int] = {}   # revert entry id -> applied entry id, for expired actions
        self._next_expiry_check = 0.0

    # ---- per tick

    def on_tick(self, alerts: list[Alert], now: float, paused: bool) -> None:
        """Advance the episodes of this tick's firing alerts; revert or forget those no longer firing."""
        firing = {a.fingerprint: a for a in alerts if a.state == "firing"}
        self.guards.track_flaps(alerts, firing, now)
        for fp, alert in firing.items():
            for ri, route in enumerate(self.policy.routes):
                if not route.matches(alert.labels):
                    continue
                key = (ri, fp)
                ep = self.episodes.get(key)
                if ep is None:
                    ep = self.episodes[key] = Episode(ri, fp, alert, due=now, since=now)
                ep.alert, ep.clear_since = alert, None
                self._advance(ep, route, now, paused)
                if not route.continue_:
                    break
        for key, ep in list(self.episodes.items()):
            if ep.fingerprint in firing and self.policy.routes[ep.route].matches(ep.alert.labels):
                continue
            self._resolved(key, ep, now, paused)
        if now >= self._next_expiry_check:
            self._next_expiry_check = now + EXPIRY_CHECK_INTERVAL
            self.expire(now)

    @property
    def exhausted(self) -> set[str]:
        """Fingerprints of firing alerts whose escalation ended in a page."""
        return {ep.fingerprint for ep in self.episodes.values() if ep.exhausted and ep.clear_since is None}

    def _advance(self, ep: Episode, route: Route, now: float, paused: bool) -> None:
        if ep.busy is not None or ep.step >= len(route.steps):
            self._resend_page(ep, now)
            return
        if now < ep.due:
            return
        guards = self.guards.for_route(ep.route)
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

    def _check(self, ep: Episode, step, guards: Guards, mode: str, now: float, paused: bool):
        if paused:
            return "paused", None, None
        if self.policy.no_data.blocks(ep.alert):
            return "no_data", None, None
        if step.action == PAGE:  # a flapping alert whose actions were refused still reaches a human
            return "", None, None
        if self.guards.flapping(ep.fingerprint, guards, now):
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
            why = err.reason if isinstance(err, Refusal) else ""
            log.warning("plan_refused" if why else "plan_failed", action=step.action, error=str(err))
            ep.detail = str(err)
            return (f"refused:{why}" if why else "plan_failed"), None, None
        reason = self.guards.check(guards, mode, plan, now, self.executor.in_progress())
        return reason, plan, plugin

    def _skip(self, ep: Episode, route: Route, action: str, reason: str, mode: str, plan: Plan | None,
              now: float) -> None:
        if ep.skip == reason:
            return  # journal each refusal of a step once, not every tick
        ep.skip = reason
        self.tally.skip(action, reason)
        self.journal.add(op="page" if action == PAGE else "apply", action=action, status="skipped", reason=reason,
                         mode=mode, target=plan.target if plan else "", fingerprint=ep.fingerprint,
                         alertname=ep.alert.name, route=self.policy.route_name(ep.route), step=ep.step, plan=plan,
                         output=ep.detail)
        ep.detail = ""
        log.info("remediation_skipped", action=action, reason=reason, alert=ep.alert.name, route=route.name)

    def _next_step(self, ep: Episode, now: float, due: float) -> None:
        ep.step += 1
        ep.due = ep.since = due
        ep.skip = ""

    def _dispatch(self, ep: Episode, route: Route, action: str, plan: Plan | None, plugin: Remediation | None,
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
                self._page(eid, ep.alert, False, guards, key, now)
            else:
                self.tally.result(PAGE, "planned")
                self._next_step(ep, now, now)
            return
        assert plan is not None and plugin is not None
        self.guards.record_start(mode, plan, now)
        if mode == "observe":
            self.journal.add(op="apply", action=action, status="planned", target=plan.target, plan=plan,
                             reason="observe mode", **common)
            self.tally.result(action, "planned")
            log.info("remediation_planned", action=action, target=plan.target, changes=list(plan.changes))
            self._next_step(ep, now, now + route.steps[ep.step].wait)
            return
        eid = self.journal.add(op="apply", action=action, status="started", target=plan.target, plan=plan, **common)
        ep.busy = eid
        log.info("remediation_started", id=eid, action=action, target=plan.target)
        self.spawn_apply(eid, plugin, plan, key, guards, now, ep.alert)

    def spawn_apply(self, eid: int, plugin: Remediation, plan: Plan, key, guards: Guards, now: float,
                    alert: Alert | None = None) -> None:
        """Run an apply in a worker, behind the gate of :meth:`gate`."""
        self.executor.spawn(eid, plan.action, guards.timeout, key, now, self.executor.apply, eid, plugin, plan, key,
                            lambda: self.gate(plugin, plan, guards, alert), self.releaser(plugin, plan))

    def gate(self, plugin: Remediation, plan: Plan, guards: Guards, alert: Alert | None) -> tuple[str, str]:
        """Right before an enforced apply (in the worker): ``silenced``, then, for node-scope plans,
        ``maintenance`` and the blast-radius claim. Returns (reason, detail); reason ``""``: go."""
        note = ""
        if alert is not None:
            reason, note = self.pager.silence(alert)
            if reason:
                return reason, note
        if plan.scope != "node" or plan.noop:
            return "", note
        reason, detail = self.blast.maintenance(plugin, plan)
        if reason:
            return reason, detail
        reason, detail = self.blast.claim(guards, plugin, plan)
        return reason, "; ".join(x for x in (note, detail) if x)

    def releaser(self, plugin: Remediation, plan: Plan):
        """What gives a node-scope plan's blast-radius slot back (None for other plans)."""
        if plan.scope != "node" or plan.noop:
            return None
        return lambda: self.blast.release(plugin, plan)

    def spawn_revert(self, rid: int, applied_id: int, plugin: Remediation, plan: Plan, key, guards: Guards,
                     now: float) -> None:
        """Run a revert in a worker; a node-scope revert gives its blast-radius slot back."""
        self.executor.spawn(rid, plan.action, guards.timeout, key, now, self.executor.revert, rid, applied_id,
                            plugin, plan, key, self.releaser(plugin, plan))

    def _page(self, eid: int | None, alert: Alert, resolved: bool, guards: Guards, key, now: float) -> None:
        self.executor.spawn(eid, PAGE, guards.timeout, key, now, self.executor.page, eid,
                            lambda: self.pager.push(alert, resolved))

    def _resend_page(self, ep: Episode, now: float) -> None:
        if ep.exhausted and ep.busy is None and self.pager.due(ep.paged_at, now):
            ep.paged_at = now
            self._page(None, ep.alert, False, self.policy.defaults, None, now)

    def _resolved(self, key: tuple[int, str], ep: Episode, now: float, paused: bool) -> None:
        if ep.busy is not None:
            return
        if ep.clear_since is None:
            ep.clear_since = now
            if ep.exhausted and ep.paged_at is not None and self.pager.enabled:
                self._page(None, ep.alert, True, self.policy.defaults, None, now)
        guards = self.guards.for_route(ep.route)
        if not ep.applied or guards.revert_after is None:
            del self.episodes[key]
            return
        if paused or now - ep.clear_since < guards.revert_after:
            return
        eid = ep.applied[0]
        entry = self.journal.get(eid)
        plugin = self.plugins.get(entry.action) if entry else None
        if entry is None or entry.status != "succeeded" or plugin is None:
            ep.applied.pop(0)
            return
        rid = self.start_revert(entry, entry.get_plan(), "alert resolved")
        ep.busy = rid
        self.spawn_revert(rid, eid, plugin, entry.get_plan(), key, guards, now)

    def start_revert(self, entry: Entry, plan: Plan, reason: str) -> int:
        """Journal the intent to revert ``entry``; returns the revert row's id."""
        return self.journal.add(op="revert", action=entry.action, status="started", target=entry.target,
                                mode="enforce", fingerprint=entry.fingerprint, alertname=entry.alertname,
                                route=entry.route, step=entry.step, plan=plan, parent=entry.id, reason=reason)

    # ---- outcomes

    def collect(self, now: float) -> None:
        """Fold finished jobs back into the episodes; time out jobs past their deadline."""
        for d, job in self.executor.done():
            self._fold(d, job, now)
        for job in self.executor.timeouts(now):
            self.tally.result(job.action, "timeout")

    def _fold(self, d: Done, job: Job | None, now: float) -> None:
        action = d.plan.action if d.plan else (job.action if job else PAGE)
        if d.episode is None and d.entry_id in self._expiring and not any(
                e.busy == d.entry_id for e in self.episodes.values()):
            self._expiring.pop(d.entry_id)
        self.tally.result(action, d.status)
        if d.status == "skipped":
            self.tally.skip(action, d.reason)
            if job is not None and d.plan is not None:
                self.guards.release(job.mode, d.plan, job.at)
        ep = self.episodes.get(d.episode) if d.episode else None
        if ep is None:
            ep = next((e for e in self.episodes.values() if e.busy == d.entry_id), None)
            if ep is None:
                return
        ep.busy = None
        expired = self._expiring.pop(d.entry_id, None)
        if d.kind == "revert" and expired is not None:
            if d.status == "reverted" and expired in ep.applied:
                ep.applied.remove(expired)
                # Expired, not resolved: the alert may still fire, so the escalation goes on (e.g. page).
                if ep.step < len(self.policy.routes[ep.route].steps):
                    ep.due = ep.since = now
                    ep.skip = ""
            return
        if d.kind == "revert":
            if d.status == "reverted" and ep.applied:
                ep.applied.pop(0)
                if not ep.applied:  # all undone: a new firing starts the escalation afresh
                    ep.step, ep.due, ep.since, ep.skip, ep.exhausted = 0, now, now, "", False
            else:
                ep.clear_since = now  # try again after another revert_after
            return
        route = self.policy.routes[ep.route]
        wait = route.steps[min(ep.step, len(route.steps) - 1)].wait
        if d.status == "succeeded" and d.kind == "apply" and d.plan and d.plan.reversible and not d.plan.noop:
            ep.applied.append(d.entry_id)
        if d.status == "skipped":  # refused in the worker (blast radius): retry later, escalate after wait
            ep.skip = d.reason
            ep.due = now + self.guards.for_route(ep.route).retry_interval
            if now - ep.since >= wait and ep.step + 1 < len(route.steps):
                self._next_step(ep, now, now)
        elif d.status == "failed":
            self._next_step(ep, now, now)  # a failed step escalates at once
        else:
            self._next_step(ep, now, now + wait)

    # ---- restart and expiry

    def restore(self, active: list[Entry]) -> None:
        """After a restart: an episode for each applied, not yet reverted entry (so it reverts on resolution)."""
        for entry in active:
            ri = self.route_index.get(entry.route)
            if ri is None or not entry.fingerprint:
                continue
            key = (ri, entry.fingerprint)
            ep = self.episodes.get(key)
            if ep is None:
                alert = Alert(labels={"alertname": entry.alertname}, annotations={}, state="firing",
                              active_at=entry.ts, value=0.0, fingerprint=entry.fingerprint)
                steps = self.policy.routes[ri].steps
                wait = steps[min(entry.step, len(steps) - 1)].wait
                ep = self.episodes[key] = Episode(ri, entry.fingerprint, alert, step=entry.step + 1,
                                                  due=entry.ts + wait, since=entry.ts + wait)
            if entry.id not in ep.applied:
                ep.applied.append(entry.id)

    def expire(self, now: float) -> None:
        """Revert actions past their plugin's maximum duration (plugins with ``expired(active, now)``)."""
        hooks = {n: p for n, p in self.plugins.items() if isinstance(p, Expires)}
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
                self.expire_entry(eid, now)

    def expire_entry(self, eid: int, now: float) -> None:
        """Start reverting one expired action; its episode then goes on to the next step (e.g. page)."""
        if eid in self._expiring.values():
            return
        entry = self.journal.get(eid)
        plugin = self.plugins.get(entry.action) if entry else None
        if entry is None or entry.status != "succeeded" or plugin is None:
            return
        key, ep = next(((k, e) for k, e in self.episodes.items() if eid in e.applied), (None, None))
        if ep is not None and ep.busy is not None:
            return  # something is running for this alert; look again at the next check
        rid = self.start_revert(entry, entry.get_plan(), "expired")
        self._expiring[rid] = eid
        if ep is not None:
            ep.busy = rid
        log.info("remediation_expired", id=eid, action=entry.action, revert=rid)
        guards = self.guards.for_route(ep.route) if ep is not None else self.policy.defaults
        self.spawn_revert(rid, eid, plugin, entry.get_plan(), key, guards, now)
