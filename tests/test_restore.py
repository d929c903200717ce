"""Manifests, the scrubber and the ``restore`` plugin on real files; kill -9 during a restore."""

from __future__ import annotations

import contextlib
import hashlib
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agent.remediation.journal import Journal
from agent.remediation.policy import Policy
from agent.remediation.remediator import Remediator
from remediations.manifest import (
    DEFAULT_NAME,
    ManifestEntry,
    ManifestError,
    create,
    escape,
    parse,
    render,
    unescape,
    write,
)
from remediations.restore import Config, LocalSource, Params, Restore
from remediations.safecopy import TMP_PREFIX, StepLog
from remediations.scrub import METRICS, Scrubber, integrity_samples
from tests.conftest import REPO, require_root

H = "ab" * 32


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ------------------------------------------------------------------ manifest format (pure)

def test_manifest_roundtrip_and_escapes():
    entries = [ManifestEntry("a/b.bin", 10, H), ManifestEntry("tab\there\nnew\\line", 0, "00" * 32)]
    text = render(entries)
    assert text.startswith("# nodewarden-manifest v1 blake3\n")
    assert f"{H}\t10\ta/b.bin\n" in text
    assert parse(text) == {e.path: e for e in entries}
    assert unescape(escape("x\\t\t")) == "x\\t\t"


@pytest.mark.parametrize("line,why", [
    (f"{H}\t10", "expected"),
    (f"{H[:-1]}\t10\ta", "bad hash"),
    (f"{H}\t-1\ta", "bad hash or size"),
    (f"{H}\tten\ta", "invalid literal"),
    (f"{H}\t1\t/etc/passwd", "unsafe"),
    (f"{H}\t1\t../x", "unsafe"),
    (f"{H}\t1\ta/../../x", "unsafe"),
    (f"{H}\t1\t.nodewarden-quarantine/x", "reserved"),
    (f"{H}\t1\ta\\q", "bad escape"),
])
def test_manifest_rejects(line, why):
    with pytest.raises(ManifestError, match=f"m:2: .*{why}"):
        parse(f"# header\n{line}\n", "m")


def test_manifest_rejects_duplicates():
    with pytest.raises(ManifestError, match="m:3: duplicate"):
        parse(f"#\n{H}\t1\ta\n{H}\t1\ta\n", "m")


# ------------------------------------------------------------------ a dataset with two replicas

def make_dataset(tmp: Path, n: int, seed: int = 0) -> dict[str, str]:
    rng = random.Random(seed)
    data = tmp / "data"
    hashes = {}
    for i in range(n):
        rel = f"shard{i % 5}/part-{i:04d}.tar"
        p = data / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(rng.randbytes(rng.randint(1, 4000)))
        hashes[rel] = sha(p)
    write(str(data / DEFAULT_NAME), create(str(data)))
    for rep in ("rep1", "rep2"):
        shutil.copytree(data, tmp / rep, ignore=shutil.ignore_patterns(DEFAULT_NAME))
    return hashes


def plugin(tmp: Path, **kw) -> Restore:
    cfg = Config.model_validate({
        "state_dir": str(tmp / "state"), "rate_mb_s": None,
        "datasets": {"ds": {"root": str(tmp / "data"),
                            "replicas": [{"type": "local", "path": str(tmp / "rep1"), "name": "rep1"},
                                         {"path": str(tmp / "rep2"), "name": "rep2"}]}}})
    kw.setdefault("writers", lambda paths: {})
    return Restore(cfg, **kw)


def damage(tmp: Path, hashes: dict[str, str], rng: random.Random, n: int) -> dict[str, str]:
    """Delete or corrupt ``n`` files; returns rel -> 'missing' | 'corrupt'."""
    out = {}
    for rel in rng.sample(sorted(hashes), n):
        p = tmp / "data" / rel
        if rng.random() < 0.5:
            p.unlink()
            out[rel] = "missing"
        else:
            b = bytearray(p.read_bytes())
            b[len(b) // 2] ^= 0xFF            # one flipped byte, same size
            p.write_bytes(bytes(b))
            out[rel] = "corrupt"
    return out


def test_manifest_create_cli(tmp_path):
    hashes = make_dataset(tmp_path, 12)
    out = tmp_path / "m.manifest"
    res = subprocess.run([sys.executable, "-m", "agent.cli", "manifest", "create", str(tmp_path / "data"),
                          "-o", str(out)], capture_output=True, text=True, timeout=60,
                         env={**os.environ, "PYTHONPATH": str(REPO)})
    assert res.returncode == 0, res.stderr
    assert "12 files" in res.stdout
    m = parse(out.read_text())
    assert sorted(m) == sorted(hashes)          # the manifest written by make_dataset is not listed
    assert m == parse((tmp_path / "data" / DEFAULT_NAME).read_text())
    bad = subprocess.run([sys.executable, "-m", "agent.cli", "manifest", "create", str(tmp_path / "nope")],
                         capture_output=True, text=True, timeout=60, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert bad.returncode == 2


def test_scrubber_counts_and_metrics(tmp_path):
    hashes = make_dataset(tmp_path, 30)
    broken = damage(tmp_path, hashes, random.Random(5), 6)
    (tmp_path / "data" / "not-in-manifest").write_bytes(b"ignored")
    ds = plugin(tmp_path).config.datasets["ds"]
    slept = []
    res = Scrubber(ds, rate_mb_s=0.01, sleep=slept.append).run()     # 10 kB/s: throttled
    assert res.counts() == {"ok": 24, "missing": sum(v == "missing" for v in broken.values()),
                            "corrupt": sum(v == "corrupt" for v in broken.values())}
    assert dict(res.damaged()) == broken
    assert slept and res.bytes > 0
    samples = {(s.name, s.labels): s.value for s in integrity_samples(res)}
    assert samples[("nodewarden_integrity_files", (("dataset", "ds"), ("state", "ok")))] == 24
    assert {s.name for s in integrity_samples(res)} <= {m.name for m in METRICS}


def test_restore_uses_first_agreeing_replica_and_quarantines(tmp_path):
    hashes = make_dataset(tmp_path, 20)
    broken = damage(tmp_path, hashes, random.Random(7), 6)
    corrupt = sorted(r for r, s in broken.items() if s == "corrupt")
    missing = sorted(r for r, s in broken.items() if s == "missing")
    # rep1 disagrees with the manifest on every damaged file: same size, other bytes (or gone)
    for rel in broken:
        p = tmp_path / "rep1" / rel
        p.write_bytes(bytes(len(p.read_bytes())))
    (tmp_path / "rep1" / missing[0]).unlink()
    m = plugin(tmp_path)
    plan = m.plan(None, Params(dataset="ds"))
    assert sorted(map(tuple, plan.params["files"])) == sorted(broken.items())
    assert not plan.reversible
    damaged_bytes = {rel: (tmp_path / "data" / rel).read_bytes() for rel in corrupt}
    out = m.apply(plan)
    assert f"restored {len(broken)} files" in out.output
    assert "replica rep1 disagrees with the manifest (hash); not used" in out.output
    assert f"{missing[0]}: replica rep1 has no copy" in out.output
    for rel, digest in hashes.items():
        assert sha(tmp_path / "data" / rel) == digest
    quarantined = sorted(p.read_bytes() for p in (tmp_path / "data" / ".nodewarden-quarantine").iterdir())
    assert quarantined == sorted(damaged_bytes.values())
    assert m.verify(plan)
    mism = {s.labels: s.value for s in m.samples() if s.name == "nodewarden_restore_replica_mismatch_total"}
    assert mism[(("dataset", "ds"), ("replica", "rep1"))] == len(broken) - 1
    assert Scrubber(m.config.datasets["ds"]).run().counts() == {"ok": 20, "missing": 0, "corrupt": 0}


def test_no_agreeing_replica_fails_and_keeps_the_damaged_file(tmp_path):
    hashes = make_dataset(tmp_path, 5)
    rel = sorted(hashes)[0]
    p = tmp_path / "data" / rel
    p.write_bytes(b"x" + p.read_bytes()[1:])
    for rep in ("rep1", "rep2"):
        (tmp_path / rep / rel).write_bytes(p.read_bytes())        # both replicas carry the damage
    m = plugin(tmp_path)
    with pytest.raises(Exception, match="unrepaired 1"):
        m.apply(m.plan(None, Params(dataset="ds", paths=rel)))
    assert p.read_bytes()[:1] == b"x"                               # not replaced by a wrong copy
    assert not list((tmp_path / "data").rglob(f"{TMP_PREFIX}*"))


def test_local_source_refuses_escapes(tmp_path):
    src = LocalSource(str(tmp_path))
    with pytest.raises(ValueError):
        src.locate("../etc/passwd")
    assert src.locate("nope") is None


# ------------------------------------------------------------------ kill -9 during restores

N_FILES = 150
TRIALS = 25


def _restore_child(tmp: Path) -> None:
    try:
        journal = Journal(str(tmp / "state"))
        rem = Remediator(Policy(), journal, {"restore": plugin(tmp)}, mode="enforce")
        entry = rem.act("restore", {"dataset": "ds"}, apply=True)
        os._exit(0 if entry.status == "succeeded" else 1)
    except BaseException:
        os._exit(2)


def _run(tmp: Path, delay: float | None) -> tuple[float, bool]:
    start = time.monotonic()
    pid = os.fork()
    if pid == 0:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 1)
            os.dup2(null.fileno(), 2)
        _restore_child(tmp)
    if delay is not None:
        time.sleep(delay)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    _, status = os.waitpid(pid, 0)
    if delay is None:
        assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
    return time.monotonic() - start, os.WIFSIGNALED(status)


def _check(tmp: Path, hashes: dict[str, str], broken: dict[str, str], damaged: dict[str, bytes]) -> None:
    journal = Journal(str(tmp / "state"))
    try:
        Remediator(Policy(), journal, {"restore": plugin(tmp)}, mode="enforce").recover()
        entries = [e for e in journal if e.action == "restore"]
    finally:
        journal.close()
    data = tmp / "data"
    assert not list(tmp.rglob(f"{TMP_PREFIX}*"))
    assert all(e.status == "succeeded" for e in entries) and len(entries) <= 1
    for rel, digest in hashes.items():
        p = data / rel
        if entries or broken.get(rel) != "missing":
            assert p.is_file(), rel
        if entries or rel not in broken:
            assert sha(p) == digest, rel                            # restored (or never damaged)
        for rep in ("rep1", "rep2"):
            assert sha(tmp / rep / rel) == digest                   # replicas are only read
    qdir = data / ".nodewarden-quarantine"
    kept = {p.read_bytes() for p in qdir.iterdir()} if qdir.exists() else set()
    for rel, old in damaged.items():
        # the damaged copy is either still in place or kept in quarantine: never lost
        assert old in kept or (data / rel).read_bytes() == old, rel
    log = tmp / "state" / "restore.steps"
    ops = StepLog(str(log)).ops() if log.exists() else {}
    assert all(o["step"] in ("done", "rolledback", "skipped", "failed") for o in ops.values())
    for o in ops.values():
        if o["step"] == "done":
            assert sha(Path(o["dst"])) == hashes[str(Path(o["dst"]).relative_to(data))]


def test_kill9_during_restore_loses_nothing(tmp_path):
    rng = random.Random(8)
    clean = None
    killed = 0
    for i in range(TRIALS + 1):
        trial = tmp_path / "t"
        shutil.rmtree(trial, ignore_errors=True)
        trial.mkdir()
        hashes = make_dataset(trial, N_FILES, seed=i)
        broken = damage(trial, hashes, random.Random(i), N_FILES // 2)
        damaged = {r: (trial / "data" / r).read_bytes() for r, s in broken.items() if s == "corrupt"}
        if clean is None:
            clean, _ = _run(trial, None)        # first: an uninterrupted run sets the window
        else:
            killed += _run(trial, rng.uniform(0.0, clean))[1]
        _check(trial, hashes, broken, damaged)
    assert killed >= TRIALS // 2                # most trials really interrupted the restore


@pytest.mark.privileged
def test_quarantine_on_another_filesystem_gets_a_copy(tmp_path):
    require_root()
    hashes = make_dataset(tmp_path, 6)
    rel = sorted(hashes)[1]
    p = tmp_path / "data" / rel
    damaged = b"!" + p.read_bytes()[1:]
    p.write_bytes(damaged)
    q = tmp_path / "q"
    q.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(q)], check=True, timeout=30)
    try:
        cfg = plugin(tmp_path).config.model_dump()
        cfg["datasets"]["ds"]["quarantine"] = str(q)
        m = Restore(Config.model_validate(cfg), writers=lambda paths: {})
        m.apply(m.plan(None, Params(dataset="ds")))
        assert sha(p) == hashes[rel]
        kept = list(q.iterdir())
        assert [k.read_bytes() for k in kept] == [damaged] and not kept[0].name.startswith(TMP_PREFIX)
    finally:
        subprocess.run(["umount", "-l", str(q)], check=True, timeout=30)
