"""The status page at ``/``: what an SRE opens on a sick node.

Loop health, collectors, pending and firing alerts, the last remediations with their outcome, and small history
charts of the key series, drawn as inline SVG from the in-memory store. Plain HTML and CSS (no JavaScript; a
``<meta refresh>`` keeps it live). The page is rendered at most once per tick and then served from memory, so
opening it on a struggling node costs about what a scrape costs. Every label value is escaped: it is data.
"""

from __future__ import annotations

import html
import itertools
import math
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from agent import __version__
from agent.engine.store import Store

Response = tuple[int, str, bytes]
CONTENT_TYPE = "text/html; charset=utf-8"
MAX_LINES = 8  # series per chart (the busiest ones)
MAX_POINTS = 120  # points per line (the history is thinned to this)
REMEDIATIONS = 15  # journal rows shown
PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf")
W, H, PAD_L, PAD_B = 360, 130, 46, 18


class PageSource(Protocol):
    """What the page reads from the running agent (the daemon satisfies it)."""

    store: Store

    def status(self) -> dict[str, Any]:
        """Loop and collector summary."""

    def api_alerts(self) -> dict[str, Any]:
        """Alerts in the Prometheus API shape."""

    def recent_remediations(self, limit: int) -> list[Any]:
        """The newest journal entries, newest first."""

    def hostname(self) -> str:
        """This node's name."""


@dataclass(frozen=True)
class Chart:
    """One history chart: a family, the label(s) naming its lines, and how to turn samples into values."""

    title: str
    metric: str
    unit: str
    by: tuple[str, ...]
    rate: bool = False  # counter: per-second rate between consecutive samples
    scale: float = 1.0


CHARTS = (
    Chart("GPU temperature", "DCGM_FI_DEV_GPU_TEMP", "°C", ("gpu",)),
    Chart("GPU power", "DCGM_FI_DEV_POWER_USAGE", "W", ("gpu",)),
    Chart("GPU utilisation", "DCGM_FI_DEV_GPU_UTIL", "%", ("gpu",)),
    Chart("GPU memory used", "DCGM_FI_DEV_FB_USED", "MiB", ("gpu",)),
    Chart("Disk busy", "node_disk_io_time_seconds_total", "%", ("device",), rate=True, scale=100.0),
    Chart("Network receive", "node_network_receive_bytes_total", "B/s", ("device",), rate=True),
    Chart("Network transmit", "node_network_transmit_bytes_total", "B/s", ("device",), rate=True),
    Chart("InfiniBand receive", "node_infiniband_port_data_received_bytes_total", "B/s", ("device", "port"),
          rate=True),
    Chart("InfiniBand transmit", "node_infiniband_port_data_transmitted_bytes_total", "B/s", ("device", "port"),
          rate=True),
)


def esc(value: Any) -> str:
    """HTML-escape any value."""
    return html.escape(str(value), quote=True)


def human(v: float, unit: str = "") -> str:
    """A short number: 3 significant digits with an SI prefix for bytes and large values."""
    if v != v:
        return "NaN"
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    a = abs(v)
    for factor, prefix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if a >= factor and unit not in ("°C", "%"):
            return f"{v / factor:.3g}{prefix}{unit}"
    return f"{v:.3g}{unit}" if unit in ("%", "°C") else f"{v:.3g}{(' ' + unit) if unit else ''}".rstrip()


def rates(points: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    """Per-second increase between consecutive counter samples (a reset counts from zero)."""
    out = []
    for (t0, v0), (t1, v1) in itertools.pairwise(points):
        if t1 > t0:
            out.append((t1, ((v1 - v0) if v1 >= v0 else v1) / (t1 - t0)))
    return out


def thin(points: list[tuple[float, float]], limit: int = MAX_POINTS) -> list[tuple[float, float]]:
    """At most ``limit`` points, evenly strided, always keeping the newest."""
    if len(points) <= limit:
        return points
    step = len(points) / limit
    kept = [points[int(i * step)] for i in range(limit - 1)]
    return [*kept, points[-1]]


def chart_lines(store: Store, chart: Chart, start: float, end: float) -> tuple[list[tuple[str, list]], int]:
    """(name, points) of the chart's busiest lines, and how many series the family has."""
    family = store.family(chart.metric)
    lines = []
    for labels, series in family.items():
        pts = store.points(series, start, end)
        if chart.rate:
            pts = rates(pts)
        if chart.scale != 1.0:
            pts = [(t, v * chart.scale) for t, v in pts]
        pts = [(t, v) for t, v in pts if not math.isnan(v)]
        if pts:
            lines.append((_line_name(dict(labels), chart.by), pts))
    lines.sort(key=lambda line: (-max(v for _, v in line[1]), line[0]))
    return [(name, thin(pts)) for name, pts in lines[:MAX_LINES]], len(family)


def _line_name(labels: Mapping[str, str], by: tuple[str, ...]) -> str:
    return " ".join(f"{k}={labels[k]}" for k in by if k in labels) or "value"


def svg(chart: Chart, lines: list[tuple[str, list]], start: float, end: float) -> str:
    """An inline SVG line chart (no scripts), with min/max on the y axis and a legend of last values."""
    values = [v for _, pts in lines for _, v in pts]
    start = max(start, min(pts[0][0] for _, pts in lines))  # a young agent's history fills the width
    lo, hi = min(values), max(values)
    if chart.unit in ("%", "B/s", "W", "MiB") or lo > 0:
        lo = min(lo, 0.0)
    if hi - lo < 1e-9:
        hi = lo + 1.0
    span = max(end - start, 1e-9)

    def xy(t: float, v: float) -> str:
        x = PAD_L + (t - start) / span * (W - PAD_L - 4)
        y = 4 + (1 - (v - lo) / (hi - lo)) * (H - PAD_B - 8)
        return f"{x:.1f},{y:.1f}"

    parts = [f'<svg class="chart" viewBox="0 0 {W} {H}" width="{W}" height="{H}" role="img" '
             f'aria-label="{esc(chart.title)}">',
             f'<rect x="{PAD_L}" y="4" width="{W - PAD_L - 4}" height="{H - PAD_B - 8}" class="plot"/>',
             f'<text x="{PAD_L - 4}" y="12" class="axis" text-anchor="end">{esc(human(hi, chart.unit))}</text>',
             f'<text x="{PAD_L - 4}" y="{H - PAD_B - 4}" class="axis" text-anchor="end">'
             f'{esc(human(lo, chart.unit))}</text>',
             f'<text x="{PAD_L}" y="{H - 4}" class="axis">-{esc(_ago(span))}</text>',
             f'<text x="{W - 4}" y="{H - 4}" class="axis" text-anchor="end">now</text>']
    for i, (name, pts) in enumerate(lines):
        coords = " ".join(xy(t, v) for t, v in pts)
        parts.append(f'<polyline fill="none" stroke="{PALETTE[i % len(PALETTE)]}" stroke-width="1.5" '
                     f'points="{coords}"><title>{esc(name)}: {esc(human(pts[-1][1], chart.unit))}</title>'
                     "</polyline>")
    parts.append("</svg>")
    legend = "".join(f'<li><span class="swatch" style="background:{PALETTE[i % len(PALETTE)]}"></span>'
                     f"{esc(name)} <b>{esc(human(pts[-1][1], chart.unit))}</b></li>"
                     for i, (name, pts) in enumerate(lines))
    return "".join(parts) + f'<ul class="legend">{legend}</ul>'


def _ago(seconds: float) -> str:
    if seconds >= 3600:
        return f"{seconds / 3600:.3g}h"
    if seconds >= 60:
        return f"{seconds / 60:.3g}m"
    return f"{seconds:.0f}s"


def _when(ts: float | str | None) -> str:
    if ts is None or ts == "":
        return ""
    if isinstance(ts, str):  # RFC 3339 from the alerts API
        return ts.replace("T", " ")[:19]
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ts))


def _value(text: Any) -> str:
    try:
        return human(float(text))
    except (TypeError, ValueError):
        return str(text or "")


def _table(head: Iterable[str], rows: list[str], empty: str, cls: str) -> str:
    if not rows:
        return f'<p class="empty">{esc(empty)}</p>'
    th = "".join(f"<th>{esc(h)}</th>" for h in head)
    return f'<table class="{cls}"><thead><tr>{th}</tr></thead><tbody>{"".join(rows)}</tbody></table>'


def _labels(labels: Mapping[str, str], skip: tuple[str, ...] = ("alertname",)) -> str:
    return " ".join(f'<span class="label">{esc(k)}="{esc(v)}"</span>' for k, v in sorted(labels.items())
                    if k not in skip)


def collectors_html(status: Mapping[str, Any]) -> str:
    """One row per collector: its last round's outcome and duration, the error; those that failed to load."""
    rows = []
    for name, info in sorted(status.get("collectors", {}).items()):
        state = info.get("status") or "no round yet"
        if info.get("busy"):
            state += " (still running)"
        cls = "ok" if state in ("ok", "nodata") else "pending" if state == "no round yet" else "bad"
        d = info.get("duration_seconds")
        rows.append(f'<tr class="{cls}"><td>{esc(name)}</td><td>{esc(state)}</td>'
                    f"<td>{esc(f'{d * 1000:.3g} ms') if d is not None else ''}</td>"
                    f"<td>{esc(info.get('error') or '')}</td></tr>")
    for name, why in sorted(status.get("failed_collectors", {}).items()):
        rows.append(f'<tr class="bad"><td>{esc(name)}</td><td>failed to load</td><td></td><td>{esc(why)}</td></tr>')
    return _table(("collector", "last round", "took", "error"), rows, "No collector enabled.", "collectors")


def alerts_html(alerts: list[Mapping[str, Any]]) -> str:
    """Firing alerts first, then pending."""
    order = {"firing": 0, "pending": 1}
    rows = []
    for a in sorted(alerts, key=lambda a: (order.get(a.get("state", ""), 2), a.get("labels", {}).get("alertname", ""))):
        labels = a.get("labels", {})
        state = a.get("state", "")
        summary = a.get("annotations", {}).get("summary", "")
        rows.append(f'<tr class="{"bad" if state == "firing" else "pending"}"><td>{esc(state)}</td>'
                    f"<td><b>{esc(labels.get('alertname', '?'))}</b> {_labels(labels)}</td>"
                    f"<td>{esc(_value(a.get('value')))}</td><td>{esc(_when(a.get('activeAt')))}</td>"
                    f"<td>{esc(summary)}</td></tr>")
    return _table(("state", "alert", "value", "active since (UTC)", "summary"), rows,
                  "No alerts pending or firing.", "alerts")


_OUTCOME = {"succeeded": "ok", "planned": "pending", "started": "pending", "skipped": "muted", "reverted": "muted",
            "failed": "bad"}


def remediations_html(entries: list[Any]) -> str:
    """The newest journal rows: what was decided, and how it ended."""
    rows = []
    for e in entries:
        rows.append(f'<tr class="{_OUTCOME.get(e.status, "")}"><td>{e.id}</td><td>{esc(_when(e.updated))}</td>'
                    f"<td>{esc(e.op)} {esc(e.action)}</td><td>{esc(e.target)}</td><td>{esc(e.status)}</td>"
                    f"<td>{esc(e.mode)}</td><td>{esc(e.reason)}</td><td>{esc(e.alertname)}</td></tr>")
    return _table(("id", "updated (UTC)", "action", "target", "outcome", "mode", "reason", "alert"), rows,
                  "No remediation decided yet.", "remediations")


def charts_html(store: Store, now: float) -> str:
    """Every chart that has data; the families without any are listed once."""
    start = now - store.retention
    blocks, missing = [], []
    with store.lock:
        for chart in CHARTS:
            lines, total = chart_lines(store, chart, start, now)
            if not lines:
                missing.append(chart.title)
                continue
            more = f" (busiest {len(lines)} of {total})" if total > len(lines) else ""
            blocks.append(f'<figure><figcaption>{esc(chart.title)} <small>{esc(chart.metric)}'
                          f'{" rate" if chart.rate else ""}{esc(more)}</small></figcaption>'
                          f"{svg(chart, lines, start, now)}</figure>")
    note = f'<p class="empty">No data for: {esc(", ".join(missing))}.</p>' if missing else ""
    return f'<div class="charts">{"".join(blocks)}</div>{note}'


STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:1em 2em;color:#222}
h1{font-size:1.4em;margin:.2em 0}h2{font-size:1.1em;margin:1.2em 0 .4em;border-bottom:1px solid #ddd}
.banner{padding:.5em .8em;border-radius:4px}.banner.ok{background:#e6f4ea}.banner.bad{background:#fce8e6}
table{border-collapse:collapse}td,th{padding:2px 8px;text-align:left;vertical-align:top;border-bottom:1px solid #eee}
tr.ok td:nth-child(2),tr.ok td:nth-child(5){color:#137333}tr.bad{background:#fce8e6}tr.pending{background:#fef7e0}
tr.muted{color:#777}.label{font:12px monospace;background:#f1f3f4;padding:0 3px;margin-right:3px;border-radius:2px}
.empty{color:#555}.charts{display:flex;flex-wrap:wrap;gap:12px}figure{margin:0}
figcaption{font-weight:600}figcaption small{font-weight:400;color:#666}
.plot{fill:#fafafa;stroke:#ccc}.axis{font:10px sans-serif;fill:#555}
.legend{list-style:none;padding:0;margin:0;font-size:12px;max-width:360px}
.legend li{display:inline-block;margin-right:8px}
.swatch{display:inline-block;width:10px;height:10px;margin-right:3px}footer{margin-top:2em;color:#666}
"""


class StatusPage:
    """Renders the page at most once per tick; a request in the same tick gets the cached bytes."""

    def __init__(self, source: PageSource, refresh: Callable[[], float] = lambda: 5.0) -> None:
        self.source = source
        self.refresh = refresh
        self._lock = threading.Lock()
        self._key: tuple[int, int] | None = None
        self._body = b""

    def response(self) -> Response:
        """The route handler for ``/``."""
        store = self.source.store
        key = (id(store), store.tick)
        with self._lock:
            if key != self._key:
                self._body = self.render().encode()
                self._key = key
            return 200, CONTENT_TYPE, self._body

    def render(self) -> str:
        """The whole page."""
        src = self.source
        store = src.store
        status = src.status()
        alerts = src.api_alerts().get("data", {}).get("alerts", [])
        firing = sum(1 for a in alerts if a.get("state") == "firing")
        pending = sum(1 for a in alerts if a.get("state") == "pending")
        host = src.hostname()
        healthy = bool(status.get("healthy"))
        facts = [f"mode <b>{esc(status.get('mode', ''))}</b>",
                 "remediation <b>PAUSED</b>" if status.get("remediation_paused") else "",
                 f"{status.get('remediations_in_progress', 0)} remediation(s) in progress",
                 f"{status.get('series', 0)} series", f"{status.get('ticks', 0)} ticks",
                 f"last tick {esc(_when(store.now)) if store.tick >= 0 else 'none yet'} UTC"]
        banner = (f'<p class="banner {"ok" if healthy else "bad"}"><b>{"healthy" if healthy else "UNHEALTHY"}</b>: '
                  f"{esc(status.get('health', ''))} &middot; {firing} firing, {pending} pending &middot; "
                  + " &middot; ".join(f for f in facts if f) + "</p>")
        links = " &middot; ".join(f'<a href="{p}">{p}</a>' for p in
                                  ("/metrics", "/healthz", "/api/v1/status", "/api/v1/alerts", "/api/v1/rules"))
        return (
            "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">"
            f'<meta http-equiv="refresh" content="{max(5, round(self.refresh()))}">'
            f"<title>nodewarden {esc(host)}{' (' + str(firing) + ' firing)' if firing else ''}</title>"
            f"<style>{STYLE}</style></head><body>"
            f"<h1>nodewarden on {esc(host)}</h1>{banner}"
            f'<h2 id="alerts">Alerts</h2>{alerts_html(alerts)}'
            f'<h2 id="collectors">Collectors</h2>{collectors_html(status)}'
            f'<h2 id="remediations">Last remediations</h2>{remediations_html(src.recent_remediations(REMEDIATIONS))}'
            f'<h2 id="history">History <small>(last {esc(_ago(store.retention))})</small></h2>'
            f"{charts_html(store, store.now)}"
            f"<footer>nodewarden {esc(__version__)} &middot; {links}</footer></body></html>\n"
        )

