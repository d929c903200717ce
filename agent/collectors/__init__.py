"""Collectors: one file per subsystem, discovered through the ``nodewarden.collectors`` entry points.

Built-ins are registered in pyproject.toml exactly like third-party collectors.
"""

from __future__ import annotations

from importlib.metadata import EntryPoint, entry_points

from agent.core.errors import PluginLoadError

GROUP = "nodewarden.collectors"


def discover() -> dict[str, EntryPoint]:
    """Every installed collector entry point by name (nothing is imported)."""
    return {ep.name: ep for ep in entry_points(group=GROUP)}


def load(ep: EntryPoint) -> type:
    """Import one collector class; a failure names the collector and disables only it."""
    try:
        return ep.load()
    except Exception as err:
        raise PluginLoadError(f"collector {ep.name} ({ep.value}) failed to load: {type(err).__name__}: {err}") from err
