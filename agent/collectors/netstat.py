"""TCP retransmission counters from ``/proc/net/snmp`` (node_exporter netstat names)."""

from __future__ import annotations

from agent.collectors.common import read_all
from agent.core.config import CollectorConfig
from agent.core.errors import CollectorError
from agent.core.metrics import MetricSpec, Sample
from agent.core.paths import Paths

NAME = "netstat"

# (protocol, field) pairs exported as node_netstat_<protocol>_<field>, untyped as in node_exporter
FIELDS: tuple[tuple[str, str], ...] = (("Tcp", "RetransSegs"), ("Tcp", "OutSegs"))

METRICS: list[MetricSpec] = [
    MetricSpec(f"node_netstat_{proto}_{field}", "untyped", f"Statistic {proto}{field}.") for proto, field in FIELDS
]


def parse_snmp(text: str) -> dict[str, dict[str, int]]:
    """``/proc/net/snmp`` (header line + value line per protocol) to {protocol: {field: value}}."""
    out: dict[str, dict[str, int]] = {}
    lines = text.splitlines()
    for header, values in zip(lines[::2], lines[1::2], strict=False):
        proto, _, names = header.partition(":")
        vproto, _, nums = values.partition(":")
        names_l, nums_l = names.split(), nums.split()
        if proto != vproto or len(names_l) != len(nums_l):
            raise ValueError(f"/proc/net/snmp: mismatched lines for {proto!r}")
        out[proto] = dict(zip(names_l, map(int, nums_l), strict=True))
    return out


class NetstatConfig(CollectorConfig):
    """TCP counters from /proc/net/snmp."""


class NetstatCollector:
    """TCP segments sent and retransmitted (the retransmit ratio is a classic fabric-health signal)."""

    NAME = NAME
    Config = NetstatConfig
    metrics = METRICS

    def __init__(self, config: NetstatConfig, paths: Paths, **_deps: object) -> None:
        self.name = NAME
        self._path = paths.proc("net", "snmp")
        self._wanted = [(spec.name, proto, field) for spec, (proto, field) in zip(METRICS, FIELDS, strict=True)]

    def collect(self) -> list[Sample]:
        """One round: the configured fields of /proc/net/snmp."""
        try:
            stats = parse_snmp(read_all(self._path).decode("ascii", "replace"))
        except OSError as err:
            raise CollectorError(f"cannot read {self._path}: {err.strerror}") from err
        except ValueError as err:
            raise CollectorError(str(err)) from err
        out = []
        for name, proto, field in self._wanted:
            value = stats.get(proto, {}).get(field)
            if value is not None:
                out.append(Sample(name, (), float(value)))
        return out
