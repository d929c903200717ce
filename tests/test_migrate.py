"""The ``migrate`` plugin on real files: selection, CLI, open-for-write, metrics, and THE kill -9 crash test."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agent.remediation.journal import Journal
from agent.remediation.policy import Policy
from agent.remediation.remediator import Remediator
from remediations.migrate import (
    Candidate,
    Config,
    Migrate,
    Params,
    Tier,
    bytes_to_free,
    matches,
    pick_coldest,
    pick_hottest,
)
from remediations.safecopy import TMP_PREFIX, StepLog
from tests.conftest import REPO, require_root

NOBODY = lambda paths: {}  # noqa: E731
DAY = 86400


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def temps(*roots: Path) -> list[Path]:
    return [p for r in roots for p in r.rglob(f"{TMP_PREFIX}*")]


def regular(p: Path) -> bool:
    return p.is_file() and not p.is_symlink()


def full(path_of_full: str):
    """statvfs that reports ``path_of_full`` 100 % used (1000 MB), the real one elsewhere."""
    def statvfs(path: str) -> os.statvfs_result:
        if path == path_of_full:
            return os.statvfs_result((4096, 1 << 20, 1000, 0, 0, 1000, 0, 0, 0, 255))
        return os.statvfs(path)
    return statvfs


def plugin(tmp: Path, leave: str = "symlink", **kw) -> Migrate:
    cfg = Config(tiers={"fast": Tier(path=str(tmp / "fast"), high=0.9, low=0.5),
                        "capacity": Tier(path=str(tmp / "cap"))},
                 state_dir=str(tmp / "state"), rate_mb_s=None, leave=leave)
    kw.setdefault("writers", NOBODY)
    kw.setdefault("statvfs", full(str(tmp / "fast")))
    return Migrate(cfg, **kw)


def make_files(root: Path, n: int, rng: random.Random, size: tuple[int, int] = (0, 6000)) -> dict[str, str]:
    hashes = {}
    for i in range(n):
        rel = f"d{i % 7}/s{i % 3}/f{i:04d}.bin"
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(rng.randbytes(rng.randint(*size)))
        hashes[rel] = sha(p)
    return hashes


# ------------------------------------------------------------------ pure selection

def test_selection_helpers():
    assert bytes_to_free(total=1000, avail=100, low=0.5) == 400
    assert bytes_to_free(total=1000, avail=600, low=0.5) == 0
    cands = [Candidate("a", 100, 5.0), Candidate("b", 300, 1.0), Candidate("c", 50, 1.0), Candidate("d", 10, 9.0)]
    assert [c.rel for c in pick_coldest(cands, 320, 10)] == ["b", "c"]
    assert [c.rel for c in pick_coldest(cands, 10**6, 2)] == ["b", "c"]
    assert [c.rel for c in pick_hottest(cands, 2, 10**6)] == ["d", "a"]
    assert [c.rel for c in pick_hottest(cands, 2, 60)] == ["d", "c"]     # "a" does not fit
    assert matches("ckpt/x.pt", ("*.pt",), ()) and not matches("ckpt/x.pt", ("*.pt",), ("ckpt/*",))
    assert Params.model_validate({"paths": "a, b/c"}).paths == ("a", "b/c")


def test_plan_picks_coldest_and_is_pure(tmp_path):
    (tmp_path / "cap").mkdir()
    files = {"old.bin": 10 * DAY, "mid.bin": 5 * DAY, "new.bin": 0, "skip.log": 20 * DAY}
    now = time.time()
    for name, age in files.items():
        p = tmp_path / "fast" / name
        p.parent.mkdir(exist_ok=True)
        p.write_bytes(b"x" * 1000)
        os.utime(p, (now - age, now - age - DAY))
    fs = {"fast": os.statvfs_result((4096, 1, 10_000, 0, 6_000, 0, 0, 0, 0, 255))}   # 40 % used
    m = plugin(tmp_path, statvfs=lambda p: fs["fast"] if p.endswith("fast") else os.statvfs(p))
    plan = m.plan(None, Params(action="demote", low=0.2, exclude=("*.log",)))   # free 2000 bytes
    assert [Path(s).name for s, _, _ in plan.params["moves"]] == ["old.bin", "mid.bin"]
    assert plan.reversible and not plan.noop and plan.target == "tier/fast->capacity"
    assert sorted(p.name for p in (tmp_path / "fast").iterdir()) == sorted(files)   # nothing moved
    assert m.plan(None, Params(action="demote", low=0.5)).noop                      # below the low mark


@contextlib.contextmanager
def tmpfs(where: Path, size: str):
    require_root()
    where.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], check=True, timeout=30)
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=True, timeout=30)


def nodewarden(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "agent.cli", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=60, env={**os.environ, "PYTHONPATH": str(REPO)})


@pytest.mark.privileged
def test_cli_demote_on_a_full_tmpfs_then_revert(tmp_path):
    """A real 4 MB fast tier at ~80 %: demote the coldest files until 40 %, leave symlinks; then undo."""
    with tmpfs(tmp_path / "fast", "4m") as fast:
        (tmp_path / "cap").mkdir()
        now = time.time()
        hashes = {}
        for i in range(12):                 # 12 x 256 KiB, file i is i days old
            p = fast / "ckpt" / f"step{i:02d}.pt"
            p.parent.mkdir(exist_ok=True)
            data = os.urandom(256 * 1024)
            p.write_bytes(data)
            os.utime(p, (now - i * DAY, now - i * DAY))     # (reading it now would move its atime)
            hashes[p.name] = hashlib.sha256(data).hexdigest()
        policy = tmp_path / "policy.yml"
        policy.write_text(f"plugins:\n  migrate:\n    rate_mb_s: 100\n    tiers:\n"
                          f"      fast: {{path: {fast}, high: 0.7, low: 0.4}}\n"
                          f"      capacity: {{path: {tmp_path / 'cap'}}}\n")
        common = ("--policy", str(policy), "--state-dir", str(tmp_path / "state"))
        plan = nodewarden("migrate", "demote", "--plan", *common, cwd=tmp_path)
        assert plan.returncode == 0, plan.stderr
        assert "leave symlinks" in plan.stdout and "-> planned" in plan.stdout
        assert all(regular(fast / "ckpt" / n) for n in hashes)
        res = nodewarden("migrate", "demote", "--apply", "--json", *common, cwd=tmp_path)
        assert res.returncode == 0, res.stderr
        entry = json.loads(res.stdout)
        assert entry["status"] == "succeeded"
        st = os.statvfs(fast)
        assert 1 - st.f_bavail / st.f_blocks <= 0.4
        moved = sorted(p.name for p in (tmp_path / "cap" / "ckpt").iterdir())
        assert moved == sorted(hashes)[-len(moved):] and len(moved) >= 5     # the oldest ones
        for name, digest in hashes.items():
            p = fast / "ckpt" / name
            assert sha(p) == digest                                         # readable through the symlink
            assert p.is_symlink() == (name in moved)
        back = nodewarden("act", "--revert", str(entry["id"]), *common, cwd=tmp_path)
        assert back.returncode == 0, back.stdout + back.stderr
        assert all(regular(fast / "ckpt" / n) and sha(fast / "ckpt" / n) == d for n, d in hashes.items())
        assert list((tmp_path / "cap" / "ckpt").iterdir()) == []


def test_promote_named_and_top(tmp_path):
    rng = random.Random(1)
    (tmp_path / "fast").mkdir()
    hashes = make_files(tmp_path / "cap", 6, rng, (100, 2000))
    now = time.time()
    for i, rel in enumerate(sorted(hashes)):
        os.utime(tmp_path / "cap" / rel, (now - i * DAY, now - 30 * DAY))
    m = plugin(tmp_path, statvfs=os.statvfs)
    first = sorted(hashes)[3]
    m.apply(m.plan(None, Params(action="promote", paths=(first,))))
    assert regular(tmp_path / "fast" / first) and not (tmp_path / "cap" / first).exists()
    plan = m.plan(None, Params(action="promote", top=2))
    assert [Path(s).relative_to(tmp_path / "cap").as_posix() for s, _, _ in plan.params["moves"]] == \
        sorted(hashes)[:2]                                                    # the two most recently read
    m.apply(plan)
    for rel, digest in hashes.items():
        copies = [p for p in (tmp_path / "fast" / rel, tmp_path / "cap" / rel) if regular(p)]
        assert len(copies) == 1 and sha(copies[0]) == digest
    with pytest.raises(Exception, match="not under the tier root"):
        m.plan(None, Params(action="promote", paths=("../../etc/passwd",)))


def test_demote_then_promote_replaces_symlink(tmp_path):
    (tmp_path / "cap").mkdir()
    hashes = make_files(tmp_path / "fast", 4, random.Random(2))
    m = plugin(tmp_path)
    m.apply(m.plan(None, Params(action="demote")))
    rel = sorted(hashes)[0]
    assert (tmp_path / "fast" / rel).is_symlink()
    m = plugin(tmp_path, statvfs=os.statvfs)         # the fast tier has room again
    m.apply(m.plan(None, Params(action="promote", paths=(rel,))))
    assert regular(tmp_path / "fast" / rel) and sha(tmp_path / "fast" / rel) == hashes[rel]
    assert not (tmp_path / "cap" / rel).exists()


def test_evacuate_leave_nothing_and_metrics(tmp_path):
    (tmp_path / "cap").mkdir()
    hashes = make_files(tmp_path / "fast", 20, random.Random(3))
    done = []
    m = plugin(tmp_path, leave="none", progress=lambda d, t: done.append((d, t)))
    plan = m.plan(None, Params(action="evacuate", tier="fast"))
    assert not plan.reversible
    out = m.apply(plan)
    assert "moved 20 files" in out.output
    assert all(not (tmp_path / "fast" / r).exists() and sha(tmp_path / "cap" / r) == d for r, d in hashes.items())
    total = sum((tmp_path / "cap" / r).stat().st_size for r in hashes)
    assert done[-1] == (total, total)
    samples = {(s.name, s.labels): s.value for s in m.samples()}
    assert samples[("nodewarden_migrate_bytes_total", (("source", "fast"), ("destination", "capacity")))] == total
    assert samples[("nodewarden_migrate_files_total",
                    (("source", "fast"), ("destination", "capacity"), ("result", "done")))] == 20
    assert {s.name for s in m.samples()} <= {spec.name for spec in m.metrics}
    assert m.verify(plan)
    assert "already moved 20" in m.apply(plan).output          # idempotent


def test_open_for_writing_is_skipped_others_move(tmp_path):
    (tmp_path / "cap").mkdir()
    hashes = make_files(tmp_path / "fast", 5, random.Random(4), (10, 100))
    busy = sorted(hashes)[2]
    code = f"import time; f=open({str(tmp_path / 'fast' / busy)!r}, 'ab'); print('ready', flush=True); time.sleep(60)"
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == "ready"
        m = plugin(tmp_path, writers=None)          # the real /proc scanner
        out = m.apply(m.plan(None, Params(action="demote")))
    finally:
        p.kill()
        p.wait(timeout=10)
    assert "skipped 1" in out.output and f"open for writing by pid {p.pid}" in out.output
    assert regular(tmp_path / "fast" / busy) and not (tmp_path / "cap" / busy).exists()
    assert all((tmp_path / "fast" / r).is_symlink() for r in hashes if r != busy)


# ------------------------------------------------------------------ THE crash test

N_FILES = 300
TRIALS = 50
BATCH = 64          # files per safe-copy batch in the child: 5 batches, 20 group commits of the step log


def _child(tmp: Path, leave: str) -> None:
    """In a forked child: demote everything through the remediator (journal + step log), then exit."""
    try:
        from remediations.safecopy import mover

        mover.BATCH_FILES = BATCH
        journal = Journal(str(tmp / "state"))
        rem = Remediator(Policy(), journal, {"migrate": plugin(tmp, leave)}, mode="enforce")
        entry = rem.act("migrate", {"action": "demote"}, apply=True)
        os._exit(0 if entry.status == "succeeded" else 1)
    except BaseException:
        os._exit(2)


def _records(log: Path) -> int:
    try:
        return log.read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


def _run_child(tmp: Path, leave: str, kill_at: int | None, extra: float = 0.0,
               within: float = 120.0) -> tuple[int, bool]:
    """Run the child; with ``kill_at``, SIGKILL it ``extra`` seconds after its step log holds that many records
    or ``within`` seconds after the start, whichever comes first -- a point in its progress, so load cannot
    move the kill past the end of the run. Returns (the step log's records when killed or at the end, whether
    the kill interrupted the child)."""
    log = tmp / "state" / "migrate.steps"
    pid = os.fork()
    if pid == 0:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 1)
            os.dup2(null.fileno(), 2)
        _child(tmp, leave)
    start = time.monotonic()
    status = None
    try:
        while kill_at is not None and _records(log) < kill_at and time.monotonic() - start < within:
            done, st = os.waitpid(pid, os.WNOHANG)
            if done:
                status = st
                break
            time.sleep(0.0005)
        if kill_at is not None and status is None:
            time.sleep(extra)
            os.kill(pid, signal.SIGKILL)
    finally:
        if status is None:
            with contextlib.suppress(ChildProcessError):
                _, status = os.waitpid(pid, 0)
    if kill_at is None:
        assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
    return _records(log), kill_at is not None and os.WIFSIGNALED(status)


def _check(tmp: Path, hashes: dict[str, str], leave: str) -> str:
    """Recover like a restarted daemon; assert nothing lost or duplicated; the logs agree with the disk."""
    journal = Journal(str(tmp / "state"))
    try:
        Remediator(Policy(), journal, {"migrate": plugin(tmp, leave)}, mode="enforce").recover()
        entries = [e for e in journal if e.action == "migrate"]
    finally:
        journal.close()
    fast, cap = tmp / "fast", tmp / "cap"
    assert temps(fast, cap) == []
    for rel, digest in hashes.items():
        copies = [p for p in (fast / rel, cap / rel) if regular(p)]
        assert len(copies) == 1, (rel, copies)
        assert sha(copies[0]) == digest, rel
        if copies[0].is_relative_to(cap):
            assert (fast / rel).is_symlink() == (leave == "symlink")
            if leave == "symlink":
                assert os.readlink(fast / rel) == str(cap / rel)
    assert len(entries) <= 1 and all(e.status == "succeeded" for e in entries)
    ops = StepLog(str(tmp / "state" / "migrate.steps")).ops() if (tmp / "state" / "migrate.steps").exists() else {}
    assert all(o["step"] in ("done", "rolledback", "skipped", "failed") for o in ops.values())
    done = [o for o in ops.values() if o["step"] == "done"]
    assert len({o["src"] for o in done}) == len(done)                  # no file moved twice
    for o in done:
        assert sha(Path(o["dst"])) == hashes[str(Path(o["src"]).relative_to(fast))]
    if entries:     # the action was journaled: recovery finished it
        assert {o["src"] for o in done} == {str(fast / r) for r in hashes}
        return "finished"
    assert not done
    return "not started"


def _fresh(tmp: Path, seed: int) -> dict[str, str]:
    import shutil

    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "cap").mkdir(parents=True)
    return make_files(tmp / "fast", N_FILES, random.Random(seed))


def test_kill9_at_random_points_loses_nothing(tmp_path):
    """SIGKILL at random points of the step protocol (a random step-log record count, then a random few ms
    into the next step), and at a random time before the first record; recovery leaves every file exactly
    once, intact."""
    rng = random.Random(20261122)
    trial = tmp_path / "t"
    hashes = _fresh(trial, 0)
    total, _ = _run_child(trial, "symlink", None)          # an uninterrupted run: how many records it writes
    assert _check(trial, hashes, "symlink") == "finished"
    assert total >= 4 * N_FILES
    outcomes = {"killed": 0, "finished": 0, "not started": 0}
    seen = set()
    for i in range(TRIALS):
        leave = "symlink" if i % 2 else "none"
        hashes = _fresh(trial, i + 1)
        if i % 10 == 0:     # before the first record: planning, journaling, recovery of the last run
            at, killed = _run_child(trial, leave, 1, 0.0, 10 ** rng.uniform(-4, -0.5))   # 0.1-300 ms
        else:
            at, killed = _run_child(trial, leave, rng.randrange(1, total), rng.uniform(0.0, 0.003))
        seen.add(at)
        outcomes["killed"] += killed
        outcomes[_check(trial, hashes, leave)] += 1
    print(f"clean run {total} records; killed at {len(seen)} record counts; {outcomes}")
    assert outcomes["killed"] >= TRIALS * 3 // 4, outcomes        # nearly every trial really interrupted the run
    assert outcomes["finished"] >= TRIALS // 2, outcomes
    assert len(seen) >= 10, sorted(seen)                          # at many points of the protocol


def test_progress_bar_and_entry_points():
    from agent.commands.migrate import render_bar
    from agent.core.discovery import discover

    assert render_bar(0, 0, 0.0, 10).startswith("[##########] 100%")
    line = render_bar(250_000_000, 1_000_000_000, 2.0, 20)
    assert line.startswith("[#####...............]  25%") and "0.25/1.00 GB" in line and "125 MB/s" in line
    eps = discover()
    assert eps["migrate"].value == "remediations.migrate:Migrate"
    assert eps["restore"].value == "remediations.restore:Restore"


@pytest.mark.privileged
def test_capacity_tier_fills_up_during_demote(tmp_path):
    """The plan fits, then another writer fills the capacity tier: sources intact, the logs say ENOSPC."""
    with tmpfs(tmp_path / "cap", "2m") as cap:
        hashes = make_files(tmp_path / "fast", 24, random.Random(9), (60_000, 70_000))   # ~1.5 MB
        m = plugin(tmp_path)
        plan = m.plan(None, Params(action="demote"))
        assert len(plan.params["moves"]) == 24
        (cap / "filler").write_bytes(b"\0" * (1024 * 1024))                             # someone else
        with pytest.raises(Exception, match="ENOSPC") as err:
            m.apply(plan)
        assert "failed" in str(err.value)
        for rel, digest in hashes.items():                                               # nothing lost
            copies = [p for p in (tmp_path / "fast" / rel, cap / rel) if regular(p)]
            assert len(copies) == 1 and sha(copies[0]) == digest
        assert temps(tmp_path / "fast", cap) == []
        ops = StepLog(str(tmp_path / "state" / "migrate.steps")).ops()
        failed = [o for o in ops.values() if o["step"] == "failed"]
        assert failed and all("ENOSPC" in o["reason"] for o in failed)
        assert all(regular(Path(o["src"])) for o in failed)
