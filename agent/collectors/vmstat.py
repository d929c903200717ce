"""Virtual memory counters from ``/proc/vmstat`` (node_exporter's vmstat collector, untyped node_vmstat_*).

The ``fields`` regex is node_exporter's ``--collector.vmstat.fields`` (default ``^(oom_kill|pgpg|pswp|pg.*fault).*``,
matched with search semantics as Go's MatchString).
"""

from __future__ import annotations

import re

from pydantic import Field

from agent.collectors.common import read_all
from agent.core.config import CollectorConfig, Regex
from agent.core.errors import CollectorError, NoData
from agent.core.metrics import MetricSpec, Sample
from agent.core.paths import Paths
from agent.core.regex import compile_unanchored

NAME = "vmstat"
DEFAULT_FIELDS = r"^(oom_kill|pgpg|pswp|pg.*fault).*"
# The fields the default regex selects on a current kernel (the catalogue; other fields are exported too).
KNOWN = ("oom_kill", "pgfault", "pgmajfault", "pgpgin", "pgpgout", "pswpin", "pswpout")
METRICS = [MetricSpec(f"node_vmstat_{f}", "untyped", f"/proc/vmstat information field {f}.") for f in KNOWN]


def parse_vmstat(text: str, wanted: re.Pattern[str]) -> list[tuple[str, float]]:
    """(field, value) of every ``name value`` line whose name the regex selects."""
    out = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2 and wanted.search(parts[0]):
            try:
                out.append((parts[0], float(int(parts[1]))))
            except ValueError:
                continue
    return out


class VmstatConfig(CollectorConfig):
    """/proc/vmstat counters (node_exporter vmstat)."""

    fields: Regex = Field(DEFAULT_FIELDS, description="regex of /proc/vmstat fields to export")


class VmstatCollector:
    """``node_vmstat_<field>`` for the selected fields."""

    NAME = NAME
    Config = VmstatConfig
    metrics = METRICS

    def __init__(self, config: VmstatConfig, paths: Paths, **_deps: object) -> None:
        self.name = NAME
        self._path = paths.proc("vmstat")
        self._wanted = compile_unanchored(config.fields)   # RE2, as Go
        self._names: dict[str, str] = {}

    def collect(self) -> list[Sample]:
        """One round."""
        try:
            text = read_all(self._path).decode("ascii", "replace")
        except FileNotFoundError as err:  # not Linux, or a fixture tree without it
            raise NoData(f"no {self._path}") from err
        except OSError as err:
            raise CollectorError(f"cannot read {self._path}: {err.strerror}") from err
        names = self._names
        out = []
        for field, value in parse_vmstat(text, self._wanted):
            name = names.get(field)
            if name is None:
                name = names[field] = f"node_vmstat_{field}"
            out.append(Sample(name, (), value))
        return out
