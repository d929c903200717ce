"""Network (netdev + netclass) and netstat collectors: parsers, node_exporter oracles, filters, failures."""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

import pytest

from agent.collectors.common import read_attr
from agent.collectors.netstat import NetstatCollector, NetstatConfig, parse_snmp
from agent.collectors.network import CLASS_ATTRS, NetworkCollector, NetworkConfig, parse_int, parse_net_dev, parse_speed
from agent.core.errors import CollectorError
from agent.core.metrics import catalogue
from agent.core.paths import Paths
from tests.expo import parse_exposition, parse_types
from tests.nodeexp import scrape_node_exporter
from tests.trees import build_scaled_tree

NET_DEV = (
    "Inter-|   Receive                                                |  Transmit\n"
    " face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls "
    "carrier compressed\n"
    "    lo:    3193      29    0    0    0     0          0         0     3193      29    0    0    0     0       0"
    "          0\n"
    "  eth0: 264599065    7135    1    2    0     0          0         3   498957    4491    4    5    0     0       0"
    "          0\n"
    "ib0:18446744073709551615 7 0 0 0 0 0 0 9 8 0 0 0 0 0 0\n"
)

SNMP = """\
Ip: Forwarding DefaultTTL InReceives
Ip: 2 64 7160
Tcp: RtoAlgorithm RtoMin RtoMax MaxConn ActiveOpens OutSegs RetransSegs
Tcp: 1 200 120000 -1 3556 54915039 227
"""


def series(samples) -> dict:
    return {(s.name, frozenset(s.labels)): s.value for s in samples}


def devices(samples, name: str) -> set[str]:
    return {dict(s.labels)["device"] for s in samples if s.name == name}


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    return build_scaled_tree(tmp_path / "tree", disks=2, nics=8, ib_ports=0)


def tree_paths(root: Path) -> Paths:
    return Paths(procfs=str(root / "proc"), sysfs=str(root / "sys"))


# --- pure parsers -------------------------------------------------------------------------------------


def test_parse_net_dev_reads_every_device_line() -> None:
    stats = parse_net_dev(NET_DEV)
    assert list(stats) == ["lo", "eth0", "ib0"]
    assert stats["eth0"][:4] == [264599065, 7135, 1, 2]
    assert stats["eth0"][8:12] == [498957, 4491, 4, 5]
    assert stats["ib0"][0] == 2**64 - 1  # no space after the colon (old kernels, wide counters)


def test_parse_net_dev_rejects_a_short_line() -> None:
    with pytest.raises(ValueError, match="short line"):
        parse_net_dev("  eth0: 1 2 3\n")


def test_parse_speed() -> None:
    assert parse_speed("1000\n") == 125_000_000
    assert parse_speed(b"400000\n") == 50_000_000_000
    assert parse_speed("-1\n") is None
    with pytest.raises(ValueError):
        parse_speed("fast")


def test_parse_int_and_admin_state() -> None:
    from agent.collectors.network import admin_state

    assert parse_int(b"0x1303\n") == 4867 and parse_int("32") == 32
    assert (admin_state(0x1303), admin_state(0x1002), admin_state(None)) == ("up", "down", "unknown")


def test_parse_snmp() -> None:
    stats = parse_snmp(SNMP)
    assert stats["Tcp"]["RetransSegs"] == 227
    assert stats["Tcp"]["OutSegs"] == 54915039
    assert stats["Tcp"]["MaxConn"] == -1
    assert stats["Ip"] == {"Forwarding": 2, "DefaultTTL": 64, "InReceives": 7160}


def test_parse_snmp_rejects_mismatched_lines() -> None:
    with pytest.raises(ValueError, match="mismatched"):
        parse_snmp("Tcp: A B\nTcp: 1\n")


# --- oracle: node_exporter's own output on its fixture trees ----------------------------------------------


def test_network_matches_node_exporter_e2e_output(node_exporter_fixtures: Path, fixture_tree: Path,
                                                  tmp_path: Path) -> None:
    # The fixture has no /proc/net/dev (node_exporter's e2e run read netdev over netlink): give it one.
    procfs = tmp_path / "proc"
    (procfs / "net").mkdir(parents=True)
    (procfs / "net" / "dev").write_text(NET_DEV)
    sysfs = fixture_tree / "sys"  # with class/net/eth0 -> devices/... restored as a link
    # node_exporter's e2e run ignored the dmz and int interfaces (neither appears in its output).
    cfg = NetworkConfig(device_exclude="dmz|int")
    ours = series(NetworkCollector(cfg, Paths(procfs=str(procfs), sysfs=str(sysfs))).collect())
    expected = parse_exposition((node_exporter_fixtures / "e2e-output.txt").read_text())

    netclass = {name for _, name, _ in CLASS_ATTRS} | {"node_network_up", "node_network_carrier_changes_total",
                                                        "node_network_speed_bytes", "node_network_info"}
    theirs = {k: v for k, v in expected.items() if k[0] in netclass}
    mine = {k: v for k, v in ours.items() if k[0] in netclass}
    assert mine == theirs  # bond0 and eth0, every netclass family, series for series (bond0 speed -1: absent)
    assert len({k[0] for k in mine}) == 19
    # netdev: node_exporter's e2e kept only lo (device-include=lo, bytes/packets skipped); lo is all zeros
    # in our /proc/net/dev as on the machine that ran it. nohandler comes from netlink only.
    cfg = NetworkConfig(device_include="lo", netclass_attributes=False)
    ours = series(NetworkCollector(cfg, Paths(procfs=str(procfs), sysfs=str(sysfs))).collect())
    dev = {k: v for k, v in expected.items() if k[0].startswith(("node_network_receive_", "node_network_transmit_"))
           and k[0].endswith("_total") and k[0] != "node_network_receive_nohandler_total"}  # netlink: live test
    assert len(dev) == 12 and all(ours[k] == v for k, v in dev.items())


def test_netstat_matches_node_exporter_e2e_output(node_exporter_fixtures: Path) -> None:
    collector = NetstatCollector(NetstatConfig(), Paths(procfs=str(node_exporter_fixtures / "proc")))
    ours = series(collector.collect())
    text = (node_exporter_fixtures / "e2e-output.txt").read_text()
    expected, types = parse_exposition(text), parse_types(text)
    assert set(ours) == {k for k in expected if k[0].startswith("node_netstat_")}  # node_exporter's default fields
    assert len(ours) == 41
    for key, value in ours.items():
        assert expected[key] == value
    for spec in collector.metrics:
        assert spec.name not in types or types[spec.name] == spec.type


def test_network_matches_live_node_exporter(tree: Path) -> None:
    flags = ["--collector.netdev", "--no-collector.netdev.netlink", "--collector.netclass", "--collector.netstat"]
    theirs = parse_exposition(scrape_node_exporter(*_only(tree), *flags))
    paths = tree_paths(tree)
    ours = series(NetworkCollector(NetworkConfig(), paths).collect()) | series(
        NetstatCollector(NetstatConfig(), paths).collect()
    )
    netstat = sum(1 for name, _ in ours if name.startswith("node_netstat_"))
    counters = sum(1 for name, _ in ours if name.startswith(("node_network_receive_", "node_network_transmit_"))
                   and name.endswith("_total"))
    assert counters == 8 * 16  # 8 NICs x 16 /proc/net/dev columns
    assert sum(1 for name, _ in ours if name == "node_network_info") == 8
    assert netstat >= 2 and netstat == sum(1 for name, _ in theirs if name.startswith("node_netstat_"))
    label_sets = {(n, frozenset(k for k, _ in ls)) for n, ls in theirs}
    for key, value in ours.items():
        if (key[0], frozenset(k for k, _ in key[1])) not in label_sets:
            assert key[0] == "node_network_info", key  # 1.5's info has no adminstate label yet
            continue
        assert theirs[key] == value, key
    families = {name for name, _ in ours}
    for key, value in theirs.items():
        device = dict(key[1]).get("device")
        if key[0] in families and device != "lo" and key[0] != "node_network_info":  # lo: our default exclude
            # node_exporter 1.5 exports speed -1 as -125000; newer releases (and we) leave it out
            assert key in ours or (key[0] == "node_network_speed_bytes" and value < 0), key


# --- filters ---------------------------------------------------------------------------------------------


def test_default_exclude_drops_lo_only(tree: Path) -> None:
    samples = NetworkCollector(NetworkConfig(), tree_paths(tree)).collect()
    nics = {f"ens{i}f0np0" for i in range(1, 9)}
    assert devices(samples, "node_network_receive_bytes_total") == nics
    assert devices(samples, "node_network_up") == nics
    got = series(samples)
    down = frozenset({("device", "ens8f0np0")})
    assert got[("node_network_up", down)] == 0.0
    assert ("node_network_speed_bytes", down) not in got  # speed -1
    assert got[("node_network_speed_bytes", frozenset({("device", "ens1f0np0")}))] == 200_000 * 125_000


def test_include_is_fully_anchored(tree: Path) -> None:
    samples = NetworkCollector(NetworkConfig(device_include="ens[12]f0np0"), tree_paths(tree)).collect()
    assert devices(samples, "node_network_receive_bytes_total") == {"ens1f0np0", "ens2f0np0"}
    assert devices(samples, "node_network_up") == {"ens1f0np0", "ens2f0np0"}
    assert NetworkCollector(NetworkConfig(device_include="ens1"), tree_paths(tree)).collect() == []


def test_explicit_exclude_replaces_the_default(tree: Path) -> None:
    samples = NetworkCollector(NetworkConfig(device_exclude="ens[1-7]f0np0"), tree_paths(tree)).collect()
    assert devices(samples, "node_network_receive_bytes_total") == {"lo", "ens8f0np0"}
    assert devices(samples, "node_network_up") == {"lo", "ens8f0np0"}
    assert series(samples)[("node_network_up", frozenset({("device", "lo")}))] == 0.0  # operstate "unknown"


# --- failures and changes ------------------------------------------------------------------------------


def test_unreadable_speed_drops_only_the_speed(tree: Path) -> None:
    broken = str(tree / "sys" / "class" / "net" / "ens3f0np0" / "speed")

    def read(path: str) -> bytes:
        if path == broken:
            raise OSError(errno.EINVAL, "Invalid argument", path)
        return read_attr(path)

    healthy = series(NetworkCollector(NetworkConfig(), tree_paths(tree)).collect())
    got = series(NetworkCollector(NetworkConfig(), tree_paths(tree), read=read).collect())
    assert set(healthy) - set(got) == {("node_network_speed_bytes", frozenset({("device", "ens3f0np0")}))}


def test_missing_proc_net_dev_is_a_collector_error(tmp_path: Path) -> None:
    collector = NetworkCollector(NetworkConfig(), Paths(procfs=str(tmp_path), sysfs=str(tmp_path)))
    with pytest.raises(CollectorError, match="net/dev"):
        collector.collect()


def test_malformed_snmp_is_a_collector_error(tmp_path: Path) -> None:
    (tmp_path / "net").mkdir()
    (tmp_path / "net" / "snmp").write_text("Tcp: A B\nTcp: 1\n")
    with pytest.raises(CollectorError, match="mismatched"):
        NetstatCollector(NetstatConfig(), Paths(procfs=str(tmp_path))).collect()


def test_devices_that_come_and_go_are_followed(tree: Path) -> None:
    collector = NetworkCollector(NetworkConfig(), tree_paths(tree), relist_every=1000)
    assert "ens9f0np0" not in devices(collector.collect(), "node_network_up")
    # hot-plug: a new line in /proc/net/dev makes the collector list sysfs again at once
    net_dev = tree / "proc" / "net" / "dev"
    net_dev.write_text(net_dev.read_text() + "ens9f0np0: 1 2 3 4 0 0 0 0 5 6 7 8 0 0 0 0\n")
    shutil.copytree(tree / "sys" / "class" / "net" / "ens1f0np0", tree / "sys" / "class" / "net" / "ens9f0np0")
    got = series(collector.collect())
    assert got[("node_network_up", frozenset({("device", "ens9f0np0")}))] == 1.0
    assert got[("node_network_transmit_drop_total", frozenset({("device", "ens9f0np0")}))] == 8.0
    # unplug: sysfs directory gone -> that device's sysfs series disappear, nothing fails
    shutil.rmtree(tree / "sys" / "class" / "net" / "ens2f0np0")
    assert "ens2f0np0" not in devices(collector.collect(), "node_network_up")
    assert "ens2f0np0" not in devices(collector.collect(), "node_network_up")


# --- catalogue -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("cls", [NetworkCollector, NetstatCollector])
def test_catalogue_covers_every_emitted_series(cls, tree: Path) -> None:
    config = NetworkConfig() if cls is NetworkCollector else NetstatConfig()
    collector = cls(config, tree_paths(tree), clock=object())  # unknown deps are accepted and ignored
    specs = catalogue(collector.metrics)
    samples = collector.collect()
    for s in samples:
        assert tuple(k for k, _ in s.labels) == specs[s.name].labels, s
    if cls is NetworkCollector:  # the scaled tree's NICs have operstate, carrier_changes, speed and mtu
        assert {s.name for s in samples} <= set(specs) and "node_network_info" in {s.name for s in samples}
    else:  # the scaled tree has no snmp6; what it has is all in the catalogue
        names = {s.name for s in samples}
        assert names <= set(specs) and "node_netstat_TcpExt_ListenDrops" in names
    assert collector.name == cls.NAME


def test_runs_on_this_machine() -> None:
    paths = Paths()
    if not os.path.exists(paths.proc("net", "dev")):
        pytest.skip("no /proc/net/dev here")
    samples = NetworkCollector(NetworkConfig(), paths).collect()
    with open(paths.proc("net", "dev")) as f:
        expected = set(parse_net_dev(f.read())) - {"lo"}
    assert devices(samples, "node_network_receive_bytes_total") == expected
    names = {s.name for s in NetstatCollector(NetstatConfig(), paths).collect()}
    assert {"node_netstat_Tcp_RetransSegs", "node_netstat_Tcp_OutSegs", "node_netstat_TcpExt_ListenDrops"} <= names


def test_netdev_matches_live_node_exporter_netlink_on_this_machine() -> None:
    """node_exporter reads netdev over netlink (its default); ours from /proc/net/dev + sysfs rx_nohandler."""
    if not os.path.exists("/sys/class/net/lo/statistics/rx_nohandler"):
        pytest.skip("no rx_nohandler in sysfs here")
    theirs = parse_exposition(scrape_node_exporter("--collector.disable-defaults", "--collector.netdev"))
    ours = series(NetworkCollector(NetworkConfig(), Paths()).collect())  # both leave lo out here
    nohandler = {k: v for k, v in ours.items() if k[0] == "node_network_receive_nohandler_total"}
    assert nohandler
    assert nohandler == {k: v for k, v in theirs.items() if k[0] == "node_network_receive_nohandler_total"}
    quiet = [k for k in theirs if k[0].endswith(("_errs_total", "_fifo_total", "_frame_total", "_colls_total",
                                                   "_carrier_total", "_compressed_total"))]
    assert quiet and all(ours[k] == theirs[k] for k in quiet)  # error counters of an idle VM do not move


def test_exposition_parser_used_by_the_oracles() -> None:
    text = (
        "# HELP a_total A.\n# TYPE a_total counter\n"
        'a_total{device="x\\"y",path="C:\\\\n\\n",odd="\x1c"} 1.5e+07 1700000000000\n'
        "b NaN\nc{} +Inf\n"
    )
    got = parse_exposition(text)
    assert got[("a_total", frozenset({("device", 'x"y'), ("path", "C:\\n\n"), ("odd", "\x1c")}))] == 1.5e7
    assert got[("c", frozenset())] == float("inf")
    assert got[("b", frozenset())] != got[("b", frozenset())]  # NaN
    assert parse_types(text) == {"a_total": "counter"}


def _only(tree: Path) -> list[str]:
    """node_exporter flags: read ``tree`` and run only the collectors named after these."""
    return [f"--path.procfs={tree / 'proc'}", f"--path.sysfs={tree / 'sys'}", "--collector.disable-defaults"]
