"""The text of the procfs/sysfs files a simulated host object stands for (pure functions, no I/O).

Each function takes an object's field values (see :data:`agent.collectors.simhost.HOST_KINDS`) and returns
file texts keyed by their path relative to the simulation directory (``proc/...``, ``sys/...``), in the
formats the kernel writes and the real collectors parse. :class:`agent.collectors.nodesim.NodeSim` keeps the
state over time and writes what changed.
"""

from __future__ import annotations

import re
from typing import Any

Values = dict[str, Any]
Files = dict[str, str]

IB_COUNTERS = ("port_rcv_data", "port_xmit_data", "port_rcv_packets", "port_xmit_packets", "port_xmit_wait",
               "link_downed", "link_error_recovery", "symbol_error", "port_rcv_errors", "port_rcv_discards",
               "port_xmit_discards")
IB_HW_COUNTERS = ("np_ecn_marked_roce_packets", "rp_cnp_handled", "np_cnp_sent", "out_of_buffer")
IB_STATES = {1: "DOWN", 2: "INIT", 3: "ARMED", 4: "ACTIVE", 5: "ACTIVE_DEFER"}
IB_PHYS = {1: "Sleep", 2: "Polling", 3: "Disabled", 4: "PortConfigurationTraining", 5: "LinkUp",
           6: "LinkErrorRecovery", 7: "Phy Test"}
TCP_FIELDS = ("RtoAlgorithm", "RtoMin", "RtoMax", "MaxConn", "ActiveOpens", "PassiveOpens", "AttemptFails",
              "EstabResets", "CurrEstab", "InSegs", "OutSegs", "RetransSegs", "InErrs", "OutRsts", "InCsumErrors")
# /proc/net/netstat TcpExt columns in the kernel's order; the simulated counters by column
_TCPEXT = (
    "SyncookiesSent SyncookiesRecv SyncookiesFailed EmbryonicRsts PruneCalled RcvPruned OfoPruned OutOfWindowIcmps "
    "LockDroppedIcmps ArpFilter TW TWRecycled TWKilled PAWSActive PAWSEstab DelayedACKs DelayedACKLocked "
    "DelayedACKLost ListenOverflows ListenDrops TCPHPHits TCPPureAcks TCPHPAcks TCPRenoRecovery TCPSackRecovery "
    "TCPSACKReneging TCPSACKReorder TCPRenoReorder TCPTSReorder TCPFullUndo TCPPartialUndo TCPDSACKUndo TCPLossUndo "
    "TCPLostRetransmit TCPRenoFailures TCPSackFailures TCPLossFailures TCPFastRetrans TCPSlowStartRetrans "
    "TCPTimeouts TCPLossProbes TCPLossProbeRecovery TCPRcvCollapsed TCPDSACKOldSent TCPDSACKRecv TCPAbortOnData "
    "TCPAbortOnClose TCPAbortOnMemory TCPAbortOnTimeout TCPAbortOnLinger TCPAbortFailed TCPMemoryPressures "
    "TCPSpuriousRTOs TCPSackShifted TCPSackMerged TCPSackShiftFallback TCPBacklogCoalesce TCPBacklogDrop "
    "TCPReqQFullDoCookies TCPReqQFullDrop TCPRetransFail TCPRcvCoalesce TCPOFOQueue TCPOFODrop TCPOFOMerge "
    "TCPChallengeACK TCPSYNChallenge TCPSynRetrans TCPOrigDataSent TCPKeepAlive TCPDelivered TCPAckCompressed "
    "TCPRcvQDrop"
)
TCPEXT_FIELDS = tuple(_TCPEXT.split())
TCPEXT_SIMULATED = {"SyncookiesSent": "syncookies_sent", "SyncookiesRecv": "syncookies_recv",
                    "SyncookiesFailed": "syncookies_failed", "ListenOverflows": "listen_overflows",
                    "ListenDrops": "listen_drops", "TCPTimeouts": "tcp_timeouts", "TCPSynRetrans": "syn_retrans",
                    "TCPRcvQDrop": "rcvq_drop", "TCPOFOQueue": "ofo_queue"}
CPU_MODES = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")  # /proc/stat column order
USER_HZ = 100
PSI_WINDOWS = (10.0, 60.0, 300.0)  # avg10, avg60, avg300 (seconds)
PSI_LINES = {"cpu": (("some", "cpu_some"), ("full", None)),
             "memory": (("some", "memory_some"), ("full", "memory_full")),
             "io": (("some", "io_some"), ("full", "io_full")), "irq": (("full", "irq_full"),)}
_KB = 1024


def _i(v: Any) -> int:
    return int(float(v))


# ---------------------------------------------------------------- network, disks, filesystems, InfiniBand
def net_dev(nics: list[tuple[str, Values]]) -> str:
    """``proc/net/dev`` (loopback first)."""
    i = _i
    lines = ["Inter-|   Receive                                                |  Transmit",
             " face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo "
             "colls carrier compressed",
             "    lo: 1000 10 0 0 0 0 0 0 1000 10 0 0 0 0 0 0"]
    for name, v in nics:
        lines.append(f"{name:>6}: {i(v['rx_bytes'])} {i(v['rx_packets'])} {i(v['rx_errs'])} {i(v['rx_drop'])} "
                     f"0 0 0 0 {i(v['tx_bytes'])} {i(v['tx_packets'])} {i(v['tx_errs'])} {i(v['tx_drop'])} 0 0 0 0")
    return "\n".join(lines) + "\n"


def nic_sysfs(name: str, v: Values) -> Files:
    """``sys/class/net/IF/{operstate,carrier_changes,speed}`` (speed reads -1 while down)."""
    base = f"sys/class/net/{name}"
    up = float(v["up"]) >= 0.5
    return {f"{base}/operstate": "up\n" if up else "down\n",
            f"{base}/carrier_changes": f"{_i(v['carrier_changes'])}\n",
            f"{base}/speed": f"{_i(v['speed_mbps']) if up else -1}\n"}


def snmp(v: Values) -> str:
    """``proc/net/snmp`` Tcp lines."""
    nums = [1, 200, 120000, -1, 100, 50, 0, 0, 10, _i(v["in_segs"]), _i(v["out_segs"]), _i(v["retrans_segs"]),
            0, 0, 0]
    return f"Tcp: {' '.join(TCP_FIELDS)}\nTcp: {' '.join(map(str, nums))}\n"


def netstat(v: Values) -> str:
    """``proc/net/netstat`` TcpExt (the simulated counters; the other columns 0) and IpExt lines."""
    nums = [_i(v[TCPEXT_SIMULATED[f]]) if f in TCPEXT_SIMULATED else 0 for f in TCPEXT_FIELDS]
    ipext = "InNoRoutes InTruncatedPkts InMcastPkts OutMcastPkts InBcastPkts OutBcastPkts InOctets OutOctets"
    return (f"TcpExt: {' '.join(TCPEXT_FIELDS)}\nTcpExt: {' '.join(map(str, nums))}\n"
            f"IpExt: {ipext}\nIpExt: 0 0 0 0 0 0 0 0\n")


def diskstats(disks: list[tuple[str, Values]]) -> str:
    """``proc/diskstats`` (kernel 5.5+ columns; minor numbers default to the disk's position)."""
    i = _i
    out = []
    for n, (name, v) in enumerate(disks):
        out.append(f"{i(v['major']):4d} {i(v['minor']) or n:7d} {name} {i(v['reads'])} 0 {i(v['read_sectors'])} "
                   f"{i(v['read_ms'])} {i(v['writes'])} 0 {i(v['write_sectors'])} {i(v['write_ms'])} "
                   f"{i(v['io_now'])} {i(v['io_ms'])} {i(v['weighted_ms'])} 0 0 0 0 0 0")
    return "\n".join(out) + ("\n" if out else "")


def mountinfo(mounts: list[tuple[str, Values]]) -> str:
    """``proc/*/mountinfo`` (a root filesystem alone when no ``fs`` object is simulated)."""
    lines = [] if mounts else ["1 0 259:1 / / rw,relatime shared:1 - ext4 /dev/root rw"]
    for n, (mountpoint, v) in enumerate(mounts, start=20):
        opts = "ro,relatime" if float(v["readonly"]) >= 0.5 else "rw,relatime"
        lines.append(f"{n} 1 259:{n} / {mountpoint} {opts} shared:{n} - {v['fstype']} {v['device']} {opts[:2]}")
    return "\n".join(lines) + "\n"


def infiniband(name: str, v: Values) -> Files:
    """``sys/class/infiniband/DEV/{fw_ver,board_id,hca_type}`` and ``ports/PORT/...`` of one port (``DEV/PORT``)."""
    dev, port = name.split("/")
    top = f"sys/class/infiniband/{dev}"
    base = f"{top}/ports/{port}"
    st, ph = _i(v["state"]), _i(v["phys_state"])
    out = {f"{top}/fw_ver": "28.39.1002\n", f"{top}/board_id": "MT_0000000838\n", f"{top}/hca_type": "MT4129\n",
           f"{base}/state": f"{st}: {IB_STATES.get(st, 'DOWN')}\n",
           f"{base}/phys_state": f"{ph}: {IB_PHYS.get(ph, 'Disabled')}\n",
           f"{base}/rate": f"{_i(v['rate_gbps'])} Gb/sec (4X NDR)\n"}
    out.update({f"{base}/counters/{c}": f"{_i(v[c])}\n" for c in IB_COUNTERS})
    out.update({f"{base}/hw_counters/{c}": f"{_i(v[c])}\n" for c in IB_HW_COUNTERS})
    return out


# ---------------------------------------------------------------- memory, pressure, vmstat, load
def meminfo(v: Values) -> str:
    """``proc/meminfo`` from the ``mem`` fields; the other lines derived as a busy training node has them
    (anonymous memory = what neither free, page cache nor buffers hold). Free <= available <= total."""
    total = max(0.0, float(v["total_bytes"]))
    avail = min(max(0.0, float(v["available_bytes"])), total)
    free = min(max(0.0, float(v["free_bytes"])), avail)
    buffers = min(max(0.0, float(v["buffers_bytes"])), total - free)
    cached = min(max(0.0, float(v["cached_bytes"])), total - free - buffers)
    slab = total * 0.008
    used = max(0.0, total - free - buffers - cached - slab)
    anon = used * 0.97
    shmem = min(max(0.0, float(v["shmem_bytes"])), cached)
    swap_total = max(0.0, float(v["swap_total_bytes"]))
    swap_free = min(max(0.0, float(v["swap_free_bytes"])), swap_total)
    rows: list[tuple[str, float]] = [
        ("MemTotal", total), ("MemFree", free), ("MemAvailable", avail), ("Buffers", buffers), ("Cached", cached),
        ("SwapCached", 0), ("Active", anon * 0.95 + cached * 0.55), ("Inactive", anon * 0.05 + cached * 0.45 + buffers),
        ("Active(anon)", anon * 0.95), ("Inactive(anon)", anon * 0.05), ("Active(file)", cached * 0.55),
        ("Inactive(file)", cached * 0.45 + buffers), ("Unevictable", 0), ("Mlocked", 0), ("SwapTotal", swap_total),
        ("SwapFree", swap_free), ("Zswap", 0), ("Zswapped", 0), ("Dirty", float(v["dirty_bytes"])),
        ("Writeback", 0), ("AnonPages", anon), ("Mapped", cached * 0.08), ("Shmem", shmem),
        ("KReclaimable", slab * 0.6), ("Slab", slab), ("SReclaimable", slab * 0.6), ("SUnreclaim", slab * 0.4),
        ("KernelStack", 96 * 1048576), ("PageTables", used * 0.002), ("SecPageTables", 0), ("NFS_Unstable", 0),
        ("Bounce", 0), ("WritebackTmp", 0), ("CommitLimit", total / 2 + swap_total),
        ("Committed_AS", anon * 1.3), ("VmallocTotal", 34359738367 * _KB), ("VmallocUsed", 2 << 30),
        ("VmallocChunk", 0), ("Percpu", 900 << 20), ("HardwareCorrupted", 0), ("AnonHugePages", anon * 0.6),
        ("ShmemHugePages", 0), ("ShmemPmdMapped", 0), ("FileHugePages", 0), ("FilePmdMapped", 0),
        ("CmaTotal", 0), ("CmaFree", 0), ("Unaccepted", 0),
    ]
    lines = [f"{k + ':':<16}{int(b // _KB):>11} kB" for k, b in rows]
    lines += ["HugePages_Total:       0", "HugePages_Free:        0", "HugePages_Rsvd:        0",
              "HugePages_Surp:        0", f"{'Hugepagesize:':<16}{2048:>11} kB", f"{'Hugetlb:':<16}{0:>11} kB",
              f"{'DirectMap4k:':<16}{1_200_000:>11} kB", f"{'DirectMap2M:':<16}{80_000_000:>11} kB",
              f"{'DirectMap1G:':<16}{int(max(0.0, total // _KB - 81_200_000)):>11} kB"]
    return "\n".join(lines) + "\n"


def pressure(v: Values, avgs: dict[str, tuple[float, float, float]]) -> Files:
    """``proc/pressure/{cpu,memory,io,irq}``: ``total=`` microseconds, ``avg10/60/300`` percentages from
    ``avgs`` (field -> the three averages, in %)."""
    out = {}
    for resource, lines in PSI_LINES.items():
        text = []
        for kind, field in lines:
            total = 0 if field is None else int(float(v[field]) * 1e6)
            a10, a60, a300 = (0.0, 0.0, 0.0) if field is None else avgs.get(field, (0.0, 0.0, 0.0))
            text.append(f"{kind} avg10={a10:.2f} avg60={a60:.2f} avg300={a300:.2f} total={total}")
        out[f"proc/pressure/{resource}"] = "\n".join(text) + "\n"
    return out


def vmstat(v: Values, mem: Values | None = None) -> str:
    """``proc/vmstat``: the simulated counters among the page-state lines of a current kernel."""
    i = _i
    free_pages = int(float(mem["free_bytes"]) // 4096) if mem else 250_000_000
    rows = [("nr_free_pages", free_pages), ("nr_zone_inactive_anon", 12_000_000), ("nr_zone_active_anon", 250_000_000),
            ("nr_zone_inactive_file", 60_000_000), ("nr_zone_active_file", 75_000_000), ("nr_zone_unevictable", 0),
            ("nr_mlock", 0), ("nr_bounce", 0), ("nr_free_cma", 0), ("numa_hit", 9_800_000_000), ("numa_miss", 0),
            ("numa_foreign", 0), ("numa_interleave", 41_000), ("numa_local", 9_800_000_000), ("numa_other", 0),
            ("nr_dirty", 15_000), ("nr_writeback", 0), ("pgpgin", i(v["pgpgin"])), ("pgpgout", i(v["pgpgout"])),
            ("pswpin", i(v["pswpin"])), ("pswpout", i(v["pswpout"])), ("pgalloc_normal", 21_000_000_000),
            ("pgfree", 22_000_000_000), ("pgactivate", 410_000_000), ("pgfault", i(v["pgfault"])),
            ("pgmajfault", i(v["pgmajfault"])), ("pgsteal_kswapd", 1_900_000), ("pgscan_kswapd", 2_300_000),
            ("pgscan_direct", 0), ("oom_kill", i(v["oom_kill"])), ("compact_stall", 12), ("thp_fault_alloc", 8_800_000),
            ("thp_fault_fallback", 1_300)]
    return "".join(f"{k} {n}\n" for k, n in rows)


def loadavg(v: Values, last_pid: int) -> str:
    """``proc/loadavg``: load1 load5 load15 running/threads last-pid."""
    running = max(1, min(_i(v["runnable"]), _i(v["threads"])))
    return f"{float(v['load1']):.2f} {float(v['load5']):.2f} {float(v['load15']):.2f} " \
           f"{running}/{_i(v['threads'])} {last_pid}\n"


# ---------------------------------------------------------------- CPUs
def cpu_numbers(packages: list[tuple[str, Values]]) -> list[tuple[int, int, int]]:
    """(cpu, package, core) of every logical CPU, numbered as Linux does on x86: the first thread of every
    core of every package, then the second threads (``cpu0..55`` package 0, ``cpu56..111`` package 1, ...)."""
    out = []
    threads = max((max(1, _i(v["threads"])) for _, v in packages), default=1)
    n = 0
    for t in range(threads):
        for name, v in packages:
            if t >= max(1, _i(v["threads"])):
                continue
            for core in range(max(0, _i(v["cores"]))):
                out.append((n, int(name), core))
                n += 1
    return out


def cpu_busy(v: Values, cpu: int) -> list[float]:
    """One CPU's fraction of time per /proc/stat mode: the package's fractions, varied by +-10% per CPU
    (deterministic), idle the rest."""
    vary = 0.9 + 0.2 * ((cpu * 37) % 11) / 10
    busy = [0.0 if m == "idle" else max(0.0, float(v[m])) * vary for m in CPU_MODES]
    total = sum(busy)
    if total > 1.0:
        busy = [b / total for b in busy]
    busy[CPU_MODES.index("idle")] = max(0.0, 1.0 - sum(busy))
    return busy


def proc_stat(cpus: list[tuple[int, list[float]]], scalars: dict[str, int]) -> str:
    """``proc/stat``: aggregate and per-CPU times (seconds per mode, written in USER_HZ ticks), then
    ``intr ctxt btime processes procs_running procs_blocked softirq``."""
    agg = [0] * len(CPU_MODES)
    rows = []
    for cpu, seconds in cpus:
        ticks = [int(s * USER_HZ) for s in seconds]
        agg = [a + t for a, t in zip(agg, ticks, strict=True)]
        rows.append(f"cpu{cpu} {' '.join(map(str, ticks))} 0 0")
    out = [f"cpu  {' '.join(map(str, agg))} 0 0", *rows, f"intr {scalars['intr']}", f"ctxt {scalars['ctxt']}",
           f"btime {scalars['btime']}", f"processes {scalars['processes']}",
           f"procs_running {scalars['procs_running']}", f"procs_blocked {scalars['procs_blocked']}",
           f"softirq {scalars['softirq']} 0 {scalars['softirq'] // 3} 0 {scalars['softirq'] // 4} 0 0 0 0 0 0"]
    return "\n".join(out) + "\n"


def cpu_sysfs(numbers: list[tuple[int, int, int]], packages: dict[int, Values]) -> Files:
    """``sys/devices/system/cpu/{online,isolated}`` and per CPU ``topology/{physical_package_id,core_id}``,
    ``thermal_throttle/{package_throttle_count,core_throttle_count}``."""
    base = "sys/devices/system/cpu"
    out = {f"{base}/online": f"0-{len(numbers) - 1}\n" if numbers else "\n", f"{base}/isolated": "\n"}
    for cpu, pkg, core in numbers:
        v = packages[pkg]
        d = f"{base}/cpu{cpu}"
        out[f"{d}/topology/physical_package_id"] = f"{pkg}\n"
        out[f"{d}/topology/core_id"] = f"{core}\n"
        out[f"{d}/thermal_throttle/package_throttle_count"] = f"{_i(v['package_throttles'])}\n"
        out[f"{d}/thermal_throttle/core_throttle_count"] = f"{_i(v['core_throttles'])}\n"
    return out


# ---------------------------------------------------------------- hwmon, EDAC
def hwmon(sensors: list[tuple[str, Values]]) -> tuple[Files, dict[str, str]]:
    """Files and symlinks of hwmon chips (sensor objects ``CHIP/tempN`` grouped by chip, numbered hwmon0.. in
    order of appearance), laid out as the kernel does for a platform device:
    ``sys/devices/platform/CHIP/hwmon/hwmonN/{name,tempN_*}``, ``sys/class/hwmon/hwmonN`` -> that directory,
    and its ``device`` -> ``sys/devices/platform/CHIP`` (so the chip is named ``platform_<CHIP>`` as
    node_exporter names it). The ``name`` file is CHIP without a ``.N`` instance suffix (``coretemp.0`` ->
    ``coretemp``). Temperatures in millidegrees; ``crit_alarm`` is 1 when set or when input >= crit."""
    files: Files = {}
    links: dict[str, str] = {}
    chips: dict[str, int] = {}
    for key, v in sensors:
        chip, sensor = key.split("/")
        n = chips.setdefault(chip, len(chips))
        d = f"sys/devices/platform/{chip}/hwmon/hwmon{n}"
        if f"{d}/name" not in files:
            files[f"{d}/name"] = re.sub(r"\.[0-9]+$", "", chip) + "\n"
            links[f"sys/class/hwmon/hwmon{n}"] = f"../../devices/platform/{chip}/hwmon/hwmon{n}"
            links[f"{d}/device"] = f"../../../{chip}"
        inp, crit = float(v["input_c"]), float(v["crit_c"])
        alarm = 1 if float(v["crit_alarm"]) >= 0.5 or (crit > 0 and inp >= crit) else 0
        files[f"{d}/{sensor}_input"] = f"{round(inp * 1000)}\n"
        files[f"{d}/{sensor}_max"] = f"{round(float(v['max_c']) * 1000)}\n"
        files[f"{d}/{sensor}_crit"] = f"{round(crit * 1000)}\n"
        files[f"{d}/{sensor}_crit_alarm"] = f"{alarm}\n"
        if v["label"]:
            files[f"{d}/{sensor}_label"] = f"{v['label']}\n"
    return files, links


def edac(name: str, v: Values) -> Files:
    """``sys/devices/system/edac/mc/mcN/{ce,ue}{,_noinfo}_count`` and ``csrowR/{ce,ue}_count``,
    ``csrowR/chC_{ce,ue}_count``, ``chC_dimm_label`` (the errors on ``csrow``/``channel``; totals include the
    unattributed noinfo counts, as EDAC keeps them)."""
    i = _i
    d = f"sys/devices/system/edac/mc/{name}"
    ce, ue, row, chan = i(v["ce_count"]), i(v["ue_count"]), i(v["csrow"]), i(v["channel"])
    out = {f"{d}/ce_count": f"{ce + i(v['ce_noinfo_count'])}\n", f"{d}/ue_count": f"{ue + i(v['ue_noinfo_count'])}\n",
           f"{d}/ce_noinfo_count": f"{i(v['ce_noinfo_count'])}\n",
           f"{d}/ue_noinfo_count": f"{i(v['ue_noinfo_count'])}\n",
           f"{d}/mc_name": f"Intel_10nm Socket#{int(name[2:]) // 4} IMC#{int(name[2:]) % 4}\n"}
    for r in range(max(0, i(v["csrows"]))):
        here = r == row
        out[f"{d}/csrow{r}/ce_count"] = f"{ce if here else 0}\n"
        out[f"{d}/csrow{r}/ue_count"] = f"{ue if here else 0}\n"
        for c in range(max(0, i(v["channels"]))):
            mine = here and c == chan
            out[f"{d}/csrow{r}/ch{c}_ce_count"] = f"{ce if mine else 0}\n"
            out[f"{d}/csrow{r}/ch{c}_ue_count"] = f"{ue if mine else 0}\n"
            out[f"{d}/csrow{r}/ch{c}_dimm_label"] = f"{name}csrow{r}channel{c}\n"
    return out
