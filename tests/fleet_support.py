"""A real slurmctld that knows a fleet of nodes without any slurmd, and a real Alertmanager, for the fleet tests.

``NodeName=n[01-NN] NodeAddr=127.0.0.[1-NN]`` resolves on loopback; with ``SlurmdTimeout=0`` the controller
never pings them, so they stay in their configured state and only nodewarden (or the test) changes them.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import free_port, require_binary, require_root
from tests.test_slurm_rebalance import SlurmCluster, _stop

FLEET_CONF = """\
ClusterName=nwfleet
SlurmctldHost=localhost(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={d_port}
AuthType=auth/munge
AuthInfo=socket={dir}/munge.sock
CredType=cred/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/builtin
StateSaveLocation={dir}/ctld
SlurmdSpoolDir={dir}/spool/%n
SlurmctldPidFile={dir}/slurmctld.pid
SlurmUser=root
SlurmdUser=root
SlurmdTimeout=0
ReturnToService=2
MpiDefault=none
JobCompType=jobcomp/none
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
SlurmctldLogFile={dir}/slurmctld.log
NodeName=n[01-{last:02d}] NodeAddr=127.0.0.[1-{count}] CPUs=1 RealMemory=100 State=IDLE
PartitionName=fleet Nodes=n[01-{last:02d}] Default=YES MaxTime=INFINITE State=UP
"""


class Fleet(SlurmCluster):
    """The fleet cluster: node names, and a reset that undoes every drain and reservation."""

    def __init__(self, root: Path, count: int) -> None:
        super().__init__(root)
        self.nodes = [f"n{i:02d}" for i in range(1, count + 1)]

    def run(self, *argv: str) -> str:
        """Run a Slurm client program; an AssertionError with its stderr when it fails."""
        cp = subprocess.run(argv, env=self.env, capture_output=True, text=True, timeout=60)
        assert cp.returncode == 0, f"{' '.join(argv)}: exit {cp.returncode}: {cp.stderr.strip()}"
        return cp.stdout

    def rows(self) -> dict[str, tuple[str, str]]:
        """node -> (state, reason)."""
        out = self.run("sinfo", "--noheader", "--Node", "--format=%N|%T|%E")
        return {n: (t, r) for n, t, r in (line.split("|", 2) for line in out.splitlines())}

    def ours(self) -> list[str]:
        """Nodes drained by nodewarden now."""
        return sorted(n for n, (_, r) in self.rows().items() if r.startswith("nodewarden:"))

    def reset(self) -> None:
        for line in self.run("scontrol", "--oneliner", "show", "reservation").splitlines():
            if line.startswith("ReservationName="):
                name = line.split()[0].split("=", 1)[1]
                self.run("scontrol", "delete", f"ReservationName={name}")
        for node, (state, _) in self.rows().items():
            if "drain" in state or "down" in state:
                self.run("scontrol", "update", f"NodeName={node}", "State=RESUME")


def start_fleet(root: Path, count: int) -> Iterator[Fleet]:
    """munged + slurmctld for ``count`` nodes; yields the running cluster, stops it afterwards."""
    require_root()
    munged, slurmctld = require_binary("munged"), require_binary("slurmctld")
    for b in ("scontrol", "sinfo"):
        require_binary(b)
    os.chmod(root, 0o755)
    for d in ("ctld", "spool"):
        (root / d).mkdir()
    key = root / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o400)
    (root / "slurm.conf").write_text(FLEET_CONF.format(dir=root, ctld_port=free_port(), d_port=free_port(),
                                                       last=count, count=count))
    fleet = Fleet(root, count)
    try:
        subprocess.run([munged, "--force", f"--socket={root}/munge.sock", f"--key-file={key}",
                        f"--log-file={root}/munged.log", f"--pid-file={root}/munged.pid",
                        f"--seed-file={root}/munge.seed"], check=True, timeout=20)
        subprocess.run([slurmctld, "-f", str(root / "slurm.conf"), "-i"], env=fleet.env, check=True, timeout=20)
        end = time.monotonic() + 60
        while True:
            try:
                if len(fleet.rows()) == count:
                    break
            except AssertionError:      # not answering yet
                pass
            if time.monotonic() > end:
                pytest.fail("slurmctld did not come up: " + (root / "slurmctld.log").read_text()[-2000:])
            time.sleep(0.3)
        yield fleet
    finally:
        for p in (root / "slurmctld.pid", root / "munged.pid"):
            _stop(p)


AM_CONFIG = """
route: {receiver: "null", group_wait: 1s, group_by: ['...']}
receivers: [{name: "null"}]
"""


@contextlib.contextmanager
def alertmanager(tmp: Path) -> Iterator[str]:
    """A real Alertmanager on a free loopback port; yields its URL."""
    binary = require_binary("prometheus-alertmanager")
    (tmp / "am.yml").write_text(AM_CONFIG)
    port = free_port()
    proc = subprocess.Popen([binary, f"--config.file={tmp / 'am.yml'}", f"--storage.path={tmp / 'am'}",
                             f"--web.listen-address=127.0.0.1:{port}", "--cluster.listen-address="],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        end = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(url + "/-/ready", timeout=2).close()
                break
            except OSError:
                if time.monotonic() > end or proc.poll() is not None:
                    pytest.fail("alertmanager did not start")
                time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def am_get(url: str, path: str) -> list[dict]:
    """GET a JSON list from Alertmanager's v2 API."""
    with urllib.request.urlopen(url + path, timeout=5) as resp:
        return json.load(resp)


def am_silence(url: str, matchers: list[dict], minutes: float = 10) -> str:
    """Create an active silence; returns its id."""
    now = time.time()
    fmt = "%Y-%m-%dT%H:%M:%S.000Z"
    body = {"matchers": matchers, "startsAt": time.strftime(fmt, time.gmtime(now - 1)),
            "endsAt": time.strftime(fmt, time.gmtime(now + 60 * minutes)), "createdBy": "ops", "comment": "swap"}
    req = urllib.request.Request(url + "/api/v2/silences", data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=5) as resp:
        return json.load(resp)["silenceID"]
