"""The whole-node simulator: renders a scenario's host state as procfs/sysfs/dev trees the real collectors read.

One :class:`NodeSim` per simulated node owns a directory with ``proc/``, ``sys/``, ``dev/`` and ``root/``
(the host root filesystem) and a scenario clock. :meth:`NodeSim.advance` applies the timeline up to the
current scenario time (counters integrate their ``rate``), then rewrites every file atomically:

- ``proc/net/dev`` + ``sys/class/net/IF/{operstate,carrier_changes,speed}``  (``nic/IF``)
- ``proc/net/snmp`` Tcp lines (``tcp``); ``proc/diskstats`` (``disk/DEV``)
- ``proc/1/mountinfo`` + ``proc/self/mountinfo`` (``fs/MOUNTPOINT``; sizes come from :meth:`statvfs`, which
  blocks while the scenario says the filesystem hangs, like a dead NFS server)
- ``sys/class/infiniband/DEV/ports/N/{state,phys_state,rate,counters/*,hw_counters/*}`` (``ib/DEV/N``)
- ``dev/kmsg``: ``kmsg:`` lines appended as ``/dev/kmsg`` records; ``proc/PID/cgroup`` of GPU processes
- ``files:``: any other file under the roots (``proc/...``, ``sys/...``, ``dev/...``, else the host root), so a
  collector nobody simulated yet can be scripted without code.

:meth:`NodeSim.collectors` builds every enabled collector against these roots (the GPU collector against the
scenario's fake NVML, the filesystem collector with :meth:`statvfs`), each wrapped so it advances the
simulation before it reads.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from agent.collectors import simulate
from agent.collectors.fakenvml import FakeNvml
from agent.collectors.simulate import HOST_KINDS, Scenario, host_kind
from agent.core.paths import Paths

IB_COUNTERS = ("port_rcv_data", "port_xmit_data", "port_rcv_packets", "port_xmit_packets", "port_xmit_wait",
               "link_downed", "link_error_recovery", "symbol_error", "port_rcv_errors", "port_rcv_discards",
               "port_xmit_discards")
IB_HW_COUNTERS = ("np_ecn_marked_roce_packets", "rp_cnp_handled", "np_cnp_sent", "out_of_buffer")
IB_STATES = {1: "DOWN", 2: "INIT", 3: "ARMED", 4: "ACTIVE", 5: "ACTIVE_DEFER"}
IB_PHYS = {1: "Sleep", 2: "Polling", 3: "Disabled", 4: "PortConfigurationTraining", 5: "LinkUp",
           6: "LinkErrorRecovery", 7: "Phy Test"}
KMSG_SETTLE = 0.3  # real seconds a kmsg-tailing collector gets to read lines written this tick
TCP_FIELDS = ("RtoAlgorithm", "RtoMin", "RtoMax", "MaxConn", "ActiveOpens", "PassiveOpens", "AttemptFails",
              "EstabResets", "CurrEstab", "InSegs", "OutSegs", "RetransSegs", "InErrs", "OutRsts", "InCsumErrors")


class _Obj:
    """One host object's state: values (counters are floats) and per-second rates."""

    __slots__ = ("kind", "name", "rates", "values")

    def __init__(self, kind: str, name: str, fields: dict[str, Any]) -> None:
        self.kind, self.name = kind, name
        fields = dict(fields)
        self.rates: dict[str, float] = {k: float(v) for k, v in (fields.pop("rate", {}) or {}).items()}
        self.values: dict[str, Any] = {**HOST_KINDS[kind], **fields}
        if kind == "fs" and "free_bytes" not in self.values:
            self.values["free_bytes"] = self.values["avail_bytes"]


class NodeSim:
    """A simulated node (see module docstring). ``clock``: monotonic seconds (scaled or manual)."""

    def __init__(self, scenario: Scenario, directory: str, clock: Callable[[], float] = time.monotonic,
                 hostname: str | None = None) -> None:
        self.scenario = scenario
        self.dir = os.path.abspath(directory)
        self.clock = clock
        self.hostname = hostname or f"sim-{scenario.name}"[:63]
        self.paths = Paths(procfs=os.path.join(self.dir, "proc"), sysfs=os.path.join(self.dir, "sys"),
                           devfs=os.path.join(self.dir, "dev"), rootfs=os.path.join(self.dir, "root"))
        self._lock = threading.RLock()
        self._released = threading.Event()
        self._t0 = clock()
        self._t = 0.0
        self.objects: dict[str, _Obj] = {}
        for key, fields in (scenario.node or {}).items():
            kind = host_kind(key)
            self.objects[key] = _Obj(kind, key.partition("/")[2], fields or {})
        plan = [(t, n, step) for n, step in enumerate(scenario.timeline) for t in step.times(scenario.duration)]
        plan.sort(key=lambda x: (x[0], x[1]))
        self._plan = plan
        self._next = 0
        self._kmsg_seq = 0
        self.kmsg_at: float | None = None  # scenario time of the last kernel-log write
        self._files: dict[str, str] = {}
        self.nvml = FakeNvml(scenario, clock)
        self.nvml._t0 = self._t0  # one scenario time for GPUs and host
        for d in ("proc", "sys", "dev", "root"):
            os.makedirs(os.path.join(self.dir, d), exist_ok=True)
        with open(self.paths.dev("kmsg"), "a", encoding="utf-8"):
            pass
        self._render()

    # ---------------------------------------------------------------- time
    def now(self) -> float:
        """Scenario seconds."""
        return max(0.0, self.clock() - self._t0)

    def advance(self) -> float:
        """Apply the timeline up to now, integrate the counters, rewrite the files; returns scenario time."""
        with self._lock:
            now = self.now()
            if self._released.is_set():  # shut down: the tree is about to be removed
                return now
            due = self._next < len(self._plan) and self._plan[self._next][0] <= now
            if now <= self._t and not due:  # applied and rendered already (every collector calls us)
                return now
            while self._next < len(self._plan) and self._plan[self._next][0] <= now:
                t, n, step = self._plan[self._next]
                self._integrate(t)
                if step.occurs(self.scenario.seed, n, t):
                    self._apply(step, t, n)
                self._next += 1
            self._integrate(now)
            self._render()
            return now

    def release(self) -> None:
        """Let every hung statvfs return (shutdown)."""
        with self._lock:
            self._released.set()
        self.nvml.release()

    def _integrate(self, t: float) -> None:
        dt = t - self._t
        if dt <= 0:
            return
        for obj in self.objects.values():
            v = obj.values
            for key, rate in obj.rates.items():
                v[key] = max(0.0, float(v[key]) + rate * dt)
            if obj.kind == "fs":  # used space grows as avail shrinks: keep free >= avail, both within size
                v["avail_bytes"] = min(float(v["avail_bytes"]), float(v["size_bytes"]))
                v["free_bytes"] = max(float(v["avail_bytes"]), min(float(v["free_bytes"]), float(v["size_bytes"])))
                v["files_free"] = min(float(v["files_free"]), float(v["files"]))
        self._t = t

    def _apply(self, step: simulate.Step, t: float, n: int) -> None:
        for key, change in step.host.items():
            obj = self.objects.get(key)
            if obj is None:
                obj = self.objects[key] = _Obj(host_kind(key), key.partition("/")[2], {})
            obj.values.update(change.set)
            for f, delta in change.add.items():
                obj.values[f] = max(0.0, float(obj.values[f]) + delta)
            obj.rates.update(change.rate)
            for f, (lo, hi) in change.uniform.items():
                obj.values[f] = lo + (hi - lo) * simulate.draw(self.scenario.seed, n, t, f"{key}/{f}")
            if obj.kind == "fs" and "avail_bytes" in change.set and "free_bytes" not in change.set:
                obj.values["free_bytes"] = obj.values["avail_bytes"]
        if step.kmsg:
            self._kmsg(step.kmsg, t)
        self._files.update(step.files)

    # ---------------------------------------------------------------- rendering
    def _write(self, path: str, text: str) -> None:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path}.nwsim"
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)

    def _path(self, rel: str) -> str:
        head, _, tail = rel.partition("/")
        if head in ("proc", "sys", "dev"):
            return os.path.join(self.dir, head, tail)
        return os.path.join(self.paths.rootfs, rel)

    def _kmsg(self, lines: Iterable[str], t: float) -> None:
        self.kmsg_at = t
        with open(self.paths.dev("kmsg"), "a", encoding="utf-8") as f:
            for line in lines:
                self._kmsg_seq += 1
                f.write(f"4,{self._kmsg_seq},{int(t * 1e6)},-;{line}\n")

    def _of(self, kind: str) -> list[_Obj]:
        return [o for o in self.objects.values() if o.kind == kind]

    def _render(self) -> None:
        w, i = self._write, int
        lines = ["Inter-|   Receive                                                |  Transmit",
                 " face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo "
                 "colls carrier compressed",
                 "    lo: 1000 10 0 0 0 0 0 0 1000 10 0 0 0 0 0 0"]
        for o in self._of("nic"):
            v = o.values
            lines.append(f"{o.name:>6}: {i(v['rx_bytes'])} {i(v['rx_packets'])} {i(v['rx_errs'])} {i(v['rx_drop'])} "
                         f"0 0 0 0 {i(v['tx_bytes'])} {i(v['tx_packets'])} {i(v['tx_errs'])} {i(v['tx_drop'])} 0 0 0 0")
            base = self.paths.sys("class", "net", o.name)
            up = float(v["up"]) >= 0.5
            w(os.path.join(base, "operstate"), "up\n" if up else "down\n")
            w(os.path.join(base, "carrier_changes"), f"{i(v['carrier_changes'])}\n")
            w(os.path.join(base, "speed"), f"{i(v['speed_mbps']) if up else -1}\n")
        w(self.paths.proc("net", "dev"), "\n".join(lines) + "\n")
        tcp = next(iter(self._of("tcp")), None)
        tv = tcp.values if tcp else HOST_KINDS["tcp"]
        nums = [1, 200, 120000, -1, 100, 50, 0, 0, 10, i(tv["in_segs"]), i(tv["out_segs"]), i(tv["retrans_segs"]),
                0, 0, 0]
        w(self.paths.proc("net", "snmp"), f"Tcp: {' '.join(TCP_FIELDS)}\nTcp: {' '.join(map(str, nums))}\n")
        disk = []
        for n, o in enumerate(self._of("disk")):
            v = o.values
            disk.append(f"{i(v['major']):4d} {i(v['minor']) or n:7d} {o.name} {i(v['reads'])} 0 {i(v['read_sectors'])} "
                        f"{i(v['read_ms'])} {i(v['writes'])} 0 {i(v['write_sectors'])} {i(v['write_ms'])} "
                        f"{i(v['io_now'])} {i(v['io_ms'])} {i(v['weighted_ms'])} 0 0 0 0 0 0")
        w(self.paths.proc("diskstats"), "\n".join(disk) + ("\n" if disk else ""))
        mounts = ["1 0 259:1 / / rw,relatime shared:1 - ext4 /dev/root rw"] if not self._of("fs") else []
        for n, o in enumerate(self._of("fs"), start=20):
            v = o.values
            opts = "ro,relatime" if float(v["readonly"]) >= 0.5 else "rw,relatime"
            mounts.append(f"{n} 1 259:{n} / {o.name} {opts} shared:{n} - {v['fstype']} {v['device']} {opts[:2]}")
        text = "\n".join(mounts) + "\n"
        w(self.paths.proc("1", "mountinfo"), text)
        w(self.paths.proc("self", "mountinfo"), text)
        for o in self._of("ib"):
            dev, port = o.name.split("/")
            v = o.values
            top = self.paths.sys("class", "infiniband", dev)
            if not os.path.exists(os.path.join(top, "fw_ver")):
                w(os.path.join(top, "fw_ver"), "28.39.1002\n")
                w(os.path.join(top, "board_id"), "MT_0000000838\n")
                w(os.path.join(top, "hca_type"), "MT4129\n")
            base = os.path.join(top, "ports", port)
            st, ph = i(v["state"]), i(v["phys_state"])
            w(os.path.join(base, "state"), f"{st}: {IB_STATES.get(st, 'DOWN')}\n")
            w(os.path.join(base, "phys_state"), f"{ph}: {IB_PHYS.get(ph, 'Disabled')}\n")
            w(os.path.join(base, "rate"), f"{i(v['rate_gbps'])} Gb/sec (4X NDR)\n")
            for c in IB_COUNTERS:
                w(os.path.join(base, "counters", c), f"{i(v[c])}\n")
            for c in IB_HW_COUNTERS:
                w(os.path.join(base, "hw_counters", c), f"{i(v[c])}\n")
        for dev in self.nvml.devices:
            for p in dev.spec.processes:
                if p.cgroup is not None:
                    w(self.paths.proc(str(p.pid), "cgroup"), p.cgroup if p.cgroup.endswith("\n") else p.cgroup + "\n")
        for rel, text in self._files.items():
            w(self._path(rel), text)

    # ---------------------------------------------------------------- statvfs
    def statvfs(self, path: str) -> os.statvfs_result:
        """statvfs of a simulated mount (blocks while it hangs); FileNotFoundError for other paths."""
        obj = next((o for o in self._of("fs") if self.paths.root(o.name) == path), None)
        if obj is None:
            raise FileNotFoundError(2, "No such file or directory", path)
        while float(obj.values["hang"]) >= 0.5 and not self._released.is_set():
            self._released.wait(0.05)
            self.advance()
        v, bs = obj.values, 4096
        blocks, free, avail = (int(float(v[k]) // bs) for k in ("size_bytes", "free_bytes", "avail_bytes"))
        return os.statvfs_result((bs, bs, blocks, free, avail, int(v["files"]), int(v["files_free"]),
                                  int(v["files_free"]), 0, 255))

    def adjtimex(self) -> tuple[int, dict[str, int]]:
        """The kernel clock state of the simulated host (``clock`` object: synced by default), as adjtimex(2)."""
        from agent.collectors import timex

        obj = next(iter(self._of("clock")), None)
        v = obj.values if obj else HOST_KINDS["clock"]
        tx = dict.fromkeys(timex._NAMES, 0)
        tx.update(status=timex.STA_NANO | 0x1, offset=int(v["offset_ns"]), maxerror=int(v["maxerror_us"]),
                  esterror=int(v["esterror_us"]), constant=7, precision=1, tolerance=32768000, tick=10000)
        return (0 if float(v["synced"]) >= 0.5 else timex.TIME_ERROR), tx

    # ---------------------------------------------------------------- collectors
    def collectors(self, cfg: Any, hostname: str | None = None,
                   only: set[str] | None = None) -> tuple[list[Any], dict[str, str]]:
        """Every enabled collector (or those in ``only``) against the simulated roots (a ``collector_factory``)."""
        from agent import collectors as registry
        from agent.collectors.kmsg import KmsgReader
        from agent.core.errors import PluginLoadError

        # One kernel-log reader for every consumer, as the daemon builds it, on the simulated /dev/kmsg and clock
        # (the daemon starts it once all consumers subscribed).
        kmsg = KmsgReader(self.paths.dev("kmsg"), None, boot_id_path=self.paths.proc("sys", "kernel", "random",
                                                                                    "boot_id"),
                          persist=False, uptime=self.now)
        built, failed = [], {}
        for name, ep in sorted(registry.discover().items()):
            if only is not None and name not in only:
                continue
            section = cfg.collectors.get(name)
            if not section.enabled and name != "gpu":
                continue
            deps: dict[str, Any] = {"hostname": hostname or self.hostname, "kmsg": kmsg,
                                    "state_dir": getattr(cfg, "state_dir", None)}
            if name == "gpu":
                updates = {"enabled": True, "simulate": None}
                if "kmsg" in type(section).model_fields:
                    updates["kmsg"] = True
                section = section.model_copy(update=updates)
                deps.update(nvml_module=self.nvml, clock=self.clock)
            elif name == "filesystem":
                deps["statvfs"] = self.statvfs
            elif name == "timex":
                deps["adjtimex"] = self.adjtimex
            try:
                cls = registry.load(ep)
                built.append(Simulated(cls(section, self.paths, **deps), self))
            except PluginLoadError as err:
                failed[name] = str(err)
            except Exception as err:
                failed[name] = f"collector {name} failed to start: {type(err).__name__}: {err}"
        return built, failed

    def close(self) -> None:
        """Release hangs."""
        self.release()


class Simulated:
    """A collector that advances the simulation before each collect(); everything else is the inner one's."""

    def __init__(self, inner: Any, sim: NodeSim) -> None:
        self.inner = inner
        self.sim = sim
        self.name = inner.name
        self.metrics = inner.metrics

    def collect(self) -> Any:
        """Advance the node to now, then collect. When kernel-log lines were just written, give a collector that
        tails /dev/kmsg in a thread (the GPU collector) a moment to read them in this tick: on an accelerated
        clock several ticks can pass within one poll of the reader, and lines read late are stamped late."""
        now = self.sim.advance()
        if self.name == "gpu" and self.sim.kmsg_at is not None and now - self.sim.kmsg_at < 1e-6:
            time.sleep(KMSG_SETTLE)
        return self.inner.collect()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)
