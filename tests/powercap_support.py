"""kill -9 driver for the powercap crash test: ``python tests/powercap_support.py DIR PHASE`` (before|after|recover).

The simulated GPUs keep their settings in DIR/hw.json (as real GPUs keep a power limit across agent restarts).
In ``before`` / ``after`` the power-limit call touches DIR/in_set_PHASE and stalls (before or after the
limit changed) so the test can kill the process there; ``recover`` is the restarted agent: recover, print the
limit, revert the cap by hand, print the limit again.
"""

from __future__ import annotations

import os
import sys
import time

if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from agent.collectors import simulate
from agent.collectors.fakenvml import FakeNvml
from agent.core.alerts import Alert
from agent.remediation.journal import Journal
from agent.remediation.policy import load_policy_text
from agent.remediation.remediator import Remediator
from remediations.powercap import Config, PowerCap

POLICY = """
defaults: {mode: enforce, cooldown: 1h}
routes:
  - name: hot
    matchers: ['alertname="GpuTemperatureHigh"']
    steps:
      - action: powercap
        params: {gpu: "{{ $labels.gpu }}", fraction: "0.7"}
"""


class StallingNvml(FakeNvml):
    """Stalls in nvmlDeviceSetPowerManagementLimit, before or after the change, after touching a marker."""

    def __init__(self, directory: str, phase: str) -> None:
        super().__init__(simulate.load("h100-healthy"), state_path=os.path.join(directory, "hw.json"))
        self.directory, self.phase = directory, phase

    def nvmlDeviceSetPowerManagementLimit(self, handle, limit_mw):
        if self.phase == "before":
            open(os.path.join(self.directory, "in_set_before"), "w").close()
            time.sleep(60)
        super().nvmlDeviceSetPowerManagementLimit(handle, limit_mw)
        if self.phase == "after":
            open(os.path.join(self.directory, "in_set_after"), "w").close()
            time.sleep(60)


def main(directory: str, phase: str) -> int:
    nv = StallingNvml(directory, phase)
    state = os.path.join(directory, "state")
    plugin = PowerCap(Config(node_name="n1"), nvml=nv, state_dir=state)
    journal = Journal(state)
    rem = Remediator(load_policy_text(POLICY), journal, {"powercap": plugin}, mode="enforce")
    if phase == "recover":
        rem.recover()
        print(f"limit after recover {nv.devices[1].values['power_limit_w']:g}", flush=True)
        applied = next(e for e in journal if e.op == "apply" and e.status == "succeeded")
        rem.revert_entry(applied.id)
        print(f"limit after revert {nv.devices[1].values['power_limit_w']:g}", flush=True)
        rem.close(5.0)
        journal.close()
        return 0
    alert = Alert(labels={"alertname": "GpuTemperatureHigh", "gpu": "1"}, annotations={}, state="firing",
                  active_at=time.time(), value=90.0)
    for _ in range(600):
        rem.on_tick([alert], time.time())
        time.sleep(0.05)
    return 1  # the test kills us before this


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
