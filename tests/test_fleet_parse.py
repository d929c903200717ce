"""Pure parsers and arithmetic behind the fleet guard rails (literal Slurm output)."""

from __future__ import annotations

import pytest

from agent.core.errors import RemediationError
from agent.core.plugin import Cap
from remediations.backends.slurm import expand_hostlist, maintenance_of, parse_reservations, parse_rows

SINFO = """n01|2026-12-03T07:45:41|drained*|nodewarden: leaf switch down
n02|Unknown|idle*|none
n03|2026-12-03T07:45:40|down*|psu failed | see ticket 7
n04|Unknown|mixed|none
n01|2026-12-03T07:45:41|drained*|nodewarden: leaf switch down
"""

RESERVATIONS = (
    "ReservationName=swap StartTime=2026-12-03T07:00:00 EndTime=2026-12-03T09:00:00 Duration=02:00:00 "
    "Nodes=n[01-03,07],gpu-a1 NodeCnt=5 CoreCnt=5 Features=(null) PartitionName=(null) Flags=MAINT,SPEC_NODES "
    "TRES=cpu=5 Users=root Groups=(null) Accounts=(null) Licenses=(null) State=ACTIVE BurstBuffer=(null)\n"
    "ReservationName=later StartTime=2026-12-04T07:00:00 EndTime=2026-12-04T09:00:00 Duration=02:00:00 "
    "Nodes=n09 NodeCnt=1 Flags=MAINT State=INACTIVE\n"
    "ReservationName=jobs StartTime=2026-12-03T07:00:00 EndTime=2026-12-03T09:00:00 Nodes=n10 Flags=SPEC_NODES "
    "State=ACTIVE\n")


def test_parse_rows():
    rows = parse_rows(SINFO)
    assert list(rows) == ["n01", "n02", "n03", "n04"]            # a node listed twice (two partitions) once
    assert rows["n01"].stamp == "2026-12-03T07:45:41" and rows["n01"].ours and rows["n01"].unavailable
    assert rows["n02"].stamp == "" and not rows["n02"].ours
    assert rows["n03"].reason == "psu failed | see ticket 7" and rows["n03"].unavailable and not rows["n03"].ours
    assert not rows["n04"].unavailable
    assert sorted(rows.values(), key=lambda r: (r.stamp, r.node))[2].node == "n03"   # controller stamp first


def test_expand_hostlist():
    assert expand_hostlist("n[01-03,07],gpu-a1") == ["n01", "n02", "n03", "n07", "gpu-a1"]
    assert expand_hostlist("rack[1-2]-n[8-9]") == ["rack1-n8", "rack1-n9", "rack2-n8", "rack2-n9"]
    assert expand_hostlist("(null)") == []
    with pytest.raises(RemediationError):
        expand_hostlist("n[a-b]")


def test_maint_reservations():
    res = parse_reservations(RESERVATIONS + "No reservations in the system\n")
    assert [r["ReservationName"] for r in res] == ["swap", "later", "jobs"]
    assert maintenance_of(res, "n02") == "swap" and maintenance_of(res, "gpu-a1") == "swap"
    assert maintenance_of(res, "n09") == ""     # not active yet
    assert maintenance_of(res, "n10") == ""     # no MAINT flag
    assert maintenance_of(res, "n04") == ""


def test_cap_allowed():
    assert Cap(max_nodes=3).allowed(20) == 3
    assert Cap(max_fraction=0.1).allowed(20) == 2
    assert Cap(max_fraction=0.1).allowed(5) == 0               # 10 % of 5 nodes allows none
    assert Cap(max_nodes=4, max_fraction=0.1).allowed(100) == 4
    assert Cap(max_nodes=30).allowed(20) == 20
    assert Cap(max_fraction=0.3).allowed(10) == 3              # no float rounding down to 2
