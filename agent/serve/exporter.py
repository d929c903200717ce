"""Prometheus text exposition of the newest tick, rendered once per tick and served as cached bytes.

A scrape does no collection and no rendering: the sampling thread calls :meth:`Exporter.render` after
each tick, and HTTP handlers read :attr:`Exporter.body` (and a lazily gzipped copy).
"""

from __future__ import annotations

import gzip
import threading

from agent.core.formatting import format_value
from agent.core.metrics import MetricSpec
from agent.engine.store import Series, Store, is_absent

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_FALLBACK_HELP = "Series without a catalogue entry (e.g. a recording rule)."


def escape_label_value(value: str) -> str:
    """Escape backslash, double quote and newline as the text format requires."""
    if "\\" in value or '"' in value or "\n" in value:
        return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return value


def escape_help(text: str) -> str:
    """Escape backslash and newline in HELP text."""
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def series_prefix(series: Series) -> str:
    """``name{a="b"} `` for a series (cached on the series object)."""
    if not series.prefix:
        if series.labels:
            inner = ",".join(f'{k}="{escape_label_value(v)}"' for k, v in series.labels)
            series.prefix = f"{series.name}{{{inner}}} "
        else:
            series.prefix = f"{series.name} "
    return series.prefix


class Exporter:
    """Holds the catalogue and the latest rendered exposition."""

    def __init__(self) -> None:
        self._specs: dict[str, MetricSpec] = {}
        self._hidden: set[str] = set()
        self._lock = threading.Lock()
        self.body = b""
        self._gzipped: bytes | None = None
        self._headers: dict[str, str] = {}

    def register(self, specs: list[MetricSpec] | tuple[MetricSpec, ...], export: bool = True) -> None:
        """Declare metric families; ``export=False`` keeps them in the store but off /metrics."""
        for spec in specs:
            self._specs[spec.name] = spec
            if export:
                self._hidden.discard(spec.name)
            else:
                self._hidden.add(spec.name)

    def reset(self) -> None:
        """Forget the catalogue (before re-registering on reload)."""
        self._specs.clear()
        self._hidden.clear()
        self._headers.clear()

    def spec(self, name: str) -> MetricSpec | None:
        """The registered spec of a family, if any."""
        return self._specs.get(name)

    def _header(self, name: str) -> str:
        head = self._headers.get(name)
        if head is None:
            spec = self._specs.get(name)
            mtype = spec.type if spec else "untyped"
            if mtype == "info":
                mtype = "gauge"
            helptext = escape_help(spec.help if spec else _FALLBACK_HELP)
            head = self._headers[name] = f"# HELP {name} {helptext}\n# TYPE {name} {mtype}\n"
        return head

    def render(self, store: Store) -> bytes:
        """Render every exported family's series that were sampled in the newest tick."""
        tick = store.tick
        parts: list[str] = []
        hidden = self._hidden
        fmt = format_value
        for name in sorted(store.by_name):
            if name in hidden:
                continue
            lines = [
                series_prefix(s) + fmt(v)
                for s in store.by_name[name].values()
                if s.last_tick == tick and ((v := s.last) == v or not is_absent(v))
            ]
            if lines:
                parts.append(self._header(name))
                parts.append("\n".join(lines))
                parts.append("\n")
        body = "".join(parts).encode()
        with self._lock:
            self.body = body
            self._gzipped = None
        return body

    def gzipped(self) -> bytes:
        """The current body gzip-compressed (computed at most once per tick)."""
        with self._lock:
            if self._gzipped is None:
                self._gzipped = gzip.compress(self.body, compresslevel=1)
            return self._gzipped
