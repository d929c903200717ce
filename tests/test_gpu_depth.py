"""GPU depth (issue 15): dcgm-exporter's default counters, GPM profiling metrics, power limits, PCIe link,
vGPU license and the GPU -> job/pod info series, all against the fake NVML."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agent.collectors import jobs, simulate
from agent.collectors.fakenvml import FakeNvml
from agent.collectors.gpu import GpuCollector, GpuConfig
from agent.collectors.gpu_catalogue import METRICS
from agent.core.paths import Paths
from tests.test_gpu import Clock, by_name

# dcgm-exporter HEAD etc/default-counters.csv: every counter enabled by default (name, type). The label-type
# DCGM_FI_DRIVER_VERSION is checked as a label below.
DCGM_DEFAULT_COUNTERS = (
    ("DCGM_FI_DEV_SM_CLOCK", "gauge"), ("DCGM_FI_DEV_MEM_CLOCK", "gauge"),
    ("DCGM_FI_DEV_MEMORY_TEMP", "gauge"), ("DCGM_FI_DEV_GPU_TEMP", "gauge"),
    ("DCGM_FI_DEV_POWER_USAGE", "gauge"), ("DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION", "counter"),
    ("DCGM_FI_DEV_PCIE_REPLAY_COUNTER", "counter"),
    ("DCGM_FI_DEV_GPU_UTIL", "gauge"), ("DCGM_FI_DEV_MEM_COPY_UTIL", "gauge"),
    ("DCGM_FI_DEV_ENC_UTIL", "gauge"), ("DCGM_FI_DEV_DEC_UTIL", "gauge"),
    ("DCGM_FI_DEV_XID_ERRORS", "gauge"),
    ("DCGM_FI_DEV_FB_FREE", "gauge"), ("DCGM_FI_DEV_FB_USED", "gauge"), ("DCGM_FI_DEV_FB_RESERVED", "gauge"),
    ("DCGM_FI_DEV_NVLINK_BANDWIDTH_TOTAL", "counter"), ("DCGM_FI_DEV_VGPU_LICENSE_STATUS", "gauge"),
    ("DCGM_FI_DEV_UNCORRECTABLE_REMAPPED_ROWS", "counter"), ("DCGM_FI_DEV_CORRECTABLE_REMAPPED_ROWS", "counter"),
    ("DCGM_FI_DEV_ROW_REMAP_FAILURE", "gauge"),
    ("DCGM_FI_PROF_GR_ENGINE_ACTIVE", "gauge"), ("DCGM_FI_PROF_PIPE_TENSOR_ACTIVE", "gauge"),
    ("DCGM_FI_PROF_DRAM_ACTIVE", "gauge"), ("DCGM_FI_PROF_PCIE_TX_BYTES", "gauge"),
    ("DCGM_FI_PROF_PCIE_RX_BYTES", "gauge"),
)
DCGM_LABELS = ["gpu", "UUID", "pci_bus_id", "device", "modelName", "hostname", "DCGM_FI_DRIVER_VERSION"]


def make(tmp_path: Path, scenario: str | None = None, text: str | None = None, paths: Paths | None = None, **cfg):
    clock = Clock()
    if text is not None:
        p = tmp_path / "sc.yml"
        p.write_text(text)
        scenario = str(p)
    fake = FakeNvml(simulate.load(scenario), clock)
    cfg.setdefault("kmsg", False)
    c = GpuCollector(GpuConfig(**cfg), paths or Paths(devfs=str(tmp_path / "dev")), "node1", nvml_module=fake,
                     clock=clock)
    return c, fake, clock


@pytest.fixture
def closing():
    made = []
    yield made.append
    for c in made:
        c.close()


def test_every_dcgm_default_counter_with_dcgm_names_types_and_labels(tmp_path, closing):
    c, _fake, clock = make(tmp_path, "h100-healthy")
    closing(c)
    list(c.collect())
    clock.t += 5
    samples = list(c.collect())
    declared = {m.name: m for m in METRICS}
    got = {s.name for s in samples}
    for name, kind in DCGM_DEFAULT_COUNTERS:
        assert name in got, name
        assert declared[name].type == kind, name
    checked = 0
    for s in samples:
        keys = [k for k, _ in s.labels]
        if s.name in dict(DCGM_DEFAULT_COUNTERS) and "GPU_I_ID" not in keys:
            assert keys == DCGM_LABELS, (s.name, keys)
            assert dict(s.labels)["DCGM_FI_DRIVER_VERSION"] == "550.54.15"
            checked += 1
    assert checked == 8 * len(DCGM_DEFAULT_COUNTERS)


def test_gpm_profiling_needs_two_samples_and_matches_the_scenario(tmp_path, closing):
    c, _fake, clock = make(tmp_path, "h100-healthy")
    closing(c)
    first = by_name(c.collect())
    assert "DCGM_FI_PROF_SM_ACTIVE" not in first  # one sample: nothing to compute yet (absent, not 0)
    clock.t += 5
    m = by_name(c.collect())
    assert m["DCGM_FI_PROF_GR_ENGINE_ACTIVE"]["0"] == pytest.approx(0.93)
    assert m["DCGM_FI_PROF_SM_ACTIVE"]["3"] == pytest.approx(0.88)
    assert m["DCGM_FI_PROF_SM_OCCUPANCY"]["3"] == pytest.approx(0.41)
    assert m["DCGM_FI_PROF_PIPE_TENSOR_ACTIVE"]["7"] == pytest.approx(0.57)
    assert m["DCGM_FI_PROF_DRAM_ACTIVE"]["1"] == pytest.approx(0.36)
    assert m["DCGM_FI_PROF_PCIE_RX_BYTES"]["0"] == pytest.approx(240000 * 1000, rel=1e-6)  # KB/s -> B/s
    assert m["DCGM_FI_PROF_NVLINK_TX_BYTES"]["0"] == pytest.approx(62000000 * 1024, rel=1e-6)


def test_gpm_averages_between_samples_when_load_changes(tmp_path, closing):
    text = """
name: gpm-step
description: tensor activity drops from 0.8 to 0.2 half-way through a 10 s tick
gpu_count: 1
gpu: {tensor_active: 0.8}
timeline:
  - {at: 5s, set: {tensor_active: 0.2}}
"""
    c, _fake, clock = make(tmp_path, text=text)
    closing(c)
    list(c.collect())
    clock.t += 10
    m = by_name(c.collect())
    assert m["DCGM_FI_PROF_PIPE_TENSOR_ACTIVE"]["0"] == pytest.approx(0.5)  # time average, as GPM computes it
    clock.t += 10
    m = by_name(c.collect())
    assert m["DCGM_FI_PROF_PIPE_TENSOR_ACTIVE"]["0"] == pytest.approx(0.2)


def test_gpm_absent_where_unsupported(tmp_path, closing):
    c, _fake, clock = make(tmp_path, "a100-no-gpm")
    closing(c)
    for _ in range(3):
        m = by_name(c.collect())
        clock.t += 5
    assert not [k for k in m if k.startswith("DCGM_FI_PROF_")]
    assert "gpm" in c.unsupported["0"]
    assert m["DCGM_FI_DEV_GPU_UTIL"]["0"] == 80  # the rest is there


def test_gpm_per_mig_instance(tmp_path, closing):
    c, _fake, clock = make(tmp_path, "h100-mig")
    closing(c)
    list(c.collect())
    clock.t += 5
    samples = list(c.collect())
    mig = [s for s in samples if s.name == "DCGM_FI_PROF_SM_ACTIVE" and dict(s.labels).get("GPU_I_ID")]
    assert len(mig) == 7
    first = next(s for s in mig if dict(s.labels)["GPU_I_ID"] == "1")
    assert first.value == pytest.approx(0.8)
    assert [k for k, _ in first.labels] == ["gpu", "UUID", "pci_bus_id", "device", "modelName", "GPU_I_PROFILE",
                                            "GPU_I_ID", "hostname", "DCGM_FI_DRIVER_VERSION"]
    # MIG samples have no PCIe counters: absent for the instance, present for the whole GPU
    assert not [s for s in samples if s.name == "DCGM_FI_PROF_PCIE_TX_BYTES" and dict(s.labels).get("GPU_I_ID")]


def test_power_limits_pcie_link_encoder_nvlink_bandwidth(tmp_path, closing):
    text = """
name: depth
description: a GPU with a lowered power limit, a link trained down to x8 Gen3, encoder busy
gpu_count: 2
gpu: {power_w: 500, power_limit_w: 450, power_limit_default_w: 700, power_limit_min_w: 200,
      power_limit_max_w: 700, enc_util: 35, dec_util: 12, nvlink_tx_kibps: 1000, nvlink_rx_kibps: 3000}
gpus:
  1: {pcie_link_gen: 3, pcie_link_width: 8}
"""
    c, _fake, clock = make(tmp_path, text=text)
    closing(c)
    m0 = by_name(c.collect())
    clock.t += 10
    m = by_name(c.collect())
    assert m["DCGM_FI_DEV_POWER_MGMT_LIMIT"]["0"] == 450
    assert m["DCGM_FI_DEV_ENFORCED_POWER_LIMIT"]["0"] == 450
    assert (m["DCGM_FI_DEV_POWER_MGMT_LIMIT_MIN"]["0"], m["DCGM_FI_DEV_POWER_MGMT_LIMIT_MAX"]["0"],
            m["DCGM_FI_DEV_POWER_MGMT_LIMIT_DEF"]["0"]) == (200, 700, 700)
    assert m["DCGM_FI_DEV_POWER_USAGE"]["0"] == 450  # demand 500 W held at the 450 W limit
    assert m["nodewarden_gpu_clocks_event_active"]["0/sw_power_cap"] == 1
    assert m["nodewarden_gpu_power_management_enabled"]["0"] == 1
    assert (m["DCGM_FI_DEV_PCIE_LINK_GEN"]["1"], m["DCGM_FI_DEV_PCIE_LINK_WIDTH"]["1"]) == (3, 8)
    assert (m["DCGM_FI_DEV_PCIE_MAX_LINK_GEN"]["1"], m["DCGM_FI_DEV_PCIE_MAX_LINK_WIDTH"]["1"]) == (5, 16)
    assert (m["DCGM_FI_DEV_ENC_UTIL"]["0"], m["DCGM_FI_DEV_DEC_UTIL"]["0"]) == (35, 12)
    grown = m["DCGM_FI_DEV_NVLINK_BANDWIDTH_TOTAL"]["0"] - m0["DCGM_FI_DEV_NVLINK_BANDWIDTH_TOTAL"]["0"]
    assert grown == pytest.approx(10 * 4000)  # (RX + TX) KiB/s x 10 s
    assert m["DCGM_FI_DEV_VGPU_LICENSE_STATUS"]["0"] == 0  # bare metal: no vGPU licensing -> 0, as DCGM


def test_vgpu_license_and_unsupported_nvlink_bandwidth(tmp_path, closing):
    text = """
name: vgpu
description: vGPU-licensed GPU 0; GPU 1 without the NVLink throughput fields
gpu_count: 2
gpu: {grid_license_supported: true, vgpu_license_status: 1}
gpus:
  1: {vgpu_license_status: 0, not_supported: [nvlink_tx_kib]}
"""
    c, _fake, clock = make(tmp_path, text=text)
    closing(c)
    m = by_name(c.collect())
    assert m["DCGM_FI_DEV_VGPU_LICENSE_STATUS"] == {"0": 1, "1": 0}
    assert set(m["DCGM_FI_DEV_NVLINK_BANDWIDTH_TOTAL"]) == {"0"}  # half a sum is no sum: absent on GPU 1
    clock.t += 5
    assert set(by_name(c.collect())["DCGM_FI_DEV_NVLINK_BANDWIDTH_TOTAL"]) == {"0"}


SLURM_CGROUP = "0::/system.slice/slurmstepd.scope/job_4711/step_0/user/task_0\n"
K8S_CID = "ab" * 32
K8S_CGROUP = ("0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1b2c3d4e_0000_4000_8000_"
              f"123456789abc.slice/cri-containerd-{K8S_CID}.scope\n")


def test_parse_cgroup_slurm_and_kubernetes():
    assert jobs.parse_cgroup(SLURM_CGROUP).job_id == "4711"
    assert jobs.parse_cgroup("12:memory:/slurm/uid_1000/job_88/step_batch\n").job_id == "88"
    w = jobs.parse_cgroup(K8S_CGROUP)
    assert (w.pod_uid, w.container_id) == ("1b2c3d4e-0000-4000-8000-123456789abc", K8S_CID)
    cgroupfs = f"4:devices:/kubepods/besteffort/pod1b2c3d4e-0000-4000-8000-123456789abc/{K8S_CID}\n"
    assert jobs.parse_cgroup(cgroupfs).container_id == K8S_CID
    assert jobs.parse_cgroup("0::/user.slice/user-1000.slice/session-3.scope\n") == jobs.Workload()
    assert jobs.parse_bundle('{"annotations": {"a": 1}}', "x", "y") == ("", "")
    assert jobs.parse_bundle("not json", "x", "y") == ("", "")


def test_job_info_from_process_cgroups(tmp_path, closing):
    proc, root = tmp_path / "proc", tmp_path / "root"
    for pid, text in ((100, SLURM_CGROUP), (200, K8S_CGROUP), (300, "0::/user.slice\n")):
        (proc / str(pid)).mkdir(parents=True)
        (proc / str(pid) / "cgroup").write_text(text)
    bundle = root / f"run/containerd/io.containerd.runtime.v2.task/k8s.io/{K8S_CID}/config.json"
    bundle.parent.mkdir(parents=True)
    bundle.write_text(json.dumps({"annotations": {"io.kubernetes.cri.sandbox-namespace": "ml",
                                                  "io.kubernetes.cri.sandbox-name": "trainer-0"}}))
    text = """
name: jobs
description: a Slurm step on GPU 0, a pod on GPU 1, an interactive process on GPU 2, a vanished pid on GPU 3
gpu_count: 4
gpus:
  0: {processes: [{pid: 100}]}
  1: {processes: [{pid: 200}]}
  2: {processes: [{pid: 300}]}
  3: {processes: [{pid: 999}]}
"""
    paths = Paths(procfs=str(proc), devfs=str(tmp_path / "dev"), rootfs=str(root))
    c, _fake, _clock = make(tmp_path, text=text, paths=paths)
    closing(c)
    info = [dict(s.labels) for s in c.collect() if s.name == "nodewarden_gpu_job_info"]
    uuid = {d["gpu"]: d["UUID"] for d in info}
    assert sorted(info, key=lambda d: d["gpu"]) == [
        {"gpu": "0", "UUID": uuid["0"], "job_id": "4711"},
        {"gpu": "1", "UUID": uuid["1"], "namespace": "ml", "pod": "trainer-0",
         "pod_uid": "1b2c3d4e-0000-4000-8000-123456789abc"},
    ]
