"""The remediation policy (rules/remediations.yml): routes, escalation steps, guard rails, plugin settings.

Routes match alerts with Alertmanager's matcher syntax (``alertname="X"``, ``severity=~"critical|page"``,
``!=``, ``!~``; regexes fully anchored). Step params are templated from the alert with a deliberately tiny
subset: ``{{ $labels.NAME }}`` and ``{{ $value }}`` (anything else inside ``{{ }}`` is a load error), rendered by
the alert template engine (:mod:`agent.engine.templates`), so a label value is inserted as text and never parsed
again: label values are only ever data, never code.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field, ValidationError, field_validator

from agent.core import yamlpos
from agent.core.alerts import Alert
from agent.core.errors import ConfigError
from agent.core.model import Duration, Model
from agent.core.regex import RegexError, compile_anchored
from agent.engine import templates

PAGE = "page"  # the reserved action name of a paging step


# ---------------------------------------------------------------- matchers

_UNESCAPE = re.compile(r"\\(.)")
_MATCHER = re.compile(r'^\s*([A-Za-z_][A-Za-z0-9_]*)\s*(=~|!~|!=|=)\s*(?:"((?:[^"\\]|\\.)*)"|([^"\s]*))\s*$')


@dataclass(frozen=True, slots=True)
class Matcher:
    """One Alertmanager matcher."""

    name: str
    op: str
    value: str
    regex: Any = None   # an agent.core.regex.Anchored: RE2, fully anchored (as Alertmanager's Go matchers)

    def matches(self, labels: Mapping[str, str]) -> bool:
        """Does the label set satisfy this matcher (a missing label is the empty string)?"""
        v = labels.get(self.name, "")
        if self.op == "=":
            return v == self.value
        if self.op == "!=":
            return v != self.value
        hit = self.regex.match(v) is not None  # type: ignore[union-attr]
        return hit if self.op == "=~" else not hit


def parse_matcher(text: str) -> Matcher:
    """Parse ``name OP "value"`` (quotes optional); ValueError when malformed."""
    if not isinstance(text, str):
        raise ValueError(f'a matcher must be a string like alertname="X", got {text!r}')
    m = _MATCHER.match(text)
    if not m:
        raise ValueError(f'not a valid matcher: {text!r} (use name="value", name=~"regex", != or !~)')
    name, op, quoted, bare = m.groups()
    value = _UNESCAPE.sub(lambda e: "\n" if e.group(1) == "n" else e.group(1), quoted) if quoted is not None else bare
    regex = None
    if op in ("=~", "!~"):
        try:
            regex = compile_anchored(value)
        except RegexError as err:
            raise ValueError(f"invalid regular expression {value!r}: {err}") from err
    return Matcher(name, op, value, regex)


def _matchers(value: Any) -> tuple[Matcher, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list):
        raise ValueError("matchers must be a list of strings")
    return tuple(parse_matcher(v) for v in value)


Matchers = Annotated[tuple[Matcher, ...], BeforeValidator(_matchers)]

# ---------------------------------------------------------------- templates

_REFERENCE = re.compile(r"\$labels\.([A-Za-z_][A-Za-z0-9_]*)|\$value")


@functools.lru_cache(maxsize=4096)
def _template(text: str) -> templates.Template:
    """A param string parsed by the alert template engine, held to the policy's subset: text plus bare
    ``{{ $labels.NAME }}`` / ``{{ $value }}`` references (ValueError otherwise)."""
    try:
        parsed = templates.parse(text)
        refs = parsed.references()
    except templates.TemplateError:
        refs = None
    if refs is None or not all(_REFERENCE.fullmatch(r) for r in refs) or "}}" in "".join(
            n for n in parsed.nodes if isinstance(n, str)):
        raise ValueError(f"unsupported template in {text!r}: only {{{{ $labels.NAME }}}} and {{{{ $value }}}}")
    return parsed


def check_template(text: str) -> None:
    """ValueError when ``text`` uses template syntax beyond ``{{ $labels.x }}`` / ``{{ $value }}``."""
    _template(text)


def render(obj: Any, labels: Mapping[str, str], value: float = math.nan) -> Any:
    """Substitute label values into every string inside ``obj`` (dicts and lists walked; no evaluation): a label
    value is inserted as text and never parsed again; ``$value`` prints as in annotations (Go's ``%v``)."""
    if isinstance(obj, str):
        if "{{" not in obj:
            return obj
        return _template(obj).render(labels, value)
    if isinstance(obj, dict):
        return {k: render(v, labels, value) for k, v in obj.items()}
    if isinstance(obj, list):
        return [render(v, labels, value) for v in obj]
    return obj


def template_labels(obj: Any) -> set[str]:
    """Label names referenced by templates inside ``obj``."""
    if isinstance(obj, str):
        refs = _template(obj).references() if "{{" in obj else []
        return {m.group(1) for r in refs or () if (m := _REFERENCE.fullmatch(r)) and m.group(1)}
    if isinstance(obj, dict):
        return set().union(*(template_labels(v) for v in obj.values())) if obj else set()
    if isinstance(obj, list):
        return set().union(*(template_labels(v) for v in obj)) if obj else set()
    return set()


def _walk_templates(obj: Any) -> None:
    if isinstance(obj, str):
        check_template(obj)
    elif isinstance(obj, dict):
        for v in obj.values():
            _walk_templates(v)
    elif isinstance(obj, list):
        for v in obj:
            _walk_templates(v)

# ---------------------------------------------------------------- models


class RateLimit(Model):
    """At most ``per_action`` starts of one action and ``total`` starts overall per sliding ``window``."""

    window: Duration = 3600.0
    per_action: int | None = Field(3, ge=0)
    total: int | None = Field(10, ge=0)


class FlapGate(Model):
    """No action while the alert changed state more than ``max_changes`` times within ``window``."""

    window: Duration = 1800.0
    max_changes: int = Field(4, ge=1)


class BlastRadius(Model):
    """Cluster-wide cap on nodes held out of service by nodewarden (``node``-scope plans only).

    ``count_unavailable``: nodes down or drained for other reasons count toward the cap too.
    """

    max_fraction: float | None = Field(0.1, gt=0, le=1)
    max_nodes: int | None = Field(None, ge=0)
    count_unavailable: bool = False


class Guards(Model):
    """Guard-rail settings: ``defaults`` has them all; a route may override any."""

    mode: Literal["observe", "enforce"] = "observe"
    cooldown: Duration = 3600.0
    rate_limit: RateLimit = RateLimit()
    max_concurrent: int = Field(1, ge=1, le=64)
    flap: FlapGate = FlapGate()
    blast_radius: BlastRadius = BlastRadius()
    timeout: Duration = 300.0
    retry_interval: Duration = 30.0
    revert_after: Duration | None = None


class Step(Model):
    """One escalation step: run ``action`` (a plugin name, or ``page``) with templated ``params``."""

    action: str
    params: dict[str, Any] = {}
    wait: Duration = 300.0

    @field_validator("params")
    @classmethod
    def _templates(cls, v: dict[str, Any]) -> dict[str, Any]:
        _walk_templates(v)
        return v


class Route(Model):
    """Matchers, an escalation, and guard-rail overrides."""

    name: str | None = None
    matchers: Matchers
    continue_: bool = Field(False, alias="continue")
    steps: list[Step] = Field(min_length=1)
    mode: Literal["observe", "enforce"] | None = None
    cooldown: Duration | None = None
    rate_limit: RateLimit | None = None
    max_concurrent: int | None = Field(None, ge=1, le=64)
    flap: FlapGate | None = None
    blast_radius: BlastRadius | None = None
    timeout: Duration | None = None
    retry_interval: Duration | None = None
    revert_after: Duration | None = None

    def matches(self, labels: Mapping[str, str]) -> bool:
        """All matchers hold."""
        return all(m.matches(labels) for m in self.matchers)


class NoDataGate(Model):
    """Alerts that are about missing data never trigger an action (nor does a NaN alert value)."""

    matchers: list[Matchers] = [_matchers(['alertname=~".*(Absent|NoData|Missing|Stale|ScrapeFail).*"'])]

    def blocks(self, alert: Alert) -> bool:
        """True when the alert is about missing data."""
        if isinstance(alert.value, float) and math.isnan(alert.value):
            return True
        return any(all(m.matches(alert.labels) for m in ms) for ms in self.matchers)


class SilenceCheck(Model):
    """Before an action starts (enforce mode), skip it while an active Alertmanager silence matches the alert.

    ``unreachable``: what to do when Alertmanager cannot be asked: ``act`` (default; the journal row says the
    silences were unknown) or ``hold`` (skip with reason ``silence_unknown`` and retry).
    """

    enabled: bool = True
    cache: Duration = 10.0
    unreachable: Literal["act", "hold"] = "act"


class AlertmanagerConfig(Model):
    """Where ``page`` steps push alerts (Alertmanager v2 API); no URL: pages are only journaled."""

    url: str | None = None
    timeout: Duration = 5.0
    resend: Duration = 60.0
    silences: SilenceCheck = SilenceCheck()


class JournalConfig(Model):
    """Journal retention bounds."""

    retention: Duration = 90 * 86400.0
    max_rows: int = Field(100_000, ge=100)


class Policy(Model):
    """The whole policy file."""

    defaults: Guards = Guards()
    routes: list[Route] = []
    plugins: dict[str, dict[str, Any]] = {}
    no_data: NoDataGate = NoDataGate()
    alertmanager: AlertmanagerConfig = AlertmanagerConfig()
    journal: JournalConfig = JournalConfig()

    def guards(self, route: Route | None) -> Guards:
        """Effective guard rails for a route (its overrides over the defaults)."""
        if route is None:
            return self.defaults
        over = {k: getattr(route, k) for k in Guards.model_fields if getattr(route, k) is not None}
        return self.defaults.model_copy(update=over)

    def route_name(self, index: int) -> str:
        """A route's name (``routes[i]`` when unnamed)."""
        return self.routes[index].name or f"routes[{index}]"


# ---------------------------------------------------------------- loading


def validate_params(policy: Policy, plugins: Mapping[str, Any], root: Any = None, filename: str = "<policy>",
                    known_alerts: set[str] | None = None) -> tuple[list[str], list[str]]:
    """(errors, warnings): unknown plugins, params failing a plugin's schema, routes matching no known alert.

    Templated params are checked with every referenced label set to ``0``.
    """
    errors: list[str] = []
    warnings: list[str] = []
    for i, route in enumerate(policy.routes):
        for j, step in enumerate(route.steps):
            if step.action == PAGE:
                continue
            pos = yamlpos.position(root, ("routes", i, "steps", j, "action"))
            plugin = plugins.get(step.action)
            if plugin is None:
                errors.append(f"{filename}:{pos[0]}:{pos[1]}: routes.{i}.steps.{j}.action: unknown plugin "
                              f"{step.action!r} (known: {', '.join(sorted(plugins)) or 'none'})")
                continue
            sample = render(step.params, dict.fromkeys(template_labels(step.params), "0"), 0.0)
            try:
                plugin.Params.model_validate(sample)
            except ValidationError as err:
                for e in err.errors():
                    loc = ("routes", i, "steps", j, "params", *e["loc"])
                    line, col = yamlpos.position(root, loc)
                    where = ".".join(str(p) for p in loc)
                    errors.append(f"{filename}:{line}:{col}: {where}: {e['msg'].removeprefix('Value error, ')}")
        if known_alerts is not None:
            names = [m for m in route.matchers if m.name == "alertname"]
            if names and not any(all(m.matches({"alertname": a}) for m in names) for a in known_alerts):
                line, col = yamlpos.position(root, ("routes", i, "matchers"))
                warnings.append(f"{filename}:{line}:{col}: routes.{i}: matches no alert of the loaded rules")
    return errors, warnings


def load_policy_text(text: str, filename: str = "<policy>", plugins: Mapping[str, Any] | None = None) -> Policy:
    """Parse and validate; ConfigError lists every problem as ``file:line:column: message``."""
    policy, root = yamlpos.load_model(Policy, text, filename, "policy", rename={"continue_": "continue"})
    if plugins is not None:
        errors, _ = validate_params(policy, plugins, root, filename)
        if errors:
            raise ConfigError("\n".join(errors), errors)
    return policy


def looks_like_policy(text: str) -> bool:
    """True for a remediation policy file (top-level ``routes:`` or ``defaults:`` and no ``groups:``)."""
    keys = {line.split(":", 1)[0] for line in text.splitlines() if line[:1].isalpha() and ":" in line}
    return "groups" not in keys and bool(keys & {"routes", "defaults"})


def check_policy_file(path: str | Path, plugins: Mapping[str, Any],
                      known_alerts: set[str] | None = None) -> tuple[list[str], list[str]]:
    """For ``nodewarden check rules``: (errors, warnings) of a policy file, with positions."""
    try:
        text = Path(path).read_text(encoding="utf-8")
        root = yamlpos.load(text, str(path))
        policy = load_policy_text(text, str(path))
    except OSError as err:
        return [f"{path}:1:1: cannot read policy: {err.strerror}"], []
    except ConfigError as err:
        return err.problems, []
    return validate_params(policy, plugins, root, str(path), known_alerts)


def load_policy(path: str | Path, plugins: Mapping[str, Any] | None = None) -> Policy:
    """Read and validate a policy file; with ``plugins`` (name -> plugin class or instance) params too."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as err:
        raise ConfigError(f"{path}:1:1: cannot read policy: {err.strerror}") from err
    return load_policy_text(text, str(path), plugins)
