"""Never down, never stuck (issue 12, daemon part): reloads that fail for any reason keep the old state, rule
files are parsed outside the tick lock, recovery runs in the background, a reload leaves running actions
alone, one process per state dir, and ``act`` recovers first.

In-process daemons use a real HTTP server, a real journal and a real plugin registered through an entry point
(``SlowPlugin`` below, whose apply/recover wait for the test); end-to-end tests run ``nodewarden run``.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import threading
import urllib.request
from pathlib import Path
from typing import Any, Literal

import pytest
from pydantic import BaseModel, ConfigDict

from agent.core.alerts import Alert
from agent.core.config import Config
from agent.core.plugin import Entry, Outcome, ParamsModel, Plan
from agent.daemon import Daemon
from agent.remediation.journal import Journal
from tests.agentproc import NODEWARDEN, AgentProcess, sample_value, wait_for

GATES: dict[str, threading.Event] = {}  # plugin dir -> released when the test says so


class SlowParams(ParamsModel):
    name: str = "x"


class SlowConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    dir: str
    block: Literal["apply", "recover", "none"] = "apply"


class SlowPlugin:
    """Appends ``apply``/``recover`` lines to DIR/log; blocks in the configured hook until its gate opens."""

    NAME = "slow"
    Params = SlowParams
    Config = SlowConfig

    def __init__(self, config: SlowConfig, **_: Any) -> None:
        if not os.path.isdir(config.dir):
            raise RuntimeError(f"{config.dir} does not exist")
        self.config = config
        self.gate = GATES.setdefault(config.dir, threading.Event())

    def _log(self, what: str) -> None:
        with open(os.path.join(self.config.dir, "log"), "a") as fh:
            fh.write(what + "\n")

    def plan(self, alert: Alert | None, params: SlowParams) -> Plan:
        return Plan(action=self.NAME, target=f"thing/{params.name}", params=params.model_dump(),
                    changes=[f"touch {params.name}"], reversible=True, scope="local")

    def apply(self, plan: Plan) -> Outcome:
        self._log("apply")
        if self.config.block == "apply":
            self.gate.wait(60)
        return Outcome("done")

    def verify(self, plan: Plan) -> bool:
        return True

    def revert(self, plan: Plan) -> Outcome:
        return Outcome("reverted")

    def recover(self, entry: Entry) -> str:
        self._log("recover")
        if self.config.block == "recover":
            self.gate.wait(60)
        return "succeeded"


@pytest.fixture
def slow_plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Register SlowPlugin as the ``slow`` remediation entry point; returns its dir."""
    dist = tmp_path / "dist"
    info = dist / "nodewarden_slow_test-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: nodewarden-slow-test\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[nodewarden.remediations]\nslow = tests.test_hardening_daemon:SlowPlugin\n")
    monkeypatch.syspath_prepend(str(dist))
    d = tmp_path / "slow"
    d.mkdir()
    yield d
    GATES.pop(str(d), threading.Event()).set()


def log_lines(d: Path) -> list[str]:
    p = d / "log"
    return p.read_text().split() if p.exists() else []


def make_daemon(tmp_path: Path, policy: str | None = None, rules: str | None = None, **cfg: Any) -> Daemon:
    data: dict[str, Any] = {"interval": "1s", "listen": "127.0.0.1:0", "state_dir": str(tmp_path / "state"),
                            "rule_files": [], "remediation_policy": None, **cfg}
    if rules is not None:
        (tmp_path / "r.yml").write_text(rules)
        data["rule_files"] = [str(tmp_path / "r.yml")]
    if policy is not None:
        (tmp_path / "policy.yml").write_text(policy)
        data["remediation_policy"] = str(tmp_path / "policy.yml")
    path = tmp_path / "config.yml"
    path.write_text(json.dumps(data))
    from agent.core import config as configmod

    return Daemon(configmod.load_file(path), config_path=str(path), collector_factory=lambda c: ([], {}))


def metric(d: Daemon, name: str) -> float | None:
    with urllib.request.urlopen(f"http://127.0.0.1:{d.server.port}/metrics", timeout=5) as r:
        return sample_value(r.read().decode(), name)


def healthz(d: Daemon) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{d.server.port}/healthz", timeout=5) as r:
            return r.status
    except urllib.error.HTTPError as err:
        return err.code


# ---------------------------------------------------------------- reload


def test_reload_keeps_old_state_on_any_load_failure(tmp_path: Path) -> None:
    d = make_daemon(tmp_path, rules="groups:\n- name: g\n  rules:\n  - record: one\n    expr: vector(1)\n")
    def factory(cfg: Config):
        raise RuntimeError("NVML exploded")

    d.collector_factory = factory
    d.start()
    try:
        wait_for(lambda: d.health.ticks >= 1, what="first tick")
        before = d.components
        assert d.reload() is False  # RuntimeError in the load phase: reported, not raised
        assert d.components is before and d.reload_ok == 0.0
        (tmp_path / "r.yml").write_text("groups: !!python/object/apply:os.system ['true']\n")
        d.collector_factory = lambda c: ([], {})
        assert d.reload() is False
        assert [r.name for gs in d.rules.groups for r in gs.group.rules] == ["one"]
        ticks = d.health.ticks
        wait_for(lambda: d.health.ticks > ticks, what="ticks after failed reloads")
        assert metric(d, "nodewarden_config_last_reload_successful") == 0.0
        (tmp_path / "r.yml").write_text("groups:\n- name: g\n  rules:\n  - record: two\n    expr: vector(2)\n")
        assert d.reload() is True
        wait_for(lambda: metric(d, "nodewarden_config_last_reload_successful") == 1.0, what="reload ok")
    finally:
        d.stop()


def test_rule_files_are_parsed_outside_the_tick_lock(tmp_path: Path) -> None:
    d = make_daemon(tmp_path, rules="groups:\n- name: g\n  rules:\n  - record: one\n    expr: vector(1)\n")
    entered, release = threading.Event(), threading.Event()
    from agent.engine.promql import compile_expr

    def slow_compile(text: str):
        entered.set()
        release.wait(30)
        return compile_expr(text)

    d.start()
    result: list[bool] = []
    try:
        wait_for(lambda: d.health.ticks >= 1, what="first tick")
        d.rules.compiler = slow_compile
        t = threading.Thread(target=lambda: result.append(d.reload()))
        t.start()
        assert entered.wait(10)
        ticks = d.health.ticks
        wait_for(lambda: d.health.ticks >= ticks + 2, timeout=20, what="ticks while the rule file is parsed")
        assert healthz(d) == 200
        release.set()
        t.join(30)
        assert result == [True]
    finally:
        release.set()
        d.stop()


# ---------------------------------------------------------------- recovery and running actions


def test_recovery_runs_in_the_background(tmp_path: Path, slow_plugin: Path) -> None:
    policy = f"plugins:\n  slow: {{dir: {slow_plugin}, block: recover}}\n"
    j = Journal(str(tmp_path / "state"))
    eid = j.add(op="apply", action="slow", status="started", mode="enforce", target="thing/x",
                plan=Plan(action="slow", target="thing/x", params={"name": "x"}, changes=[], reversible=True))
    j.close()
    sock_path = tmp_path / "n.sock"
    import socket

    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(sock_path))
    sock.settimeout(0.5)
    from agent.serve.systemd import Notifier

    d = make_daemon(tmp_path, policy=policy)
    d.notifier = Notifier({"NOTIFY_SOCKET": str(sock_path)})
    starter = threading.Thread(target=d.start)
    starter.start()
    try:
        starter.join(20)
        assert not starter.is_alive(), "start() waited for recovery"
        wait_for(lambda: log_lines(slow_plugin) == ["recover"], what="recovery started")
        got: list[str] = []

        def ready() -> bool:
            with contextlib.suppress(TimeoutError):
                got.extend(sock.recv(4096).decode().splitlines())
            return "READY=1" in got

        wait_for(ready, timeout=20, what="READY=1 while recovery runs")
        assert healthz(d) == 200 and d.recovering
        assert metric(d, "nodewarden_remediation_recovering") == 1.0
        GATES[str(slow_plugin)].set()
        wait_for(lambda: metric(d, "nodewarden_remediation_recovering") == 0.0, what="recovery done")
        assert d.remediator.journal.get(eid).status == "succeeded"
    finally:
        GATES[str(slow_plugin)].set()
        starter.join(20)
        d.stop()
        sock.close()


SLOW_RULES = "groups:\n- name: g\n  rules:\n  - alert: Hot\n    expr: vector(1)\n"
SLOW_POLICY = """\
defaults: {{mode: enforce, cooldown: 1h}}
routes:
  - name: hot
    matchers: ['alertname="Hot"']
    steps: [{{action: slow, params: {{name: x}}}}]
plugins:
  slow: {{dir: {dir}, block: apply}}
"""


def test_sighup_while_an_action_runs_leaves_it_alone(tmp_path: Path, slow_plugin: Path) -> None:
    d = make_daemon(tmp_path, policy=SLOW_POLICY.format(dir=slow_plugin), rules=SLOW_RULES, mode="enforce")
    d.start()
    try:
        wait_for(lambda: log_lines(slow_plugin) == ["apply"], what="the action to start")
        old = d.remediator
        (tmp_path / "policy.yml").write_text(SLOW_POLICY.format(dir=slow_plugin).replace("cooldown: 1h",
                                                                                         "cooldown: 2h"))
        ticks = d.health.ticks
        assert d.reload() is True
        wait_for(lambda: d.health.ticks >= ticks + 2, what="ticks after the reload")
        assert d.remediator is old and old.in_progress() == 1  # the running action's remediator stays
        assert healthz(d) == 200
        GATES[str(slow_plugin)].set()
        wait_for(lambda: d.remediator is not old, what="the new policy to take over once idle")
        wait_for(lambda: not d.recovering, what="the new remediator's recovery")
        assert log_lines(slow_plugin) == ["apply"]  # never re-run or recovered by a second mover
        assert d.remediator.policy.defaults.cooldown == 7200.0
        assert d.remediator.journal.started() == []
    finally:
        GATES[str(slow_plugin)].set()
        d.stop()


def test_a_plugin_the_policy_names_that_cannot_load_fails_the_policy(tmp_path: Path, slow_plugin: Path) -> None:
    from agent.core.errors import ConfigError

    with pytest.raises(ConfigError, match=r"plugins\.slow\.block"):  # settings fail its Config model
        make_daemon(tmp_path, policy=f"plugins:\n  slow: {{dir: {slow_plugin}, block: sideways}}\n")
    with pytest.raises(ConfigError, match=r"plugin 'slow' cannot load: .*does not exist"):  # construction fails
        make_daemon(tmp_path, policy=f"plugins:\n  slow: {{dir: {slow_plugin}/nope}}\n")


# ---------------------------------------------------------------- one process per state dir; act recovers


def test_second_instance_names_the_pid_and_exits(tmp_path: Path) -> None:
    with AgentProcess(tmp_path, {"interval": "1s", "rule_files": [], "remediation_policy": None,
                                 "collectors": {"gpu": {"enabled": False}}}) as agent:
        second = AgentProcess(tmp_path, None)
        cmd = [*NODEWARDEN, "run", "--listen", f"127.0.0.1:{second.port}", "--state-dir", str(tmp_path / "state"),
               "--config", str(agent.config_path)]
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=60, cwd=tmp_path, check=False)
        assert res.returncode == 1
        assert f"in use by another nodewarden (PID {agent.proc.pid}" in res.stderr
        res = subprocess.run([*NODEWARDEN, "act", "--state-dir", str(tmp_path / "state"), "--policy", "/dev/null",
                              "rebalance", "node=x"], capture_output=True, text=True, timeout=60, cwd=tmp_path,
                             check=False)
        assert res.returncode == 1 and f"PID {agent.proc.pid}" in res.stderr, res.stderr
        assert agent.get("/healthz")[0] == 200


def test_act_recovers_first(tmp_path: Path, slow_plugin: Path) -> None:
    state = tmp_path / "state"
    j = Journal(str(state))
    eid = j.add(op="apply", action="slow", status="started", mode="enforce", target="thing/x",
                plan=Plan(action="slow", target="thing/x", params={"name": "x"}, changes=[], reversible=True))
    j.close()
    policy = tmp_path / "p.yml"
    policy.write_text(f"plugins:\n  slow: {{dir: {slow_plugin}, block: none}}\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path / "dist"), str(Path(__file__).parents[1])])}
    res = subprocess.run([*NODEWARDEN, "act", "--state-dir", str(state), "--policy", str(policy), "slow", "name=y",
                          "--apply", "--json"], capture_output=True, text=True, timeout=60, env=env, check=False)
    assert res.returncode == 0, res.stderr
    assert log_lines(slow_plugin) == ["recover", "apply"]  # the interrupted one first, then the new one
    j = Journal(str(state))
    try:
        assert j.get(eid).status == "succeeded"
    finally:
        j.close()


# ---------------------------------------------------------------- a real daemon through SIGHUP


@pytest.mark.timeout(240)
def test_sighup_with_bad_files_keeps_the_daemon_up(tmp_path: Path) -> None:
    rules = tmp_path / "r.yml"
    good = "groups:\n- name: g\n  rules:\n  - alert: Kept\n    expr: vector(1)\n"
    rules.write_text(good)
    cfg = {"interval": "1s", "rule_files": ["r.yml"], "remediation_policy": None,
           "collectors": {"gpu": {"enabled": False}}}
    with AgentProcess(tmp_path, cfg) as agent:
        good_config = agent.config_path.read_text()
        laughs = "".join(['a: &a ["x","x","x","x","x","x","x","x","x"]\n',
                          *(f"{chr(98 + i)}: &{chr(98 + i)} [{','.join(['*' + chr(97 + i)] * 9)}]\n"
                            for i in range(8))])
        bad_inputs = [
            (rules, b"groups: !!python/object/apply:os.system ['true']\n"),
            (rules, b"groups:\n- name: \xff\n"),
            (agent.config_path, good_config.encode() + b"hostname: caf\xe9\n"),
            (agent.config_path, laughs.encode()),
            (agent.config_path, good_config.encode() + b"interval: 99999999999999999999y\n"),
        ]
        for n, (path, data) in enumerate(bad_inputs, 1):
            path.write_bytes(data)
            agent.signal(signal.SIGHUP)
            wait_for(lambda n=n: agent.log().count("reload_failed") >= n, timeout=60, what=f"bad input {n}")
            assert agent.proc.poll() is None, agent.log()
            wait_for(lambda: sample_value(agent.metrics(), "nodewarden_config_last_reload_successful") == 0.0,
                     what="reload_successful 0 on /metrics")
            status, body = agent.get("/api/v1/rules")
            assert status == 200 and b"Kept" in body
            rules.write_text(good)
            agent.config_path.write_text(good_config)
        assert "Traceback" not in agent.log()
        agent.signal(signal.SIGHUP)
        wait_for(lambda: sample_value(agent.metrics(), "nodewarden_config_last_reload_successful") == 1.0,
                 timeout=30, what="a good reload")
        assert agent.get("/healthz")[0] == 200
