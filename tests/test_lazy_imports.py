"""An agent loads only the native libraries its configuration uses (issue 16's memory work): with the embedded
defaults no bcrypt (no basic-auth users) and no blake3 (no protected dataset); with basic-auth users, bcrypt is
loaded by the first check. Seen from outside, in the running agent's /proc/PID/maps."""

from __future__ import annotations

import base64
from pathlib import Path

import bcrypt

from tests.agentproc import AgentProcess, fixture_config, wait_for
from tests.trees import build_scaled_tree


def mapped(agent: AgentProcess) -> set[str]:
    """Names of the shared objects (``.so``) mapped into the agent."""
    assert agent.proc is not None
    lines = Path(f"/proc/{agent.proc.pid}/maps").read_text().splitlines()
    return {Path(line.split()[-1]).name.split(".")[0] for line in lines if ".so" in line.rsplit("/", 1)[-1]}


def answers(agent: AgentProcess, status: int) -> bool:
    try:
        return agent.get("/metrics")[0] == status
    except OSError:  # not listening yet
        return False


def test_defaults_load_neither_bcrypt_nor_blake3(tmp_path):
    tree = build_scaled_tree(tmp_path / "tree", disks=2, nics=1, ib_ports=0)
    with AgentProcess(tmp_path, fixture_config(tree)) as agent:
        agent.metrics()
        maps = mapped(agent)
        assert "_pydantic_core" in maps  # the check sees the agent's native libraries at all
        assert "_bcrypt" not in maps and "blake3" not in maps


def test_basic_auth_loads_bcrypt_on_the_first_check(tmp_path):
    tree = build_scaled_tree(tmp_path / "tree", disks=2, nics=1, ib_ports=0)
    web = tmp_path / "web.yml"
    web.write_text(f"basic_auth_users:\n  prom: '{bcrypt.hashpw(b'pw', bcrypt.gensalt(rounds=4)).decode()}'\n")
    agent = AgentProcess(tmp_path, fixture_config(tree), args=["--web.config.file", str(web)]).start(wait=False)
    try:
        wait_for(lambda: answers(agent, 401), what="the agent answering (401 without credentials)")
        assert "_bcrypt" not in mapped(agent)  # refusing a request without credentials needs no bcrypt
        token = base64.b64encode(b"prom:pw").decode()
        assert agent.get("/metrics", headers={"Authorization": f"Basic {token}"})[0] == 200
        assert "_bcrypt" in mapped(agent)
    finally:
        agent.stop()
