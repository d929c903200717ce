"""Kernel-log problem detection: NPD config loading and matching, the shared kmsg reader, the kernel collector."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from agent.collectors import npd
from agent.collectors.kernel import KernelCollector, KernelConfig, default_monitor
from agent.collectors.kmsg import KmsgReader, parse_record, unescape
from agent.core.errors import ConfigError
from agent.core.paths import Paths

NPD_CONFIGS = ("kernel-monitor.json", "readonly-monitor.json", "kernel-monitor-counter.json")

# Real kernel log messages (as /dev/kmsg hands them out, after the "prio,seq,ts,flags;" header) and the
# reason NPD's kernel-monitor.json / readonly-monitor.json report for each.
NPD_LINES = [
    ("Out of memory: Killed process 2592 (python3) total-vm:2137428kB, anon-rss:1718912kB, file-rss:4kB, "
     "shmem-rss:0kB, UID:1000 pgtables:3460kB oom_score_adj:0", "OOMKilling"),
    ("Memory cgroup out of memory: Killed process 7391 (pt_main_thread) total-vm:98813256kB, anon-rss:8216744kB, "
     "file-rss:87536kB, shmem-rss:16384kB, UID:0 pgtables:19300kB oom_score_adj:-997", "OOMKilling"),
    ("INFO: task jbd2/nvme0n1p2-:613 blocked for more than 120 seconds.", "TaskHung"),
    ("INFO: task kworker/u64:3:1877 blocked for more than 122 seconds.", "TaskHung"),
    ("unregister_netdevice: waiting for eth0 to become free. Usage count = 2", "UnregisterNetDevice"),
    ("BUG: unable to handle kernel NULL pointer dereference at 0000000000000008", "KernelOops"),
    ("divide error: 0000 [#1] SMP", "KernelOops"),
    ("EXT4-fs error (device nvme1n1p1): ext4_find_entry:1455: inode #2: comm ls: reading directory lblock 0",
     "Ext4Error"),
    ("EXT4-fs warning (device sda1): ext4_end_bio:343: I/O error 10 writing to inode 12 starting block 14)",
     "Ext4Warning"),
    ("Buffer I/O error on dev sdb1, logical block 0, async page read", "IOError"),
    ("XFS (dm-0): Corruption of in-memory data detected.  Shutting down filesystem", "XfsHasShutdown"),
    ("EDAC MC0: 1 CE memory read error on CPU_SrcID#0_MC#0_Chan#1_DIMM#0 (channel:1 slot:0 page:0x4d5c1 "
     "offset:0x0 grain:32 syndrome:0x0)", "MemoryReadError"),
    ("{1}[Hardware Error]: event severity: corrected", "CperHardwareErrorCorrected"),
    ("{2}[Hardware Error]: event severity: recoverable", "CperHardwareErrorRecoverable"),
    ("{3}[Hardware Error]: event severity: fatal", "CperHardwareErrorFatal"),
    ("INFO: task docker:20744 blocked for more than 120 seconds.", "DockerHung"),
    ("EXT4-fs (sda1): Remounting filesystem read-only", "FilesystemIsReadOnly"),
]
NOT_PROBLEMS = [
    "nvidia-nvswitch2: open (major=510)",
    "EXT4-fs (nvme0n1p2): mounted filesystem with ordered data mode. Quota mode: none.",
    "XFS (sdb1): Mounting V5 Filesystem",
    "{1}[Hardware Error]: event severity: corrected, but more follows",
    "divide error: 0000 [#1] SMP PTI",  # NPD appends \z: its pattern must end the message, so neither matches
    "oom_reaper: reaped process 2592 (python3), now anon-rss:0kB, file-rss:0kB, shmem-rss:0kB",
]
# GPU-node problems of the shipped set.
GPU_NODE_LINES = [
    ("NVRM: Xid (PCI:0000:9b:00): 79, pid='<unknown>', name=<unknown>, GPU has fallen off the bus.",
     {"GPUXid", "GPUFallenOffBus"}),
    ("NVRM: Xid (PCI:0000:9b:00): 119, pid=1582259, name=python, Timeout after 6s of waiting for RPC response "
     "from GPU1 GSP!", {"GPUXid"}),
    ("nvidia-nvswitch0: SXid (PCI:0000:c3:00.0): 20009, Non-fatal, Link 28 RX Short Error Rate", {"NVSwitchSXid"}),
    ("nvidia-nvswitch3: SXid (PCI:0000:05:00.0): 12028, Non-fatal, Link 32 egress non-posted PRIV error (First)",
     {"NVSwitchSXid"}),
    ("nvidia-nvswitch0: SXid (PCI:0000:00:00.0): 11001, Fatal, ingress invalid command", {"NVSwitchSXidFatal"}),
    ("mlx5_core 0000:0c:00.0 ibp12s0: Link down", {"Mlx5LinkDown"}),
    ("mlx5_core 0000:5e:00.0: poll_health:801:(pid 0): device's health compromised - reached miss count",
     {"Mlx5HealthCompromised"}),
    ("mce: [Hardware Error]: Machine check events logged", {"MachineCheck"}),
    ("mce: [Hardware Error]: CPU 12: Machine Check: 0 Bank 7: cc00008000010090", {"MachineCheck"}),
    ("EDAC MC1: 1 UE memory read error on CPU_SrcID#1_MC#0_Chan#0_DIMM#0 (channel:0 slot:0 page:0x0)",
     {"EdacUncorrectableError"}),
    ("nvme nvme3: I/O 1002 QID 17 timeout, aborting", {"NvmeTimeout"}),
    ("nvme nvme0: I/O 24 (I/O Cmd) QID 1 timeout, reset controller", {"NvmeTimeout"}),
    # the command completed when the driver polled (a lost interrupt): noise, not a timeout
    ("nvme nvme1: I/O 42 QID 7 timeout, completion polled", set()),
    ("nvme nvme0: controller is down; will reset: CSTS=0xffffffff, PCI_STATUS=0xffff", {"NvmeControllerReset"}),
    ("nvme nvme0: Removing after probe failure status: -19", {"NvmeRemovedAfterProbeFailure"}),
    ("pcieport 0000:00:01.1: AER: Corrected error received: 0000:01:00.0", set()),
    ("pcieport 0000:00:03.1: AER: Corrected error message received from 0000:03:00.0", {"PCIeAERCorrected"}),
    ("pcieport 0000:80:03.0: AER: Uncorrected (Fatal) error received from 0000:81:00.0",
     {"PCIeAERUncorrectedFatal"}),
    ("watchdog: BUG: soft lockup - CPU#7 stuck for 22s! [python:12345]", {"SoftLockup"}),
    ("rcu: INFO: rcu_sched detected stalls on CPUs/tasks:", {"RCUStall"}),
    ("ice 0000:17:00.0 ens1f0: NIC Link is Down", {"NicLinkDown"}),
]


def reasons(monitor: npd.LogMonitor, message: str) -> set[str]:
    return {p.reason for p in monitor.push(message)}


@pytest.fixture
def npd_dir(node_exporter_fixtures: Path) -> Path:
    return node_exporter_fixtures.parent / "npd"


# --- NPD configs -------------------------------------------------------------------------------------------


def test_npd_fixture_configs_load_unchanged(npd_dir: Path) -> None:
    loaded = {name: npd.load_config(str(npd_dir / name)) for name in NPD_CONFIGS}
    km = loaded["kernel-monitor.json"]
    assert [r.reason for r in km.rules][:3] == ["OOMKilling", "TaskHung", "UnregisterNetDevice"]
    assert set(km.conditions) == {"KernelDeadlock", "XfsShutdown", "CperHardwareErrorFatal"}
    counter = loaded["kernel-monitor-counter.json"].rules[0]
    assert (counter.reason, counter.type, counter.count, counter.lookback_us) == (
        "UnregisterNetDevice", "permanent", 3, 20 * 60 * 10**6)


@pytest.mark.parametrize("message,reason", NPD_LINES)
def test_npd_patterns_match_real_kernel_lines(npd_dir: Path, message: str, reason: str) -> None:
    found = set()
    for name in ("kernel-monitor.json", "readonly-monitor.json"):
        found |= reasons(npd.load_config(str(npd_dir / name)), message)
    assert reason in found


def test_npd_patterns_leave_ordinary_lines_alone(npd_dir: Path) -> None:
    monitors = [npd.load_config(str(npd_dir / n)) for n in ("kernel-monitor.json", "readonly-monitor.json")]
    for message in NOT_PROBLEMS:
        assert all(not m.push(message) for m in monitors), message


def test_permanent_problem_reports_once_per_condition_change(npd_dir: Path) -> None:
    m = npd.load_config(str(npd_dir / "kernel-monitor.json"))
    fatal = "{3}[Hardware Error]: event severity: fatal"
    assert [p.type for p in m.push(fatal)] == ["permanent"]
    assert m.push(fatal) == []  # the condition is already set with that reason
    assert m.conditions["CperHardwareErrorFatal"].active


def test_log_counter_rule_needs_count_matches_within_lookback(npd_dir: Path) -> None:
    m = npd.load_config(str(npd_dir / "kernel-monitor-counter.json"))
    line = "unregister_netdevice: waiting for lo to become free. Usage count = 1"
    minute = 60 * 10**6
    assert m.push(line, 0) == [] and m.push(line, 30 * minute) == []  # 30 min apart: the first expired
    assert m.push(line, 31 * minute) == []
    assert [p.reason for p in m.push(line, 32 * minute)] == ["UnregisterNetDevice"]  # 3 within 20 min


def test_multiline_pattern_spans_the_buffer_and_must_end_at_the_newest_line() -> None:
    cfg = {"bufferSize": 3, "rules": [{"type": "temporary", "reason": "Oops",
                                        "pattern": "BUG: (.*)\\nCall Trace:"}]}
    m = npd.parse_config(json.dumps(cfg))
    assert m.rules[0].last_line is None  # needs the joined buffer
    assert m.push("BUG: kernel NULL pointer dereference") == []
    problems = m.push("Call Trace:")
    assert [p.message for p in problems] == ["BUG: kernel NULL pointer dereference\nCall Trace:"]
    assert m.push("something else") == []  # anchored at the end (\z), as NPD appends it


# node-problem-detector's own log buffer tests (pkg/systemlogmonitor/log_buffer_test.go, TestMatch), as data:
# (logs pushed into a 4-line buffer, pattern, the log lines NPD's Match returns).
NPD_MATCH_CASES = [
    (["a1", "b2"], "a1", []),  # not including the last line
    (["a1", "b2"], "b1", []),
    (["a1", "b2"], "b2", ["b2"]),
    (["a1", "b2"], r"\w{2}", ["b2"]),
    (["a1", "b2"], "a1\nb2", ["a1", "b2"]),  # including the last line
    (["a1", "b2"], "a1b2", []),  # no newline
    (["a1", "b2", "c3", "d4", "e5"], "(?s)a1.+", []),  # rotated out
    (["a1", "b2", "c3", "d4", "e5"], "[a-z]\\d\n[a-z]\\d", ["d4", "e5"]),
    (["a1", "b2", "c3", "d4", "e5"], "[a-z]\\d", ["e5"]),
    (["a1", "b2"], "\n\na1\nb2", ["a1", "b2"]),  # NPD's ring starts with its empty slots until it is full
]


@pytest.mark.parametrize("logs,pattern,expected", NPD_MATCH_CASES)
def test_npd_log_buffer_match_cases(logs: list[str], pattern: str, expected: list[str]) -> None:
    m = npd.parse_config(json.dumps({"bufferSize": 4, "rules": [{"type": "temporary", "reason": "R",
                                                                  "pattern": pattern}]}))
    for line in logs[:-1]:
        m.push(line)
    problems = m.push(logs[-1])
    assert [p.message.split("\n") for p in problems] == ([expected] if expected else [])


def test_go_regexp_syntax() -> None:
    assert npd.compile_go("a\\z").search("ba")
    assert not npd.compile_go("a\\z").search("a\n")  # \z is the very end, unlike Python's $
    assert npd.compile_go("[[:digit:]]+ UE").search("EDAC MC0: 12 UE")
    assert npd.compile_go("\\Q[x]\\E done").search("[x] done")
    assert not npd.compile_go("\\d").search("\u0663")  # Go's \d is ASCII
    for bad in ("(?=x)", "(a)\\1", "a++", "\\Z", "\\pL"):
        with pytest.raises(ValueError):
            npd.compile_go(bad)


def test_bad_configs_are_located(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('{\n  "rules": [\n    {"type": "temporary", "reason": "X", "pattern": "(?=a)"}\n  ]\n}\n')
    with pytest.raises(ConfigError, match=r"bad.json:3:\d+: rule 'X': bad pattern"):
        npd.load_config(str(bad))
    bad.write_text('{"rules": [{"type": "permanent", "reason": "Y", "condition": "Nope", "pattern": "y"}]}')
    with pytest.raises(ConfigError, match="condition 'Nope' is not declared"):
        npd.load_config(str(bad))
    bad.write_text('{"rules": [')
    with pytest.raises(ConfigError, match=r"bad.json:1:\d+: invalid JSON"):
        npd.load_config(str(bad))


def test_last_line_shortcut_agrees_with_joining_the_buffer(npd_dir: Path) -> None:
    """Every rule that matches on the newest line alone gives what NPD's joined-buffer match gives."""
    lines = [m for m, _ in NPD_LINES] + [m for m, _ in GPU_NODE_LINES] + NOT_PROBLEMS
    rng = random.Random(14)
    monitors = [npd.load_config(str(npd_dir / "kernel-monitor.json")), default_monitor()]
    for monitor in monitors:
        shortcut = [r for r in monitor.rules if r.last_line is not None]
        assert shortcut, "the NPD rules are all single-line"
        buf: list[str] = []
        for _ in range(300):
            buf = [*buf, rng.choice(lines)][-10:]
            joined = "\n".join(buf)
            for rule in shortcut:
                assert bool(rule.last_line.search(buf[-1])) == bool(rule.regex.search(joined)), rule.reason


# --- the shipped default set ------------------------------------------------------------------------------------


def test_default_set_covers_npd_reasons_and_gpu_node_problems(npd_dir: Path) -> None:
    shipped = {r.reason for r in default_monitor().rules}
    for name in ("kernel-monitor.json", "readonly-monitor.json"):
        assert {r.reason for r in npd.load_config(str(npd_dir / name)).rules} <= shipped
    for message, expected in GPU_NODE_LINES:
        assert reasons(default_monitor(), message) == expected, message
    for message, reason in NPD_LINES:  # (a docker hung task is also a TaskHung, as in NPD)
        assert reason in reasons(default_monitor(), message), message
    for message in NOT_PROBLEMS:
        assert reasons(default_monitor(), message) == set(), message


# --- the kmsg reader --------------------------------------------------------------------------------------------


def test_parse_record() -> None:
    rec = parse_record("3,1201,3750123456,-;nvme nvme0: I/O 12 QID 3 timeout, aborting\n")
    assert rec is not None and (rec.priority, rec.facility, rec.sequence, rec.timestamp_us) == (3, 0, 1201, 3750123456)
    assert parse_record(" DEVICE=+pci:0000:01:00.0") is None
    assert parse_record("garbage") is None
    assert parse_record("30,5,10,c;systemd[1]: x").facility == 3
    assert unescape("tab\\x09here\\x5c") == "tab\there\\"


def _kmsg_line(seq: int, message: str, ts_us: int | None = None) -> str:
    return f"6,{seq},{ts_us if ts_us is not None else seq * 1000},-;{message}\n"


def _reader(tmp_path: Path, **kw) -> tuple[KmsgReader, list]:
    got: list = []
    boot = tmp_path / "boot_id"
    if not boot.exists():
        boot.write_text("boot-a\n")
    r = KmsgReader(str(tmp_path / "kmsg"), str(tmp_path / "state"), boot_id_path=str(boot),
                   uptime=kw.pop("uptime", lambda: 100.0), **kw)
    r.subscribe(got.append)
    return r, got


def test_reader_delivers_each_record_once_across_restarts(tmp_path: Path) -> None:
    kmsg = tmp_path / "kmsg"
    kmsg.write_text(_kmsg_line(1, "old one", 1_000) + _kmsg_line(2, "recent", 99_000_000))
    r, got = _reader(tmp_path)  # first start this boot: records of the last 5 minutes (uptime 100 s: both)
    r.start()
    r.close()
    assert [g.message for g in got] == ["old one", "recent"]
    with kmsg.open("a") as f:  # written while the agent is down
        f.write(_kmsg_line(3, "while down"))
    r, got = _reader(tmp_path)  # restart: the whole buffer is read again
    r.start()
    assert [g.sequence for g in got] == [3]  # delivered before start() returns: the first tick sees it
    with kmsg.open("a") as f:
        f.write(_kmsg_line(4, "live"))
    deadline = __import__("time").monotonic() + 10
    while len(got) < 2 and __import__("time").monotonic() < deadline:
        __import__("time").sleep(0.02)
    r.close()
    assert [g.sequence for g in got] == [3, 4]
    assert json.loads((tmp_path / "state" / "kmsg.json").read_text()) == {"boot_id": "boot-a", "sequence": 4}


def test_reader_lookback_on_first_start_and_after_reboot(tmp_path: Path) -> None:
    kmsg = tmp_path / "kmsg"
    kmsg.write_text(_kmsg_line(7, "boot", 1_000_000) + _kmsg_line(8, "late", 990_000_000))
    r, got = _reader(tmp_path, uptime=lambda: 1000.0)  # only records from the last 300 s
    r.start()
    r.close()
    assert [g.sequence for g in got] == [8]
    (tmp_path / "boot_id").write_text("boot-b\n")  # rebooted: sequence numbers start over
    kmsg.write_text(_kmsg_line(1, "new boot", 2_000_000))
    r, got = _reader(tmp_path, uptime=lambda: 30.0)
    r.start()
    r.close()
    assert [g.sequence for g in got] == [1]


def test_reader_persist_false_leaves_the_position(tmp_path: Path) -> None:
    (tmp_path / "kmsg").write_text(_kmsg_line(1, "a"))
    r, got = _reader(tmp_path, persist=False)
    r.start()
    r.close()
    assert got and not (tmp_path / "state" / "kmsg.json").exists()


def test_reader_unreadable_log_degrades(tmp_path: Path) -> None:
    r, _ = _reader(tmp_path)  # no kmsg file
    r.start()
    assert not r.readable and r.status.startswith("unavailable")
    r.close()


def test_a_failing_consumer_does_not_stop_the_others(tmp_path: Path) -> None:
    (tmp_path / "kmsg").write_text(_kmsg_line(1, "a") + _kmsg_line(2, "b"))
    r, got = _reader(tmp_path)

    def broken(_rec):
        raise RuntimeError("boom")

    r.subscribe(broken)
    r.start()
    r.close()
    assert [g.sequence for g in got] == [1, 2]


# --- the kernel collector ---------------------------------------------------------------------------------------


def _collector(tmp_path: Path, **cfg) -> KernelCollector:
    proc = tmp_path / "proc" / "sys" / "kernel" / "random"
    proc.mkdir(parents=True, exist_ok=True)
    (proc / "boot_id").write_text("boot-a\n")
    paths = Paths(procfs=str(tmp_path / "proc"), devfs=str(tmp_path / "dev"))
    reader = KmsgReader(paths.dev("kmsg"), str(tmp_path / "state"), boot_id_path=str(proc / "boot_id"),
                        uptime=lambda: 100.0)
    return KernelCollector(KernelConfig(**cfg), paths, kmsg=reader, state_dir=str(tmp_path / "state"))


def values(samples) -> dict:
    return {(s.name, tuple(v for _, v in s.labels)): s.value for s in samples}


def test_kernel_collector_counts_problems_and_keeps_conditions_across_restart(tmp_path: Path, npd_dir: Path) -> None:
    (tmp_path / "dev").mkdir()
    kmsg = tmp_path / "dev" / "kmsg"
    kmsg.write_text(_kmsg_line(1, NPD_LINES[0][0]) + _kmsg_line(2, "nvme nvme0: Removing after probe failure "
                                                                    "status: -19") + _kmsg_line(3, "hello"))
    c = _collector(tmp_path, monitors=[str(npd_dir / "readonly-monitor.json")])
    c.kmsg_reader.start()
    v = values(c.collect())
    assert v[("nodewarden_kernel_problems_total", ("OOMKilling",))] == 1
    assert v[("nodewarden_kernel_problems_total", ("TaskHung",))] == 0  # every reason starts at 0, as in NPD
    assert v[("nodewarden_kernel_condition", ("NvmeControllerFailed", "NvmeRemovedAfterProbeFailure"))] == 1
    assert v[("nodewarden_kernel_condition", ("ReadonlyFilesystem", "FilesystemIsReadOnly"))] == 0
    assert v[("nodewarden_kernel_log_records_total", ())] == 3
    assert v[("nodewarden_kernel_log_readable", ())] == 1
    c.close()
    assert not c.kmsg_reader.readable  # its last consumer left: the reader closed itself
    c = _collector(tmp_path, monitors=[str(npd_dir / "readonly-monitor.json")])  # restart, same boot
    c.kmsg_reader.start()
    v = values(c.collect())
    assert v[("nodewarden_kernel_problems_total", ("OOMKilling",))] == 0  # not counted twice
    assert v[("nodewarden_kernel_condition", ("NvmeControllerFailed", "NvmeRemovedAfterProbeFailure"))] == 1
    c.close()


def test_kernel_collector_bad_monitor_file_fails_with_its_location(tmp_path: Path) -> None:
    bad = tmp_path / "m.json"
    bad.write_text('{"rules": [{"type": "sometimes", "reason": "Z", "pattern": "z"}]}')
    with pytest.raises(ConfigError, match=r"m\.json:1:"):
        _collector(tmp_path, monitors=[str(bad)])
