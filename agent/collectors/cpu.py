"""CPU time, topology, frequency and throttling (node_exporter's cpu + cpufreq collectors).

``/proc/stat`` per-CPU times in seconds (USER_HZ 100, node_exporter's ``ticks / 100``) with node_exporter's
guard against counters that jump backwards (a hotplugged CPU restarts from zero only when idle drops by 3 s
or more); ``/sys/devices/system/cpu`` thermal throttle counts, isolated CPUs and cpufreq scaling; with
``info: true`` (or an include regex) ``/proc/cpuinfo`` info, frequency, flags and bugs;
with ``vulnerabilities: true`` node_exporter's cpu_vulnerabilities family.

Difference: node_exporter's cpufreq ``node_cpu_frequency_hertz{cpu}`` (from ``cpuinfo_cur_freq``, root only)
shares its name with the cpuinfo family ``{package,core,cpu}``; only the cpuinfo one is exported here.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any

from pydantic import Field

from agent.collectors.common import read_all, read_attr
from agent.core.config import CollectorConfig, Regex
from agent.core.errors import CollectorError, NoData
from agent.core.metrics import Labels, MetricSpec, Sample
from agent.core.paths import Paths
from agent.core.regex import compile_unanchored

NAME = "cpu"
USER_HZ = 100.0
JUMP_BACK_SECONDS = 3.0
MODES = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")  # /proc/stat column order
_G, _C = "gauge", "counter"

SECONDS = MetricSpec("node_cpu_seconds_total", _C, "Seconds the CPUs spent in each mode.", ("cpu", "mode"))
GUEST = MetricSpec("node_cpu_guest_seconds_total", _C, "Seconds the CPUs spent in guests (VMs) for each mode.",
                   ("cpu", "mode"))
INFO = MetricSpec("node_cpu_info", _G, "CPU information from /proc/cpuinfo.",
                  ("package", "core", "cpu", "vendor", "family", "model", "model_name", "microcode", "stepping",
                   "cachesize"))
FREQ = MetricSpec("node_cpu_frequency_hertz", _G, "CPU frequency in hertz from /proc/cpuinfo.",
                  ("package", "core", "cpu"))
FLAG = MetricSpec("node_cpu_flag_info", _G,
                  "The `flags` field of CPU information from /proc/cpuinfo taken from the first core.", ("flag",))
BUG = MetricSpec("node_cpu_bug_info", _G,
                 "The `bugs` field of CPU information from /proc/cpuinfo taken from the first core.", ("bug",))
CORE_THROTTLE = MetricSpec("node_cpu_core_throttles_total", _C, "Number of times this CPU core has been throttled.",
                           ("package", "core"))
PKG_THROTTLE = MetricSpec("node_cpu_package_throttles_total", _C,
                          "Number of times this CPU package has been throttled.", ("package",))
ISOLATED = MetricSpec("node_cpu_isolated", _G,
                      "Whether each core is isolated, information from /sys/devices/system/cpu/isolated.", ("cpu",))
# cpufreq: (sysfs file, spec); kHz -> Hz
FREQ_FILES: tuple[tuple[str, MetricSpec], ...] = (
    ("cpuinfo_min_freq", MetricSpec("node_cpu_frequency_min_hertz", _G, "Minimum CPU thread frequency in hertz.",
                                    ("cpu",))),
    ("cpuinfo_max_freq", MetricSpec("node_cpu_frequency_max_hertz", _G, "Maximum CPU thread frequency in hertz.",
                                    ("cpu",))),
    ("scaling_cur_freq", MetricSpec("node_cpu_scaling_frequency_hertz", _G,
                                    "Current scaled CPU thread frequency in hertz.", ("cpu",))),
    ("scaling_min_freq", MetricSpec("node_cpu_scaling_frequency_min_hertz", _G,
                                    "Minimum scaled CPU thread frequency in hertz.", ("cpu",))),
    ("scaling_max_freq", MetricSpec("node_cpu_scaling_frequency_max_hertz", _G,
                                    "Maximum scaled CPU thread frequency in hertz.", ("cpu",))),
)
GOVERNOR = MetricSpec("node_cpu_scaling_governor", _G, "Current enabled CPU frequency governor.", ("cpu", "governor"))
VULN = MetricSpec("node_cpu_vulnerabilities_info", _G,
                  "Details of each CPU vulnerability reported by sysfs. The value of the series is an int encoded "
                  "state of the vulnerability. The same state is stored as a string in the label",
                  ("codename", "state", "mitigation"))
METRICS = [SECONDS, GUEST, INFO, FREQ, FLAG, BUG, CORE_THROTTLE, PKG_THROTTLE, ISOLATED,
           *(spec for _, spec in FREQ_FILES), GOVERNOR, VULN]


# -- pure parsers ------------------------------------------------------------------------------------------------
def parse_cpu_times(text: str) -> dict[str, list[float]]:
    """``/proc/stat`` cpuN lines to {N: [user..steal, guest, guest_nice] in seconds}."""
    out: dict[str, list[float]] = {}
    for line in text.splitlines():
        if not line.startswith("cpu") or line.startswith("cpu "):
            continue
        fields = line.split()
        cpu = fields[0][3:]
        try:
            values = [float(int(x)) / USER_HZ for x in fields[1:11]]
        except ValueError:
            continue
        out[cpu] = values + [0.0] * (10 - len(values))
    return out


def parse_cpuinfo(text: str) -> list[dict[str, str]]:
    """``/proc/cpuinfo`` as one {key: value} per processor block."""
    out: list[dict[str, str]] = []
    cur: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            if cur:
                out.append(cur)
                cur = {}
            continue
        key, sep, value = line.partition(":")
        if sep:
            key = key.strip()
            if key == "processor" and cur:
                out.append(cur)
                cur = {}
            cur[key] = value.strip()
    if cur:
        out.append(cur)
    return [c for c in out if "processor" in c]


def parse_cpu_list(text: str) -> list[int]:
    """A kernel CPU list (``1,3-5,9``) to the CPU numbers."""
    out: list[int] = []
    for part in text.strip().split(","):
        if not part:
            continue
        lo, sep, hi = part.partition("-")
        out.extend(range(int(lo), int(hi) + 1) if sep else [int(lo)])
    return out


def parse_vulnerability(text: str) -> tuple[str, str]:
    """A sysfs vulnerability line to (state, mitigation), as procfs encodes it."""
    text = text.strip()
    if text == "Not affected":
        return "not affected", ""
    if text == "Vulnerable":
        return "vulnerable", ""
    if text.startswith("Mitigation: "):
        return "mitigation", text[len("Mitigation: "):]
    if text.startswith("Vulnerable: "):
        return "vulnerable", text[len("Vulnerable: "):]
    return "unknown", text


class CpuConfig(CollectorConfig):
    """CPU collector settings (node_exporter's cpu + cpufreq flags)."""

    guest: bool = Field(True, description="export node_cpu_guest_seconds_total")
    info: bool = Field(False, description="export node_cpu_info and node_cpu_frequency_hertz from /proc/cpuinfo")
    flags_include: Regex | None = Field(None, description="node_cpu_flag_info for flags matching this (implies info)")
    bugs_include: Regex | None = Field(None, description="node_cpu_bug_info for bugs matching this (implies info)")
    cpufreq: bool = Field(True, description="export cpufreq scaling frequencies and governors")
    vulnerabilities: bool = Field(False, description="export node_cpu_vulnerabilities_info")


class CpuCollector:
    """The ``cpu`` collector (see module docstring)."""

    NAME = NAME
    Config = CpuConfig
    metrics = METRICS

    def __init__(self, config: CpuConfig, paths: Paths, **_deps: Any) -> None:
        self.name = NAME
        self._cfg = config
        self._paths = paths
        self._info = config.info or config.flags_include is not None or config.bugs_include is not None
        self._flags = compile_unanchored(config.flags_include) if config.flags_include else None   # RE2, as Go
        self._bugs = compile_unanchored(config.bugs_include) if config.bugs_include else None
        self._stats: dict[str, list[float]] = {}
        self._labels: dict[tuple[str, str, str], Labels] = {}

    def collect(self) -> list[Sample]:
        """One round."""
        path = self._paths.proc("stat")
        try:
            times = parse_cpu_times(read_all(path).decode("ascii", "replace"))
        except FileNotFoundError as err:  # not Linux, or a fixture tree without it
            raise NoData(f"no {path}") from err
        except OSError as err:
            raise CollectorError(f"cannot read {path}: {err.strerror}") from err
        out: list[Sample] = []
        if self._info:
            self._cpuinfo(out)
        self._times(times, out)
        self._isolated(out)
        self._throttles(out)
        if self._cfg.cpufreq:
            self._cpufreq(out)
        if self._cfg.vulnerabilities:
            self._vulnerabilities(out)
        return out

    def _label(self, kind: str, cpu: str, mode: str) -> Labels:
        key = (kind, cpu, mode)
        labels = self._labels.get(key)
        if labels is None:
            labels = self._labels[key] = (("cpu", cpu), ("mode", mode))
        return labels

    def _times(self, times: dict[str, list[float]], out: list[Sample]) -> None:
        stats = self._stats
        for cpu, new in times.items():
            old = stats.get(cpu)
            if old is None or old[3] - new[3] >= JUMP_BACK_SECONDS:  # new CPU or hotplug: start over
                old = [0.0] * 10
            stats[cpu] = [n if n >= o else o for n, o in zip(new, old, strict=True)]  # never backwards
        for cpu in [c for c in stats if c not in times]:
            del stats[cpu]
        for cpu, v in stats.items():
            for k, mode in enumerate(MODES):
                out.append(Sample(SECONDS.name, self._label("s", cpu, mode), v[k]))
            if self._cfg.guest:
                out.append(Sample(GUEST.name, self._label("g", cpu, "user"), v[8]))
                out.append(Sample(GUEST.name, self._label("g", cpu, "nice"), v[9]))

    def _cpuinfo(self, out: list[Sample]) -> None:
        path = self._paths.proc("cpuinfo")
        try:
            cpus = parse_cpuinfo(read_all(path).decode("utf-8", "replace"))
        except OSError as err:
            raise CollectorError(f"cannot read {path}: {err.strerror}") from err
        for c in cpus:
            g = c.get
            out.append(Sample(INFO.name, (("package", g("physical id", "")), ("core", g("core id", "")),
                                          ("cpu", g("processor", "")), ("vendor", g("vendor_id", "")),
                                          ("family", g("cpu family", "")), ("model", g("model", "")),
                                          ("model_name", g("model name", "")), ("microcode", g("microcode", "")),
                                          ("stepping", g("stepping", "")), ("cachesize", g("cache size", ""))), 1.0))
        for c in cpus:
            try:
                mhz = float(c.get("cpu MHz", ""))
            except ValueError:
                continue
            out.append(Sample(FREQ.name, (("package", c.get("physical id", "")), ("core", c.get("core id", "")),
                                          ("cpu", c.get("processor", ""))), mhz * 1e6))
        if cpus:
            first = cpus[0]
            for key, regex, spec, label in (("flags", self._flags, FLAG, "flag"), ("bugs", self._bugs, BUG, "bug")):
                if regex is None:
                    continue
                for value in first.get(key, "").split():
                    if regex.search(value):
                        out.append(Sample(spec.name, ((label, value),), 1.0))

    def _cpu_dirs(self) -> list[tuple[str, str]]:
        base = self._paths.sys("devices", "system", "cpu")
        try:
            names = [n for n in os.listdir(base) if n.startswith("cpu") and n[3:].isdigit()]
        except OSError:
            return []
        return [(n[3:], os.path.join(base, n)) for n in sorted(names, key=lambda n: int(n[3:]))]

    def _isolated(self, out: list[Sample]) -> None:
        try:
            cpus = parse_cpu_list(read_attr(self._paths.sys("devices", "system", "cpu", "isolated")).decode())
        except (OSError, ValueError):
            return
        out.extend(Sample(ISOLATED.name, (("cpu", str(c)),), 1.0) for c in cpus)

    def _throttles(self, out: list[Sample]) -> None:
        packages: dict[int, int] = {}
        cores: dict[tuple[int, int], int] = {}
        for _, d in self._cpu_dirs():
            try:
                pkg = int(read_attr(os.path.join(d, "topology", "physical_package_id")))
                core = int(read_attr(os.path.join(d, "topology", "core_id")))
            except (OSError, ValueError):
                continue
            if (pkg, core) not in cores:
                with contextlib.suppress(OSError, ValueError):
                    cores[(pkg, core)] = int(read_attr(os.path.join(d, "thermal_throttle", "core_throttle_count")))
            if pkg not in packages:
                with contextlib.suppress(OSError, ValueError):
                    packages[pkg] = int(read_attr(os.path.join(d, "thermal_throttle", "package_throttle_count")))
        out.extend(Sample(PKG_THROTTLE.name, (("package", str(p)),), float(v)) for p, v in packages.items())
        out.extend(Sample(CORE_THROTTLE.name, (("package", str(p)), ("core", str(c))), float(v))
                   for (p, c), v in cores.items())

    def _cpufreq(self, out: list[Sample]) -> None:
        for cpu, d in self._cpu_dirs():
            freq = os.path.join(d, "cpufreq")
            for fname, spec in FREQ_FILES:
                try:
                    khz = int(read_attr(os.path.join(freq, fname)))
                except (OSError, ValueError):
                    continue
                out.append(Sample(spec.name, (("cpu", cpu),), khz * 1000.0))
            try:
                governor = read_attr(os.path.join(freq, "scaling_governor")).decode().strip()
                available = read_attr(os.path.join(freq, "scaling_available_governors")).decode().strip()
            except OSError:
                continue
            if governor:
                for g in available.split(" "):
                    out.append(Sample(GOVERNOR.name, (("cpu", cpu), ("governor", g)), 1.0 if g == governor else 0.0))

    def _vulnerabilities(self, out: list[Sample]) -> None:
        base = self._paths.sys("devices", "system", "cpu", "vulnerabilities")
        try:
            names = sorted(os.listdir(base))
        except OSError:
            return
        for name in names:
            try:
                state, mitigation = parse_vulnerability(read_attr(os.path.join(base, name)).decode())
            except OSError:
                continue
            out.append(Sample(VULN.name, (("codename", name), ("state", state), ("mitigation", mitigation)), 1.0))
