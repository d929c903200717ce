"""The host objects of a simulation scenario (``node:`` keys and timeline ``host:`` changes): their kinds, fields
and defaults, and the validation of object names and field values.

:mod:`agent.collectors.nodesim` keeps their state and renders the procfs/sysfs files the real collectors read.
"""

from __future__ import annotations

import re
from typing import Any

# Host objects: ``node:`` keys ``KIND/NAME`` (``nic/eth0``, ``disk/nvme0n1``, ``fs//data``), InfiniBand
# ``ib/DEVICE/PORT``, CPU packages ``cpu/N``, hwmon sensors ``hwmon/CHIP/tempN``, EDAC memory controllers
# ``edac/mcN``, and the single objects ``tcp``, ``clock``, ``mem``, ``psi``, ``vmstat``, ``load``.
# kind -> {field: default}. Counters are floats the simulator integrates from ``rate`` (per second).
HOST_KINDS: dict[str, dict[str, Any]] = {
    "nic": {"rx_bytes": 0, "rx_packets": 0, "rx_errs": 0, "rx_drop": 0, "tx_bytes": 0, "tx_packets": 0,
            "tx_errs": 0, "tx_drop": 0, "up": 1, "carrier_changes": 2, "speed_mbps": 100000},
    # Tcp (proc/net/snmp) and TcpExt (proc/net/netstat) counters
    "tcp": {"in_segs": 0, "out_segs": 0, "retrans_segs": 0, "listen_overflows": 0, "listen_drops": 0,
            "syncookies_sent": 0, "syncookies_recv": 0, "syncookies_failed": 0, "tcp_timeouts": 0,
            "syn_retrans": 0, "rcvq_drop": 0, "ofo_queue": 0},
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
    # proc/meminfo (a 2 TB HGX node, no swap)
    "mem": {"total_bytes": 2_163_000_000_000, "available_bytes": 1_650_000_000_000,
            "free_bytes": 1_050_000_000_000, "cached_bytes": 560_000_000_000, "buffers_bytes": 9_000_000_000,
            "shmem_bytes": 40_000_000_000, "dirty_bytes": 60_000_000, "swap_total_bytes": 0, "swap_free_bytes": 0},
    # proc/pressure/{cpu,memory,io,irq}: total stall seconds; a rate is the fraction of time stalled (0-1)
    "psi": {"cpu_some": 0, "memory_some": 0, "memory_full": 0, "io_some": 0, "io_full": 0, "irq_full": 0},
    # proc/vmstat counters
    "vmstat": {"oom_kill": 0, "pgfault": 0, "pgmajfault": 0, "pgpgin": 0, "pgpgout": 0, "pswpin": 0,
               "pswpout": 0},
    # proc/loadavg: load1/5/15 follow ``runnable`` with the kernel's 1/5/15-minute exponential decay
    "load": {"runnable": 8, "load1": 8, "load5": 8, "load15": 8, "threads": 3200},
    # one CPU package: proc/stat times (``user``... are fractions of each CPU's time; idle is the rest) and
    # sys/devices/system/cpu/cpuN/{topology,thermal_throttle} (package_throttles, core_throttles: counters)
    "cpu": {"cores": 56, "threads": 2, "user": 0.08, "nice": 0, "system": 0.03, "iowait": 0.002, "irq": 0,
            "softirq": 0.004, "steal": 0, "package_throttles": 0, "core_throttles": 0},
    # one hwmon temperature sensor (degrees C); crit_alarm reads 1 when set or when input reaches crit
    "hwmon": {"input_c": 45, "max_c": 84, "crit_c": 100, "crit_alarm": 0, "label": ""},
    # one EDAC memory controller: errors attributed to (csrow, channel), and the unattributed noinfo ones
    "edac": {"ce_count": 0, "ue_count": 0, "ce_noinfo_count": 0, "ue_noinfo_count": 0, "csrows": 2,
             "channels": 2, "csrow": 0, "channel": 0},
}
SINGLE = ("tcp", "clock", "mem", "psi", "vmstat", "load")
_TEXT_FIELDS = {"device", "fstype", "label"}
_CHIP = re.compile(r"^[A-Za-z0-9_.:-]+$")


def host_kind(key: str) -> str:
    """The kind of a host object key (``nic/eth0`` -> ``nic``); ValueError when malformed."""
    kind, _, rest = key.partition("/")
    if kind not in HOST_KINDS:
        raise ValueError(f"unknown host object {key!r} (kinds: {', '.join(HOST_KINDS)}; e.g. nic/eth0, "
                         "disk/nvme0n1, fs//data, ib/mlx5_0/1, cpu/0, hwmon/coretemp.0/temp1, edac/mc0, tcp, mem)")
    parts = rest.split("/") if rest else []
    if kind in SINGLE:
        ok = not parts
    elif kind == "ib":
        ok = len(parts) == 2 and all(parts) and parts[1].isdigit()
    elif kind == "fs":
        ok = rest.startswith("/")
    elif kind == "cpu":
        ok = len(parts) == 1 and parts[0].isdigit()
    elif kind == "hwmon":
        ok = len(parts) == 2 and bool(_CHIP.match(parts[0])) and parts[0] not in (".", "..") and \
            re.fullmatch(r"temp[1-9][0-9]*", parts[1]) is not None
    elif kind == "edac":
        ok = len(parts) == 1 and re.fullmatch(r"mc[0-9]+", parts[0]) is not None
    else:
        ok = len(parts) == 1 and bool(parts[0]) and parts[0] not in (".", "..")
    if not ok:
        raise ValueError(f"malformed host object name {key!r}")
    return kind


def check_fields(kind: str, fields: dict[str, Any], where: str) -> None:
    """ValueError naming ``where`` for a field the kind does not have or a value of the wrong type."""
    for name, value in fields.items():
        if name not in HOST_KINDS[kind]:
            raise ValueError(f"{where}: unknown {kind} field {name!r} (known: {', '.join(HOST_KINDS[kind])})")
        if name in _TEXT_FIELDS:
            if not isinstance(value, str):
                raise ValueError(f"{where}.{name}: expected text")
        elif isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{where}.{name}: expected a number")

