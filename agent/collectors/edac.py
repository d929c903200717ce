"""Host memory ECC errors from ``/sys/devices/system/edac/mc`` (node_exporter's edac collector).

Per controller, per csrow (``csrow="unknown"`` carries the errors EDAC could not attribute) and per channel
with its DIMM label, in node_exporter's names and label spelling.
"""

from __future__ import annotations

import os
import re
from typing import Any

from agent.collectors.common import read_attr
from agent.core.config import CollectorConfig
from agent.core.errors import CollectorError, NoData
from agent.core.metrics import MetricSpec, Sample
from agent.core.paths import Paths

NAME = "edac"
_C = "counter"
METRICS: list[MetricSpec] = [
    MetricSpec("node_edac_correctable_errors_total", _C, "Total correctable memory errors.", ("controller",)),
    MetricSpec("node_edac_uncorrectable_errors_total", _C, "Total uncorrectable memory errors.", ("controller",)),
    MetricSpec("node_edac_csrow_correctable_errors_total", _C, "Total correctable memory errors for this csrow.",
               ("controller", "csrow")),
    MetricSpec("node_edac_csrow_uncorrectable_errors_total", _C, "Total uncorrectable memory errors for this csrow.",
               ("controller", "csrow")),
    MetricSpec("node_edac_channel_correctable_errors_total", _C, "Total correctable memory errors for this channel.",
               ("controller", "csrow", "channel", "dimm_label")),
    MetricSpec("node_edac_channel_uncorrectable_errors_total", _C,
               "Total uncorrectable memory errors for this channel.", ("controller", "csrow", "channel", "dimm_label")),
]
_CHANNEL = re.compile(r"^ch([0-9]*)_ce_count$")


def dimm_label(text: str) -> str:
    """node_exporter's DIMM label clean-up (``mc#0csrow#1channel#0`` -> ``mc0_csrow1_channel0``)."""
    return text.strip().replace("#", "").replace("csrow", "_csrow").replace("channel", "_channel")


def _count(path: str) -> float:
    return float(int(read_attr(path)))


def _numbered(base: str, prefix: str) -> list[tuple[str, str]]:
    try:
        names = os.listdir(base)
    except OSError:
        return []
    return sorted((n[len(prefix):], os.path.join(base, n)) for n in names
                  if n.startswith(prefix) and n[len(prefix):].isdigit())


class EdacConfig(CollectorConfig):
    """Host memory ECC counters (node_exporter edac)."""


class EdacCollector:
    """``node_edac_*`` counters."""

    NAME = NAME
    Config = EdacConfig
    metrics = METRICS

    def __init__(self, config: EdacConfig, paths: Paths, **_deps: Any) -> None:
        self.name = NAME
        self._base = paths.sys("devices", "system", "edac", "mc")

    def collect(self) -> list[Sample]:
        """One round; NoData without EDAC memory controllers."""
        controllers = _numbered(self._base, "mc")
        if not controllers:
            raise NoData("no EDAC memory controllers")
        out: list[Sample] = []
        try:
            for mc, d in controllers:
                c = (("controller", mc),)
                out.append(Sample("node_edac_correctable_errors_total", c, _count(os.path.join(d, "ce_count"))))
                out.append(Sample("node_edac_csrow_correctable_errors_total", (*c, ("csrow", "unknown")),
                                  _count(os.path.join(d, "ce_noinfo_count"))))
                out.append(Sample("node_edac_uncorrectable_errors_total", c, _count(os.path.join(d, "ue_count"))))
                out.append(Sample("node_edac_csrow_uncorrectable_errors_total", (*c, ("csrow", "unknown")),
                                  _count(os.path.join(d, "ue_noinfo_count"))))
                for row, rd in _numbered(d, "csrow"):
                    r = (*c, ("csrow", row))
                    out.append(Sample("node_edac_csrow_correctable_errors_total", r,
                                      _count(os.path.join(rd, "ce_count"))))
                    out.append(Sample("node_edac_csrow_uncorrectable_errors_total", r,
                                      _count(os.path.join(rd, "ue_count"))))
                    self._channels(rd, r, out)
        except (OSError, ValueError) as err:
            raise CollectorError(f"cannot read EDAC counters under {self._base}: {err}") from err
        return out

    @staticmethod
    def _channels(rd: str, r: tuple[tuple[str, str], ...], out: list[Sample]) -> None:
        for fname in sorted(os.listdir(rd)):
            m = _CHANNEL.match(fname)
            if m is None:
                continue
            ch = m[1]
            try:
                label = dimm_label(read_attr(os.path.join(rd, f"ch{ch}_dimm_label")).decode("utf-8", "replace"))
            except OSError:
                label = "unknown"
            labels = (*r, ("channel", ch), ("dimm_label", label))
            out.append(Sample("node_edac_channel_correctable_errors_total", labels, _count(os.path.join(rd, fname))))
            try:
                out.append(Sample("node_edac_channel_uncorrectable_errors_total", labels,
                                  _count(os.path.join(rd, f"ch{ch}_ue_count"))))
            except (OSError, ValueError):
                continue
