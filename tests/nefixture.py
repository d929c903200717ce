"""node_exporter's fixture trees with their symlinks restored, for oracle tests that need sysfs links."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest


def relink(tree: Path) -> None:
    """Turn the fixture's unpacked symlinks back into links (ttar stored them as files holding the target)."""
    for root, _, files in os.walk(tree):
        for f in files:
            p = Path(root) / f
            if p.stat().st_size > 300:
                continue
            target = p.read_bytes()
            if target.startswith(b"../") and b"\n" not in target.strip():
                text = target.decode().strip()
                if (p.parent / text).exists():
                    p.unlink()
                    p.symlink_to(text)


@pytest.fixture(scope="session")
def fixture_tree(node_exporter_fixtures: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """node_exporter's fixture trees with their symlinks (class/hwmon, class/thermal, ...) restored."""
    root = tmp_path_factory.mktemp("node_exporter")
    shutil.copytree(node_exporter_fixtures / "sys", root / "sys", symlinks=True)
    os.symlink(node_exporter_fixtures / "proc", root / "proc")
    for d, _, _ in os.walk(root / "sys"):
        os.chmod(d, 0o755)
    for d, _, files in os.walk(root / "sys"):
        for f in files:
            p = Path(d) / f
            if not p.is_symlink():
                os.chmod(p, 0o644)
    relink(root / "sys")
    return root
