"""The whole-node simulator: renders a scenario's host state as procfs/sysfs/dev trees the real collectors read.

One :class:`NodeSim` per simulated node owns a directory with ``proc/``, ``sys/``, ``dev/`` and ``root/``
(the host root filesystem) and a scenario clock. :meth:`NodeSim.advance` applies the timeline up to the
current scenario time (counters integrate their ``rate``), then rewrites every file atomically:

- ``proc/net/dev`` + ``sys/class/net/IF/{operstate,carrier_changes,speed}``  (``nic/IF``)
- ``proc/net/snmp`` Tcp and ``proc/net/netstat`` TcpExt lines (``tcp``); ``proc/diskstats`` (``disk/DEV``)
- ``proc/1/mountinfo`` + ``proc/self/mountinfo`` (``fs/MOUNTPOINT``; sizes come from :meth:`statvfs`, which
  blocks while the scenario says the filesystem hangs, like a dead NFS server)
- ``sys/class/infiniband/DEV/ports/N/{state,phys_state,rate,counters/*,hw_counters/*}`` (``ib/DEV/N``)
- ``proc/meminfo`` (``mem``), ``proc/pressure/*`` (``psi``), ``proc/vmstat`` (``vmstat``), ``proc/loadavg``
  (``load``), ``proc/stat`` + ``sys/devices/system/cpu/cpuN/...`` (``cpu/PACKAGE``), ``sys/class/hwmon``
  (``hwmon/CHIP/tempN``), ``sys/devices/system/edac/mc/mcN`` (``edac/mcN``); the file texts are
  :mod:`agent.collectors.hostfiles`; the adjtimex(2) state (``clock``) comes from :meth:`NodeSim.adjtimex`
- ``dev/kmsg``: ``kmsg:`` lines appended as ``/dev/kmsg`` records; ``proc/PID/cgroup`` of GPU processes
- ``files:``: any other file under the roots (``proc/...``, ``sys/...``, ``dev/...``, else the host root), so a
  collector nobody simulated yet can be scripted without code (a ``files:`` text replaces a rendered one).

Only files whose text changed are rewritten.

:meth:`NodeSim.collectors` builds every enabled collector against these roots (the GPU collector against the
scenario's fake NVML, the filesystem collector with :meth:`statvfs`), each wrapped so it advances the
simulation before it reads.
"""

from __future__ import annotations

import math
import os
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from agent.collectors import hostfiles, simulate
from agent.collectors.fakenvml import FakeNvml
from agent.collectors.simulate import HOST_KINDS, Scenario, host_kind
from agent.core.paths import Paths

KMSG_SETTLE = 0.3  # real seconds a kmsg-tailing collector gets to read lines written this tick
KMSG_TAILERS = ("gpu", "kernel")  # collectors fed by the kernel-log reader thread
UPTIME0 = 3 * 86400.0  # the simulated host booted three days before the scenario starts
MAXERROR_CAP_US = 16_000_000.0
LOAD_TAU = {"load1": 60.0, "load5": 300.0, "load15": 900.0}  # the kernel's load average time constants


class _Obj:
    """One host object's state: values (counters are floats), per-second rates, and derived state (``acc``: a
    CPU package's per-CPU seconds per mode; a PSI field's avg10/60/300)."""

    __slots__ = ("acc", "kind", "name", "rates", "values")

    def __init__(self, kind: str, name: str, fields: dict[str, Any]) -> None:
        self.kind, self.name = kind, name
        fields = dict(fields)
        self.rates: dict[str, float] = {k: float(v) for k, v in (fields.pop("rate", {}) or {}).items()}
        self.values: dict[str, Any] = {**HOST_KINDS[kind], **fields}
        self.acc: dict[Any, Any] = {}
        if kind == "fs" and "free_bytes" not in self.values:
            self.values["free_bytes"] = self.values["avail_bytes"]

    def advance(self, dt: float) -> None:
        """Integrate ``dt`` seconds: counters by their rates, then what follows from the values."""
        v = self.values
        for key, rate in self.rates.items():
            v[key] = max(0.0, float(v[key]) + rate * dt)
        if self.kind == "fs":  # used space grows as avail shrinks: keep free >= avail, both within size
            v["avail_bytes"] = min(float(v["avail_bytes"]), float(v["size_bytes"]))
            v["free_bytes"] = max(float(v["avail_bytes"]), min(float(v["free_bytes"]), float(v["size_bytes"])))
            v["files_free"] = min(float(v["files_free"]), float(v["files"]))
        elif self.kind == "clock":  # the kernel caps the maximum error at NTP_PHASE_LIMIT (16 s)
            v["maxerror_us"] = min(float(v["maxerror_us"]), MAXERROR_CAP_US)
        elif self.kind == "load":  # exponential decay towards the runnable count, as the kernel's averages
            n = float(v["runnable"])
            for key, tau in LOAD_TAU.items():
                v[key] = n + (float(v[key]) - n) * math.exp(-dt / tau)
        elif self.kind == "psi":  # avg10/60/300: the stall share (%) averaged the same way
            for key in v:
                pct = 100.0 * min(1.0, self.rates.get(key, 0.0))
                old = self.acc.get(key, (pct, pct, pct))
                self.acc[key] = tuple(pct + (a - pct) * math.exp(-dt / w)
                                      for a, w in zip(old, hostfiles.PSI_WINDOWS, strict=True))

    def cpu_seconds(self, cpu: int, dt: float) -> list[float]:
        """A CPU of this package after ``dt`` more seconds (starting from the simulated uptime)."""
        busy = hostfiles.cpu_busy(self.values, cpu)
        old = self.acc.get(cpu)
        if old is None:
            old = [b * UPTIME0 for b in busy]
        new = [o + b * dt for o, b in zip(old, busy, strict=True)]
        self.acc[cpu] = new
        return new


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
        self._written: dict[str, str] = {}  # path -> text last written (unchanged files are not rewritten)
        self._cpu_t = 0.0  # scenario time the CPU times were integrated to
        self._btime = int(time.time() - UPTIME0)
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
            obj.advance(dt)
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
        if self._written.get(path) == text:
            return
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path}.nwsim"
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
        self._written[path] = text

    def _link(self, rel: str, target: str) -> None:
        path = self._path(rel)
        if os.path.islink(path):
            return
        os.makedirs(os.path.dirname(path), exist_ok=True)
        os.symlink(target, path)

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

    def _one(self, kind: str) -> dict[str, Any] | None:
        obj = next(iter(self._of(kind)), None)
        return obj.values if obj else None

    def _render(self) -> None:
        """Every simulated file's text, then ``files:`` on top; write those that changed."""
        hf = hostfiles
        pairs = {k: [(o.name, o.values) for o in self._of(k)] for k in HOST_KINDS}
        out: dict[str, str] = {"proc/net/dev": hf.net_dev(pairs["nic"])}
        for name, v in pairs["nic"]:
            out.update(hf.nic_sysfs(name, v))
        tcp = self._one("tcp") or HOST_KINDS["tcp"]
        out["proc/net/snmp"] = hf.snmp(tcp)
        out["proc/net/netstat"] = hf.netstat(tcp)
        out["proc/diskstats"] = hf.diskstats(pairs["disk"])
        out["proc/1/mountinfo"] = out["proc/self/mountinfo"] = hf.mountinfo(pairs["fs"])
        for name, v in pairs["ib"]:
            out.update(hf.infiniband(name, v))
        mem, load = self._one("mem"), self._one("load")
        if mem is not None:
            out["proc/meminfo"] = hf.meminfo(mem)
        psi = next(iter(self._of("psi")), None)
        if psi is not None:
            out.update(hf.pressure(psi.values, psi.acc))
        if (vm := self._one("vmstat")) is not None:
            out["proc/vmstat"] = hf.vmstat(vm, mem)
        last_pid = 40_000 + int(self._t * 50)
        if load is not None:
            out["proc/loadavg"] = hf.loadavg(load, last_pid)
        if pairs["cpu"]:
            out.update(self._cpu_files(load, last_pid))
        files, links = hf.hwmon(pairs["hwmon"])
        out.update(files)
        for name, v in pairs["edac"]:
            out.update(hf.edac(name, v))
        for dev in self.nvml.devices:
            for p in dev.spec.processes:
                if p.cgroup is not None:
                    out[f"proc/{p.pid}/cgroup"] = p.cgroup if p.cgroup.endswith("\n") else p.cgroup + "\n"
        out.update(self._files)
        for rel, text in out.items():
            self._write(self._path(rel), text)
        for rel, target in links.items():
            self._link(rel, target)

    def _cpu_files(self, load: dict[str, Any] | None, last_pid: int) -> dict[str, str]:
        packages = sorted(((o.name, o) for o in self._of("cpu")), key=lambda x: int(x[0]))
        numbers = hostfiles.cpu_numbers([(name, o.values) for name, o in packages])
        by_pkg = {int(name): o for name, o in packages}
        dt, self._cpu_t = self._t - self._cpu_t, self._t
        times = [(cpu, by_pkg[pkg].cpu_seconds(cpu, dt)) for cpu, pkg, _ in numbers]
        uptime = UPTIME0 + self._t
        scalars = {"intr": int(uptime * 900_000), "ctxt": int(uptime * 450_000), "btime": self._btime,
                   "processes": last_pid, "procs_running": max(1, int(float(load["runnable"]))) if load else 2,
                   "procs_blocked": 0, "softirq": int(uptime * 300_000)}
        out = {"proc/stat": hostfiles.proc_stat(times, scalars)}
        out.update(hostfiles.cpu_sysfs(numbers, {pkg: o.values for pkg, o in by_pkg.items()}))
        return out

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
        tails /dev/kmsg in a thread (the GPU and kernel collectors) a moment to read them in this tick: on an
        accelerated clock several ticks can pass within one poll of the reader, and lines read late are stamped
        late."""
        now = self.sim.advance()
        if self.name in KMSG_TAILERS and self.sim.kmsg_at is not None and now - self.sim.kmsg_at < 1e-6:
            time.sleep(KMSG_SETTLE)
        return self.inner.collect()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)
