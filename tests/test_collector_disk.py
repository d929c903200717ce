"""Disk collector: the diskstats parser on literal text, node_exporter's own output as the oracle."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.collectors.disk import DEFAULT_DEVICE_EXCLUDE, DiskCollector, DiskConfig, DiskStats, parse_diskstats
from agent.core.errors import CollectorError, NoData
from agent.core.metrics import Collector
from agent.core.paths import Paths
from tests.expo import parse_exposition, sample_key
from tests.nodeexp import scrape_node_exporter

FAMILIES = {spec.name for spec in DiskCollector.metrics}


def fixture_paths(root: Path) -> Paths:
    return Paths(procfs=str(root / "proc"), sysfs=str(root / "sys"))


def disk_tree(tmp_path: Path, text: str) -> Paths:
    (tmp_path / "proc").mkdir()
    (tmp_path / "proc" / "diskstats").write_text(text)
    return Paths(procfs=str(tmp_path / "proc"))


def devices(samples) -> set[str]:
    return {dict(s.labels)["device"] for s in samples}


# --- parser -------------------------------------------------------------------------------------------

def test_parse_kernel_4_18_line_keeps_first_eleven_counters():
    text = "   8       0 sda 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15\n"
    (st,) = parse_diskstats(text)
    assert st == DiskStats(8, 0, "sda", 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11)


def test_parse_short_and_malformed_lines_are_skipped():
    text = (
        "   3    1 hda1 35486 38030 38030 38030\n"  # pre-2.6.25 partition line: 4 counters
        "   8    0 sda 1 2 3 4 5 6 7 8 9 10\n"  # 13 columns: one short
        "   8   16 sdb 1 2 3 4 5 6 7 8 9 10 x\n"  # not a number
        "\n"
        " 259    0 nvme0n1 10 0 20 30 40 0 50 60 0 70 80\n"  # kernel < 4.18: exactly 14 columns
    )
    assert [st.device for st in parse_diskstats(text)] == ["nvme0n1"]
    assert parse_diskstats(text)[0].io_time_weighted_ms == 80


def test_parse_keep_filters_before_conversion():
    text = " 7 0 loop0 a b c d e f g h i j k\n 8 0 sda 1 2 3 4 5 6 7 8 9 10 11\n"
    assert [st.device for st in parse_diskstats(text, keep=lambda d: d != "loop0")] == ["sda"]


def test_parse_huge_counter_is_exact_int():
    big = 2**64 - 1
    (st,) = parse_diskstats(f"8 0 sda {big} 0 0 0 0 0 0 0 0 0 0\n")
    assert st.reads_completed == big


# --- oracle: node_exporter's e2e golden output on the same fixture tree ---------------------------------

def test_fixture_tree_matches_node_exporter_e2e_output(node_exporter_fixtures):
    """node_exporter's e2e run used its default device exclude; every shared series must be identical."""
    expected = {
        key: value
        for key, value in parse_exposition((node_exporter_fixtures / "e2e-output.txt").read_text()).items()
        if key[0] in FAMILIES
    }
    assert len(expected) > 100  # the golden file really has these families
    samples = DiskCollector(DiskConfig(), fixture_paths(node_exporter_fixtures)).collect()
    got = {sample_key(s.name, s.labels): s.value for s in samples}
    assert len(got) == len(samples), "duplicate series"
    assert got == expected  # same series, bit-identical floats (ms * 0.001, sectors * 512)


def test_default_exclude_drops_loop_ram_floppy_and_partitions(node_exporter_fixtures):
    names = {line.split()[2] for line in (node_exporter_fixtures / "proc" / "diskstats").read_text().splitlines()}
    got = devices(DiskCollector(DiskConfig(), fixture_paths(node_exporter_fixtures)).collect())
    for gone in ("ram0", "ram15", "loop7", "fd0", "sda1", "sdb2", "vda1", "nvme0n1p2"):
        assert gone in names and gone not in got
    for kept in ("sda", "sdb", "vda", "nvme0n1", "dm-0", "sr0", "mmcblk0", "mmcblk0p1"):
        assert kept in got


def test_explicit_empty_exclude_keeps_everything(node_exporter_fixtures):
    lines = (node_exporter_fixtures / "proc" / "diskstats").read_text().splitlines()
    cfg = DiskConfig(device_exclude="")
    got = devices(DiskCollector(cfg, fixture_paths(node_exporter_fixtures)).collect())
    assert got == {line.split()[2] for line in lines}


def test_include_is_fully_anchored_and_replaces_default_exclude(node_exporter_fixtures):
    paths = fixture_paths(node_exporter_fixtures)
    assert devices(DiskCollector(DiskConfig(device_include="sd[a-z]"), paths).collect()) == {"sda", "sdb", "sdc"}
    # without the default exclude, an include may select partitions; "sda" alone does not match "sda1"
    assert devices(DiskCollector(DiskConfig(device_include="sda|ram1"), paths).collect()) == {"sda", "ram1"}
    both = DiskConfig(device_include="sd.*", device_exclude=r"sd[a-z]\d+")
    assert devices(DiskCollector(both, paths).collect()) == {"sda", "sdb", "sdc"}


def test_exclude_is_fully_anchored(node_exporter_fixtures):
    paths = fixture_paths(node_exporter_fixtures)
    got = devices(DiskCollector(DiskConfig(device_exclude="sd"), paths).collect())
    assert {"sda", "sda1"} <= got  # "sd" must match the whole name to exclude it


def test_default_exclude_is_node_exporters():
    # the string node_exporter ships as its diskstats device-exclude default
    assert DEFAULT_DEVICE_EXCLUDE == r"^(z?ram|loop|fd|(h|s|v|xv)d[a-z]|nvme\d+n\d+p)\d+$"


# --- catalogue, protocol, errors ------------------------------------------------------------------------

def test_catalogue_covers_every_sample_and_labels_match(node_exporter_fixtures):
    c = DiskCollector(DiskConfig(device_exclude=""), fixture_paths(node_exporter_fixtures), hostname="n1")
    assert isinstance(c, Collector) and c.name == c.NAME == "disk"
    specs = {spec.name: spec for spec in c.metrics}
    samples = c.collect()
    for s in samples:
        assert tuple(k for k, _ in s.labels) == specs[s.name].labels
        assert isinstance(s.value, float)
    assert {s.name for s in samples} == set(specs)


def test_label_tuples_are_reused_across_rounds(node_exporter_fixtures):
    c = DiskCollector(DiskConfig(), fixture_paths(node_exporter_fixtures))
    first = {s.labels for s in c.collect()}
    second = {id(s.labels) for s in c.collect()}
    assert second == {id(labels) for labels in first}


def test_missing_file_is_collector_error(tmp_path):
    with pytest.raises(CollectorError, match="diskstats"):
        DiskCollector(DiskConfig(), Paths(procfs=str(tmp_path))).collect()


def test_everything_filtered_is_no_data(tmp_path):
    paths = disk_tree(tmp_path, " 7 0 loop0 0 0 0 0 0 0 0 0 0 0 0\n")
    with pytest.raises(NoData):
        DiskCollector(DiskConfig(), paths).collect()


def test_units(tmp_path):
    paths = disk_tree(tmp_path, " 8 0 sda 1 2 3 1500 5 6 7 250 9 10 11 99 99 99 99\n")
    got = {s.name: s.value for s in DiskCollector(DiskConfig(), paths).collect()}
    assert got == {
        "node_disk_reads_completed_total": 1.0,
        "node_disk_read_bytes_total": 3 * 512.0,
        "node_disk_read_time_seconds_total": 1.5,
        "node_disk_writes_completed_total": 5.0,
        "node_disk_written_bytes_total": 7 * 512.0,
        "node_disk_write_time_seconds_total": 0.25,
        "node_disk_io_now": 9.0,
        "node_disk_io_time_seconds_total": 10 * 0.001,
        "node_disk_io_time_weighted_seconds_total": 11 * 0.001,
    }


# --- oracle on this machine: the installed node_exporter reads the same /proc ---------------------------

@pytest.mark.slow
def test_real_machine_matches_installed_node_exporter():
    if not Path("/proc/diskstats").exists():
        pytest.skip("no /proc/diskstats")
    c = DiskCollector(DiskConfig(), Paths())
    before = {sample_key(s.name, s.labels): s.value for s in c.collect()}
    theirs = {
        k: v
        for k, v in parse_exposition(
            scrape_node_exporter(
                "--collector.disable-defaults",
                "--collector.diskstats",
                # Debian's 1.5.0 predates zram in the default; pass ours so both filter the same way
                f"--collector.diskstats.device-exclude={DEFAULT_DEVICE_EXCLUDE}",
            )
        ).items()
        if k[0] in FAMILIES
    }
    after = {sample_key(s.name, s.labels): s.value for s in c.collect()}
    assert set(theirs) == set(before) == set(after)
    for key, value in theirs.items():
        if key[0] != "node_disk_io_now":  # counters only move up between our two reads
            assert before[key] <= value <= after[key], key
