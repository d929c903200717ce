"""The first hour with nodewarden, as a new user meets it: each rough edge from the README, through the CLI."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
from pathlib import Path

import pytest

from tests.agentproc import NODEWARDEN, AgentProcess, fixture_config, wait_for, write_yaml
from tests.trees import build_scaled_tree

REPO = Path(__file__).resolve().parents[1]


def nodewarden(*argv: str, cwd: Path | str = REPO, env: dict[str, str] | None = None,
               **kw) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*NODEWARDEN, *argv], cwd=cwd, capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})}, **kw)


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    return build_scaled_tree(tmp_path / "tree", disks=2, nics=2, ib_ports=1)


# -- `| head -1` ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("argv", [["simulate", "--list"], ["check", "rules", "rules/gpu.yml", "rules/network.yml"]])
def test_a_closed_pipe_ends_quietly(argv):
    """The reader is gone before the first write (what `| head -1` does, without the race)."""
    r, w = os.pipe()
    os.close(r)
    try:
        proc = subprocess.run([*NODEWARDEN, *argv], cwd=REPO, stdout=w, stderr=subprocess.PIPE, text=True,
                              timeout=60)
    finally:
        os.close(w)
    assert "Traceback" not in proc.stderr and "BrokenPipeError" not in proc.stderr, proc.stderr
    assert proc.returncode == 141  # 128 + SIGPIPE, as a C tool killed by the closed pipe reports


def test_head_dash_one_in_a_shell_pipeline():
    cmd = " ".join(NODEWARDEN) + " simulate --list | head -1"
    proc = subprocess.run(["bash", "-c", cmd], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and len(proc.stdout.splitlines()) == 1
    assert proc.stderr == ""


# -- act parameters -------------------------------------------------------------------------------------------
def test_act_throttle_without_params_asks_for_the_documented_form(tmp_path):
    proc = nodewarden("act", "throttle", "--state-dir", str(tmp_path / "s"), cwd=tmp_path)
    assert proc.returncode == 2
    assert "rate=" in proc.stderr and "dport=" in proc.stderr
    assert "classes\n" not in proc.stderr and "Field required" not in proc.stderr
    assert "pydantic" not in proc.stderr


@pytest.mark.parametrize("params,expected", [
    (["device=lo", "rate=abc", "dport=5001"], "  rate: not a rate: 'abc'"),
    (["device=lo", "rate=20Mbit", "dport=5001", "colour=red"], "  colour: unknown parameter"),
])
def test_act_bad_params_are_one_line_each_without_pydantic_text(tmp_path, params, expected):
    proc = nodewarden("act", "throttle", *params, "--state-dir", str(tmp_path / "s"), cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: bad params for throttle:\n")
    assert expected in proc.stderr
    assert "errors.pydantic.dev" not in proc.stderr and "input_type" not in proc.stderr


def test_act_throttle_documented_form_plans(tmp_path):
    proc = nodewarden("act", "throttle", "device=lo", "rate=20Mbit", "dport=5001", "--state-dir",
                      str(tmp_path / "s"), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "-> planned" in proc.stdout


# -- the default policy outside the repository ----------------------------------------------------------------
def test_act_works_outside_the_repository(tmp_path):
    """No rules/ in the working directory: an empty policy (the plugins' defaults), not a read error."""
    proc = nodewarden("act", "rebalance", "gpu=1", "reason=test", "--json", "--state-dir", str(tmp_path / "s"),
                      cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["status"] == "planned"


def test_act_takes_the_policy_of_the_config(tmp_path):
    """$NODEWARDEN_CONFIG (like /etc/nodewarden/config.yml) names the policy, relative to the config's directory."""
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "policy.yml").write_text("plugins:\n  rebalance: {backend: slurm, node_name: nw42}\n"
                                                 "routes: []\n")
    cfg = write_yaml(tmp_path / "etc" / "config.yml",
                     {"state_dir": str(tmp_path / "state"), "remediation_policy": "policy.yml"})
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    proc = nodewarden("act", "rebalance", "gpu=1", "reason=test", "--json", cwd=elsewhere,
                      env={"NODEWARDEN_CONFIG": str(cfg)})
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["target"] == "node/nw42"
    assert (tmp_path / "state").is_dir()  # the config's state dir, not ./var
    explicit = nodewarden("act", "rebalance", "--policy", "nope.yml", cwd=elsewhere,
                          env={"NODEWARDEN_CONFIG": str(cfg)})
    assert explicit.returncode == 2 and "nope.yml:1:1: cannot read policy" in explicit.stderr


# -- status --listen, and a second agent on a busy port -------------------------------------------------------
def test_status_takes_listen_like_run(tmp_path, tree):
    with AgentProcess(tmp_path, fixture_config(tree)) as agent:
        proc = nodewarden("status", "--listen", f"127.0.0.1:{agent.port}")
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.startswith("nodewarden ") and "healthy" in proc.stdout
        assert f"127.0.0.1:{agent.port}" in proc.stdout
    bad = nodewarden("status", "--listen", "nonsense")
    assert bad.returncode == 2 and "--listen" in bad.stderr


def test_a_busy_port_says_what_to_do(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        proc = nodewarden("run", "--listen", f"127.0.0.1:{port}", "--state-dir", str(tmp_path / "s"), cwd=tmp_path)
    assert proc.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}: address already in use" in proc.stderr
    assert "--listen" in proc.stderr and "Traceback" not in proc.stderr


def test_readme_simulate_example_does_not_collide_with_make_run():
    """`make run` holds 127.0.0.1:9842 and ./var; the README's second agent must use neither."""
    readme = (REPO / "README.md").read_text()
    examples = re.findall(r"`([^`]*nodewarden run --simulate h100-[^`]*)`", readme)  # runnable ones
    assert examples
    for ex in examples:
        assert "--listen" in ex and "9842" not in ex, ex
        assert "--state-dir" in ex and "--state-dir ./var " not in ex + " ", ex


# -- GpuLost drain reason -------------------------------------------------------------------------------------
SCENARIO = """
name: lost-now
description: GPU 0 is lost from the first tick.
gpu_count: 2
gpu: {gpu_util: 90, fb_used_mib: 50000, temperature: 50, power_w: 550}
timeline:
  - {at: 0s, gpu: 0, lost: true}
"""


def test_gpu_lost_drain_reason_has_no_empty_label(tmp_path, tree):
    (tmp_path / "lost.yml").write_text(SCENARIO)
    cfg = fixture_config(tree, rule_files=[str(REPO / "rules" / "gpu.yml")],
                         remediation_policy=str(REPO / "rules" / "remediations.yml"))
    with AgentProcess(tmp_path, cfg, args=["--simulate", str(tmp_path / "lost.yml")]):
        def planned():
            proc = nodewarden("history", "--json", "--state-dir", str(tmp_path / "state"))
            rows = [e for e in json.loads(proc.stdout or "[]") if e["alertname"] == "GpuLost"]
            return rows
        rows = wait_for(planned, timeout=30, what="a GpuLost plan in the journal")
    assert rows[0]["route"] == "gpu-lost"
    reason = rows[0]["plan"]["params"]["reason"]
    assert reason == "nodewarden: GpuLost gpu=0"
    assert not re.search(r"\w=(\s|$)", reason)
