"""Test support for the remediation tests: a real (file-writing) plugin and a crash-test driver.

``Marker`` appends one line per apply to ``<dir>/<name>`` and removes the file on revert, so tests can count
exactly how many times an action took effect. Run as a script it is the kill -9 driver::

    python tests/remed_support.py STATE_DIR MARK_DIR PHASE   # PHASE: before|after|recover
"""

from __future__ import annotations

import os
import sys
import time
from typing import Literal

from pydantic import BaseModel, ConfigDict

if __name__ == "__main__":  # run as a script: make the checkout importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import contextlib

from agent.core.alerts import Alert
from agent.core.errors import RemediationError
from agent.core.plugin import Entry, Outcome, ParamsModel, Plan, default_recover


class MarkerParams(ParamsModel):
    name: str
    delay: float = 0.0
    phase: Literal["before", "after"] = "before"   # sleep before or after the change takes effect
    fail: bool = False


class MarkerConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    dir: str
    crash_delay: float = 0.0                      # extra sleep, set by the kill -9 driver
    crash_phase: Literal["before", "after"] = "before"


class Marker:
    NAME = "marker"
    Params = MarkerParams
    Config = MarkerConfig

    def __init__(self, config: MarkerConfig, **_) -> None:
        self.name = self.NAME
        self.dir = config.dir
        self.config = config

    def _path(self, plan: Plan) -> str:
        return os.path.join(self.dir, plan.params["name"])

    def plan(self, alert: Alert | None, params: MarkerParams) -> Plan:
        if not params.name.isidentifier():
            raise RemediationError(f"bad name {params.name!r}")
        return Plan(action=self.NAME, target=f"file/{params.name}", params=params.model_dump(),
                    changes=[f"append a line to {params.name}"], reversible=True, scope="node")

    def apply(self, plan: Plan) -> Outcome:
        if plan.params["fail"]:
            raise RemediationError("asked to fail")
        if plan.params["phase"] == "before":
            time.sleep(plan.params["delay"])
        if self.config.crash_phase == "before":
            time.sleep(self.config.crash_delay)
        with open(self._path(plan), "a") as f:
            f.write("applied\n")
            f.flush()
            os.fsync(f.fileno())
        if plan.params["phase"] == "after":
            time.sleep(plan.params["delay"])
        if self.config.crash_phase == "after":
            time.sleep(self.config.crash_delay)
        return Outcome(f"wrote {plan.params['name']}", {"was": "absent"})

    def verify(self, plan: Plan) -> bool:
        return os.path.exists(self._path(plan))

    def revert(self, plan: Plan) -> Outcome:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._path(plan))
        return Outcome("removed")

    def recover(self, entry: Entry) -> str:
        return default_recover(self, entry)


POLICY = """
defaults:
  mode: enforce
  cooldown: 1h
routes:
  - name: xid
    matchers: ['alertname="GpuXid"']
    steps:
      - action: marker
        params: {name: "m_{{ $labels.gpu }}"}
"""


def driver(state_dir: str, mark_dir: str, phase: str) -> int:
    """One daemon life: recover, then tick with a firing alert until the action finishes (or we are killed)."""
    from agent.remediation.journal import Journal
    from agent.remediation.policy import load_policy_text
    from agent.remediation.remediator import Remediator

    policy = load_policy_text(POLICY)
    marker = Marker(MarkerConfig(dir=mark_dir, crash_delay=0 if phase == "recover" else 60,
                                 crash_phase="after" if phase == "after" else "before"))
    rem = Remediator(policy, Journal(state_dir), {"marker": marker}, mode="enforce")
    rem.recover()
    alert = Alert(labels={"alertname": "GpuXid", "gpu": "0"}, annotations={}, state="firing", active_at=0.0,
                  value=79.0)
    for _ in range(50):
        rem.on_tick([alert], time.time())
        time.sleep(0.05)
    rem.close(5.0)
    print("driver done", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(driver(*sys.argv[1:4]))
