"""Persistence of pending/firing alerts to a JSON file (temp file, fsync, rename), so a restart neither
resets ``for`` timers nor fires again."""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
from collections.abc import Callable, Iterable
from typing import Any

from agent.core.errors import RuleError
from agent.engine.rules.alerting import ActiveAlert, label_key
from agent.engine.rules.evaluate import RuleState
from agent.engine.rules.model import GroupDef

STATE_VERSION = 1


class StateFile:
    """The alert state file; remembers what it last wrote so an unchanged snapshot is not rewritten."""

    def __init__(self, path: str, clock: Callable[[], float] = time.time) -> None:
        self.path = path
        self.clock = clock
        self.last: Any = None

    def write(self, snap: dict[str, Any]) -> None:
        """Atomically replace the file with ``snap`` (plus ``saved_at``); RuleError on an OS error."""
        directory = os.path.dirname(os.path.abspath(self.path))
        try:
            os.makedirs(directory, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".alerts-", suffix=".tmp", dir=directory)
            try:
                with os.fdopen(fd, "w", encoding="utf-8") as fh:
                    json.dump({**snap, "saved_at": self.clock()}, fh, sort_keys=True)
                    fh.flush()
                    os.fsync(fh.fileno())
                os.replace(tmp, self.path)
            except BaseException:
                if os.path.exists(tmp):
                    os.unlink(tmp)
                raise
            dfd = os.open(directory, os.O_RDONLY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
        except OSError as err:
            raise RuleError(f"{self.path}: cannot save alert state: {err.strerror}") from err
        self.last = snap

    def write_if_changed(self, snap: dict[str, Any]) -> None:
        """Write ``snap`` unless it equals what was last written or read."""
        if snap != self.last:
            self.write(snap)

    def read(self) -> dict[tuple, list[dict[str, Any]]] | None:
        """Alerts by (file, group, rule identity); None when there is no file or another version wrote it."""
        if not os.path.exists(self.path):
            return None
        try:
            with open(self.path, encoding="utf-8") as fh:
                data = json.load(fh)
        except (OSError, ValueError) as err:
            raise RuleError(f"{self.path}: cannot read alert state: {err}") from err
        if not isinstance(data, dict) or data.get("version") != STATE_VERSION:
            return None
        out: dict[tuple, list[dict[str, Any]]] = {}
        for entry in data.get("rules", []):
            key = (entry["file"], entry["group"], _identity_tuple(entry["identity"]))
            out[key] = entry["alerts"]
        return out


def snapshot(states: Iterable[tuple[GroupDef, RuleState]]) -> dict[str, Any]:
    """The persisted form of every pending/firing alert."""
    rules = []
    for g, rs in states:
        alerts = [{"labels": a.labels, "annotations": a.annotations, "state": a.state, "active_at": a.active_at,
                   "fired_at": a.fired_at, "keep_firing_since": a.keep_firing_since,
                   "value": a.value if math.isfinite(a.value) else str(a.value)}
                  for a in rs.active.values() if a.state in ("pending", "firing")]
        if alerts:
            rules.append({"file": g.file, "group": g.name, "identity": _identity_json(rs.rule.identity),
                          "alerts": alerts})
    return {"version": STATE_VERSION, "rules": rules}


def restore_alerts(items: list[dict[str, Any]]) -> dict[tuple, ActiveAlert]:
    """Alert instances from their persisted form."""
    out = {}
    for it in items:
        a = ActiveAlert(labels=dict(it["labels"]), annotations=dict(it["annotations"]), state=it["state"],
                        active_at=float(it["active_at"]), value=float(it["value"]), fired_at=it.get("fired_at"),
                        keep_firing_since=it.get("keep_firing_since"))
        out[label_key(a.labels)] = a
    return out


def _identity_json(identity: tuple) -> list[Any]:
    kind, name, expr, for_, kff, labels, annotations = identity
    return [kind, name, expr, for_, kff, [list(x) for x in labels], [list(x) for x in annotations]]


def _identity_tuple(data: list[Any]) -> tuple:
    kind, name, expr, for_, kff, labels, annotations = data
    return (kind, name, expr, float(for_), float(kff), tuple(tuple(x) for x in labels),
            tuple(tuple(x) for x in annotations))
