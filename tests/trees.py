"""The big-node fixture tree (bench/scaled_tree.py) for tests, with IB data from the gpud fixtures."""

from __future__ import annotations

from pathlib import Path

from bench.scaled_tree import build_scaled_tree as _build
from tests.conftest import GPUD


def build_scaled_tree(root: Path, disks: int = 16, nics: int = 8, ib_ports: int = 8) -> Path:
    """bench.scaled_tree.build_scaled_tree with the IB source taken from the test fixtures."""
    return _build(root, disks=disks, nics=nics, ib_ports=ib_ports, ib_source=GPUD / "sys-class-infiniband-h100.0")
