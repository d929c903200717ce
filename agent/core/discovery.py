"""Entry-point discovery of collectors (group ``nodewarden.collectors``) and remediation plugins
(``nodewarden.remediations``): the one place that lists, imports and constructs them.

Built-in collectors and plugins are registered in pyproject.toml exactly like third-party ones. Discovery
lists entry points without importing them; loading imports and constructs each one separately, so one
that fails to load is reported (by name) and disabled while the others keep working.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points
from typing import Any

import structlog
from pydantic import BaseModel, ValidationError

from agent.core.errors import PluginLoadError
from agent.core.model import Configurable

COLLECTORS = "nodewarden.collectors"
REMEDIATIONS = "nodewarden.remediations"
GROUP = REMEDIATIONS
log = structlog.get_logger("nodewarden.plugins")


@dataclass(frozen=True)
class LoadResult:
    """Plugins that loaded (name -> instance) and the errors of those that did not (name -> message)."""

    plugins: dict[str, Any]
    errors: dict[str, str]


def discover(group: str = GROUP) -> dict[str, EntryPoint]:
    """Entry points of the group by name (nothing imported)."""
    return {ep.name: ep for ep in entry_points(group=group)}


def load_collector(ep: EntryPoint) -> type:
    """Import one collector class; a failure names the collector and disables only it."""
    try:
        return ep.load()
    except Exception as err:  # a broken third-party collector must not take the daemon down
        raise PluginLoadError(f"collector {ep.name} ({ep.value}) failed to load: {type(err).__name__}: {err}") from err


_COLLECTOR_CLASSES: dict[str, type | None] = {}


def collector_class(name: str) -> type | None:
    """The class of installed collector ``name`` (cached), or None when it is not installed or fails to load."""
    if name not in _COLLECTOR_CLASSES:
        ep = discover(COLLECTORS).get(name)
        try:
            _COLLECTOR_CLASSES[name] = load_collector(ep) if ep is not None else None
        except PluginLoadError:
            _COLLECTOR_CLASSES[name] = None
    return _COLLECTOR_CLASSES[name]


def load_class(ep: EntryPoint) -> type:
    """Import one plugin class; PluginLoadError naming it on any failure."""
    try:
        cls = ep.load()
    except Exception as err:  # an import error in a third-party plugin must not take the daemon down
        raise PluginLoadError(f"plugin {ep.name!r} ({ep.value}): cannot import: {err}") from err
    for attr in ("NAME", "Params", "plan", "apply", "verify", "revert", "recover"):
        if not hasattr(cls, attr):
            raise PluginLoadError(f"plugin {ep.name!r} ({ep.value}): missing {attr}")
    return cls


def build(cls: type, name: str, settings: Mapping[str, Any] | None, **deps: Any) -> Any:
    """Construct a plugin with its settings validated by its ``Config`` model (when it has one)."""
    config_model: type[BaseModel] | None = cls.Config if isinstance(cls, Configurable) else None
    try:
        config = config_model.model_validate(dict(settings or {})) if config_model else dict(settings or {})
        return cls(config, **deps)
    except ValidationError as err:
        raise PluginLoadError(f"plugin {name!r}: bad settings: {err}") from err
    except Exception as err:
        raise PluginLoadError(f"plugin {name!r}: cannot start: {err}") from err


def load_remediations(settings: Mapping[str, Mapping[str, Any]] | None = None, group: str = GROUP,
                      **deps: Any) -> LoadResult:
    """Discover and construct every plugin; failures disable only that plugin."""
    plugins, errors = {}, {}
    found = discover(group)
    for name, ep in sorted(found.items()):
        try:
            plugins[name] = build(load_class(ep), name, (settings or {}).get(name), **deps)
        except PluginLoadError as err:
            errors[name] = str(err)
            log.error("plugin_load_failed", plugin=name, error=str(err))
    for name in sorted(set(settings or {}) - set(found)):
        errors[name] = f"plugin {name!r} has settings but is not installed (no entry point in {group})"
        log.error("plugin_load_failed", plugin=name, error=errors[name])
    return LoadResult(plugins, errors)


def classes(group: str = GROUP) -> LoadResult:
    """Plugin classes only (for validating a policy's params without constructing anything)."""
    out, errors = {}, {}
    for name, ep in sorted(discover(group).items()):
        try:
            out[name] = load_class(ep)
        except PluginLoadError as err:
            errors[name] = str(err)
    return LoadResult(out, errors)
