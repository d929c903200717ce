"""Build a fake /proc + /sys tree the size of a big GPU node, for benchmarks and oracle tests.

``build_scaled_tree(root, disks=16, nics=8, ib_ports=8)`` writes under ``root``:

- ``proc/diskstats`` (``disks`` NVMe disks with one partition each, plus loop and ram devices that
  node_exporter's default excludes drop), ``proc/1/mountinfo`` (one xfs mount per disk plus pseudo
  filesystems), ``proc/net/dev`` (lo + ``nics``), ``proc/net/snmp`` and ``proc/net/netstat``;
- ``sys/class/net/<nic>/`` (operstate, carrier_changes, speed, mtu ...; lo too);
- ``sys/class/infiniband/mlx5_<i>/`` for ``ib_ports`` single-port HCAs, copied from gpud's real 8xH100
  tree (``counters/``, ``hw_counters/``, state, rate ...), with the three RoCE congestion counters the
  mlx5 driver adds on Ethernet ports (np_ecn_marked_roce_packets, rp_cnp_handled, np_cnp_sent) written
  where the source lacks them, so every counter a collector knows is read.

Run it as a script to build a tree in a temporary directory and print its path.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FIXTURES = Path(os.environ.get("NODEWARDEN_FIXTURES", REPO.parent / "shared" / "fixtures"))
GPUD_IB = FIXTURES / "gpud" / "sys-class-infiniband-h100.0"

SNMP = """\
Ip: Forwarding DefaultTTL InReceives InHdrErrors InAddrErrors ForwDatagrams InUnknownProtos InDiscards InDelivers \
OutRequests OutDiscards OutNoRoutes ReasmTimeout ReasmReqds ReasmOKs ReasmFails FragOKs FragFails FragCreates
Ip: 1 64 2000000 0 0 0 0 0 2000000 1800000 0 0 0 0 0 0 0 0 0
Icmp: InMsgs InErrors InCsumErrors InDestUnreachs OutMsgs OutErrors OutDestUnreachs
Icmp: 10 0 0 10 12 0 12
Tcp: RtoAlgorithm RtoMin RtoMax MaxConn ActiveOpens PassiveOpens AttemptFails EstabResets CurrEstab InSegs OutSegs \
RetransSegs InErrs OutRsts InCsumErrors
Tcp: 1 200 120000 -1 35560 2300 341 161 120 572520080 549150390 22710 5 1003 0
Udp: InDatagrams NoPorts InErrors OutDatagrams RcvbufErrors SndbufErrors InCsumErrors IgnoredMulti
Udp: 88000 10 0 87000 0 0 0 0
"""

NETSTAT = """\
TcpExt: SyncookiesSent SyncookiesRecv SyncookiesFailed ListenOverflows ListenDrops TCPTimeouts
TcpExt: 0 0 2 0 0 115
IpExt: InNoRoutes InTruncatedPkts InOctets OutOctets
IpExt: 0 0 6286396970 2786264347
"""

ROCE_EXTRA = {"np_ecn_marked_roce_packets": 1200, "rp_cnp_handled": 800, "np_cnp_sent": 600}


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def _diskstats(disks: int) -> str:
    lines = [f"   1 {i:7d} ram{i} 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0" for i in range(4)]
    lines += [f"   7 {i:7d} loop{i} 52 0 2180 9 0 0 0 0 0 12 9 0 0 0 0 0 0" for i in range(2)]
    for d in range(disks):
        n = d + 1
        stats = (
            f"{9_000_000 + n} {1_000 + n} {720_000_000 + n} {3_200_000 + n} {15_000_000 + n} {2_000 + n} "
            f"{1_300_000_000 + n} {9_100_000 + n} {n % 3} {4_100_000 + n} {12_400_000 + n} 0 0 0 0 {310 + n} {20 + n}"
        )
        lines.append(f" 259 {2 * d:7d} nvme{d}n1 {stats}")
        lines.append(f" 259 {2 * d + 1:7d} nvme{d}n1p1 {stats}")
    return "\n".join(lines) + "\n"


def _mountinfo(disks: int) -> str:
    lines = [
        "22 1 259:0 / / rw,relatime shared:1 - ext4 /dev/nvme0n1p1 rw",
        "23 22 0:22 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw",
        "24 22 0:23 / /proc rw,nosuid,nodev,noexec,relatime shared:13 - proc proc rw",
        "25 22 0:5 / /dev rw,nosuid,relatime shared:2 - devtmpfs udev rw,size=7978892k,mode=755",
        "26 22 0:25 / /run rw,nosuid,relatime shared:5 - tmpfs tmpfs rw,size=1617716k,mode=755",
        "27 22 0:40 / /var/lib/docker/overlay2/abc/merged rw,relatime - overlay overlay rw,lowerdir=/l,upperdir=/u",
        "28 26 0:4 net:[4026532281] /run/netns/ns1 rw shared:220 - nsfs nsfs rw",
    ]
    for d in range(1, disks):
        lines.append(f"{30 + d} 22 259:{2 * d + 1} / /data{d} rw,noatime shared:{40 + d} - xfs /dev/nvme{d}n1p1 rw")
    return "\n".join(lines) + "\n"


def _net_dev(nics: list[str]) -> str:
    lines = [
        "Inter-|   Receive                                                |  Transmit",
        " face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls "
        "carrier compressed",
        "    lo: 123456789 654321 0 0 0 0 0 0 123456789 654321 0 0 0 0 0 0",
    ]
    for i, nic in enumerate(nics, 1):
        lines.append(
            f"{nic:>6}: {9_876_543_210_000 + i} {8_765_432_100 + i} {i} {10 + i} 0 0 0 {500 + i} "
            f"{8_765_432_100_000 + i} {7_654_321_000 + i} {2 * i} {20 + i} 0 0 0 0"
        )
    return "\n".join(lines) + "\n"


def _net_class(sys_root: Path, nics: list[str]) -> None:
    base = sys_root / "class" / "net"
    attrs = {"operstate": "unknown", "carrier_changes": "0", "mtu": "65536", "type": "772", "flags": "0x9"}
    for name, text in attrs.items():
        _write(base / "lo" / name, text + "\n")
    for i, nic in enumerate(nics):
        attrs = {
            "operstate": "up" if i < len(nics) - 1 else "down",
            "carrier_changes": str(2 + i),
            "speed": "200000" if i < len(nics) - 1 else "-1",
            "mtu": "9000",
            "address": f"b8:3f:d2:00:00:{i:02x}",
            "duplex": "full",
            "type": "1",
            "flags": "0x1003",
        }
        for name, text in attrs.items():
            _write(base / nic / name, text + "\n")
    _write(base / "bonding_masters", "\n")


def _infiniband(sys_root: Path, ib_ports: int, source: Path) -> None:
    sources = sorted(p for p in source.iterdir() if p.is_dir() and p.name.startswith("mlx5_") and "bond" not in p.name)
    if not sources:
        raise FileNotFoundError(f"no mlx5 devices under {source}")
    dest_root = sys_root / "class" / "infiniband"
    for i in range(ib_ports):
        dest = dest_root / f"mlx5_{i}"
        shutil.copytree(sources[i % len(sources)], dest)
        for path in dest.rglob("*"):  # the fixture is read-only; keep the copy writable for cleanup
            path.chmod(0o755 if path.is_dir() else 0o644)
        dest.chmod(0o755)
        for port in (dest / "ports").iterdir():
            hw = port / "hw_counters"
            for name, value in ROCE_EXTRA.items():
                if not (hw / name).exists():
                    _write(hw / name, f"{value + i}\n")


def build_scaled_tree(
    root: str | Path, disks: int = 16, nics: int = 8, ib_ports: int = 8, ib_source: str | Path | None = None
) -> Path:
    """Write the fake tree under ``root`` (procfs = root/proc, sysfs = root/sys) and return ``root``."""
    root = Path(root)
    proc, sys_root = root / "proc", root / "sys"
    nic_names = [f"ens{i + 1}f0np0" for i in range(nics)]
    _write(proc / "diskstats", _diskstats(disks))
    _write(proc / "1" / "mountinfo", _mountinfo(disks))
    _write(proc / "net" / "dev", _net_dev(nic_names))
    _write(proc / "net" / "snmp", SNMP)
    _write(proc / "net" / "netstat", NETSTAT)
    _net_class(sys_root, nic_names)
    if ib_ports:
        _infiniband(sys_root, ib_ports, Path(ib_source) if ib_source else GPUD_IB)
    return root


if __name__ == "__main__":
    target = sys.argv[1] if len(sys.argv) > 1 else tempfile.mkdtemp(prefix="nodewarden-tree-")
    print(build_scaled_tree(target))
