"""The safe-copy core on real files: metadata, verification, open-for-write, ENOSPC, a crash at every step."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from remediations.safecopy import (
    BIG,
    TMP_PREFIX,
    Move,
    ProcWriters,
    SafeMover,
    StepLog,
    Throttle,
    flags_write,
    hash_file,
    parse_fdinfo_flags,
    writers_in,
)
from tests.conftest import require_root

NOBODY = lambda paths: {}  # noqa: E731  (no process holds anything open)


def sha(path: Path | str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def mover(tmp_path: Path, **kw) -> SafeMover:
    kw.setdefault("writers", NOBODY)
    return SafeMover(StepLog(str(tmp_path / "state" / "steps.log")), **kw)


def temps(*roots: Path) -> list[Path]:
    return [p for r in roots for p in r.rglob(f"{TMP_PREFIX}*")]


@pytest.fixture(params=[3 * 1024 * 1024 + 17, BIG + 4099], ids=["loop", "kernel-copy"])
def tree(tmp_path, request):
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    dst.mkdir()
    f = src / "model.bin"
    f.write_bytes(os.urandom(request.param))
    os.chmod(f, 0o640)
    os.utime(f, ns=(1_600_000_000_123_456_789, 1_500_000_000_987_654_321))
    return src, dst, f


# ------------------------------------------------------------------ pure parts

def test_parse_fdinfo_flags():
    text = "pos:\t0\nflags:\t0100002\nmnt_id:\t29\nino:\t1234\n"
    assert parse_fdinfo_flags(text) == 0o100002
    assert flags_write(parse_fdinfo_flags(text))              # O_RDWR
    assert flags_write(0o100001)                              # O_WRONLY
    assert not flags_write(parse_fdinfo_flags("pos:\t0\nflags:\t02100000\n"))   # O_RDONLY|O_CLOEXEC|O_LARGEFILE
    assert parse_fdinfo_flags("pos:\t0\n") is None
    assert not flags_write(None)


def test_writers_in():
    fds = [(10, (1, 5), 0o2), (11, (1, 5), 0o0), (12, (1, 6), 0o1), (13, (1, 5), 0o100001)]
    assert writers_in(fds, (1, 5)) == [10, 13]
    assert writers_in(fds, (2, 5)) == []


def test_throttle_sleeps_to_rate():
    now = [0.0]
    slept = []

    def sleep(s):
        slept.append(s)
        now[0] += s

    t = Throttle(5e6, clock=lambda: now[0], sleep=sleep)
    for _ in range(10):
        t.consume(1_000_000)
    assert sum(slept) == pytest.approx(10 / 5 - 0.0, rel=0.01)
    unlimited = Throttle(None, clock=lambda: now[0], sleep=sleep)
    before = len(slept)
    unlimited.consume(10**9)
    assert len(slept) == before


def test_steplog_ignores_torn_line(tmp_path):
    log = StepLog(str(tmp_path / "log"))
    log.record("a", "begin", src="x")
    log.close()
    with open(tmp_path / "log", "a") as f:
        f.write('{"op":"b","step":"beg')            # a power loss mid-write
    log = StepLog(str(tmp_path / "log"))
    log.record("a", "done")
    assert [(r["op"], r["step"]) for r in log.records()] == [("a", "begin"), ("a", "done")]
    assert log.ops()["a"]["src"] == "x"


# ------------------------------------------------------------------ moves on real files

def test_move_preserves_content_and_metadata(tree, tmp_path):
    src, dst, f = tree
    want = sha(f)
    os.setxattr(f, "user.nodewarden.test", b"42")
    if os.geteuid() == 0:
        os.chown(f, 1234, 2345)
    os.utime(f, ns=(1_600_000_000_123_456_789, 1_500_000_000_987_654_321))   # reading it moved atime
    st = os.stat(f)
    m = mover(tmp_path)
    res = m.move(str(f), str(dst / "model.bin"), after="symlink")
    assert res.status == "done", res
    out = dst / "model.bin"
    ost = os.stat(out)
    assert sha(out) == want and res.hash == hash_file(str(out))
    assert (ost.st_mode, ost.st_mtime_ns, ost.st_atime_ns) == (st.st_mode, st.st_mtime_ns, st.st_atime_ns)
    assert (ost.st_uid, ost.st_gid) == (st.st_uid, st.st_gid)
    assert os.getxattr(out, "user.nodewarden.test") == b"42"
    assert f.is_symlink() and os.readlink(f) == str(out)
    assert temps(src, dst) == []
    steps = [r["step"] for r in m.log.records()]
    assert steps == ["begin", "copied", "renamed", "done"]


@pytest.mark.parametrize("after", ["unlink", "keep"])
def test_move_after(tree, tmp_path, after):
    _, dst, f = tree
    want = sha(f)
    res = mover(tmp_path).move(str(f), str(dst / "m"), after=after)
    assert res.status == "done"
    assert sha(dst / "m") == want
    assert f.exists() == (after == "keep")


def test_existing_destination_is_never_replaced(tree, tmp_path):
    _src, dst, f = tree
    (dst / "model.bin").write_bytes(b"someone else's")
    res = mover(tmp_path).move(str(f), str(dst / "model.bin"))
    assert res.status == "skipped" and "exists" in res.reason
    assert (dst / "model.bin").read_bytes() == b"someone else's" and f.is_file()


def test_expected_hash_mismatch_changes_nothing(tree, tmp_path):
    src, dst, f = tree
    want = sha(f)
    res = mover(tmp_path).move(str(f), str(dst / "x"), expect="0" * 64)
    assert res.status == "failed" and "does not match" in res.reason
    assert not (dst / "x").exists() and sha(f) == want and temps(src, dst) == []


def test_source_changed_during_copy_is_not_moved(tree, tmp_path):
    src, dst, f = tree
    calls = []

    def progress(n):
        if not calls:
            with open(f, "ab") as fh:   # a writer appends while we copy
                fh.write(b"more")
        calls.append(n)

    res = mover(tmp_path, progress=progress).move(str(f), str(dst / "x"))
    assert res.status == "failed" and "changed" in res.reason
    assert not (dst / "x").exists() and f.is_file() and temps(src, dst) == []
    assert f.read_bytes().endswith(b"more")


def test_replace_quarantines_the_old_file(tree, tmp_path):
    _src, dst, f = tree
    (dst / "model.bin").write_bytes(b"damaged")
    q = tmp_path / "quarantine"
    res = mover(tmp_path).move(str(f), str(dst / "model.bin"), after="keep", expect=hash_file(str(f)),
                               quarantine=str(q))
    assert res.status == "done"
    assert sha(dst / "model.bin") == sha(f)
    assert [p.read_bytes() for p in q.iterdir()] == [b"damaged"]


# ------------------------------------------------------------------ open for writing

@contextlib.contextmanager
def holder(path: Path, mode: str):
    """A real process holding ``path`` open (``mode`` as for open()) until the block ends."""
    code = f"import sys,time; f=open({str(path)!r}, {mode!r}); print('ready', flush=True); time.sleep(60)"
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == "ready"
        yield p.pid
    finally:
        p.kill()
        p.wait(timeout=10)


@pytest.mark.parametrize("mode", ["ab", "r+b"])
def test_file_open_for_writing_is_not_moved(tree, tmp_path, mode):
    _src, dst, f = tree
    want = sha(f)
    with holder(f, mode) as pid:
        assert ProcWriters()([str(f)]) == {str(f): [pid]}
        res = SafeMover(StepLog(str(tmp_path / "log"))).move(str(f), str(dst / "m"))
    assert res.status == "skipped" and str(pid) in res.reason
    assert f.is_file() and not f.is_symlink() and sha(f) == want and not (dst / "m").exists()


def test_file_open_for_reading_is_moved(tree, tmp_path):
    _src, dst, f = tree
    with holder(f, "rb"):
        assert ProcWriters()([str(f)]) == {}
        res = SafeMover(StepLog(str(tmp_path / "log"))).move(str(f), str(dst / "m"))
    assert res.status == "done"


def test_opened_for_writing_during_copy_is_not_renamed(tree, tmp_path):
    src, dst, f = tree
    want = sha(f)
    checks = []

    def writers(paths):         # a writer appears between the check before the copy and the one before the rename
        checks.append(list(paths))
        return {p: [4242] for p in paths} if len(checks) > 1 else {}

    res = mover(tmp_path, writers=writers).move(str(f), str(dst / "m"))
    assert checks == [[str(f)], [str(f)]] and res.status == "skipped" and "during copy" in res.reason
    assert sha(f) == want and not (dst / "m").exists() and temps(src, dst) == []


# ------------------------------------------------------------------ disk full

@contextlib.contextmanager
def small_tmpfs(where: Path, size: str = "2m"):
    require_root()
    where.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], check=True, timeout=30)
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=True, timeout=30)


@pytest.mark.privileged
@pytest.mark.parametrize("preallocate", [True, False])
def test_enospc_leaves_source_intact(tree, tmp_path, preallocate):
    _src, _, f = tree            # 3 MiB source, 2 MiB destination filesystem
    want = sha(f)
    with small_tmpfs(tmp_path / "small") as small:
        m = mover(tmp_path, preallocate=preallocate)   # without: write() fails in the middle of the copy
        res = m.move(str(f), str(small / "model.bin"), after="unlink")
        assert res.status == "failed" and res.errno == errno.ENOSPC
        assert "ENOSPC" in res.reason
        assert list(small.iterdir()) == []
        recs = m.log.records()
        assert recs[-1]["step"] == "failed" and "ENOSPC" in recs[-1]["reason"]
    assert f.is_file() and sha(f) == want


# ------------------------------------------------------------------ a crash at each step

@pytest.mark.parametrize("step", ["begin", "copied", "placed", "renamed"])
@pytest.mark.parametrize("after", ["unlink", "symlink"])
def test_crash_after_each_step_recovers(tree, tmp_path, step, after):
    src, dst, f = tree
    want = sha(f)
    pid = os.fork()
    if pid == 0:  # child: dies right after the step's record
        try:
            m = mover(tmp_path, hooks={step: lambda: os.kill(os.getpid(), signal.SIGKILL)})
            m.move(str(f), str(dst / "m"), after=after)
        finally:
            os._exit(3)
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    m = mover(tmp_path)
    rec = m.recover()
    assert temps(src, dst) == []
    copies = [p for p in (f, dst / "m") if p.is_file() and not p.is_symlink()]
    assert len(copies) == 1 and sha(copies[0]) == want
    if step in ("begin", "copied"):      # the copy was not in place yet: roll back
        assert rec.rolled_back and copies[0] == f
    else:
        assert rec.finished and copies[0] == dst / "m"
        assert f.is_symlink() == (after == "symlink")
    assert m.recover().finished == []       # idempotent
    assert all(o["step"] in ("done", "rolledback") for o in m.log.ops().values())


def test_second_mover_on_one_log_is_refused(tmp_path):
    m = mover(tmp_path)
    log2 = StepLog(m.log.path)
    with pytest.raises(Exception, match="in use"):
        log2.lock(blocking=False)
    m.close()
    log2.lock(blocking=False)
    log2.close()


def test_hash_file_matches_blake3_of_bytes(tmp_path):
    import blake3

    p = tmp_path / "x"
    data = os.urandom(100_000)
    p.write_bytes(data)
    assert hash_file(str(p)) == blake3.blake3(data).hexdigest()
    (tmp_path / "e").write_bytes(b"")
    assert hash_file(str(tmp_path / "e")) == blake3.blake3(b"").hexdigest()


def test_copy_is_bandwidth_limited(tree, tmp_path):
    _, dst, f = tree
    now = [0.0]
    slept = []

    def sleep(s):
        slept.append(s)
        now[0] += s

    done = []
    size = f.stat().st_size
    res = mover(tmp_path, rate_mb_s=2, clock=lambda: now[0], sleep=sleep, progress=done.append) \
        .move(str(f), str(dst / "m"))
    assert res.status == "done" and sum(done) == size
    assert sum(slept) == pytest.approx(size / 2e6, abs=0.6)     # within one chunk of the 2 MB/s budget


def test_destination_appearing_during_copy_is_never_replaced(tree, tmp_path):
    src, dst, f = tree
    want = sha(f)
    intruder = dst / "m"
    res = mover(tmp_path, hooks={"copied": lambda: intruder.write_bytes(b"someone else's")}).move(str(f), str(intruder))
    assert res.status == "skipped" and "destination appeared" in res.reason
    assert intruder.read_bytes() == b"someone else's" and sha(f) == want and temps(src, dst) == []


def test_crash_between_link_and_unlink_recovers(tree, tmp_path):
    """Where the no-replace rename is not available, tmp is linked to dst, then unlinked: a crash between."""
    src, dst, f = tree
    want = sha(f)
    pid = os.fork()
    if pid == 0:
        try:
            mover(tmp_path, hooks={"copied": lambda: os.kill(os.getpid(), signal.SIGKILL)}).move(str(f), str(dst / "m"))
        finally:
            os._exit(3)
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status)
    (tmp,) = temps(dst)
    os.link(tmp, dst / "m")                  # the state that crash leaves
    m = mover(tmp_path)
    assert len(m.recover().finished) == 1
    assert temps(src, dst) == [] and not f.exists() and sha(dst / "m") == want


def test_batch_of_small_files_with_one_growing(tmp_path):
    """move_many: every file verified and moved, except the one a writer appended to after it was listed."""
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    dst.mkdir()
    files = {src / f"f{i}": os.urandom(i * 1000) for i in range(40)}
    for p, data in files.items():
        p.write_bytes(data)
    grow = src / "f7"

    def append():               # the begin records of the first batch are written: a writer appends once
        if grow.stat().st_size == 7000:
            with open(grow, "ab") as fh:
                fh.write(b"more")

    m = mover(tmp_path, batch_files=16, hooks={"begin": append})
    results = list(m.move_many(Move(str(p), str(dst / p.name)) for p in files))
    assert [r.src for r in results] == [str(p) for p in files]
    for p, data in files.items():
        r = next(r for r in results if r.src == str(p))
        if p == grow:
            assert r.status == "failed" and "changed" in r.reason and not (dst / p.name).exists()
            assert p.read_bytes() == data + b"more"
        else:
            assert r.status == "done" and (dst / p.name).read_bytes() == data and not p.exists()
    assert temps(src, dst) == []
    assert all(o["step"] in ("done", "failed") for o in m.log.ops().values())
