"""The host objects of a simulation scenario (``node:`` keys and timeline ``host:`` changes): their kinds, fields
and defaults, and the validation of object names and field values.

:mod:`agent.collectors.nodesim` keeps their state and renders the procfs/sysfs files the real collectors read.
"""

from __future__ import annotations

from typing import Any

# Host objects (``node:`` keys ``KIND/NAME``; InfiniBand ``ib/DEVICE/PORT``; TCP is the single object ``tcp``):
# kind -> {field: default}. Counters are floats the simulator integrates from ``rate`` (per second).
HOST_KINDS: dict[str, dict[str, Any]] = {
    "nic": {"rx_bytes": 0, "rx_packets": 0, "rx_errs": 0, "rx_drop": 0, "tx_bytes": 0, "tx_packets": 0,
            "tx_errs": 0, "tx_drop": 0, "up": 1, "carrier_changes": 2, "speed_mbps": 100000},
    "tcp": {"in_segs": 0, "out_segs": 0, "retrans_segs": 0},
    "disk": {"reads": 0, "read_sectors": 0, "read_ms": 0, "writes": 0, "write_sectors": 0, "write_ms": 0,
             "io_now": 0, "io_ms": 0, "weighted_ms": 0, "major": 259, "minor": 0},
    "fs": {"device": "/dev/nvme0n1p1", "fstype": "ext4", "size_bytes": 1 << 40, "avail_bytes": 1 << 39,
           "files": 1 << 26, "files_free": 1 << 25, "readonly": 0, "hang": 0},
    "clock": {"synced": 1, "offset_ns": 20000, "maxerror_us": 150000, "esterror_us": 50},
    "ib": {"state": 4, "phys_state": 5, "rate_gbps": 400, "port_rcv_data": 0, "port_xmit_data": 0,
           "port_rcv_packets": 0, "port_xmit_packets": 0, "port_xmit_wait": 0, "link_downed": 0,
           "link_error_recovery": 0, "symbol_error": 0, "port_rcv_errors": 0, "port_rcv_discards": 0,
           "port_xmit_discards": 0, "np_ecn_marked_roce_packets": 0, "rp_cnp_handled": 0, "np_cnp_sent": 0,
           "out_of_buffer": 0},
}
_TEXT_FIELDS = {"device", "fstype"}


def host_kind(key: str) -> str:
    """The kind of a host object key (``nic/eth0`` -> ``nic``); ValueError when malformed."""
    kind, _, rest = key.partition("/")
    if kind not in HOST_KINDS:
        raise ValueError(f"unknown host object {key!r} (kinds: {', '.join(HOST_KINDS)}; e.g. nic/eth0, "
                         "disk/nvme0n1, fs//data, ib/mlx5_0/1, tcp)")
    parts = rest.split("/") if rest else []
    if kind in ("tcp", "clock"):
        ok = not parts
    elif kind == "ib":
        ok = len(parts) == 2 and all(parts) and parts[1].isdigit()
    elif kind == "fs":
        ok = rest.startswith("/")
    else:
        ok = len(parts) == 1 and bool(parts[0]) and parts[0] not in (".", "..")
    if not ok:
        raise ValueError(f"malformed host object name {key!r}")
    return kind


def check_fields(kind: str, fields: dict[str, Any], where: str) -> None:
    for name, value in fields.items():
        if name not in HOST_KINDS[kind]:
            raise ValueError(f"{where}: unknown {kind} field {name!r} (known: {', '.join(HOST_KINDS[kind])})")
        if name in _TEXT_FIELDS:
            if not isinstance(value, str):
                raise ValueError(f"{where}.{name}: expected text")
        elif isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{where}.{name}: expected a number")

