"""Shared test fixtures: paths to the fixture trees, privilege handling, free ports."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# ../shared/fixtures beside the checkout (CI clones with shared/ beside it); override with NODEWARDEN_FIXTURES.
SHARED_FIXTURES = Path(os.environ.get("NODEWARDEN_FIXTURES", REPO.parent / "shared" / "fixtures"))
NODE_EXPORTER = SHARED_FIXTURES / "node_exporter"
GPUD = SHARED_FIXTURES / "gpud"


def require_root() -> None:
    """Skip when not root, except under NODEWARDEN_REQUIRE_PRIVILEGED=1 (CI), where it fails."""
    if os.geteuid() == 0:
        return
    if os.environ.get("NODEWARDEN_REQUIRE_PRIVILEGED") == "1":
        pytest.fail("this test needs root and NODEWARDEN_REQUIRE_PRIVILEGED=1 is set")
    pytest.skip("needs root")


def require_binary(name: str) -> str:
    """Path of an external program the test needs; fails in CI (NODEWARDEN_REQUIRE_PRIVILEGED=1), else skips."""
    import shutil

    path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin:/usr/bin")
    if path:
        return path
    if os.environ.get("NODEWARDEN_REQUIRE_PRIVILEGED") == "1":
        pytest.fail(f"{name} is not installed (.ci/run installs it)")
    pytest.skip(f"{name} not installed")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def node_exporter_fixtures() -> Path:
    """Root of node_exporter's fixture trees (proc/, sys/, e2e-output.txt)."""
    if not NODE_EXPORTER.is_dir():
        pytest.fail(f"fixtures missing: {NODE_EXPORTER} (shared/ must sit beside the checkout)")
    return NODE_EXPORTER


@pytest.fixture(scope="session")
def gpud_fixtures() -> Path:
    """Root of gpud's fixtures (sys-class-infiniband-h100.0/, kmsg.1.log, dmesg-with-xid-119.log)."""
    if not GPUD.is_dir():
        pytest.fail(f"fixtures missing: {GPUD} (shared/ must sit beside the checkout)")
    return GPUD


from tests.nefixture import fixture_tree  # noqa: E402, F401  (node_exporter's trees with their symlinks)
