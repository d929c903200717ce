"""Hardware sensors from ``/sys/class/hwmon`` (node_exporter's hwmon collector, ``node_hwmon_*``).

Chip and sensor names, units and scaling are node_exporter's: temperatures and voltages in millidegrees /
millivolts scaled by 0.001, power and energy by 1e-6, fans in RPM, other elements as read. A chip is named
after its device link (``platform_coretemp_0``), else its ``name`` file, else its directory; chips that
share a name get a suffix. Include/exclude regexes are node_exporter's (unanchored) chip and sensor filters.
"""

from __future__ import annotations

import os
import re
from typing import Any

from pydantic import Field

from agent.core.config import CollectorConfig, Regex
from agent.core.errors import NoData
from agent.core.metrics import MetricSpec, Sample
from agent.core.paths import Paths
from agent.core.regex import compile_unanchored

NAME = "hwmon"
SENSOR_TYPES = frozenset(("vrm", "beep_enable", "update_interval", "in", "cpu", "fan", "pwm", "temp", "curr",
                          "power", "energy", "humidity", "intrusion", "freq"))
_FILENAME = re.compile(r"^(?P<type>[^0-9]+)(?P<id>[0-9]*)?(_(?P<property>.+))?$")
_INVALID = re.compile(r"[^a-z0-9:_]")
_L = ("chip", "sensor")

# The families a typical server exposes (the catalogue); chips with other elements add families by the same rules.
METRICS: list[MetricSpec] = [
    MetricSpec("node_hwmon_chip_names", "gauge", "Annotation metric for human-readable chip names",
               ("chip", "chip_name")),
    MetricSpec("node_hwmon_sensor_label", "gauge", "Label for given chip and sensor", ("chip", "sensor", "label")),
    MetricSpec("node_hwmon_temp_celsius", "gauge", "Hardware monitor for temperature (input)", _L),
    MetricSpec("node_hwmon_temp_max_celsius", "gauge", "Hardware monitor for temperature (max)", _L),
    MetricSpec("node_hwmon_temp_crit_celsius", "gauge", "Hardware monitor for temperature (crit)", _L),
    MetricSpec("node_hwmon_temp_crit_alarm_celsius", "gauge", "Hardware monitor for temperature (crit_alarm)", _L),
    MetricSpec("node_hwmon_temp_alarm", "gauge", "Hardware sensor alarm status (temp)", _L),
    MetricSpec("node_hwmon_in_volts", "gauge", "Hardware monitor for voltage (input)", _L),
    MetricSpec("node_hwmon_in_min_volts", "gauge", "Hardware monitor for voltage (min)", _L),
    MetricSpec("node_hwmon_in_max_volts", "gauge", "Hardware monitor for voltage (max)", _L),
    MetricSpec("node_hwmon_in_alarm", "gauge", "Hardware sensor alarm status (in)", _L),
    MetricSpec("node_hwmon_fan_rpm", "gauge", "Hardware monitor for fan revolutions per minute (input)", _L),
    MetricSpec("node_hwmon_fan_min_rpm", "gauge", "Hardware monitor for fan revolutions per minute (min)", _L),
    MetricSpec("node_hwmon_fan_max_rpm", "gauge", "Hardware monitor for fan revolutions per minute (max)", _L),
    MetricSpec("node_hwmon_fan_alarm", "gauge", "Hardware sensor alarm status (fan)", _L),
    MetricSpec("node_hwmon_power_watt", "gauge", "Hardware monitor for power usage in watts (input)", _L),
    MetricSpec("node_hwmon_power_average_watt", "gauge", "Hardware monitor for power usage in watts (average)", _L),
    MetricSpec("node_hwmon_curr_amps", "gauge", "Hardware monitor for current (input)", _L),
    MetricSpec("node_hwmon_energy_joule_total", "counter", "Hardware monitor for joules used so far (input)", _L),
    MetricSpec("node_hwmon_freq_freq_mhz", "gauge", "Hardware monitor for GPU frequency in MHz", _L),
]


def clean_name(name: str) -> str:
    """node_exporter's cleanMetricName: lower case, invalid characters to ``_``, trimmed of ``_``."""
    return _INVALID.sub("_", name.lower()).strip("_")


def explode(filename: str) -> tuple[str, int, str] | None:
    """``temp1_input`` -> (``temp``, 1, ``input``); None when the name is not a sensor file."""
    m = _FILENAME.match(filename)
    if m is None:
        return None
    return m["type"], int(m["id"]) if m["id"] else 0, m["property"] or ""


def element_samples(chip: str, sensor: str, stype: str, data: dict[str, str]) -> list[Sample]:
    """The samples of one sensor's files ({property: raw text}), with node_exporter's naming and units."""
    labels = (("chip", chip), ("sensor", sensor))
    out: list[Sample] = []
    if "label" in data:
        out.append(Sample("node_hwmon_sensor_label", (*labels, ("label", data["label"])), 1.0))
    if stype == "beep_enable":
        return [*out, Sample("node_hwmon_beep_enabled", labels, 1.0 if data.get("") == "1" else 0.0)]
    if stype in ("vrm", "update_interval"):
        try:
            v = _float(data.get("", ""))
        except ValueError:
            return out
        if stype == "vrm":
            return [*out, Sample("node_hwmon_voltage_regulator_version", labels, v)]
        return [*out, Sample("node_hwmon_update_interval_seconds", labels, v * 0.001)]
    prefix = "node_hwmon_" + stype
    for element, raw in data.items():
        if element == "label":
            continue
        name = prefix
        if element == "input":
            if "" in data:
                name += "_input"
        elif element:
            name += "_" + clean_name(element)
        try:
            v = _float(raw)
        except ValueError:
            continue
        if element in ("fault", "alarm"):
            out.append(Sample(name, labels, v))
        elif element == "beep":
            out.append(Sample(name + "_enabled", labels, v))
        elif stype in ("in", "cpu"):
            out.append(Sample(name + "_volts", labels, v * 0.001))
        elif stype == "temp" and element != "type":
            out.append(Sample(name + "_celsius", labels, v * 0.001))
        elif stype == "curr":
            out.append(Sample(name + "_amps", labels, v * 0.001))
        elif stype == "energy":
            out.append(Sample(name + "_joule_total", labels, v / 1000000.0))
        elif stype == "power" and element == "accuracy":
            out.append(Sample(name, labels, v / 1000000.0))
        elif stype == "power" and element in ("average_interval", "average_interval_min", "average_interval_max"):
            out.append(Sample(name + "_seconds", labels, v * 0.001))
        elif stype == "power":
            out.append(Sample(name + "_watt", labels, v / 1000000.0))
        elif stype == "humidity":
            out.append(Sample(name, labels, v / 1000000.0))
        elif stype == "fan" and element in ("input", "min", "max", "target"):
            out.append(Sample(name + "_rpm", labels, v))
        elif stype == "freq":
            if element == "input" and "label" in data:
                out.append(Sample(name + "_freq_mhz", (("chip", chip), ("sensor", clean_name(data["label"]))),
                                  v / 1000000.0))
        else:
            out.append(Sample(name, labels, v))
    return out


def _float(text: str) -> float:
    if text.strip().lower() in ("nan", "inf", "+inf", "-inf", "infinity"):
        return float(text)
    return float(text)


def _read(path: str) -> str | None:
    """One sensor file: at most 128 bytes in one read, trailing newlines trimmed (node_exporter's sysReadFile)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        return os.read(fd, 128).decode("utf-8", "replace").strip("\n")
    except OSError:
        return None
    finally:
        os.close(fd)


def sensor_files(directory: str, files: dict[str, list[tuple[str, str]]]) -> None:
    """The sensor files of a chip directory: {sensor: [(property, path)]} (a later directory's file wins)."""
    try:
        names = sorted(os.listdir(directory))
    except OSError:
        return
    for filename in names:
        parts = explode(filename)
        if parts is None or parts[0] not in SENSOR_TYPES:
            continue
        props = files.setdefault(f"{parts[0]}{parts[1]}", [])
        props[:] = [(p, path) for p, path in props if p != parts[2]]
        props.append((parts[2], os.path.join(directory, filename)))


def chip_name(directory: str) -> str | None:
    """node_exporter's hwmonName: device link (type_name), else the name file, else the directory name."""
    device = os.path.join(directory, "device")
    if os.path.exists(device):
        real = os.path.realpath(device)
        prefix, dev_name = os.path.split(real)
        dev_type = os.path.basename(prefix.rstrip("/"))
        name, kind = clean_name(dev_name), clean_name(dev_type)
        if kind and name:
            return f"{kind}_{name}"
        if name:
            return name
    text = _read(os.path.join(directory, "name"))
    if text:
        cleaned = clean_name(text)
        if cleaned:
            return cleaned
    cleaned = clean_name(os.path.basename(os.path.realpath(directory)))
    return cleaned or None


class HwmonConfig(CollectorConfig):
    """hwmon settings: node_exporter's (unanchored) chip and sensor include/exclude regexes."""

    chip_include: Regex | None = Field(None, description="only chips whose name matches (search)")
    chip_exclude: Regex | None = Field(None, description="skip chips whose name matches (search)")
    sensor_include: Regex | None = Field(None, description="only sensors 'chip;sensor' matching (search)")
    sensor_exclude: Regex | None = Field(None, description="skip sensors 'chip;sensor' matching (search)")


def _rx(pattern: str | None) -> re.Pattern[str] | None:
    return compile_unanchored(pattern) if pattern else None   # RE2, as Go


def _ignored(name: str, include: re.Pattern[str] | None, exclude: re.Pattern[str] | None) -> bool:
    return bool((exclude is not None and exclude.search(name)) or (include is not None and not include.search(name)))


class HwmonCollector:
    """The ``hwmon`` collector (see module docstring)."""

    NAME = NAME
    Config = HwmonConfig
    metrics = METRICS

    def __init__(self, config: HwmonConfig, paths: Paths, *, relist_every: int = 12, **_deps: Any) -> None:
        self.name = NAME
        self._base = paths.sys("class", "hwmon")
        self._relist_every = max(1, relist_every)
        self._calls = 0
        # per chip: (chip, chip_names sample or None, [(sensor, type, [(property, path)])]); None = list again
        self._layout: list[tuple[str, Sample | None, list[tuple[str, str, list[tuple[str, str]]]]]] | None = None
        self._chip = (_rx(config.chip_include), _rx(config.chip_exclude))
        self._sensor = (_rx(config.sensor_include), _rx(config.sensor_exclude))

    def collect(self) -> list[Sample]:
        """One round; NoData without /sys/class/hwmon. Chips and sensor files are listed every ``relist_every``."""
        self._calls += 1
        if self._layout is None or self._calls % self._relist_every == 0:
            self._layout = self._list()
        out: list[Sample] = []
        for chip, names, sensors in self._layout:
            if names is not None:
                out.append(names)
            for sensor, stype, files in sensors:
                data = {}
                for prop, path in files:
                    value = _read(path)
                    if value is not None:
                        data[prop] = value
                if data:
                    out.extend(element_samples(chip, sensor, stype, data))
        return out

    def _list(self) -> list[tuple[str, Sample | None, list[tuple[str, str, list[tuple[str, str]]]]]]:
        try:
            names = sorted(os.listdir(self._base))
        except FileNotFoundError as err:
            raise NoData("no /sys/class/hwmon") from err
        except OSError as err:
            raise NoData(f"cannot list {self._base}: {err.strerror}") from err
        entries = []
        for n in names:
            d = os.path.join(self._base, n)
            if not os.path.isdir(d):
                continue
            base = chip_name(d)
            if base is None:
                continue
            entries.append((d, base, (_read(os.path.join(d, "name")) or "").strip()))
        chips: dict[str, int] = {}
        pairs: dict[tuple[str, str], int] = {}
        for _, base, name_file in entries:
            chips[base] = chips.get(base, 0) + 1
            pairs[(base, name_file)] = pairs.get((base, name_file), 0) + 1
        layout = []
        for d, base, name_file in entries:
            chip = base
            if chips[base] > 1:
                suffix = clean_name(name_file)
                if not suffix or pairs[(base, name_file)] > 1:
                    suffix = clean_name(os.path.basename(d))
                chip = f"{base}_{suffix}"
            if _ignored(chip, *self._chip):
                continue
            human = clean_name(name_file) if name_file else ""
            names_sample = (Sample("node_hwmon_chip_names", (("chip", chip), ("chip_name", human)), 1.0)
                            if human else None)
            files: dict[str, list[tuple[str, str]]] = {}
            for directory in (d, os.path.join(d, "device")):
                if directory != d and not os.path.isdir(directory):
                    continue
                sensor_files(directory, files)
            sensors = []
            for sensor, props in files.items():
                if _ignored(f"{chip};{sensor}", *self._sensor):
                    continue
                parts = explode(sensor)
                sensors.append((sensor, parts[0] if parts else sensor, props))
            layout.append((chip, names_sample, sensors))
        return layout
