"""Small helpers shared by the sysfs/procfs collectors: fast file reads and device filters."""

from __future__ import annotations

import os
from collections.abc import Callable

from agent.core.regex import compile_anchored

Reader = Callable[[str], bytes]


def read_attr(path: str) -> bytes:
    """One sysfs attribute (at most a page) in one read(2); raises OSError like open()."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return os.read(fd, 4096)
    finally:
        os.close(fd)


def read_all(path: str) -> bytes:
    """A whole procfs file (read until EOF: seq_file hands out a page at a time)."""
    with open(path, "rb", buffering=0) as f:
        return f.readall()


class DeviceFilter:
    """Fully anchored include/exclude regexes on device names, decisions cached per name.

    ``exclude=None`` means ``default_exclude`` unless ``include`` is set (as node_exporter, where the
    two flags are exclusive and the default exclude only applies without an include).
    """

    def __init__(self, include: str | None, exclude: str | None, default_exclude: str | None = None) -> None:
        if exclude is None and include is None:
            exclude = default_exclude
        self._include = compile_anchored(include) if include is not None else None   # RE2, as Go's regexp
        self._exclude = compile_anchored(exclude) if exclude is not None else None
        self._cache: dict[str, bool] = {}

    def __call__(self, name: str) -> bool:
        ok = self._cache.get(name)
        if ok is None:
            ok = (self._include is None or self._include.match(name) is not None) and (
                self._exclude is None or self._exclude.match(name) is None
            )
            if len(self._cache) > 4096:  # device names churn (veth): keep the cache bounded
                self._cache.clear()
            self._cache[name] = ok
        return ok
