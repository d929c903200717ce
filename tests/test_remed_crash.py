"""kill -9 between ``started`` and ``succeeded``: on restart ``recover()`` finishes the action exactly once.

A child process runs the remediator through its public pieces (tests/remed_support.py ``driver``); the test
kills it with SIGKILL while the action is in flight, either before or after the change took effect, then
starts it again.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agent.remediation.journal import Journal

SUPPORT = Path(__file__).with_name("remed_support.py")


def _wait_for(cond, what: str, timeout: float = 30.0) -> None:
    end = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > end:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.05)


def _started_rows(state: Path) -> int:
    if not (state / "remediations.sqlite").exists():
        return 0
    j = Journal(str(state))
    try:
        return sum(1 for e in j if e.status == "started")
    finally:
        j.close()


@pytest.mark.parametrize("phase", ["before", "after"])
def test_kill9_between_started_and_succeeded(tmp_path, phase):
    state, marks = tmp_path / "state", tmp_path / "marks"
    marks.mkdir()
    mark = marks / "m_0"
    child = subprocess.Popen([sys.executable, str(SUPPORT), str(state), str(marks), phase],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        if phase == "before":   # intent journaled, change not yet made
            _wait_for(lambda: _started_rows(state) == 1, "the started row")
        else:                   # change made, outcome not yet journaled
            _wait_for(mark.exists, "the marker file")
            assert _started_rows(state) == 1
        os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=10)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(timeout=10)
    assert mark.exists() == (phase == "after")

    done = subprocess.run([sys.executable, str(SUPPORT), str(state), str(marks), "recover"], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    journal = Journal(str(state))
    rows = [e for e in journal if e.op == "apply"]
    assert [(e.status, e.reason) for e in rows] == [("succeeded", "recovered")]
    assert mark.read_text().splitlines() == ["applied"]    # the change happened exactly once
