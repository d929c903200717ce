"""Collectors: one file per subsystem, discovered through the ``nodewarden.collectors`` entry points.

Built-ins are registered in pyproject.toml exactly like third-party collectors; discovery and loading live in
:mod:`agent.core.discovery` (shared with the remediation plugins).
"""

from __future__ import annotations

from importlib.metadata import EntryPoint

from agent.core import discovery

GROUP = discovery.COLLECTORS


def discover() -> dict[str, EntryPoint]:
    """Every installed collector entry point by name (nothing is imported)."""
    return discovery.discover(GROUP)


def load(ep: EntryPoint) -> type:
    """Import one collector class; a failure names the collector and disables only it."""
    return discovery.load_collector(ep)
