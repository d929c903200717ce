"""Access to bench/scaled_tree.py (the big-node fixture tree builder) from the tests."""

from __future__ import annotations

import importlib.util
import sys

from conftest import GPUD, REPO


def _load():
    name = "nodewarden_bench_scaled_tree"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, REPO / "bench" / "scaled_tree.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        sys.modules[name] = module
    return sys.modules[name]


def build_scaled_tree(root, disks=16, nics=8, ib_ports=8):
    """bench.scaled_tree.build_scaled_tree with the IB source taken from the test fixtures."""
    return _load().build_scaled_tree(
        root, disks=disks, nics=nics, ib_ports=ib_ports, ib_source=GPUD / "sys-class-infiniband-h100.0"
    )
