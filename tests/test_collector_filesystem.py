"""Filesystem collector: mountinfo parser on literal text, real statvfs on temp trees, hung mounts."""

from __future__ import annotations

import collections
import os
import threading
import time
from pathlib import Path

import pytest
import structlog

from agent.collectors.filesystem import FilesystemCollector, FilesystemConfig, Mount, parse_mountinfo
from agent.core.errors import CollectorError, NoData
from agent.core.metrics import Collector
from agent.core.paths import Paths
from tests.expo import parse_exposition, sample_key
from tests.nodeexp import scrape_node_exporter

FAMILIES = {spec.name for spec in FilesystemCollector.metrics}


def line(mount_id: int, mountpoint: str, fstype: str, opts: str = "rw,relatime", source: str = "/dev/sda1",
         superopts: str = "rw", optional: str = "shared:1") -> str:
    escaped = mountpoint.replace("\\", "\\134").replace(" ", "\\040").replace("\t", "\\011").replace("\n", "\\012")
    fields = [str(mount_id), "1", "8:1", "/", escaped, opts, *optional.split(), "-", fstype, source, superopts]
    return " ".join(fields)


def tree(tmp_path: Path, lines: list[str], pid: str = "1") -> Paths:
    """A procfs with ``<pid>/mountinfo`` and a rootfs holding a directory for every mount point."""
    (tmp_path / "proc" / pid).mkdir(parents=True)
    (tmp_path / "proc" / pid / "mountinfo").write_text("\n".join(lines) + "\n")
    root = tmp_path / "root"
    for m in parse_mountinfo("\n".join(lines)):
        (root / m.mountpoint.lstrip("/")).mkdir(parents=True, exist_ok=True)
    return Paths(procfs=str(tmp_path / "proc"), rootfs=str(root))


def by_series(samples) -> dict[tuple[str, str], float]:
    """{(family, mountpoint): value}."""
    out = {}
    for s in samples:
        key = (s.name.removeprefix("node_filesystem_"), dict(s.labels)["mountpoint"])
        assert key not in out, f"duplicate series {key}"
        out[key] = s.value
    return out


def mountpoints(samples) -> set[str]:
    return {dict(s.labels)["mountpoint"] for s in samples}


def cfg(**kw) -> FilesystemConfig:
    return FilesystemConfig.model_validate(kw)


# --- parser ----------------------------------------------------------------------------------------------

def test_parse_mountinfo_fields_escapes_and_optional_fields():
    text = (
        "36 35 98:0 /mnt1 /mnt/a\\040b rw,noatime master:1 shared:7 - ext3 /dev/root rw,errors=continue\n"
        "37 35 0:5 / /with\\011tab\\134slash\\012nl ro,nosuid - nfs4 srv:/x\\040y rw,vers=4.2\n"
        "38 35 8:3 / /plain rw - xfs /dev/sda3 ro,attr2\n"
    )
    a, b, c = parse_mountinfo(text)
    assert a == Mount(36, 35, 98, 0, "/mnt1", "/mnt/a b", ("rw", "noatime"), ("master:1", "shared:7"),
                      "ext3", "/dev/root", ("rw", "errors=continue"))
    assert b.mountpoint == "/with\ttab\\slash\nnl" and b.source == "srv:/x y" and b.optional == ()
    assert (a.readonly, b.readonly, c.readonly) == (False, True, True)  # c: read-only superblock


def test_parse_mountinfo_skips_malformed_lines():
    text = (
        "\n"
        "36 35 98:0 / /no-separator rw shared:1 ext3 /dev/root rw\n"
        "36 35 98 / /bad-devno rw - ext3 /dev/root rw\n"
        "x 35 98:0 / /bad-id rw - ext3 /dev/root rw\n"
        "36 35 98:0 / /short rw - ext3\n"
        "40 35 98:0 / /ok rw - ext3 /dev/root rw\n"
    )
    assert [m.mountpoint for m in parse_mountinfo(text)] == ["/ok"]


def test_parse_node_exporter_fixture(node_exporter_fixtures):
    mounts = parse_mountinfo((node_exporter_fixtures / "proc" / "1" / "mountinfo").read_text())
    text_lines = [ln for ln in (node_exporter_fixtures / "proc" / "1" / "mountinfo").read_text().split("\n") if ln]
    assert len(mounts) == len(text_lines)
    points = {m.mountpoint for m in mounts}
    assert any("[vsanDatastore] bafb9e5a" in p for p in points)
    assert any("[vsanDatastore]\tbafb9e5a" in p for p in points)
    root = next(m for m in mounts if m.mountpoint == "/")
    assert (root.source, root.fstype, root.major, root.minor) == ("/dev/dm-2", "ext4", 259, 2)
    cgroup = next(m for m in mounts if m.mountpoint == "/sys/fs/cgroup")
    assert cgroup.readonly


# --- real statvfs on temp trees ----------------------------------------------------------------------------

def test_real_statvfs_values_are_consistent(tmp_path):
    paths = tree(tmp_path, [line(1, "/", "ext4"), line(2, "/data", "xfs", source="/dev/sdb1")])
    c = FilesystemCollector(cfg(), paths)
    got = by_series(c.collect())
    for mp in ("/", "/data"):
        assert got[("device_error", mp)] == 0.0 and got[("readonly", mp)] == 0.0
        assert 0 < got[("avail_bytes", mp)] <= got[("free_bytes", mp)] <= got[("size_bytes", mp)]
        assert 0 < got[("files_free", mp)] <= got[("files", mp)]
    st = os.statvfs(tmp_path / "root")
    assert got[("size_bytes", "/")] == st.f_blocks * st.f_frsize


def test_readonly_from_mount_or_superblock_options(tmp_path):
    paths = tree(tmp_path, [
        line(1, "/rw", "ext4"),
        line(2, "/ro-mount", "ext4", opts="ro,relatime"),
        line(3, "/ro-super", "ext4", superopts="ro,errors=remount-ro"),
        line(4, "/remount-ro-is-not-ro", "ext4", superopts="rw,errors=remount-ro"),
    ])
    got = by_series(FilesystemCollector(cfg(), paths).collect())
    assert got[("readonly", "/rw")] == 0.0
    assert got[("readonly", "/ro-mount")] == 1.0
    assert got[("readonly", "/ro-super")] == 1.0
    assert got[("readonly", "/remount-ro-is-not-ro")] == 0.0


def test_default_excludes(tmp_path):
    paths = tree(tmp_path, [
        line(1, "/", "ext4"),
        line(2, "/run", "tmpfs", source="tmpfs"),
        line(3, "/dev/shm", "tmpfs", source="tmpfs"),
        line(4, "/proc", "proc", source="proc"),
        line(5, "/sys/fs/cgroup", "cgroup2", source="cgroup2"),
        line(6, "/run/netns/x", "nsfs", source="nsfs"),
        line(7, "/var/lib/docker/overlay2/abc/merged", "overlay", source="overlay"),
        line(8, "/var/lib/docker/volumes", "ext4"),  # excluded by mount point although ext4
        line(9, "/var/lib/docker", "ext4"),  # only what is below it is excluded
        line(10, "/run/credentials/systemd-journald.service", "ramfs", source="none"),
        line(11, "/snap/core/1", "squashfs", source="/dev/loop0"),
        line(12, "/devices", "ext4"),  # /dev only as a whole path component
        line(13, "/mnt/nfs", "nfs4", source="srv:/export"),
    ])
    got = mountpoints(FilesystemCollector(cfg(), paths).collect())
    assert got == {"/", "/var/lib/docker", "/devices", "/mnt/nfs"}


def test_include_replaces_default_and_empty_exclude_keeps_all(tmp_path):
    lines = [line(1, "/", "ext4"), line(2, "/run", "tmpfs", source="tmpfs"), line(3, "/proc", "proc")]
    paths = tree(tmp_path, lines)
    assert mountpoints(FilesystemCollector(cfg(fs_types_include="tmpfs|ext4"), paths).collect()) == {"/", "/run"}
    assert mountpoints(FilesystemCollector(cfg(fs_types_exclude=""), paths).collect()) == {"/", "/run"}
    everything = cfg(fs_types_exclude="", mount_points_exclude="")
    assert mountpoints(FilesystemCollector(everything, paths).collect()) == {"/", "/run", "/proc"}
    with pytest.raises(NoData):  # anchored: "/r" does not select "/run"
        FilesystemCollector(cfg(mount_points_include="/r"), paths).collect()


def test_labels_catalogue_and_protocol(tmp_path):
    paths = tree(tmp_path, [line(1, "/", "ext4"), line(2, "/a b", "ext4", source="/dev/sdb")])
    c = FilesystemCollector(cfg(), paths, hostname="n1", clock=time.monotonic)  # unknown deps are ignored
    assert isinstance(c, Collector) and c.name == c.NAME == "filesystem"
    specs = {spec.name: spec for spec in c.metrics}
    samples = c.collect()
    assert {s.name for s in samples} == set(specs)
    for s in samples:
        assert tuple(k for k, _ in s.labels) == specs[s.name].labels == ("device", "fstype", "mountpoint")
    assert (("device", "/dev/sdb"), ("fstype", "ext4"), ("mountpoint", "/a b")) in {s.labels for s in samples}


def test_duplicate_mount_lines_give_one_series(tmp_path):
    paths = tree(tmp_path, [line(1, "/", "ext4"), line(2, "/", "ext4")])
    samples = FilesystemCollector(cfg(), paths).collect()
    by_series(samples)  # asserts no duplicates
    assert len(samples) == 7


def test_rootfs_prefix_is_stripped_from_mount_points(tmp_path):
    root = tmp_path / "root"
    paths = tree(tmp_path, [line(1, str(root), "ext4"), line(2, f"{root}/data", "ext4"), line(3, "/other", "ext4")])
    (root / "data").mkdir()  # tree() made dirs for the unstripped paths only
    got = by_series(FilesystemCollector(cfg(), paths).collect())
    assert {mp for _, mp in got} == {"/", "/data", "/other"}
    assert got[("device_error", "/data")] == 0.0


def test_falls_back_to_self_mountinfo(tmp_path):
    paths = tree(tmp_path, [line(1, "/", "ext4")], pid="self")
    assert mountpoints(FilesystemCollector(cfg(), paths).collect()) == {"/"}


def test_no_mountinfo_is_collector_error(tmp_path):
    with pytest.raises(CollectorError, match="mountinfo"):
        FilesystemCollector(cfg(), Paths(procfs=str(tmp_path))).collect()


def test_everything_filtered_is_no_data(tmp_path):
    with pytest.raises(NoData):
        FilesystemCollector(cfg(), tree(tmp_path, [line(1, "/proc", "proc")])).collect()


def test_new_mount_is_seen_when_mountinfo_changes(tmp_path):
    paths = tree(tmp_path, [line(1, "/", "ext4")])
    c = FilesystemCollector(cfg(), paths)
    assert mountpoints(c.collect()) == {"/"}
    (tmp_path / "root" / "new").mkdir()
    (tmp_path / "proc" / "1" / "mountinfo").write_text(line(1, "/", "ext4") + "\n" + line(2, "/new", "ext4") + "\n")
    assert mountpoints(c.collect()) == {"/", "/new"}


# --- errors and hung mounts (statvfs injected) ------------------------------------------------------------

class FakeStatvfs:
    """Real statvfs, except that paths ending in a hang suffix block until ``release`` and others may fail."""

    def __init__(self, hang: str = "/nfs", fail: str = "/broken") -> None:
        self.hang, self.fail = hang, fail
        self.release = threading.Event()
        self.calls: collections.Counter[str] = collections.Counter()
        self._lock = threading.Lock()

    def __call__(self, path: str) -> os.statvfs_result:
        with self._lock:
            self.calls[path] += 1
        if path.endswith(self.hang):
            self.release.wait(30)  # bounded: the thread ends even if a test forgets to release it
        if path.endswith(self.fail):
            raise PermissionError(13, "Permission denied", path)
        return os.statvfs(path)


def collect_bounded(c: FilesystemCollector, limit: float = 20.0):
    """collect() on a thread; fails (instead of hanging the suite) if it does not return within ``limit``."""
    box: list = []
    t = threading.Thread(target=lambda: box.append(c.collect()), daemon=True)
    t.start()
    t.join(limit)
    assert not t.is_alive(), "collect() blocked on a hung statvfs"
    return box[0]


def test_statvfs_error_marks_only_that_mount(tmp_path):
    fake = FakeStatvfs()
    paths = tree(tmp_path, [line(1, "/", "ext4"), line(2, "/broken", "ext4"), line(3, "/data", "ext4")])
    c = FilesystemCollector(cfg(), paths, statvfs=fake)
    got = by_series(c.collect())
    assert got[("device_error", "/broken")] == 1.0 and ("size_bytes", "/broken") not in got
    assert got[("readonly", "/broken")] == 0.0
    assert got[("device_error", "/")] == got[("device_error", "/data")] == 0.0
    assert got[("size_bytes", "/data")] > 0
    assert c.stuck_mounts == frozenset()


def test_hung_statvfs_times_out_is_not_retried_and_recovers(tmp_path):
    fake = FakeStatvfs()
    paths = tree(tmp_path, [line(1, "/", "ext4"), line(2, "/nfs", "nfs4", source="srv:/x"), line(3, "/data", "xfs")])
    c = FilesystemCollector(cfg(stat_timeout="1s"), paths, statvfs=fake)
    nfs = paths.root("/nfs")
    with structlog.testing.capture_logs() as logs:
        try:
            check_hang_and_recovery(c, fake, paths)
        finally:
            fake.release.set()
            c.close()
    events = [(e["event"], e["path"]) for e in logs]
    assert events == [("statvfs_timeout", nfs), ("statvfs_returned", nfs)]


def check_hang_and_recovery(c: FilesystemCollector, fake: FakeStatvfs, paths: Paths) -> None:
    nfs = paths.root("/nfs")
    got = by_series(collect_bounded(c))
    assert got[("device_error", "/nfs")] == 1.0
    assert ("size_bytes", "/nfs") not in got and ("avail_bytes", "/nfs") not in got
    assert got[("readonly", "/nfs")] == 0.0
    # mounts listed after the hung one are still stat'ed in the same round
    assert got[("device_error", "/data")] == 0.0 and got[("size_bytes", "/data")] > 0
    assert c.stuck_mounts == {nfs}
    started = c.threads_started
    assert started == 2  # the first worker is left blocked in the call; a second one finished the round

    got = by_series(collect_bounded(c))
    assert got[("device_error", "/nfs")] == 1.0 and ("size_bytes", "/nfs") not in got
    assert fake.calls[nfs] == 1  # a stuck mount is not stat'ed again
    assert fake.calls[paths.root("/data")] == 2
    assert c.threads_started == started  # and no new thread for it (nor for anything else)

    fake.release.set()
    deadline = time.monotonic() + 20
    while c.stuck_mounts and time.monotonic() < deadline:
        time.sleep(0.01)
    assert c.stuck_mounts == frozenset()
    got = by_series(collect_bounded(c))
    assert got[("device_error", "/nfs")] == 0.0 and got[("size_bytes", "/nfs")] > 0
    assert fake.calls[nfs] == 2


def test_worker_thread_is_reused_between_rounds(tmp_path):
    c = FilesystemCollector(cfg(), tree(tmp_path, [line(1, "/", "ext4")]))
    try:
        for _ in range(5):
            c.collect()
        assert c.threads_started == 1
    finally:
        c.close()


# --- oracle: the installed node_exporter (1.5, reads <procfs>/1/mounts) on the same tree and this machine ----

# Upstream node_exporter's defaults in its own (searched, not full-match) form. Debian's build patches the
# mount point default (it adds run, mnt, media), so the oracle runs are given upstream's explicitly.
UPSTREAM_FLAGS = (
    "--collector.disable-defaults",
    "--collector.filesystem",
    r"--collector.filesystem.mount-points-exclude="
    r"^/(dev|proc|run/credentials/.+|sys|var/lib/docker/.+|var/lib/containers/storage/.+)($|/)",
    r"--collector.filesystem.fs-types-exclude="
    r"^(autofs|binfmt_misc|bpf|cgroup2?|configfs|debugfs|devpts|devtmpfs|fusectl|hugetlbfs|iso9660|mqueue|nsfs"
    r"|overlay|proc|procfs|pstore|rpc_pipefs|securityfs|selinuxfs|squashfs|sysfs|tracefs)$",
)

@pytest.mark.slow
def test_temp_tree_matches_installed_node_exporter(tmp_path):
    specs = [  # (mountpoint, fstype, source)
        ("/", "ext4", "/dev/vda"), ("/data", "xfs", "/dev/sdb1"), ("/a b", "ext4", "/dev/sdc"),
        ("/run", "tmpfs", "tmpfs"), ("/dev/shm", "tmpfs", "tmpfs"), ("/proc", "proc", "proc"),
        ("/var/lib/docker/overlay2/x/merged", "overlay", "overlay"), ("/var/lib/docker", "ext4", "/dev/sdd"),
        ("/sys/fs/cgroup", "cgroup2", "cgroup2"), ("/snap/x/1", "squashfs", "/dev/loop1"),
        ("/run/netns/n", "nsfs", "nsfs"), ("/mnt/fuse", "fuse.sshfs", "me@host:"),
    ]
    paths = tree(tmp_path, [line(i, mp, fs, source=src) for i, (mp, fs, src) in enumerate(specs)])
    mounts = "".join(f"{src} {mp.replace(' ', chr(92) + '040')} {fs} rw,relatime 0 0\n" for mp, fs, src in specs)
    (tmp_path / "proc" / "1" / "mounts").write_text(mounts)
    ours = {sample_key(s.name, s.labels): s.value for s in FilesystemCollector(cfg(), paths).collect()}
    text = scrape_node_exporter(*UPSTREAM_FLAGS, f"--path.procfs={paths.procfs}", f"--path.rootfs={paths.rootfs}")
    theirs = {k: v for k, v in parse_exposition(text).items() if k[0] in FAMILIES}
    assert theirs, text[-2000:]
    # the same series, except the tmpfs mounts node_exporter keeps and we drop by default
    assert set(ours) == {k for k in theirs if ("fstype", "tmpfs") not in k[1]}
    assert_same_values(ours, theirs)


@pytest.mark.slow
def test_real_machine_matches_installed_node_exporter():
    if not Path("/proc/1/mountinfo").exists():
        pytest.skip("no /proc/1/mountinfo")
    try:
        ours = {sample_key(s.name, s.labels): s.value for s in FilesystemCollector(cfg(), Paths()).collect()}
    except NoData:
        ours = {}
    text = scrape_node_exporter(*UPSTREAM_FLAGS)
    theirs = {k: v for k, v in parse_exposition(text).items() if k[0] in FAMILIES}
    assert set(ours) == {k for k in theirs if ("fstype", "tmpfs") not in k[1]}
    assert_same_values(ours, theirs)


def assert_same_values(ours: dict, theirs: dict) -> None:
    for key, value in ours.items():
        if key[0] in ("node_filesystem_free_bytes", "node_filesystem_avail_bytes", "node_filesystem_files_free"):
            # other processes write to the same filesystem between the two reads
            size = ours[("node_filesystem_size_bytes" if "bytes" in key[0] else "node_filesystem_files", key[1])]
            assert abs(value - theirs[key]) <= 0.01 * size, key
        else:
            assert value == theirs[key], key
