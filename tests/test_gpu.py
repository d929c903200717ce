"""The GPU collector against the fake NVML: every scenario the issue names, driven by an injected clock."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from agent.collectors import simulate
from agent.collectors.fakenvml import FakeNvml
from agent.collectors.gpu import GpuCollector, GpuConfig, PartialFailure
from agent.collectors.gpu_catalogue import METRICS
from agent.collectors.nvml import load_module
from agent.core.errors import ConfigError, NoData
from agent.core.paths import Paths


class Clock:
    """A manual monotonic clock (seconds)."""

    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def make(scenario: str, tmp_path: Path, text: str | None = None, **cfg):
    """(collector, fake module, clock) for a built-in scenario or a scenario given as YAML text."""
    clock = Clock()
    if text is not None:
        path = tmp_path / f"{scenario}.yml"
        path.write_text(text)
        scenario = str(path)
    fake = FakeNvml(simulate.load(scenario), clock)
    cfg.setdefault("kmsg", False)
    collector = GpuCollector(GpuConfig(**cfg), Paths(devfs=str(tmp_path / "dev")), "node1",
                             nvml_module=fake, clock=clock)
    return collector, fake, clock


def by_name(samples) -> dict[str, dict[str, float]]:
    """{metric: {gpu label (plus extra labels): value}}."""
    out: dict[str, dict[str, float]] = {}
    for s in samples:
        labels = dict(s.labels)
        key = labels.get("gpu", "")
        for extra in ("reason", "GPU_I_ID", "xid", "source"):
            if extra in labels:
                key += f"/{labels[extra]}"
        out.setdefault(s.name, {})[key] = s.value
    return out


@pytest.fixture
def closing():
    made = []
    yield made.append
    for c in made:
        c.close()


def test_healthy_8xh100_catalogue_labels_and_units(tmp_path, closing):
    c, fake, clock = make("h100-healthy", tmp_path)
    closing(c)
    spec = fake.scenario.devices[0]
    samples = list(c.collect())
    names = {s.name for s in samples}
    declared = {m.name: m for m in METRICS}
    assert names <= set(declared), names - set(declared)
    for s in samples:  # label names and order follow the catalogue (MIG labels optional)
        keys = [k for k, _ in s.labels]
        spec_labels = [k for k in declared[s.name].labels if k in keys]
        assert keys == spec_labels, (s.name, keys)
    m = by_name(samples)
    assert sorted(m["nodewarden_gpu_up"]) == [str(i) for i in range(8)]
    assert set(m["nodewarden_gpu_up"].values()) == {1.0}
    gpu0 = next(s for s in samples if s.name == "DCGM_FI_DEV_GPU_TEMP" and dict(s.labels)["gpu"] == "0")
    assert dict(gpu0.labels) == {"gpu": "0", "UUID": spec.uuid, "pci_bus_id": "00000000:18:00.0",
                                 "device": "nvidia0", "modelName": "NVIDIA H100 80GB HBM3", "hostname": "node1",
                                 "DCGM_FI_DRIVER_VERSION": "550.54.15"}
    assert m["DCGM_FI_DEV_GPU_TEMP"]["0"] == spec.temperature
    assert m["DCGM_FI_DEV_GPU_UTIL"]["7"] == spec.gpu_util
    assert m["DCGM_FI_DEV_POWER_USAGE"]["0"] == spec.power_w  # W, not mW
    assert m["DCGM_FI_DEV_FB_USED"]["0"] == spec.fb_used_mib  # MiB, not bytes
    assert m["DCGM_FI_DEV_FB_RESERVED"]["0"] == spec.fb_reserved_mib
    assert m["DCGM_FI_DEV_FB_FREE"]["0"] == spec.fb_total_mib - spec.fb_reserved_mib - spec.fb_used_mib
    assert m["nodewarden_gpu_processes"]["0"] == 1
    assert c.processes[0] == [(4242, 70900 * 1024 * 1024)]
    assert m["DCGM_FI_DEV_XID_ERRORS"]["3"] == 0
    assert m["nodewarden_gpu_collector_hung"][""] == 0
    assert "nodewarden_gpu_xid_errors_total" not in m
    assert m["DCGM_FI_DEV_COUNT"][""] == 8
    info = next(s for s in samples if s.name == "nodewarden_gpu_driver_info")
    assert dict(info.labels) == {"driver_version": "550.54.15", "cuda_version": "12.4", "nvml_version": "12.550.54.15"}
    assert c.describe() == "" and c.unsupported == {}
    # Energy is a counter in mJ that integrates the power draw.
    e0 = m["DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION"]["0"]
    clock.t += 10
    e1 = by_name(c.collect())["DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION"]["0"]
    assert e1 - e0 == pytest.approx(spec.power_w * 10 * 1000, rel=1e-6)


def test_overheating_gpu_is_thermally_slowed(tmp_path, closing):
    c, _, clock = make("h100-overheat", tmp_path)
    closing(c)
    before = by_name(c.collect())
    assert before["DCGM_FI_DEV_CLOCKS_EVENT_REASONS"]["3"] == 0
    assert before["nodewarden_gpu_clocks_event_active"]["3/hw_thermal_slowdown"] == 0
    clock.t += 31
    after = by_name(c.collect())
    assert after["DCGM_FI_DEV_GPU_TEMP"]["3"] == 91 and after["DCGM_FI_DEV_GPU_TEMP"]["2"] == 55
    assert after["DCGM_FI_DEV_CLOCKS_EVENT_REASONS"]["3"] == 0x20 | 0x40  # sw + hw thermal slowdown (nvml.h)
    assert after["nodewarden_gpu_clocks_event_active"]["3/hw_thermal_slowdown"] == 1
    assert after["nodewarden_gpu_clocks_event_active"]["3/sw_thermal_slowdown"] == 1
    assert after["nodewarden_gpu_clocks_event_active"]["3/sw_power_cap"] == 0
    assert after["nodewarden_gpu_clocks_event_active"]["2/hw_thermal_slowdown"] == 0
    assert after["DCGM_FI_DEV_SM_CLOCK"]["3"] < after["DCGM_FI_DEV_SM_CLOCK"]["2"]
    # 20s, 25s, 30s: three 5 s slices of thermal violation, exported in microseconds.
    assert after["DCGM_FI_DEV_THERMAL_VIOLATION"]["3"] == 3 * 5_000_000
    assert after["DCGM_FI_DEV_THERMAL_VIOLATION"]["2"] == 0


def wait_for(predicate, timeout: float = 10.0, step: float = 0.02):
    """Poll until predicate() is truthy (bounded); returns its last value."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(step)


def test_xid79_then_gpu_lost(tmp_path, closing):
    c, _, clock = make("h100-xid79-lost", tmp_path)
    closing(c)
    assert set(by_name(c.collect())["nodewarden_gpu_up"].values()) == {1.0}
    clock.t += 10.5  # XID 79 raised through the NVML event set

    def xid_counted():
        return by_name(c.collect()).get("nodewarden_gpu_xid_errors_total", {}).get("2/79")

    assert wait_for(xid_counted) == 1
    clock.t += 1  # from 11 s every call on GPU 2 fails with GpuIsLost
    m = by_name(c.collect())
    assert m["nodewarden_gpu_up"]["2"] == 0
    assert [v for k, v in m["nodewarden_gpu_up"].items() if k != "2"] == [1.0] * 7
    assert "2" not in m["DCGM_FI_DEV_GPU_TEMP"] and len(m["DCGM_FI_DEV_GPU_TEMP"]) == 7
    assert m["nodewarden_gpu_xid_errors_total"]["2/79"] == 1  # still exported while lost
    assert m["DCGM_FI_DEV_XID_ERRORS"]["2"] == 79
    assert m["nodewarden_gpu_collector_hung"][""] == 0
    info = next(s for s in c.collect() if s.name == "nodewarden_gpu_xid_info")
    assert dict(info.labels) == {"xid": "79", "name": "gpu_fallen_off_bus", "action": "drain_node"}


def test_ecc_dbe_increments(tmp_path, closing):
    c, _, clock = make("h100-ecc-dbe", tmp_path)
    closing(c)
    seen = []
    for _ in range(5):
        m = by_name(c.collect())
        seen.append(m["DCGM_FI_DEV_ECC_DBE_VOL_TOTAL"]["5"])
        assert m["DCGM_FI_DEV_ECC_DBE_VOL_TOTAL"]["4"] == 0
        assert m["DCGM_FI_DEV_ECC_SBE_AGG_TOTAL"]["5"] == 2
        clock.t += 10
    assert seen == [0, 1, 2, 3, 4]
    m = by_name(c.collect())
    assert m["DCGM_FI_DEV_ECC_DBE_AGG_TOTAL"]["5"] == 5
    assert m["DCGM_FI_DEV_UNCORRECTABLE_REMAPPED_ROWS"]["5"] == 5


def test_row_remap_pending_then_failure(tmp_path, closing):
    c, _, clock = make("h100-row-remap", tmp_path)
    closing(c)
    m = by_name(c.collect())
    assert m["nodewarden_gpu_row_remap_pending"]["1"] == 0 and m["DCGM_FI_DEV_ROW_REMAP_FAILURE"]["1"] == 0
    assert m["DCGM_FI_DEV_CORRECTABLE_REMAPPED_ROWS"]["1"] == 3
    clock.t += 12
    m = by_name(c.collect())
    assert m["nodewarden_gpu_row_remap_pending"]["1"] == 1 and m["DCGM_FI_DEV_ROW_REMAP_FAILURE"]["1"] == 0
    assert m["DCGM_FI_DEV_UNCORRECTABLE_REMAPPED_ROWS"]["1"] == 1
    assert m["nodewarden_gpu_row_remap_pending"]["0"] == 0
    clock.t += 20
    m = by_name(c.collect())
    assert m["DCGM_FI_DEV_ROW_REMAP_FAILURE"]["1"] == 1


def test_not_supported_fields_are_absent_not_zero(tmp_path, closing):
    c, fake, clock = make("h100-not-supported", tmp_path)
    closing(c)
    m = by_name(c.collect())
    for name in ("DCGM_FI_DEV_MEMORY_TEMP", "DCGM_FI_DEV_NVLINK_CRC_FLIT_ERROR_COUNT_TOTAL",
                 "DCGM_FI_DEV_POWER_VIOLATION", "DCGM_FI_DEV_THERMAL_VIOLATION"):
        assert name not in m, name
    assert "1" not in m["DCGM_FI_DEV_PCIE_TX_THROUGHPUT"] and "0" in m["DCGM_FI_DEV_PCIE_TX_THROUGHPUT"]
    assert m["DCGM_FI_DEV_GPU_TEMP"] == {"0": 44, "1": 44}
    assert m["nodewarden_gpu_up"] == {"0": 1, "1": 1}
    assert "DCGM_FI_DEV_MEMORY_TEMP" in c.unsupported["0"]
    assert "pcie_tx" in c.unsupported["1"] and "pcie_tx" not in c.unsupported["0"]
    calls = fake.calls
    clock.t += 5
    c.collect()
    per_tick = fake.calls - calls
    assert per_tick > 0
    clock.t += 5
    calls = fake.calls
    c.collect()
    assert fake.calls - calls == per_tick  # unsupported fields are not asked again


def test_mig_seven_instances(tmp_path, closing):
    c, fake, _ = make("h100-mig", tmp_path)
    closing(c)
    samples = list(c.collect())
    mig = [dict(s.labels) for s in samples if s.name == "DCGM_FI_DEV_FB_USED" and "GPU_I_ID" in dict(s.labels)]
    assert len(mig) == 7
    assert {m["GPU_I_PROFILE"] for m in mig} == {"1g.10gb"}
    assert sorted(m["GPU_I_ID"] for m in mig) == [str(i) for i in range(1, 8)]
    assert {m["gpu"] for m in mig} == {"0"}
    assert {m["UUID"] for m in mig} == {fake.scenario.devices[0].uuid}  # the parent's UUID, as dcgm-exporter
    used = {dict(s.labels)["GPU_I_ID"]: s.value for s in samples
            if s.name == "DCGM_FI_DEV_FB_USED" and "GPU_I_ID" in dict(s.labels)}
    assert used["1"] == 8000 and used["7"] == 0
    free = {dict(s.labels)["GPU_I_ID"]: s.value for s in samples
            if s.name == "DCGM_FI_DEV_FB_FREE" and "GPU_I_ID" in dict(s.labels)}
    assert free["7"] == simulate.mig_profile("1g.10gb")[2]
    whole = [s for s in samples if s.name == "DCGM_FI_DEV_FB_USED" and "GPU_I_ID" not in dict(s.labels)]
    assert len(whole) == 8


HANG_FOREVER = """
name: hang-forever
description: every NVML call hangs from 5 s on, for ever
gpu_count: 8
timeline:
  - {at: 5s, hang: [all]}
"""


def test_call_that_hangs_forever_is_bounded_and_recovers(tmp_path, closing):
    c, fake, clock = make("hang-forever", tmp_path, HANG_FOREVER, call_timeout="200ms", max_abandoned_calls=2)
    closing(c)
    assert by_name(c.collect())["nodewarden_gpu_collector_hung"][""] == 0
    baseline = threading.active_count()
    clock.t += 6
    for _ in range(8):  # the sampling loop keeps ticking; each tick fails fast
        with pytest.raises(PartialFailure) as info:  # returns: the deadline, not the driver, ends the tick
            c.collect()
        m = by_name(info.value.samples)
        assert m["nodewarden_gpu_collector_hung"][""] == 1
        assert threading.active_count() <= baseline + 2  # at most max_abandoned stuck workers
        clock.t += 5
    assert c.nvml.caller.abandoned == 2
    assert "hung" in c.describe()
    fake.release()  # the driver answers again

    def recovered():
        try:
            return by_name(c.collect())["nodewarden_gpu_collector_hung"][""] == 0
        except PartialFailure:
            return False

    assert wait_for(recovered)
    m = by_name(c.collect())
    assert set(m["nodewarden_gpu_up"].values()) == {1.0} and len(m["nodewarden_gpu_up"]) == 8
    assert wait_for(lambda: c.nvml.caller.abandoned == 0)
    assert wait_for(lambda: threading.active_count() <= baseline)


INIT_HANG = """
name: init-hang
description: nvmlInit never returns
gpu_count: 2
timeline:
  - {at: 0s, hang: [nvmlInit]}
"""


def test_hung_nvml_init_does_not_block(tmp_path, closing):
    c, fake, _ = make("init-hang", tmp_path, INIT_HANG, call_timeout="100ms", max_abandoned_calls=1)
    closing(c)
    with pytest.raises(PartialFailure) as info:
        c.collect()
    assert by_name(info.value.samples)["nodewarden_gpu_collector_hung"][""] == 1
    with pytest.raises(PartialFailure):  # bound reached: refused at once, no new thread
        c.collect()
    fake.release()
    assert wait_for(lambda: c.nvml.caller.abandoned == 0)
    assert by_name(c.collect())["nodewarden_gpu_up"] == {"0": 1, "1": 1}


def test_no_nvml_library_reports_why(tmp_path, closing):
    text = "name: nolib\ndescription: no libnvidia-ml\nnvml: library_not_found\n"
    c, _, _ = make("nolib", tmp_path, text)
    closing(c)
    with pytest.raises(NoData, match=r"no NVML: libnvidia-ml\.so\.1 not found"):
        c.collect()
    assert c.describe() == "no NVML: libnvidia-ml.so.1 not found"


def test_real_pynvml_without_driver_degrades(tmp_path, closing):
    """On this machine (no NVIDIA driver) the real pynvml path must say why, not crash."""
    import ctypes.util

    if ctypes.util.find_library("nvidia-ml"):
        pytest.skip("an NVIDIA driver is installed here")
    c = GpuCollector(GpuConfig(kmsg=False), Paths(), "node1")
    closing(c)
    with pytest.raises(NoData, match=r"^no NVML: "):
        c.collect()
    assert c.describe().startswith("no NVML: ")


def test_zero_gpus(tmp_path, closing):
    c, _, _ = make("none", tmp_path, "name: none\ndescription: driver, no GPUs\ngpu_count: 0\n")
    closing(c)
    m = by_name(c.collect())
    assert m["DCGM_FI_DEV_COUNT"][""] == 0 and "nodewarden_gpu_up" not in m
    assert c.describe() == "no NVIDIA GPUs found by NVML"


XID_119 = """
name: xid119
description: GPU 4 (bus 9b) raises XID 119 once through NVML
gpu_count: 8
gpus:
  4: {pci_bus_id: "00000000:9B:00.0"}
timeline:
  - {at: 10s, gpu: 4, xid: 119}
"""


def test_xid_dedup_between_nvml_events_and_kernel_log(tmp_path, closing, gpud_fixtures):
    dev = tmp_path / "dev"
    dev.mkdir()
    kmsg = dev / "kmsg"
    kmsg.write_text((gpud_fixtures / "kmsg.1.log").read_text())  # history before start: not re-counted
    c, _, clock = make("xid119", tmp_path, XID_119, kmsg=True)
    closing(c)
    c.start()
    assert wait_for(lambda: c.kmsg_status.startswith("reading"))
    c.collect()
    xid_lines = [line for line in (gpud_fixtures / "dmesg-with-xid-119.log").read_text().splitlines()
                 if "NVRM: Xid" in line]

    def append_kmsg(line: str, seq: int) -> None:
        message = line.split("] ", 1)[1]
        with kmsg.open("a") as f:
            f.write(f"3,{seq},{seq * 1000},-;{message}\n")

    clock.t += 10.5  # NVML event for XID 119 on GPU 4 ...
    append_kmsg(xid_lines[0], 5000)  # ... and the kernel's NVRM line for the same event

    def seen_both():
        m = by_name(c.collect())
        seen = m.get("nodewarden_gpu_xid_events_seen_total", {})
        return seen.get("/nvml", 0) >= 1 and seen.get("/kmsg", 0) >= 1 and m

    m = wait_for(seen_both)
    assert m, "both sources should report the XID"
    assert m["nodewarden_gpu_xid_errors_total"] == {"4/119": 1}
    assert m["DCGM_FI_DEV_XID_ERRORS"]["4"] == 119
    clock.t += 6  # the kernel logs XID 119 again 6 s later; NVML does not: a second event
    append_kmsg(xid_lines[1], 5001)

    def counted_twice():
        m = by_name(c.collect())
        return m.get("nodewarden_gpu_xid_errors_total", {}).get("4/119") == 2 and m

    m = wait_for(counted_twice)
    assert m and m["nodewarden_gpu_xid_events_seen_total"] == {"/nvml": 1, "/kmsg": 2}


def test_kmsg_unreadable_degrades(tmp_path, closing):
    c, _, _ = make("h100-healthy", tmp_path, kmsg=True)  # tmp_path/dev does not exist
    closing(c)
    c.start()
    assert wait_for(lambda: c.kmsg_status.startswith("unavailable"))
    assert by_name(c.collect())["nodewarden_gpu_up"]["0"] == 1


def test_load_module_simulate_and_close_is_bounded(tmp_path):
    fake = load_module("h100-healthy")
    assert isinstance(fake, FakeNvml)
    c = GpuCollector(GpuConfig(simulate="h100-healthy", kmsg=False), Paths(), "n")
    assert len([s for s in c.collect() if s.name == "nodewarden_gpu_up"]) == 8
    c.close()
    assert not [t for t in threading.enumerate() if t.name.startswith("nvml-")]


# -- scenario files -----------------------------------------------------------------------------------


def test_builtin_scenarios_validate():
    names = simulate.builtin_names()
    for required in ("h100-healthy", "h100-overheat", "h100-xid79-lost", "h100-ecc-dbe", "h100-row-remap",
                     "h100-not-supported", "h100-mig", "h100-hung-driver"):
        assert required in names
    for name in names:
        sc = simulate.load(name)
        assert sc.name == name and sc.description


def test_scenario_errors_name_file_line_column(tmp_path):
    path = tmp_path / "bad.yml"
    path.write_text("name: bad\ndescription: x\ngpu:\n  temprature: 50\ntimeline:\n  - {at: 5s, set: {tmp: 1}}\n"
                    "  - {at: soon, gpu: 9}\n")
    with pytest.raises(ConfigError) as info:
        simulate.load(str(path))
    problems = info.value.problems
    assert any(p.startswith(f"{path}:4:3:") and "unknown key 'temprature'" in p for p in problems), problems
    assert any(p.startswith(f"{path}:6:") and "unknown field 'tmp'" in p for p in problems), problems
    assert any(p.startswith(f"{path}:7:") and "not a valid duration" in p for p in problems), problems
    with pytest.raises(ConfigError, match="unknown scenario 'nope'"):
        simulate.load("nope")


def test_docs_scenario_example_is_valid():
    import re

    doc = (Path(__file__).resolve().parents[1] / "docs" / "gpu.md").read_text()
    example = re.search(r"```yaml\n(.*?)```", doc, re.S).group(1)
    sc = simulate.load_text(example, "docs/gpu.md")
    assert sc.gpu_count == 8 and sc.devices[4].pci_bus_id == "00000000:9B:00.0"
    fake = FakeNvml(sc, Clock())
    fake.nvmlInit()
    assert fake.nvmlDeviceGetCount() == 8


def test_bad_scenario_fails_at_construction():
    with pytest.raises(ConfigError, match="unknown scenario 'nope'"):
        GpuCollector(GpuConfig(simulate="nope"), Paths(), "n")


def test_caller_bounds_abandoned_workers_and_recovers():
    from agent.collectors.nvml import Caller, NvmlHung

    caller = Caller(timeout=0.05, max_abandoned=3, name="t-caller")
    gate = threading.Event()
    try:
        assert caller.run(lambda x: x + 1, 1) == 2
        for _ in range(3):
            with pytest.raises(NvmlHung):
                caller.run(gate.wait)
        assert caller.abandoned == 3
        before = threading.active_count()
        for _ in range(5):  # refused without a new thread
            with pytest.raises(NvmlHung, match="still hung"):
                caller.run(lambda: 1)
        assert threading.active_count() == before
        gate.set()  # the driver answers: stuck workers return and exit
        assert wait_for(lambda: caller.abandoned == 0)
        with pytest.raises(ZeroDivisionError):  # errors cross the boundary as themselves
            caller.run(lambda: 1 / 0)
        assert caller.run(lambda: "ok") == "ok"
    finally:
        gate.set()
        caller.close()


def test_mig_profile_name_fallback():
    from agent.collectors.gpu_mig import mig_profile_name

    for profile, (slices, mib) in simulate.MIG_PROFILES.items():
        assert mig_profile_name(slices, mib) == profile
    assert mig_profile_name(1, 4864) == "1g.5gb"  # A100 40GB


def test_fake_matches_real_pynvml_for_every_name_the_collector_uses():
    """Guards against drift: every NVML name the gpu collector's modules use exists in pynvml, and the fake
    implements it."""
    import re

    import pynvml

    from agent.collectors import gpu

    source = "".join(p.read_text() for p in sorted(Path(gpu.__file__).parent.glob("gpu*.py")))
    names = set(re.findall(r"\bnv\.((?:nvml|NVML_)\w+)", source))
    assert len(names) > 20
    for name in sorted(names):
        assert hasattr(pynvml, name), name
        if callable(getattr(pynvml, name)) and name.startswith("nvml"):
            assert name in vars(FakeNvml), f"fake NVML lacks {name}"
