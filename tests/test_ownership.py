"""Ownership is user data: migrate and restore never re-own a user's file to root.

The real thing, as root: a child process runs with exactly the capability bounding set of the shipped unit
(``systemd/nodewarden.service``: no CAP_CHOWN) and a seccomp filter that fails the chown family with EPERM
(what its ``SystemCallFilter=~@privileged`` does), then with the shipped drop-in's capabilities added
(``systemd/nodewarden.service.d/remediate-files.conf``), with and without that filter (x86_64 syscall
numbers). Without the drop-in, or with its capabilities but still under the filter, the safe-copy core fails
the file (left as it was) and the migrate route is refused and journaled with the reason; with it, files move
with their owners. The drop-in's syscall allow-list is checked against systemd's own group definitions.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from remediations.safecopy import can_chown
from tests.conftest import require_binary, require_root

REPO = Path(__file__).resolve().parent.parent
UNIT = REPO / "systemd" / "nodewarden.service"
DROP_IN = REPO / "systemd" / "nodewarden.service.d" / "remediate-files.conf"
OWNER = (1234, 2345)

CHILD = r"""
import json, os, sys
if sys.argv[2] == "filter-chown":      # what SystemCallFilter=~@privileged does to the chown family
    import ctypes, struct
    blocked = [92, 93, 94, 260]        # x86_64: chown, fchown, lchown, fchownat (systemd's @chown there)
    prog = [(0x20, 0, 0, 4), (0x15, 1, 0, 0xC000003E), (0x06, 0, 0, 0x7FFF0000), (0x20, 0, 0, 0)]
    for i, nr in enumerate(blocked):   # jump to the EPERM return when the syscall number is one of them
        prog.append((0x15, len(blocked) - i, 0, nr))
    prog += [(0x06, 0, 0, 0x7FFF0000), (0x06, 0, 0, 0x00050000 | 1)]   # ALLOW; ERRNO(EPERM)
    buf = ctypes.create_string_buffer(b"".join(struct.pack("HBBI", *ins) for ins in prog))
    fprog = struct.pack("HL", len(prog), ctypes.addressof(buf))
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl.argtypes = [ctypes.c_int] + [ctypes.c_ulong] * 4
    assert libc.prctl(38, 1, 0, 0, 0) == 0                      # PR_SET_NO_NEW_PRIVS (NoNewPrivileges=yes)
    fp = ctypes.create_string_buffer(fprog)
    assert libc.prctl(22, 2, ctypes.addressof(fp), 0, 0) == 0   # PR_SET_SECCOMP, SECCOMP_MODE_FILTER
from agent.core.alerts import Alert
from agent.remediation.journal import Journal
from agent.remediation.policy import load_policy_text
from agent.remediation.remediator import Remediator
from remediations.migrate import Migrate
from remediations.safecopy import SafeMover, StepLog

tmp = sys.argv[1]
out = {}
res = SafeMover(StepLog(os.path.join(tmp, "state", "core.steps")), writers=lambda paths: {}).move(
    os.path.join(tmp, "one", "f.bin"), os.path.join(tmp, "one-dst", "f.bin"))
out["core"] = [res.status, res.reason]
policy = load_policy_text(f'''
defaults: {{mode: enforce, cooldown: 0s}}
plugins:
  migrate:
    state_dir: {tmp}/state
    rate_mb_s: null
    tiers:
      fast: {{path: {tmp}/fast}}
      capacity: {{path: {tmp}/cap}}
routes:
  - name: hot
    matchers: ['alertname="Hot"']
    steps:
      - action: migrate
        params: {{action: promote, paths: "ckpt"}}
''', "policy.yml", plugins={"migrate": Migrate})
journal = Journal(os.path.join(tmp, "state"))
cfg = Migrate.Config.model_validate(policy.plugins["migrate"])
plugin = Migrate(cfg, writers=lambda paths: {}, state_dir=os.path.join(tmp, "state"))
rem = Remediator(policy, journal, {"migrate": plugin}, mode="enforce")
rem.on_tick([Alert(labels={"alertname": "Hot"}, annotations={}, state="firing", active_at=0.0, value=1.0)], 100.0)
rem.close(30.0)
out["route"] = [[e.status, e.reason, e.output] for e in journal if e.op == "apply"]
journal.close()
print(json.dumps(out))
"""


def caps(unit: Path) -> list[str]:
    """The CapabilityBoundingSet= of a unit file, as setpriv names (cap_chown -> chown)."""
    out = []
    for line in unit.read_text().splitlines():
        if line.startswith("CapabilityBoundingSet="):
            out += [c.lower().removeprefix("cap_") for c in line.split("=", 1)[1].split()]
    return out


def run_child(tmp: Path, bounding: list[str], syscalls: str = "filter-chown") -> dict:
    setpriv = require_binary("setpriv")
    argv = [setpriv, "--bounding-set", ",".join(["-all", *(f"+{c}" for c in bounding)]), "--inh-caps", "-all",
            sys.executable, "-c", CHILD, str(tmp), syscalls]
    res = subprocess.run(argv, capture_output=True, text=True, timeout=120, cwd=REPO,
                         env={**os.environ, "PYTHONPATH": str(REPO)})
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout.splitlines()[-1])


def tree(tmp: Path) -> dict[str, bytes]:
    files = {"one/f.bin": b"one" * 1000, "cap/ckpt/a.pt": b"a" * 5000, "cap/ckpt/b.pt": b"b" * 7000}
    for rel, data in files.items():
        p = tmp / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
        os.chmod(p, 0o640)
        os.chown(p, *OWNER)
    os.chown(tmp / "cap" / "ckpt", *OWNER)
    (tmp / "fast").mkdir()
    (tmp / "one-dst").mkdir()
    return files


def owner(p: Path) -> tuple[int, int]:
    st = os.stat(p)
    return st.st_uid, st.st_gid


def test_without_the_drop_in_files_are_refused_not_reowned(tmp_path):
    require_root()
    files = tree(tmp_path)
    got = run_child(tmp_path, caps(UNIT))          # the unit's capabilities and its chown syscall filter
    status, reason = got["core"]
    assert status == "failed" and "cannot keep the owner 1234:2345: chown not permitted" in reason, got
    [[status, reason, output]] = got["route"]
    assert (status, reason) == ("skipped", "refused:ownership"), got
    assert "cannot keep file owners 1234:2345" in output and "remediate-files.conf" in output
    for rel, data in files.items():                         # every file where and as it was
        p = tmp_path / rel
        assert p.read_bytes() == data and owner(p) == OWNER and not p.is_symlink()
    assert not (tmp_path / "one-dst" / "f.bin").exists()
    assert not (tmp_path / "fast" / "ckpt").exists()
    leftovers = [p for p in tmp_path.rglob(".nwtmp.*")]
    assert leftovers == []


def test_capabilities_alone_are_not_enough_the_filter_is_seen(tmp_path):
    require_root()
    files = tree(tmp_path)
    got = run_child(tmp_path, caps(UNIT) + caps(DROP_IN), "filter-chown")   # a drop-in without @chown
    assert got["core"][0] == "failed" and "chown not permitted" in got["core"][1], got
    assert [r[:2] for r in got["route"]] == [["skipped", "refused:ownership"]], got
    assert all((tmp_path / rel).read_bytes() == data and owner(tmp_path / rel) == OWNER for rel, data in files.items())


def test_with_the_drop_in_files_move_with_their_owners(tmp_path):
    require_root()
    files = tree(tmp_path)
    got = run_child(tmp_path, caps(UNIT) + caps(DROP_IN), "allow-chown")   # the drop-in re-allows @chown
    assert got["core"] == ["done", ""], got
    assert [r[0] for r in got["route"]] == ["succeeded"], got
    moved = {"one/f.bin": "one-dst/f.bin", "cap/ckpt/a.pt": "fast/ckpt/a.pt", "cap/ckpt/b.pt": "fast/ckpt/b.pt"}
    for rel, new in moved.items():
        p = tmp_path / new
        assert p.read_bytes() == files[rel] and owner(p) == OWNER and (os.stat(p).st_mode & 0o777) == 0o640
    assert owner(tmp_path / "fast" / "ckpt") == OWNER          # the new directory too


def test_drop_in_allows_the_calls_the_unit_denies():
    analyze = require_binary("systemd-analyze")

    def group(name: str) -> set[str]:
        out = subprocess.run([analyze, "syscall-filter", name], capture_output=True, text=True, timeout=30,
                             check=True).stdout
        return {w.strip() for w in out.splitlines()[1:] if w.strip() and not w.strip().startswith("#")}

    unit = UNIT.read_text()
    assert "SystemCallFilter=~@privileged" in unit and "@chown" in group("@privileged")
    assert "SystemCallFilter=@chown" in DROP_IN.read_text() and {"fchown", "chown", "fchownat"} <= group("@chown")
    assert "chown" not in caps(UNIT) and {"chown", "fowner", "dac_override"} <= set(caps(DROP_IN))


def test_probe_sees_this_process():
    assert can_chown(os.geteuid(), os.getegid())
    if os.geteuid() == 0:
        assert can_chown(*OWNER)
