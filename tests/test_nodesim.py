"""The node simulator: rendered trees read by the real collectors, integrated counters, hanging statvfs,
kernel-log records, raw files, deterministic chance/uniform draws, and ``extends``."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from agent.collectors import simulate
from agent.collectors.disk import DiskCollector, DiskConfig
from agent.collectors.filesystem import FilesystemCollector, FilesystemConfig
from agent.collectors.infiniband import InfinibandCollector, InfinibandConfig
from agent.collectors.netstat import NetstatCollector, NetstatConfig
from agent.collectors.network import NetworkCollector, NetworkConfig
from agent.collectors.nodesim import NodeSim
from agent.core.errors import ConfigError

TEXT = """
name: t
description: unit test node
gpu_count: 1
node:
  nic/eth0: {speed_mbps: 100000, rate: {rx_bytes: 1000}}
  tcp: {rate: {out_segs: 100, retrans_segs: 1}}
  disk/nvme0n1: {rate: {reads: 10, read_ms: 5}}
  fs//data: {size_bytes: 1000000, avail_bytes: 500000, rate: {avail_bytes: -1000}}
  ib/mlx5_0/1: {rate: {port_xmit_wait: 50}}
timeline:
  - {at: 10s, host: {nic/eth0: {set: {up: 0}, add: {carrier_changes: 1}}}, kmsg: ["hello kernel"]}
  - {at: 20s, host: {fs//data: {set: {hang: 1}}}}
  - {at: 30s, host: {fs//data: {set: {hang: 0}}}, files: {proc/loadavg: "1.00 2.00 3.00 1/100 42\\n"}}
  - {at: 0s, every: 10s, chance: 0.5, host: {tcp: {add: {in_segs: 1}}}}
  - {at: 0s, every: 10s, uniform: {gpu_util: [10, 90]}}
"""


class Clock:
    def __init__(self) -> None:
        self.t = 500.0

    def __call__(self) -> float:
        return self.t


def values(samples, name):
    return {tuple(v for _, v in s.labels): s.value for s in samples if s.name == name}


def test_rendered_trees_are_what_the_real_collectors_read(tmp_path):
    clock = Clock()
    sim = NodeSim(simulate.load_text(TEXT), str(tmp_path), clock)
    clock.t += 5
    sim.advance()
    p = sim.paths
    net = NetworkCollector(NetworkConfig(), p).collect()
    assert values(net, "node_network_receive_bytes_total")[("eth0",)] == 5000
    assert values(net, "node_network_up")[("eth0",)] == 1
    assert values(net, "node_network_speed_bytes")[("eth0",)] == 12_500_000_000
    assert values(NetstatCollector(NetstatConfig(), p).collect(), "node_netstat_Tcp_RetransSegs")[()] == 5
    disk = DiskCollector(DiskConfig(), p).collect()
    assert values(disk, "node_disk_reads_completed_total")[("nvme0n1",)] == 50
    assert values(disk, "node_disk_read_time_seconds_total")[("nvme0n1",)] == pytest.approx(0.025)
    ib = InfinibandCollector(InfinibandConfig(), p).collect()
    assert values(ib, "node_infiniband_port_transmit_wait_total")[("mlx5_0", "1")] == 250
    assert values(ib, "node_infiniband_physical_state_id")[("mlx5_0", "1")] == 5
    fs = FilesystemCollector(FilesystemConfig(), p, statvfs=sim.statvfs)
    try:
        avail = values(fs.collect(), "node_filesystem_avail_bytes")
        assert avail[("/dev/nvme0n1p1", "ext4", "/data")] == pytest.approx(495000, abs=4096)
        clock.t += 10  # t=15: eth0 down, one kernel line
        sim.advance()
        assert values(NetworkCollector(NetworkConfig(), p).collect(), "node_network_up")[("eth0",)] == 0
        assert Path(p.dev("kmsg")).read_text().splitlines()[-1] == "4,1,10000000,-;hello kernel"
        clock.t += 10  # t=25: /data hangs -> device_error 1, the collector does not block
        sim.advance()
        out = fs.collect()
        assert values(out, "node_filesystem_device_error")[("/dev/nvme0n1p1", "ext4", "/data")] == 1
        assert ("/dev/nvme0n1p1", "ext4", "/data") not in values(out, "node_filesystem_avail_bytes")
        clock.t += 10  # t=35: it answers again; a raw file appeared
        sim.advance()
        assert Path(p.proc("loadavg")).read_text() == "1.00 2.00 3.00 1/100 42\n"
    finally:
        sim.release()
        fs.close()


def test_statvfs_blocks_while_hung_and_release_lets_it_go(tmp_path):
    clock = Clock()
    sim = NodeSim(simulate.load_text(TEXT), str(tmp_path), clock)
    clock.t += 21
    sim.advance()
    done = threading.Event()
    threading.Thread(target=lambda: (sim.statvfs(sim.paths.root("/data")), done.set()), daemon=True).start()
    assert not done.wait(0.3)
    clock.t += 10  # the scenario un-hangs it at 30 s
    assert done.wait(5)
    with pytest.raises(FileNotFoundError):
        sim.statvfs(sim.paths.root("/nope"))
    sim.release()


def test_chance_and_uniform_are_deterministic_and_shared_with_the_gpus(tmp_path):
    runs = []
    for k in range(2):
        clock = Clock()
        sim = NodeSim(simulate.load_text(TEXT), str(tmp_path / str(k)), clock)
        utils = []
        for _ in range(10):
            clock.t += 10
            sim.advance()
            sim.nvml._advance()
            utils.append(sim.nvml.devices[0].values["gpu_util"])
        runs.append((sim.objects["tcp"].values["in_segs"], utils))
        sim.release()
    assert runs[0] == runs[1]
    in_segs, utils = runs[0]
    assert 0 < in_segs < 11  # about half of the 11 repetitions happened
    assert all(10 <= u <= 90 for u in utils) and len(set(utils)) > 5


def test_extends_merges_node_gpus_and_timeline():
    sc = simulate.load_text("""
name: child
description: a fault on top of the healthy node
extends: node-healthy
duration: 3m
node:
  nic/eth0: {speed_mbps: 25000}
gpus:
  1: {temperature: 80}
timeline:
  - {at: 1m, host: {tcp: {rate: {retrans_segs: 1000}}}}
expect:
  - {alert: TcpRetransmitRatioHigh, never: true}
""")
    base = simulate.load("node-healthy")
    assert sc.node["nic/eth0"]["speed_mbps"] == 25000
    assert sc.node["nic/eth0"]["rate"] == base.node["nic/eth0"]["rate"]  # kept from the base
    assert set(sc.node) == set(base.node)
    assert sc.devices[1].temperature == 80 and sc.devices[0].temperature == base.devices[0].temperature
    assert len(sc.timeline) == len(base.timeline) + 1
    assert not sc.healthy and len(sc.expect) == 1 and sc.duration == 180


def test_bad_scenarios_are_located():
    with pytest.raises(ConfigError) as err:
        simulate.load_text("name: x\ndescription: y\ntimeline:\n  - {at: 1s, files: {../etc/passwd: x}}\n", "s.yml")
    assert "s.yml:4:" in str(err.value) and "no .." in str(err.value)
    with pytest.raises(ConfigError) as err:
        simulate.load_text("name: x\ndescription: y\nexpect:\n  - {within: 1m}\n", "s.yml")
    assert "exactly one of alert or action" in str(err.value)
    with pytest.raises(ConfigError, match="unknown scenario"):
        simulate.load_text("name: x\ndescription: y\nextends: no-such\n", "s.yml")
