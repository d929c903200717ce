"""Filesystem roots: the only place that knows /proc, /sys, /dev and /.

Collectors take a :class:`Paths` and join under it, so tests point them at fixture trees.
"""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Paths:
    """Roots of the kernel pseudo filesystems and of the host root filesystem."""

    procfs: str = "/proc"
    sysfs: str = "/sys"
    devfs: str = "/dev"
    rootfs: str = "/"

    def proc(self, *parts: str) -> str:
        """Path under procfs, e.g. ``paths.proc("net", "dev")``."""
        return os.path.join(self.procfs, *parts)

    def sys(self, *parts: str) -> str:
        """Path under sysfs, e.g. ``paths.sys("class", "net")``."""
        return os.path.join(self.sysfs, *parts)

    def dev(self, *parts: str) -> str:
        """Path under devfs, e.g. ``paths.dev("kmsg")``."""
        return os.path.join(self.devfs, *parts)

    def root(self, path: str) -> str:
        """A host path (e.g. a mount point) under rootfs."""
        if self.rootfs in ("", "/"):
            return path
        return os.path.join(self.rootfs, path.lstrip("/"))
