"""InfiniBand collector: parsers, node_exporter oracles, the real 8xH100 tree, EINVAL counters, filters."""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

import pytest

from agent.collectors.common import read_attr
from agent.collectors.infiniband import InfinibandCollector, InfinibandConfig, parse_rate, parse_state
from agent.core.errors import NoData
from agent.core.metrics import catalogue
from agent.core.paths import Paths
from tests.expo import parse_exposition
from tests.nodeexp import scrape_node_exporter
from tests.trees import build_scaled_tree

# counter file -> (metric, multiplier), spelled out here independently of the collector's table
EXPECTED_COUNTERS = {
    "counters/port_rcv_data": ("node_infiniband_port_data_received_bytes_total", 4),
    "counters/port_xmit_data": ("node_infiniband_port_data_transmitted_bytes_total", 4),
    "counters/port_rcv_packets": ("node_infiniband_port_packets_received_total", 1),
    "counters/port_xmit_packets": ("node_infiniband_port_packets_transmitted_total", 1),
    "counters/port_xmit_wait": ("node_infiniband_port_transmit_wait_total", 1),
    "counters/link_downed": ("node_infiniband_link_downed_total", 1),
    "counters/link_error_recovery": ("node_infiniband_link_error_recovery_total", 1),
    "counters/symbol_error": ("node_infiniband_symbol_error_total", 1),
    "counters/port_rcv_errors": ("node_infiniband_port_errors_received_total", 1),
    "counters/port_rcv_discards": ("node_infiniband_port_discards_received_total", 1),
    "counters/port_xmit_discards": ("node_infiniband_port_discards_transmitted_total", 1),
    "hw_counters/np_ecn_marked_roce_packets": ("node_infiniband_np_ecn_marked_roce_packets_received_total", 1),
    "hw_counters/rp_cnp_handled": ("node_infiniband_rp_cnp_packets_handled_total", 1),
    "hw_counters/np_cnp_sent": ("node_infiniband_np_cnp_packets_sent_total", 1),
    "hw_counters/out_of_buffer": ("node_infiniband_out_of_buffer_drops_total", 1),
}


def series(samples) -> dict:
    return {(s.name, frozenset(s.labels)): s.value for s in samples}


def port_key(name: str, device: str, port: str = "1") -> tuple:
    return (name, frozenset({("device", device), ("port", port)}))


def sysfs_with(tmp_path: Path, ib_tree: Path) -> Paths:
    """A sysfs root whose class/infiniband is ``ib_tree``."""
    (tmp_path / "sys" / "class").mkdir(parents=True)
    os.symlink(ib_tree, tmp_path / "sys" / "class" / "infiniband")
    return Paths(sysfs=str(tmp_path / "sys"))


@pytest.fixture
def h100(gpud_fixtures: Path) -> Path:
    return gpud_fixtures / "sys-class-infiniband-h100.0"


@pytest.fixture
def writable_h100(h100: Path, tmp_path: Path) -> Path:
    """A writable copy of the 8xH100 tree."""
    dest = tmp_path / "ib"
    shutil.copytree(h100, dest)
    for path in [dest, *dest.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    return dest


# --- pure parsers -------------------------------------------------------------------------------------


def test_parse_state() -> None:
    assert parse_state("4: ACTIVE\n") == 4
    assert parse_state("5: LinkUp") == 5
    assert parse_state("1: DOWN") == 1
    for bad in ("ACTIVE", "x: ACTIVE", ""):
        with pytest.raises(ValueError):
            parse_state(bad)


def test_parse_rate() -> None:
    assert parse_rate("400 Gb/sec (4X NDR)\n") == 50_000_000_000
    assert parse_rate("40 Gb/sec (4X QDR)") == 5_000_000_000
    assert parse_rate("10 Gb/sec (4X)") == 1_250_000_000
    assert parse_rate("2.5 Gb/sec (1X SDR)") == 312_500_000
    for bad in ("fast", "", "N/A Gb/sec"):
        with pytest.raises(ValueError):
            parse_rate(bad)


# --- oracles -------------------------------------------------------------------------------------------


def test_matches_node_exporter_e2e_output(node_exporter_fixtures: Path) -> None:
    collector = InfinibandCollector(InfinibandConfig(), Paths(sysfs=str(node_exporter_fixtures / "sys")))
    ours = series(collector.collect())
    expected = parse_exposition((node_exporter_fixtures / "e2e-output.txt").read_text())
    families = {spec.name for spec in collector.metrics}
    assert ours == {k: v for k, v in expected.items() if k[0] in families}
    # i40iw0's counters read "N/A (no PMA)": the device keeps its state, rate and info
    assert port_key("node_infiniband_state_id", "i40iw0") in ours
    assert not [k for k in ours if k[0].endswith("_total") and ("device", "i40iw0") in k[1]]


def test_matches_live_node_exporter(tmp_path: Path) -> None:
    tree = build_scaled_tree(tmp_path / "tree", disks=1, nics=1, ib_ports=8)
    theirs = parse_exposition(scrape_node_exporter(*_only(tree), "--collector.infiniband"))
    collector = InfinibandCollector(InfinibandConfig(), Paths(sysfs=str(tree / "sys")))
    ours = series(collector.collect())
    shared = {k for k in ours if k[0] in {name for name, _ in theirs}}
    assert len(shared) >= 8 * 14  # info + state, phys state, rate, 11 counters per port
    for key in shared:
        assert theirs[key] == ours[key], key
    families = {name for name, _ in ours}
    assert {k for k in theirs if k[0] in families} == shared


# --- the real 8xH100 node ------------------------------------------------------------------------------


def test_real_h100_tree(h100: Path, tmp_path: Path) -> None:
    ours = series(InfinibandCollector(InfinibandConfig(), sysfs_with(tmp_path, h100)).collect())
    devices = sorted(os.listdir(h100))
    assert devices == [f"mlx5_{i}" for i in (0, 1, 4, 5, 6, 7, 8, 9)] + ["mlx5_bond_0"]
    ports = {(dict(k[1])["device"], dict(k[1])["port"]) for k in ours if k[0] == "node_infiniband_state_id"}
    assert ports == {(d, "1") for d in devices}

    checked = 0
    for dev in devices:
        port_dir = h100 / dev / "ports" / "1"
        for rel, (metric, mult) in EXPECTED_COUNTERS.items():
            path = port_dir / rel
            key = port_key(metric, dev)
            if path.exists():
                assert ours[key] == int(path.read_text()) * mult, key
                checked += 1
            else:
                assert key not in ours, key
        assert ours[port_key("node_infiniband_state_id", dev)] == 4
        assert ours[port_key("node_infiniband_physical_state_id", dev)] == 5
        # RoCE hw_counters are read (out_of_buffer is the one this mlx5 firmware has)
        assert port_key("node_infiniband_out_of_buffer_drops_total", dev) in ours
    assert checked == len(devices) * 11  # 10 counters/ files we know + out_of_buffer (no port_rcv_discards)
    assert ours[port_key("node_infiniband_rate_bytes_per_second", "mlx5_0")] == 400e9 / 8
    assert ours[port_key("node_infiniband_rate_bytes_per_second", "mlx5_bond_0")] == 200e9 / 8
    assert ours[port_key("node_infiniband_port_data_received_bytes_total", "mlx5_0")] == 230539874932483 * 4
    info_labels = {("device", "mlx5_0"), ("board_id", "MT_0000000838"), ("firmware_version", "28.41.1000")}
    assert ours[("node_infiniband_info", frozenset({*info_labels, ("hca_type", "MT4129")}))] == 1


def test_einval_counter_drops_only_that_counter(writable_h100: Path, tmp_path: Path) -> None:
    paths = sysfs_with(tmp_path, writable_h100)
    broken = {paths.sys("class", "infiniband", "mlx5_4", "ports", "1", "counters", "symbol_error")}

    def read(path: str) -> bytes:
        if path in broken:
            raise OSError(errno.EINVAL, "Invalid argument", path)
        return read_attr(path)

    healthy = series(InfinibandCollector(InfinibandConfig(), paths).collect())
    collector = InfinibandCollector(InfinibandConfig(), paths, read=read)
    for _ in range(3):  # and it stays that way, without losing the port
        got = series(collector.collect())
        assert set(healthy) - set(got) == {port_key("node_infiniband_symbol_error_total", "mlx5_4")}
        assert set(got) <= set(healthy)
    # the same for the rate of another port, and for a counter that reads garbage
    broken.add(paths.sys("class", "infiniband", "mlx5_5", "ports", "1", "rate"))
    (writable_h100 / "mlx5_6" / "ports" / "1" / "counters" / "link_downed").write_text("N/A (no PMA)\n")
    got = series(collector.collect())
    assert set(healthy) - set(got) == {
        port_key("node_infiniband_symbol_error_total", "mlx5_4"),
        port_key("node_infiniband_rate_bytes_per_second", "mlx5_5"),
        port_key("node_infiniband_link_downed_total", "mlx5_6"),
    }


# --- discovery, filters, absence -------------------------------------------------------------------------


def test_no_infiniband_is_no_data(tmp_path: Path) -> None:
    with pytest.raises(NoData):
        InfinibandCollector(InfinibandConfig(), Paths(sysfs=str(tmp_path))).collect()


def test_include_and_exclude(h100: Path, tmp_path: Path) -> None:
    paths = sysfs_with(tmp_path, h100)

    def devices(cfg: InfinibandConfig) -> set[str]:
        return {dict(s.labels)["device"] for s in InfinibandCollector(cfg, paths).collect()}

    assert devices(InfinibandConfig(device_include="mlx5_[01]")) == {"mlx5_0", "mlx5_1"}
    assert devices(InfinibandConfig(device_exclude="mlx5_bond_0")) == {f"mlx5_{i}" for i in (0, 1, 4, 5, 6, 7, 8, 9)}
    assert "mlx5_bond_0" in devices(InfinibandConfig(device_exclude="mlx5_bond"))  # fully anchored
    with pytest.raises(NoData):
        InfinibandCollector(InfinibandConfig(device_include="mlx4_.*"), paths).collect()


def test_devices_that_come_and_go_are_followed(writable_h100: Path, tmp_path: Path) -> None:
    collector = InfinibandCollector(InfinibandConfig(), sysfs_with(tmp_path, writable_h100), relist_every=5)

    def devices() -> set[str]:
        return {dict(s.labels)["device"] for s in collector.collect() if s.name == "node_infiniband_state_id"}

    assert "mlx5_9" in devices()  # call 1
    shutil.rmtree(writable_h100 / "mlx5_9")
    assert "mlx5_9" not in devices()  # call 2: its state file is gone -> dropped, listed again next call
    shutil.copytree(writable_h100 / "mlx5_0", writable_h100 / "mlx5_10")
    assert "mlx5_10" in devices()  # call 3: listed again after the failure
    shutil.copytree(writable_h100 / "mlx5_0", writable_h100 / "mlx5_11")
    assert "mlx5_11" not in devices()  # call 4: the cached listing is used ...
    assert "mlx5_11" in devices()  # call 5: ... until the periodic relisting


def test_catalogue_covers_every_emitted_series(tmp_path: Path) -> None:
    tree = build_scaled_tree(tmp_path / "tree", disks=1, nics=1, ib_ports=8)
    collector = InfinibandCollector(InfinibandConfig(), Paths(sysfs=str(tree / "sys")), clock=object())
    specs = catalogue(collector.metrics)
    samples = collector.collect()
    for s in samples:
        assert tuple(k for k, _ in s.labels) == specs[s.name].labels, s
    # every family but port_rcv_discards (absent from mlx5 sysfs) is exercised by the scaled tree
    assert set(specs) - {s.name for s in samples} == {"node_infiniband_port_discards_received_total"}
    assert len({s.labels for s in samples if s.name == "node_infiniband_state_id"}) == 8
    assert collector.name == InfinibandCollector.NAME == "infiniband"


def _only(tree: Path) -> list[str]:
    """node_exporter flags: read ``tree`` and run only the collectors named after these."""
    return [f"--path.procfs={tree / 'proc'}", f"--path.sysfs={tree / 'sys'}", "--collector.disable-defaults"]
