"""Network protocol counters from ``/proc/net/{netstat,snmp,snmp6}`` (node_exporter's netstat collector).

Every ``Protocol: Field`` pair whose ``Protocol_Field`` the ``fields`` regex selects (node_exporter's default:
TCP/UDP/IP/ICMP errors, ListenDrops/Overflows, SYN cookies, retransmits, timeouts...) is exported as the
untyped ``node_netstat_<Protocol>_<Field>``, as node_exporter does.
"""

from __future__ import annotations

from pydantic import Field

from agent.collectors.common import read_all
from agent.core.config import CollectorConfig, Regex
from agent.core.errors import CollectorError
from agent.core.metrics import MetricSpec, Sample
from agent.core.paths import Paths
from agent.core.regex import compile_unanchored

NAME = "netstat"
DEFAULT_FIELDS = (
    r"^(.*_(InErrors|InErrs)|Ip_Forwarding|Ip(6|Ext)_(InOctets|OutOctets)|Icmp6?_(InMsgs|OutMsgs)|TcpExt_(Listen.*|"
    r"Syncookies.*|TCPSynRetrans|TCPTimeouts|TCPOFOQueue|TCPRcvQDrop)|Tcp_(ActiveOpens|InSegs|OutSegs|OutRsts|"
    r"PassiveOpens|RetransSegs|CurrEstab)|Udp6?_(InDatagrams|OutDatagrams|NoPorts|RcvbufErrors|SndbufErrors))$"
)

# The fields the default selects on a current kernel (the catalogue).
FIELDS: tuple[tuple[str, str], ...] = (
    ("Icmp6", "InErrors"), ("Icmp6", "InMsgs"), ("Icmp6", "OutMsgs"), ("Icmp", "InErrors"), ("Icmp", "InMsgs"),
    ("Icmp", "OutMsgs"), ("Ip6", "InOctets"), ("Ip6", "OutOctets"), ("IpExt", "InOctets"), ("IpExt", "OutOctets"),
    ("Ip", "Forwarding"), ("TcpExt", "ListenDrops"), ("TcpExt", "ListenOverflows"), ("TcpExt",
    "SyncookiesFailed"), ("TcpExt", "SyncookiesRecv"), ("TcpExt", "SyncookiesSent"), ("TcpExt", "TCPOFOQueue"),
    ("TcpExt", "TCPRcvQDrop"), ("TcpExt", "TCPSynRetrans"), ("TcpExt", "TCPTimeouts"), ("Tcp", "ActiveOpens"),
    ("Tcp", "CurrEstab"), ("Tcp", "InErrs"), ("Tcp", "InSegs"), ("Tcp", "OutRsts"), ("Tcp", "OutSegs"), ("Tcp",
    "PassiveOpens"), ("Tcp", "RetransSegs"), ("Udp6", "InDatagrams"), ("Udp6", "InErrors"), ("Udp6", "NoPorts"),
    ("Udp6", "OutDatagrams"), ("Udp6", "RcvbufErrors"), ("Udp6", "SndbufErrors"), ("UdpLite6", "InErrors"),
    ("UdpLite", "InErrors"), ("Udp", "InDatagrams"), ("Udp", "InErrors"), ("Udp", "NoPorts"), ("Udp",
    "OutDatagrams"), ("Udp", "RcvbufErrors"), ("Udp", "SndbufErrors"),
)

METRICS: list[MetricSpec] = [
    MetricSpec(f"node_netstat_{proto}_{field}", "untyped", f"Statistic {proto}{field}.") for proto, field in FIELDS
]


def parse_snmp(text: str) -> dict[str, dict[str, int]]:
    """``/proc/net/snmp`` or ``netstat`` (header line + value line per protocol) to {protocol: {field: value}}."""
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


def parse_snmp6(text: str) -> dict[str, dict[str, int]]:
    """``/proc/net/snmp6`` (``Ip6InReceives 7`` lines) to {``Ip6``: {``InReceives``: 7}} (split after the '6')."""
    out: dict[str, dict[str, int]] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) < 2:
            continue
        six = parts[0].find("6")
        if six < 0:
            continue
        try:
            out.setdefault(parts[0][: six + 1], {})[parts[0][six + 1 :]] = int(parts[1])
        except ValueError:
            continue
    return out


class NetstatConfig(CollectorConfig):
    """Protocol counters (node_exporter netstat)."""

    fields: Regex = Field(DEFAULT_FIELDS, description="regex of Protocol_Field names to export (node_exporter's)")


class NetstatCollector:
    """``node_netstat_*`` for the selected protocol counters."""

    NAME = NAME
    Config = NetstatConfig
    metrics = METRICS

    def __init__(self, config: NetstatConfig, paths: Paths, **_deps: object) -> None:
        self.name = NAME
        self._paths = paths
        self._wanted = compile_unanchored(config.fields)   # RE2, as Go
        self._names: dict[tuple[str, str], str | None] = {}  # (proto, field) -> metric name, None = not wanted

    def _read(self, name: str, parse, missing_ok: bool) -> dict[str, dict[str, int]]:
        path = self._paths.proc("net", name)
        try:
            return parse(read_all(path).decode("ascii", "replace"))
        except FileNotFoundError as err:
            if missing_ok:
                return {}
            raise CollectorError(f"cannot read {path}: {err.strerror}") from err
        except OSError as err:
            raise CollectorError(f"cannot read {path}: {err.strerror}") from err
        except ValueError as err:
            raise CollectorError(f"{path}: {err}") from err

    def collect(self) -> list[Sample]:
        """One round: netstat, snmp and snmp6 (absent without IPv6), filtered by ``fields``."""
        stats = self._read("netstat", parse_snmp, True)
        stats.update(self._read("snmp", parse_snmp, False))
        stats.update(self._read("snmp6", parse_snmp6, True))
        names = self._names
        if len(names) > 4096:
            names.clear()
        out = []
        for proto, values in stats.items():
            for field, value in values.items():
                key = (proto, field)
                name = names.get(key, "")
                if name == "":
                    name = names[key] = (f"node_netstat_{proto}_{field}"
                                         if self._wanted.search(f"{proto}_{field}") else None)
                if name is not None:
                    out.append(Sample(name, (), float(value)))
        return out
