"""A third-party collector package used by the end-to-end tests (installed via a temp dist-info).

``HangCollector`` returns one sample, and blocks forever (like a driver stuck in D state) while the
file named by $NW_HANG_FILE exists.
"""

from __future__ import annotations

import os
import threading
import time

from agent.core.metrics import MetricSpec, Sample


class HangCollector:
    """Test double: hangs while $NW_HANG_FILE exists."""

    NAME = "hang"
    name = NAME
    metrics = [MetricSpec("nwtest_hang_calls_total", "counter", "Calls that returned.")]

    def __init__(self, config: object, paths: object, **_deps: object) -> None:
        self.calls = 0
        self._forever = threading.Event()

    def collect(self) -> list[Sample]:
        flag = os.environ.get("NW_HANG_FILE", "")
        if flag and os.path.exists(flag):
            while os.path.exists(flag):  # stuck until the test removes the file
                time.sleep(0.05)
        self.calls += 1
        return [Sample("nwtest_hang_calls_total", (), float(self.calls))]


def install(site: str) -> None:
    """Write a dist-info into ``site`` that registers HangCollector as collector ``hang``."""
    info = os.path.join(site, "nw_testplugins-0.0.dist-info")
    os.makedirs(info, exist_ok=True)
    with open(os.path.join(info, "METADATA"), "w") as fh:
        fh.write("Metadata-Version: 2.1\nName: nw-testplugins\nVersion: 0.0\n")
    with open(os.path.join(info, "entry_points.txt"), "w") as fh:
        fh.write("[nodewarden.collectors]\nhang = nw_testplugins:HangCollector\n")
