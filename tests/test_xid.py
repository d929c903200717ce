"""XID parsing (dmesg and /dev/kmsg formats), PCI bus ids, catalog and cross-source de-duplication."""

from __future__ import annotations

import pytest

from agent.collectors import xid


def test_dmesg_fixture_three_digit_xids(gpud_fixtures):
    lines = (gpud_fixtures / "dmesg-with-xid-119.log").read_text().splitlines()
    events = list(xid.parse_log(lines))
    expected = sum(1 for line in lines if "NVRM: Xid" in line)
    assert expected > 0 and len(events) == expected
    assert {e.xid for e in events} == {119}
    assert {e.bus_id for e in events} == {"0000:9b:00"}
    first = events[0]
    assert first.pid == 2024380 and first.process == "nvidia-smi"
    assert first.message.startswith("Timeout after 6s of waiting for RPC response from GPU4 GSP")


def test_kmsg_fixture_records_and_no_false_positives(gpud_fixtures):
    lines = (gpud_fixtures / "kmsg.1.log").read_text().splitlines()
    records = [xid.parse_kmsg_record(line) for line in lines]
    assert all(r is not None for r in records)
    assert records[0] == xid.KmsgRecord(6, 3964, 206764307, "nvidia-nvswitch2: open (major=510)")
    seqs = [r.sequence for r in records]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    assert list(xid.parse_log(lines)) == []  # nvswitch / perf lines are not XIDs


def test_kmsg_record_with_xid_and_continuation():
    rec = xid.parse_kmsg_record("4,1201,3750123456,-;NVRM: Xid (PCI:0000:3b:00): 79, pid='<unknown>', "
                                "name=<unknown>, GPU has fallen off the bus.")
    assert rec.priority == 4 and rec.sequence == 1201
    event = xid.parse_xid(rec.message)
    assert event == xid.XidEvent(79, "0000:3b:00", None, "<unknown>", "GPU has fallen off the bus.")
    assert xid.parse_kmsg_record(" SUBSYSTEM=pci") is None
    assert xid.parse_kmsg_record("garbage") is None


@pytest.mark.parametrize(
    ("line", "xid_id", "bus"),
    [
        ("[ 1234.5] NVRM: Xid (0000:03:00): 13, Graphics Exception", 13, "0000:03:00"),
        ("NVRM: Xid (PCI:0001:C1:00): 154, GPU recovery action changed", 154, "0001:c1:00"),
        ("kernel: NVRM: Xid (PCI:0000:9b:00.0): 48, pid=1, name=x, DBE", 48, "0000:9b:00"),
    ],
)
def test_xid_line_variants(line, xid_id, bus):
    event = xid.parse_xid(line)
    assert event is not None and event.xid == xid_id and event.bus_id == bus


def test_normalize_bus_id():
    assert xid.normalize_bus_id("00000000:9B:00.0") == "0000:9b:00"
    assert xid.normalize_bus_id("0000:9b:00") == "0000:9b:00"
    assert xid.normalize_bus_id("9b:00.0") == "0000:9b:00"
    with pytest.raises(ValueError):
        xid.normalize_bus_id("not-a-bus")


def test_catalog():
    cat = xid.catalog()
    assert cat[79].action == "drain_node"
    assert cat[119].name == "gsp_rpc_timeout"
    assert all(info.action in xid.ACTIONS for info in cat.values())
    assert xid.describe(99999) == xid.XidInfo("unknown", "contact_support")


def test_dedup_pairs_sources_but_counts_repeats():
    d = xid.Dedup(window=10.0)
    assert d.observe("4", 119, "nvml", 0.0) is True
    assert d.observe("4", 119, "kmsg", 0.1) is False  # same event seen by the kernel log
    assert d.observe("4", 119, "kmsg", 6.0) is True  # a repeat 6 s later is a new event
    assert d.observe("4", 119, "nvml", 6.2) is False  # ...which NVML also reports
    assert d.observe("4", 119, "nvml", 7.0) is True
    assert d.observe("4", 119, "nvml", 7.1) is True  # same source twice: two events
    assert d.observe("3", 119, "kmsg", 7.2) is True  # other GPU
    assert d.observe("4", 79, "kmsg", 7.3) is True  # other XID


def test_dedup_window_expires():
    d = xid.Dedup(window=5.0)
    assert d.observe("0", 79, "nvml", 0.0)
    assert d.observe("0", 79, "kmsg", 30.0)  # too late to be the same event
    d.expire(100.0)
    assert d._pending == {}
