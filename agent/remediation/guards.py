"""Guard rails: the local ones (cooldown, rate limits, concurrency, flapping) and the cluster-wide blast radius.

:class:`LocalGuards` owns this process's memory of recent starts and alert state changes (rebuilt from the
journal on start, so a restart resets nothing). :class:`BlastRadius` asks the cluster engine (Slurm,
Kubernetes) and, where the engine supports it, takes a *claim* that holds under concurrency (see
docs/remediation.md, "Blast radius").
"""

from __future__ import annotations

import contextlib
from collections import defaultdict, deque
from collections.abc import Mapping

import structlog

from agent.core.alerts import Alert
from agent.core.errors import NodewardenError
from agent.core.plugin import Cap, Claims, Cluster, HasCluster, KnowsMaintenance, Plan, Remediation
from agent.remediation.journal import Journal
from agent.remediation.policy import Guards, Policy

log = structlog.get_logger("nodewarden.remediator")


class LocalGuards:
    """Cooldown (per mode, action and target), rate limits (sliding window), concurrency and the flap gate."""

    def __init__(self, policy: Policy) -> None:
        self.policy = policy
        self.routes = [policy.guards(r) for r in policy.routes]
        self._max_window = max([g.rate_limit.window for g in self.routes] + [policy.defaults.rate_limit.window])
        self._flap_window = max([g.flap.window for g in self.routes] or [0.0])
        self._last_start: dict[tuple[str, str, str], float] = {}     # (mode, action, target) -> t
        self._starts: dict[str, deque[tuple[float, str]]] = defaultdict(deque)  # mode -> (t, action)
        self._last_firing: dict[str, bool] = {}
        self._changes: dict[str, deque[float]] = defaultdict(deque)

    def for_route(self, index: int | None) -> Guards:
        """Effective guard rails of route ``index`` (the defaults for None or an unknown index)."""
        if index is None or not 0 <= index < len(self.routes):
            return self.policy.defaults
        return self.routes[index]

    # ---- flapping

    def track_flaps(self, alerts: list[Alert], firing: Mapping[str, Alert], now: float) -> None:
        """Remember state changes of every alert seen (within the longest flap window)."""
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

    def flapping(self, fingerprint: str, guards: Guards, now: float) -> bool:
        """More state changes within the flap window than allowed."""
        changes = self._changes.get(fingerprint, ())
        return sum(1 for t in changes if t >= now - guards.flap.window) > guards.flap.max_changes

    # ---- cooldown, rate limit, concurrency

    def check(self, guards: Guards, mode: str, plan: Plan, now: float, in_flight: int) -> str:
        """The first local guard rail that refuses ``plan`` now (``""``: none)."""
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

    def record_start(self, mode: str, plan: Plan, now: float) -> None:
        """A start reserves the cooldown and a rate-limit slot."""
        if plan.noop:
            return
        self._last_start[(mode, plan.action, plan.target)] = now
        self._starts[mode].append((now, plan.action))

    def release(self, mode: str, plan: Plan, at: float) -> None:
        """Give back a cooldown / rate-limit reservation for a start that was refused in the worker."""
        if self._last_start.get((mode, plan.action, plan.target)) == at:
            del self._last_start[(mode, plan.action, plan.target)]
        with contextlib.suppress(ValueError):
            self._starts[mode].remove((at, plan.action))

    def load_history(self, journal: Journal, now: float) -> None:
        """Rebuild cooldown and rate-limit memory from the journal (so a restart does not reset them)."""
        horizon = max([g.cooldown for g in self.routes] + [self.policy.defaults.cooldown, self._max_window])
        self._last_start.clear()
        self._starts.clear()
        rows = journal.query("op = 'apply' AND ts >= ? AND status IN ('planned','started','succeeded','failed')",
                             (now - horizon,))
        for e in rows:
            mode = "observe" if e.status == "planned" else "enforce"
            if e.plan and e.plan.get("noop"):
                continue
            self._last_start[(mode, e.action, e.target)] = e.ts
            self._starts[mode].append((e.ts, e.action))


class BlastRadius:
    """The cluster-wide cap on nodes held out of service (``node``-scope plans only)."""

    def __init__(self, cluster: Cluster | None = None) -> None:
        self.cluster = cluster

    def engine(self, plugin: Remediation | None) -> Cluster | None:
        """The cluster engine to ask: the one injected, else the plugin's."""
        return self.cluster or (plugin.cluster if isinstance(plugin, HasCluster) else None)

    def check(self, guards: Guards, plugin: Remediation | None) -> str:
        """Refuse when the nodes held now already fill the cap; ``blast_radius_unknown`` when it cannot tell."""
        cluster = self.engine(plugin)
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

    def claim(self, guards: Guards, plugin: Remediation | None, plan: Plan) -> tuple[str, str]:
        """Take a slot under the cap for ``plan`` (reason, detail); ``""`` reason: granted.

        An engine with ``claim(plan, cap)`` (Slurm: claim by drain; Kubernetes: one Lease per slot) decides
        under concurrency; any other engine is only counted (:meth:`check`). Whatever cannot be asked refuses.
        """
        cluster = self.engine(plugin)
        br = guards.blast_radius
        if not isinstance(cluster, Claims) or (br.max_fraction is None and br.max_nodes is None):
            return self.check(guards, plugin), ""
        try:
            return cluster.claim(plan, Cap(br.max_nodes, br.max_fraction, br.count_unavailable))
        except NodewardenError as err:
            log.warning("blast_radius_unknown", error=str(err))
            return "blast_radius_unknown", str(err)

    def release(self, plugin: Remediation | None, plan: Plan) -> None:
        """Give the plan's slot back (after a revert, or when the action failed); a no-op without claims."""
        cluster = self.engine(plugin)
        if isinstance(cluster, Claims):
            cluster.release(plan)

    def maintenance(self, plugin: Remediation | None, plan: Plan) -> tuple[str, str]:
        """``maintenance`` when the engine says the plan's node is under maintenance (Slurm MAINT reservation,
        Kubernetes maintenance label); ``maintenance_unknown`` when it cannot be asked."""
        cluster = self.engine(plugin)
        if not isinstance(cluster, KnowsMaintenance):
            return "", ""
        try:
            why = cluster.maintenance(plan)
        except NodewardenError as err:
            log.warning("maintenance_unknown", error=str(err))
            return "maintenance_unknown", str(err)
        return ("maintenance", why) if why else ("", "")
