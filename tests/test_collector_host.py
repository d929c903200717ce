"""Host collectors against node_exporter: its golden e2e output on its fixture trees, family by family,
and a live Debian node_exporter on the same trees; plus the pure parsers on literal strings."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.collectors import cpu, edac, hwmon, loadavg, meminfo, nvme, pressure, rapl, stat, thermal_zone, vmstat
from agent.collectors import time as timec
from agent.core.metrics import catalogue
from agent.core.paths import Paths
from tests.expo import parse_exposition, parse_types
from tests.nodeexp import scrape_node_exporter


def series(samples) -> dict:
    return {(s.name, frozenset(s.labels)): s.value for s in samples}


def fixture_paths(root: Path) -> Paths:
    return Paths(procfs=str(root / "proc"), sysfs=str(root / "sys"))


# node_exporter's e2e run flags, as our settings (end-to-end-test.sh)
E2E_CONFIGS = {
    "cpu": (cpu.CpuCollector, cpu.CpuConfig(info=True, flags_include="^(aes|avx.?|constant_tsc)$",
                                            bugs_include="^(cpu_meltdown|spectre_.*|mds)$", vulnerabilities=True)),
    "meminfo": (meminfo.MeminfoCollector, meminfo.MeminfoConfig(numa=True)),
    "loadavg": (loadavg.LoadavgCollector, loadavg.LoadavgConfig()),
    "pressure": (pressure.PressureCollector, pressure.PressureConfig()),
    "vmstat": (vmstat.VmstatCollector, vmstat.VmstatConfig()),
    "stat": (stat.StatCollector, stat.StatConfig(softirq=True)),
    "hwmon": (hwmon.HwmonCollector,
              hwmon.HwmonConfig(chip_include="(applesmc|asus_nb_wmi|coretemp|hwmon4|ieee80211|nct6779)")),
    "thermal_zone": (thermal_zone.ThermalZoneCollector, thermal_zone.ThermalZoneConfig()),
    "edac": (edac.EdacCollector, edac.EdacConfig()),
    "nvme": (nvme.NvmeCollector, nvme.NvmeConfig()),
    "rapl": (rapl.RaplCollector, rapl.RaplConfig()),
    "time": (timec.TimeCollector, timec.TimeConfig()),
}
PREFIX = {"hwmon": "node_hwmon_", "thermal_zone": "node_thermal_zone_", "edac": "node_edac_", "nvme": "node_nvme_",
          "rapl": "node_rapl_", "time": "node_time_"}
# families each collector must produce on the fixture (every series node_exporter has, and nothing else)
FAMILIES = {
    "cpu": {"node_cpu_seconds_total", "node_cpu_guest_seconds_total", "node_cpu_info", "node_cpu_frequency_hertz",
            "node_cpu_flag_info", "node_cpu_bug_info", "node_cpu_core_throttles_total",
            "node_cpu_package_throttles_total", "node_cpu_isolated", "node_cpu_scaling_frequency_hertz",
            "node_cpu_scaling_frequency_min_hertz", "node_cpu_scaling_frequency_max_hertz",
            "node_cpu_scaling_governor", "node_cpu_vulnerabilities_info"},
    "loadavg": {"node_load1", "node_load5", "node_load15"},
    "pressure": {spec.name for spec in pressure.METRICS},
    "vmstat": {f"node_vmstat_{f}" for f in vmstat.KNOWN},
    "stat": {"node_intr_total", "node_context_switches_total", "node_forks_total", "node_boot_time_seconds",
             "node_procs_running", "node_procs_blocked", "node_softirqs_total"},
}


@pytest.fixture(scope="module")
def golden(node_exporter_fixtures: Path) -> tuple[dict, dict]:
    text = (node_exporter_fixtures / "e2e-output.txt").read_text()
    return parse_exposition(text), parse_types(text)


@pytest.mark.parametrize("name", sorted(E2E_CONFIGS))
def test_collector_matches_node_exporter_golden_output(name: str, fixture_tree: Path, golden) -> None:
    expected, types = golden
    cls, cfg = E2E_CONFIGS[name]
    collector = cls(cfg, fixture_paths(fixture_tree))
    ours = series(collector.collect())
    assert ours
    families = {n for n, _ in ours}
    if name == "rapl":  # the path label is the sysfs path as the exporter sees it
        root = str(fixture_tree / "sys")
        ours = {(n, frozenset((k, v.replace(root, "collector/fixtures/sys")) for k, v in ls)): val
                for (n, ls), val in ours.items()}
    if name == "thermal_zone":  # node_exporter failed on the fixture's cooling devices (none in its output)
        ours = {k: v for k, v in ours.items() if not k[0].startswith("node_cooling_device_")}
    if name == "time":  # node_time_seconds / zone are the clock now (node_exporter's e2e skips them too)
        ours = {k: v for k, v in ours.items() if "clocksource" in k[0]}
    families = {n for n, _ in ours}
    if name in PREFIX:
        wanted = {n for n, _ in expected
                  if n.startswith(PREFIX[name]) and not (name == "time" and "clocksource" not in n)}
    elif name == "meminfo":  # node_memory_* and, with numa: true, node_exporter's meminfo_numa families
        wanted = {n for n, _ in expected if n.startswith("node_memory_")}
    else:
        wanted = FAMILIES[name]
    assert families == wanted
    for family in sorted(wanted):
        theirs = {k: v for k, v in expected.items() if k[0] == family}
        mine = {k: v for k, v in ours.items() if k[0] == family}
        assert mine == theirs, family  # same label sets and values, series for series
    specs = catalogue(collector.metrics)
    for family in families:
        if name == "hwmon" and family not in specs:  # chips name their own elements (pwm1_auto_point1_temp ...)
            continue
        assert family in specs, f"{family} missing from the catalogue"
        assert types[family] == ("gauge" if specs[family].type == "info" else specs[family].type), family
        assert set(specs[family].labels) == {k for key in ours if key[0] == family for k, _ in key[1]}, family


def test_live_node_exporter_on_the_fixture_tree(fixture_tree: Path) -> None:
    """Debian's node_exporter (1.5) on the same trees: every series both export is equal."""
    flags = [f"--path.procfs={fixture_tree / 'proc'}", f"--path.sysfs={fixture_tree / 'sys'}",
             "--collector.disable-defaults", "--collector.stat.softirq", "--collector.cpu.info",
             "--collector.cpu.info.flags-include=^(aes|avx.?|constant_tsc)$",
             "--collector.cpu.info.bugs-include=^(cpu_meltdown|spectre_.*|mds)$",
             *(f"--collector.{c}" for c in ("cpu", "cpufreq", "meminfo", "meminfo_numa", "loadavg", "pressure",
                                            "vmstat", "stat", "hwmon", "thermal_zone", "edac", "nvme", "rapl",
                                            "time"))]
    theirs = parse_exposition(scrape_node_exporter(*flags))
    compared = 0
    configs = {**E2E_CONFIGS, "hwmon": (hwmon.HwmonCollector, hwmon.HwmonConfig())}  # 1.5 has no chip-include
    for name, (cls, cfg) in configs.items():
        ours = series(cls(cfg, fixture_paths(fixture_tree)).collect())
        for key, value in ours.items():
            if key[0] in ("node_time_seconds", "node_time_zone_offset_seconds"):
                continue
            if key in theirs:
                assert theirs[key] == value, key
                compared += 1
        shared = {n for n, _ in ours} & {n for n, _ in theirs}
        for key in theirs:  # every series of a family we share, node_exporter 1.5 has and we have too
            if name == "hwmon":  # 1.5 names chips of the same type differently (the golden file's 1.9 rule is ours)
                continue
            ours_labels = {frozenset(k for k, _ in ls) for n, ls in ours if n == key[0]}
            if key[0] in shared and frozenset(k for k, _ in key[1]) in ours_labels:  # 1.5 lacks newer labels
                assert key in ours, (name, key)
    assert compared > 150


# --- pure parsers ---------------------------------------------------------------------------------------------


def test_parse_cpu_times_and_backwards_guard(tmp_path: Path) -> None:
    text = "cpu  1 2 3 4 5 6 7 8 9 10\ncpu0 44490 19 21045 1087069 220 1 3410 0 2 1\nintr 5\n"
    assert cpu.parse_cpu_times(text) == {"0": [444.9, 0.19, 210.45, 10870.69, 2.2, 0.01, 34.1, 0.0, 0.02, 0.01]}
    proc = tmp_path / "proc"
    proc.mkdir()
    c = cpu.CpuCollector(cpu.CpuConfig(cpufreq=False), Paths(procfs=str(proc), sysfs=str(tmp_path / "sys")))

    def user_idle(line: str) -> tuple[float, float]:
        (proc / "stat").write_text(line)
        got = series(c.collect())
        return (got[("node_cpu_seconds_total", frozenset({("cpu", "0"), ("mode", "user")}))],
                got[("node_cpu_seconds_total", frozenset({("cpu", "0"), ("mode", "idle")}))])

    assert user_idle("cpu0 500 0 0 1000 0 0 0 0 0 0\n") == (5.0, 10.0)
    assert user_idle("cpu0 400 0 0 1100 0 0 0 0 0 0\n") == (5.0, 11.0)  # user went back a little: held
    assert user_idle("cpu0 100 0 0 100 0 0 0 0 0 0\n") == (1.0, 1.0)  # idle back 10 s: hotplug, start over


def test_parse_helpers() -> None:
    assert cpu.parse_cpu_list("1,3-5,9\n") == [1, 3, 4, 5, 9]
    assert cpu.parse_vulnerability("Mitigation: PTI") == ("mitigation", "PTI")
    assert cpu.parse_vulnerability("Not affected\n") == ("not affected", "")
    assert loadavg.parse_loadavg("0.21 0.37 0.39 1/719 19737\n") == (0.21, 0.37, 0.39)
    with pytest.raises(ValueError):
        loadavg.parse_loadavg("")
    assert meminfo.parse_meminfo("MemTotal:  15666184 kB\nHugePages_Total:       0\nActive(anon):  1 kB\n") == [
        ("node_memory_MemTotal_bytes", 15666184 * 1024.0), ("node_memory_HugePages_Total", 0.0),
        ("node_memory_Active_anon_bytes", 1024.0)]
    assert pressure.parse_pressure("some avg10=0.00 avg60=0.00 avg300=0.00 total=14036781\n"
                                   "full avg10=0.00 avg60=0.00 avg300=0.00 total=0\n") == {"some": 14036781, "full": 0}
    scalars, soft = stat.parse_stat("ctxt 38014093\nbtime 1418183276\nsoftirq 5 1 2 3 4 5 6 7 8 9 10\n")
    assert scalars == {"ctxt": 38014093, "btime": 1418183276, "softirq": 5} and soft == list(range(1, 11))


# --- time and timex (live clock: compared with node_exporter on this machine) ------------------------------------


def test_timex_matches_live_node_exporter() -> None:
    from agent.collectors.timex import TimexCollector, TimexConfig

    theirs = parse_exposition(scrape_node_exporter("--collector.disable-defaults", "--collector.timex"))
    ours = series(TimexCollector(TimexConfig(), Paths()).collect())
    assert {k[0] for k in ours} == {k[0] for k in theirs if k[0].startswith("node_timex_")}
    for key, value in ours.items():
        if key[0] in ("node_timex_maxerror_seconds", "node_timex_offset_seconds", "node_timex_estimated_error_seconds",
                      "node_timex_frequency_adjustment_ratio"):
            assert abs(theirs[key] - value) < 0.5, key  # the kernel updates these between the two reads
        else:
            assert theirs[key] == value, key


def test_timex_conversions() -> None:
    from agent.collectors.timex import STA_NANO, TIME_ERROR, timex_samples

    tx = {"offset": 1500, "freq": 65536 * 10, "maxerror": 16000000, "esterror": 2000, "status": 0, "constant": 7,
          "tick": 10000, "ppsfreq": 0, "jitter": 3000, "shift": 0, "stabil": 0, "jitcnt": 1, "calcnt": 2,
          "errcnt": 3, "stbcnt": 4, "tai": 37}
    got = {s.name: s.value for s in timex_samples(0, tx)}
    assert got["node_timex_sync_status"] == 1 and got["node_timex_offset_seconds"] == 0.0015
    assert got["node_timex_frequency_adjustment_ratio"] == 1.00001 and got["node_timex_tai_offset_seconds"] == 37
    got = {s.name: s.value for s in timex_samples(TIME_ERROR, {**tx, "status": STA_NANO})}
    assert got["node_timex_sync_status"] == 0 and got["node_timex_offset_seconds"] == 1.5e-06


def test_time_offset_and_clock() -> None:
    theirs = parse_exposition(scrape_node_exporter("--collector.disable-defaults", "--collector.time"))
    ours = series(timec.TimeCollector(timec.TimeConfig(), Paths(), wall=lambda: 1700000000.25).collect())
    assert ours[("node_time_seconds", frozenset())] == 1700000000.25
    zone = {k: v for k, v in ours.items() if k[0] == "node_time_zone_offset_seconds"}
    assert zone == {k: v for k, v in theirs.items() if k[0] == "node_time_zone_offset_seconds"}


def test_sample_shows_the_host_collectors(fixture_tree: Path, tmp_path: Path) -> None:
    """`nodewarden sample` on node_exporter's trees lists every host collector with its rows."""
    import json
    import subprocess

    from tests.agentproc import NODEWARDEN, write_yaml

    cfg = write_yaml(tmp_path / "c.yml", {"paths": {"procfs": str(fixture_tree / "proc"),
                                                      "sysfs": str(fixture_tree / "sys"),
                                                      "devfs": str(tmp_path / "dev")},
                                            "state_dir": str(tmp_path / "state"),
                                            "collectors": {"gpu": {"enabled": False}}})
    res = subprocess.run([*NODEWARDEN, "sample", "--json", "--config", str(cfg)], capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0, res.stderr
    doc = json.loads(res.stdout)
    for name in ("cpu", "meminfo", "loadavg", "pressure", "vmstat", "stat", "hwmon", "thermal_zone", "edac", "nvme",
                 "rapl", "time", "timex", "process", "kernel", "netstat"):
        assert doc[name]["status"] == "ok" and doc[name]["samples"], name
    assert {"node_load1", "node_load5", "node_load15"} == {s["name"] for s in doc["loadavg"]["samples"]}
    assert not (tmp_path / "state" / "kmsg.json").exists()  # sample never moves the daemon's kernel-log position
    res = subprocess.run([*NODEWARDEN, "sample", "--config", str(cfg), "--collector", "edac"], capture_output=True,
                         text=True, timeout=120)
    assert "node_edac_correctable_errors_total" in res.stdout and "edac: ok" in res.stdout
