"""The Debian package, end to end: `packaging/deb/build.sh` (what `make deb` runs) builds it, lintian checks it,
dpkg installs it into a clean root (maintainer scripts included), the installed agent checks its config and
serves /metrics started exactly as its systemd unit starts it (in a chroot of that root), an upgrade keeps an
edited conffile, and purge cleans up.
"""

from __future__ import annotations

import shlex
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from agent.core.config import DEFAULT_RULE_FILES
from tests.conftest import free_port, require_binary, require_root

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


@pytest.fixture(scope="session")
def deb(tmp_path_factory) -> Path:
    """Build the package once per session (the wheel, the private venv from PyPI or pip's cache)."""
    require_binary("dpkg-deb")
    if not Path("/usr/bin/python3.11").exists():
        pytest.fail("/usr/bin/python3.11 (Debian's python3.11, the package's interpreter) is missing")
    out = tmp_path_factory.mktemp("deb")
    pip = Path(sys.executable).parent / "pip"
    proc = subprocess.run(["packaging/deb/build.sh", str(out)], cwd=REPO, capture_output=True, text=True,
                          timeout=900, env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "PIP": str(pip),
                                            "HOME": str(Path.home())})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return Path(proc.stdout.strip().splitlines()[-1])


def dpkg(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """dpkg on another root; maintainer scripts run outside a chroot with DPKG_ROOT set (deb-systemd-helper
    honours it), dependencies are the host's (the root has no Python of its own)."""
    return subprocess.run(["dpkg", f"--root={root}", "--force-script-chrootless", "--force-depends",
                           "--force-not-root", f"--log={root}/dpkg.log", *args],
                          capture_output=True, text=True, timeout=600)


def clean_root(path: Path) -> Path:
    for d in ("var/lib/dpkg/info", "var/lib/dpkg/updates", "var/log"):
        (path / d).mkdir(parents=True, exist_ok=True)
    for f in ("var/lib/dpkg/status", "var/lib/dpkg/available"):
        (path / f).touch()
    return path


def field(root: Path, name: str) -> str:
    return subprocess.run(["dpkg-query", f"--root={root}", "-W", "-f", f"${{{name}}}", "nodewarden"],
                          capture_output=True, text=True, timeout=60).stdout


@pytest.fixture(scope="session")
def installed(deb, tmp_path_factory) -> Path:
    require_root()
    root = clean_root(tmp_path_factory.mktemp("root"))
    proc = dpkg(root, "-i", str(deb))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return root


def test_lintian_is_clean(deb):
    lintian = require_binary("lintian")
    proc = subprocess.run([lintian, "--tag-display-limit", "0", "--fail-on", "error,warning", str(deb)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    info = subprocess.run(["dpkg-deb", "-I", str(deb)], capture_output=True, text=True, timeout=60).stdout
    assert "Package: nodewarden" in info and "python3.11" in info


def test_install_lays_out_files_conffiles_and_enables_the_unit(installed):
    root = installed
    assert field(root, "Status") == "install ok installed"
    conffiles = {line.split()[0] for line in field(root, "Conffiles").splitlines() if line.strip()}
    rules = {f"/etc/nodewarden/rules/{Path(f).name}" for f in DEFAULT_RULE_FILES}  # the whole default library
    assert conffiles == {"/etc/nodewarden/config.yml", "/etc/nodewarden/remediations.yml",
                         "/etc/default/nodewarden", *rules}
    assert (root / "usr/bin/nodewarden").resolve() == (root / "usr/lib/nodewarden/bin/nodewarden")
    unit = (root / "lib/systemd/system/nodewarden.service").read_text()
    assert "ExecStart=/usr/bin/nodewarden run --config /etc/nodewarden/config.yml $ARGS" in unit
    assert "EnvironmentFile=-/etc/default/nodewarden" in unit
    # postinst: enabled like node_exporter's package (deb-systemd-helper), bytecode compiled
    wants = root / "etc/systemd/system/multi-user.target.wants/nodewarden.service"
    assert wants.is_symlink() and str(wants.readlink()) == "/lib/systemd/system/nodewarden.service"
    assert list((root / "usr/lib/nodewarden/lib").rglob("agent/__pycache__/*.pyc"))
    assert (root / "var/lib/nodewarden").is_dir() and oct((root / "var/lib/nodewarden").stat().st_mode)[-3:] == "750"
    assert (root / "usr/share/man/man1/nodewarden.1.gz").exists()
    # no host site-packages: the venv carries every dependency itself
    assert (root / "usr/lib/nodewarden/pyvenv.cfg").read_text().count("include-system-site-packages = false") == 1


CHROOT = """
set -e
R="$1"; shift
mkdir -p "$R/proc" "$R/sys" "$R/dev" "$R/tmp" "$R/lib64" "$R/lib/x86_64-linux-gnu" \
         "$R/usr/lib/x86_64-linux-gnu" "$R/usr/lib/python3.11" "$R/etc"
touch "$R/usr/bin/python3.11" "$R/etc/ld.so.cache"
mount --bind /usr/bin/python3.11 "$R/usr/bin/python3.11"
mount --bind /usr/lib/python3.11 "$R/usr/lib/python3.11"
mount --bind /usr/lib/x86_64-linux-gnu "$R/usr/lib/x86_64-linux-gnu"
mount --bind /usr/lib/x86_64-linux-gnu "$R/lib/x86_64-linux-gnu"
mount --bind /usr/lib64 "$R/lib64"
mount --bind /etc/ld.so.cache "$R/etc/ld.so.cache"
mount --bind /dev "$R/dev"
mount -t proc proc "$R/proc"
mount --rbind /sys "$R/sys"
exec chroot "$R" "$@"
"""


def in_root(root: Path, *argv: str, **kw) -> subprocess.Popen | subprocess.CompletedProcess:
    """Run a command inside the installed root: host Python 3.11 and libc bound in, nothing else of the host."""
    cmd = ["unshare", "--mount", "--propagation", "private", "sh", "-c", CHROOT, "sh", str(root), *argv]
    if kw.pop("background", False):
        return subprocess.Popen(cmd, **kw)
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, **kw)


def test_installed_agent_checks_config_and_serves_metrics(installed):
    root = installed
    require_binary("unshare")
    check = in_root(root, "/usr/bin/nodewarden", "check", "config", "/etc/nodewarden/config.yml")
    assert check.returncode == 0, check.stdout + check.stderr
    rules = in_root(root, "/usr/bin/nodewarden", "check", "rules",
                    *(f"/etc/nodewarden/rules/{Path(f).name}" for f in DEFAULT_RULE_FILES),
                    "/etc/nodewarden/remediations.yml")
    assert rules.returncode == 0, rules.stdout + rules.stderr
    where = in_root(root, "/usr/lib/nodewarden/bin/python3", "-c", "import agent, pydantic; "
                    "print(agent.__file__); print(pydantic.__file__)")
    assert where.stdout.splitlines() == [
        "/usr/lib/nodewarden/lib/python3.11/site-packages/agent/__init__.py",
        "/usr/lib/nodewarden/lib/python3.11/site-packages/pydantic/__init__.py"], where.stderr
    # start it as the unit does (ExecStart, with ARGS from /etc/default/nodewarden), on a free port
    unit = (root / "lib/systemd/system/nodewarden.service").read_text()
    exec_start = next(line.split("=", 1)[1] for line in unit.splitlines() if line.startswith("ExecStart="))
    port = free_port()
    argv = [a for a in shlex.split(exec_start) if a != "$ARGS"] + ["--listen", f"127.0.0.1:{port}"]
    log = (root / "agent.log").open("w")
    agent = in_root(root, *argv, background=True, stdout=log, stderr=subprocess.STDOUT)
    try:
        body = ""
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and agent.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
                    body = resp.read().decode()
                if "nodewarden_last_tick_timestamp_seconds" in body:
                    break
            except OSError:
                pass
            time.sleep(0.3)
        assert 'nodewarden_build_info{version="0.1.0"' in body, (root / "agent.log").read_text()[-3000:]
        assert "node_disk_" in body or "node_network_" in body  # the host's /proc and /sys, read in the chroot
        page = urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5).read().decode()
        assert "<h2 id=\"collectors\">" in page
    finally:
        agent.terminate()
        agent.wait(15)
        log.close()
    assert (root / "var/lib/nodewarden").exists()  # the state dir the config names, inside the root


def test_upgrade_keeps_an_edited_conffile_and_purge_cleans_up(deb, tmp_path):
    require_root()
    root = clean_root(tmp_path / "root")
    assert dpkg(root, "-i", str(deb)).returncode == 0
    config = root / "etc/nodewarden/config.yml"
    config.write_text(config.read_text() + "# edited by the SRE\n")
    # the next revision: the same files, a newer version
    unpacked = tmp_path / "unpacked"
    subprocess.run(["dpkg-deb", "-R", str(deb), str(unpacked)], check=True, timeout=300)
    control = unpacked / "DEBIAN/control"
    control.write_text(control.read_text().replace("Version: 0.1.0-1", "Version: 0.1.0-2"))
    deb2 = tmp_path / "nodewarden_0.1.0-2.deb"
    subprocess.run(["dpkg-deb", "--root-owner-group", "-Zgzip", "-z1", "-b", str(unpacked), str(deb2)], check=True,
                   capture_output=True, timeout=600)
    up = dpkg(root, "-i", str(deb2))
    assert up.returncode == 0, up.stdout + up.stderr
    assert field(root, "Version") == "0.1.0-2"
    assert config.read_text().endswith("# edited by the SRE\n")  # kept, without a prompt
    assert (root / "etc/systemd/system/multi-user.target.wants/nodewarden.service").is_symlink()
    # remove keeps conffiles; purge removes them, the state dir and the enablement
    assert dpkg(root, "-r", "nodewarden").returncode == 0
    assert config.exists() and not (root / "usr/lib/nodewarden/bin").exists()
    assert dpkg(root, "-P", "nodewarden").returncode == 0
    assert not config.exists() and not (root / "var/lib/nodewarden").exists()
    assert not (root / "etc/systemd/system/multi-user.target.wants/nodewarden.service").exists()
