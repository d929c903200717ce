"""The node simulator: rendered trees read by the real collectors, integrated counters, hanging statvfs,
kernel-log records, raw files, deterministic chance/uniform draws, and ``extends``."""

from __future__ import annotations

import math
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


HOST = """
name: host
description: the host objects the CPU, memory, pressure, sensor and ECC collectors read
gpu_count: 0
node:
  mem: {total_bytes: 1000000000000, available_bytes: 600000000000, free_bytes: 400000000000,
        cached_bytes: 150000000000, rate: {available_bytes: -1000000000}}
  psi: {rate: {io_some: 0.5, io_full: 0.25, memory_full: 0.1}}
  vmstat: {pgfault: 1000, rate: {pgfault: 10}}
  load: {runnable: 100, load1: 0, load5: 0, load15: 0}
  cpu/0: {cores: 2, threads: 2, user: 0.5, rate: {package_throttles: 1}}
  cpu/1: {cores: 2, threads: 2, user: 0.1}
  hwmon/coretemp.0/temp1: {input_c: 61, crit_c: 100, label: Package id 0}
  hwmon/coretemp.1/temp1: {input_c: 59}
  edac/mc0: {csrow: 1, channel: 1}
  tcp: {rate: {listen_drops: 4, listen_overflows: 4}}
  clock: {maxerror_us: 15999000, rate: {maxerror_us: 500}}
timeline:
  - {at: 30s, host: {vmstat: {add: {oom_kill: 1}}, edac/mc0: {add: {ce_count: 3, ue_count: 1}},
                     hwmon/coretemp.0/temp1: {set: {input_c: 101}}}}
  - {at: 30s, files: {proc/loadavg: "7.00 7.00 7.00 3/900 77\\n"}}
"""


def test_host_objects_are_what_the_cpu_memory_pressure_sensor_and_ecc_collectors_read(tmp_path):
    from agent.collectors.cpu import CpuCollector, CpuConfig
    from agent.collectors.edac import EdacCollector, EdacConfig
    from agent.collectors.hwmon import HwmonCollector, HwmonConfig
    from agent.collectors.loadavg import LoadavgCollector, LoadavgConfig
    from agent.collectors.meminfo import MeminfoCollector, MeminfoConfig
    from agent.collectors.pressure import PressureCollector, PressureConfig
    from agent.collectors.stat import StatCollector, StatConfig
    from agent.collectors.timex import TimexCollector, TimexConfig
    from agent.collectors.vmstat import VmstatCollector, VmstatConfig

    clock = Clock()
    sim = NodeSim(simulate.load_text(HOST), str(tmp_path), clock)
    p = sim.paths
    cpu = CpuCollector(CpuConfig(), p)
    first = values(cpu.collect(), "node_cpu_seconds_total")
    clock.t += 20  # t=20
    sim.advance()
    mem = MeminfoCollector(MeminfoConfig(), p).collect()
    assert values(mem, "node_memory_MemTotal_bytes")[()] == pytest.approx(1e12, abs=1024)
    assert values(mem, "node_memory_MemAvailable_bytes")[()] == pytest.approx(580e9, abs=1024)
    assert values(mem, "node_memory_MemFree_bytes")[()] <= values(mem, "node_memory_MemAvailable_bytes")[()]
    psi = PressureCollector(PressureConfig(), p).collect()
    assert values(psi, "node_pressure_io_stalled_seconds_total")[()] == pytest.approx(5.0)
    assert values(psi, "node_pressure_io_waiting_seconds_total")[()] == pytest.approx(10.0)
    assert values(psi, "node_pressure_memory_stalled_seconds_total")[()] == pytest.approx(2.0)
    assert "some avg10=50.00" in Path(p.proc("pressure", "io")).read_text()  # constant 50% stall: the averages agree
    assert values(VmstatCollector(VmstatConfig(), p).collect(), "node_vmstat_pgfault")[()] == 1200
    load = values(LoadavgCollector(LoadavgConfig(), p).collect(), "node_load1")[()]
    assert load == pytest.approx(100 * (1 - math.exp(-20 / 60)), abs=0.01)  # the kernel's 1-minute decay
    out = cpu.collect()
    seconds = values(out, "node_cpu_seconds_total")
    idle = [k for k in seconds if k[1] == "idle"]
    assert len(idle) == 8  # 2 packages x 2 cores x 2 threads
    assert 0.9 * 0.5 * 20 <= seconds[("0", "user")] - first[("0", "user")] <= 1.1 * 0.5 * 20 + 0.01
    assert sum(seconds[(c, m)] - first[(c, m)] for c, m in seconds if c == "5") == pytest.approx(20, abs=0.1)
    assert values(out, "node_cpu_package_throttles_total") == {("0",): 20, ("1",): 0}
    assert len(values(out, "node_cpu_core_throttles_total")) == 4
    assert values(StatCollector(StatConfig(), p).collect(), "node_procs_running")[()] == 100
    hw = HwmonCollector(HwmonConfig(), p)
    temps = values(hw.collect(), "node_hwmon_temp_celsius")
    assert temps == {("platform_coretemp_0", "temp1"): 61, ("platform_coretemp_1", "temp1"): 59}
    ecc = EdacCollector(EdacConfig(), p)
    assert values(ecc.collect(), "node_edac_correctable_errors_total") == {("0",): 0}
    assert values(NetstatCollector(NetstatConfig(), p).collect(), "node_netstat_TcpExt_ListenDrops")[()] == 80
    assert values(TimexCollector(TimexConfig(), p, adjtimex=sim.adjtimex).collect(),
                  "node_timex_maxerror_seconds")[()] == 16.0  # capped, as the kernel caps it

    clock.t += 15  # t=35: an OOM kill, three corrected and one uncorrected error on csrow 1 channel 1, 101 C
    sim.advance()
    assert values(VmstatCollector(VmstatConfig(), p).collect(), "node_vmstat_oom_kill")[()] == 1
    out = ecc.collect()
    assert values(out, "node_edac_correctable_errors_total") == {("0",): 3}
    assert values(out, "node_edac_uncorrectable_errors_total") == {("0",): 1}
    assert values(out, "node_edac_channel_correctable_errors_total")[("0", "1", "1", "mc0_csrow1_channel1")] == 3
    assert values(out, "node_edac_csrow_correctable_errors_total")[("0", "0")] == 0
    sensors = hw.collect()
    # a raised alarm file reads 1; node_exporter (and this collector) scale it like a temperature: 0.001
    assert values(sensors, "node_hwmon_temp_crit_alarm_celsius")[("platform_coretemp_0", "temp1")] == 0.001
    assert values(sensors, "node_hwmon_temp_crit_alarm_celsius")[("platform_coretemp_1", "temp1")] == 0
    assert values(sensors, "node_hwmon_chip_names")[("platform_coretemp_0", "coretemp")] == 1
    assert values(sensors, "node_hwmon_sensor_label")[("platform_coretemp_0", "temp1", "Package id 0")] == 1
    assert Path(p.proc("loadavg")).read_text() == "7.00 7.00 7.00 3/900 77\n"  # files: replaces a rendered file
    sim.release()


def test_unchanged_files_are_not_rewritten(tmp_path):
    clock = Clock()
    sim = NodeSim(simulate.load_text(HOST), str(tmp_path), clock)
    topology = Path(sim.paths.sys("devices", "system", "cpu", "cpu3", "topology", "core_id"))
    stat = Path(sim.paths.proc("stat"))
    before = (topology.stat().st_ino, stat.stat().st_ino)
    clock.t += 5
    sim.advance()
    assert topology.stat().st_ino == before[0] and topology.read_text() == "1\n"
    assert stat.stat().st_ino != before[1]  # CPU times moved: rewritten (atomically, a new inode)
    sim.release()


def test_cpu_numbering_is_linux_x86s():
    from agent.collectors.hostfiles import cpu_numbers

    pkgs = [("0", {"cores": 2, "threads": 2}), ("1", {"cores": 2, "threads": 2})]
    assert cpu_numbers(pkgs) == [(0, 0, 0), (1, 0, 1), (2, 1, 0), (3, 1, 1), (4, 0, 0), (5, 0, 1), (6, 1, 0),
                                 (7, 1, 1)]


@pytest.mark.parametrize("key", ["mem/x", "cpu/a", "cpu", "hwmon/coretemp.0", "hwmon/coretemp.0/fan1",
                                 "hwmon/../temp1", "edac/controller0", "edac/mc0/csrow0", "psi/io"])
def test_malformed_host_object_names_are_refused(key):
    with pytest.raises(ConfigError, match="malformed host object name"):
        simulate.load_text(f"name: x\ndescription: y\nnode:\n  {key}: {{}}\n", "s.yml")


def test_host_fields_are_checked():
    with pytest.raises(ConfigError, match="unknown hwmon field 'temp'"):
        simulate.load_text("name: x\ndescription: y\nnode:\n  hwmon/coretemp.0/temp1: {temp: 3}\n", "s.yml")
    with pytest.raises(ConfigError, match="label: expected text"):
        simulate.load_text("name: x\ndescription: y\nnode:\n  hwmon/coretemp.0/temp1: {label: 3}\n", "s.yml")


def test_docs_simulation_example_is_valid():
    import re

    doc = (Path(__file__).resolve().parents[1] / "docs" / "simulation.md").read_text()
    sc = simulate.load_text(re.search(r"```yaml\n(.*?)```", doc, re.S).group(1), "docs/simulation.md")
    assert "cpu/0" in sc.node and any("psi" in step.host for step in sc.timeline)  # node-healthy merged in
