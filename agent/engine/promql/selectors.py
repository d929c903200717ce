"""Instant and range vector selectors over the Store (lookback, staleness, closed 2.42 windows)."""

from __future__ import annotations

from typing import Any

from agent.engine.promql.nodes import Clock, Node, VectorT
from agent.engine.promql.regex import RegexError, RegexUnsupported, compile_anchored
from agent.engine.promql.values import NAME, LabelDict, PromQLError, labels_key, ms
from agent.engine.store import is_absent, is_ring, is_stale, source_kind

LOOKBACK = 300.0


_EPS = 1e-4  # store timestamps are float seconds; Prometheus' windows are closed at the start (2.42)


class Matcher:
    """A precompiled label matcher."""

    __slots__ = ("name", "op", "test", "value")

    def __init__(self, name: str, op: str, value: str) -> None:
        self.name = name
        self.op = op
        self.value = value
        if op in ("=~", "!~"):
            try:
                pattern = compile_anchored(value)
            except RegexUnsupported as err:
                raise PromQLError(f"regular expression {value!r} in matcher is not supported: {err}") from err
            except RegexError as err:
                raise PromQLError(f"invalid regular expression {value!r} in matcher: {err}") from err
            match = pattern.match
            self.test = (lambda s: match(s) is not None) if op == "=~" else (lambda s: match(s) is None)
        elif op == "=":
            self.test = value.__eq__
        else:
            self.test = value.__ne__


class VectorSelector(Node):
    """``name{matchers} offset d @ t``: the newest sample within the lookback window, unless stale.

    ``at``: None (evaluate at the query's time), a time in seconds, or the query's :class:`Clock`
    (``@ start()`` / ``@ end()``: an instant query starts and ends at its evaluation time)."""

    def __init__(
        self, name: str | None, matchers: list[Matcher], offset: float, at: float | Clock | None = None
    ) -> None:
        self.name = name
        self.matchers = matchers
        self.offset = offset
        self.at = at
        self.eff: float | None = None  # 2.42's rewritten offset, for queries with @ inside a subquery (at242)
        self.clip: tuple[float, float] | None = None  # the data range such a query loaded
        self.single_name = name is not None
        self._cache_store: Any = None
        self._cache_version: Any = None
        self._cache: list[tuple[Any, LabelDict]] = []

    def select(self, store: Any) -> list[tuple[Any, LabelDict]]:
        """Matching series with their label dicts, in Prometheus label order; cached per series-set version."""
        version = store.version if source_kind(store)[0] else None
        if version is not None and self._cache_store is store and self._cache_version == version:
            return self._cache
        families = [(self.name, store.family(self.name))] if self.name is not None else list(store.by_name.items())
        matchers = self.matchers
        out = []
        for name, family in families:
            for labels_tuple, series in family.items():
                labels = {NAME: name}
                for k, v in labels_tuple:
                    if v != "":
                        labels[k] = v
                if all(m.test(labels.get(m.name, "")) for m in matchers):
                    out.append((series, labels))
        out.sort(key=lambda item: labels_key(item[1]))
        self._cache_store, self._cache_version, self._cache = store, version, out
        return out

    def _instants(self, store: Any, ref: float) -> list[tuple[LabelDict, float, float]]:
        """(labels, sample time, value) of every matching series with a sample in the lookback window
        ending at ``ref``."""
        lookback = LOOKBACK + _EPS
        selected = self.select(store)
        out = []
        tick_window = store.tick_window if is_ring(store) else None
        if self.clip is not None:  # only the samples the query loaded: (ref - lookback, ref] within the clip
            mint, maxt = self.clip
            lower = max(ref - LOOKBACK, mint)
            ref = min(ref, maxt)
            if ref < lower:
                return out
            lookback = ref - lower + _EPS
            tick_window = None
        if tick_window is None:
            for series, labels in selected:
                s = store.instant(series, ref, lookback)
                if s is not None:
                    out.append((labels, s[0], s[1]))
            return out
        # Ticks are shared by all series: find the newest tick at or before ref once.
        first, k = tick_window(ref - lookback, ref)
        if k < first:
            return out
        slot = k % store.capacity
        tk = store.tick_times(k, k)[0]
        for series, labels in selected:
            if series.last_tick < k:
                continue  # the series missed tick k: a staleness marker
            v = series.values[slot]
            if v == v:
                out.append((labels, tk, v))
                continue
            s = store.instant(series, ref, lookback)  # NaN: stale, absent (look further back) or a real NaN
            if s is not None:
                out.append((labels, s[0], s[1]))
        return out

    def ref_time(self, t: float) -> float:
        """The time this selector reads at when the query evaluates at ``t``: ``@`` time (or t) minus offset."""
        if self.eff is not None:
            return t - self.eff
        at = self.at
        if at is None:
            return t - self.offset
        return (at if at.__class__ is float else at.t) - self.offset

    def eval(self, store: Any, t: float) -> VectorT:
        return [(labels, v) for labels, _, v in self._instants(store, self.ref_time(t))]

    def eval_timestamps(self, store: Any, t: float, window: tuple[float, float] | None = None) -> VectorT:
        """Like eval, with the sample timestamps as values (for timestamp()).

        With ``@``, 2.42 reads at the ``@`` time itself (timestamp() overwrites the selector's offset) among the
        samples the selector loaded, ``window`` = (mint, maxt): the offset then shows only through that window."""
        at = self.at
        if at is None or window is None:
            return [(labels, ms(ts) / 1000) for labels, ts, _ in self._instants(store, self.ref_time(t))]
        ref = at if at.__class__ is float else at.t
        lower = max(ref - LOOKBACK, window[0])
        upper = min(ref, window[1])
        if upper < lower:
            return []
        out = []
        for series, labels in self.select(store):
            got = store.instant(series, upper, upper - lower + _EPS)
            if got is not None:
                out.append((labels, ms(got[0]) / 1000))
        return out


SeriesRange = tuple[LabelDict, list[float], list[float], bool]


class MatrixSelector(Node):
    """``selector[range]``: samples with ``end - range <= t <= end`` (closed in Prometheus 2.42)."""

    kind = "matrix"

    def __init__(self, vs: VectorSelector, range_s: float) -> None:
        self.vs = vs
        self.range = range_s
        self.single_name = vs.single_name
        self.memo: dict | None = None  # set by Query.eval when this selector occurs more than once

    def eval_series(self, store: Any, t: float) -> list[SeriesRange]:
        """(labels, times, values, clean) per matching series with samples in the window; clean: no NaN."""
        memo = self.memo
        if memo is None:
            return self._read(store, t)
        key = (id(store), t)
        got = memo.get(key)
        if got is None:
            got = memo[key] = self._read(store, t)
        return got

    def window(self, t: float) -> tuple[float, float]:
        end = self.vs.ref_time(t)
        return end - self.range, end

    def _read(self, store: Any, t: float) -> list[SeriesRange]:
        start, end = self.window(t)
        out: list[SeriesRange] = []
        selected = self.vs.select(store)
        ring = is_ring(store)
        tick_window = store.tick_window if ring else None
        if self.vs.clip is not None:  # only the samples the query loaded
            start, end = max(start, self.vs.clip[0]), min(end, self.vs.clip[1])
            if end < start:
                return out
            tick_window = None
        if tick_window is None:
            for series, labels in selected:
                pts = store.points(series, start - _EPS, end)
                if pts:
                    vals = [v for _, v in pts]
                    out.append((labels, [p[0] for p in pts], vals, not any(v != v for v in vals)))
            return out
        k0, k1 = tick_window(start - _EPS, end)
        if k1 < k0:
            return out
        marks = store.marks if ring else None
        times: list[float] | None = None
        for series, labels in selected:
            last = min(k1, series.last_tick)
            if last < k0:
                continue
            if times is None:
                times = store.tick_times(k0, k1)
            clean = marks is not None and marks(series)[0] < k0  # no NaN in the window: no scan needed
            got = ring_range(store, series, labels, k0, last, times, clean)
            if got is not None:
                out.append(got)
        return out

    def windows(self, store: Any, t: float) -> tuple[int, int] | None:
        """Ticks ``(k0, k1)`` of the window at ``t`` when the store supports :meth:`Store.marks`, else None."""
        if not is_ring(store) or self.vs.clip is not None:
            return None
        start, end = self.window(t)
        return store.tick_window(start - _EPS, end)


def ring_range(
    store: Any, series: Any, labels: LabelDict, k0: int, last: int, times: list[float], clean: bool = False
) -> SeriesRange | None:
    """One series' samples of ticks ``k0..last`` from the store's ring, without staleness markers and absent
    slots (real NaN samples stay); ``times`` are the timestamps of ticks ``k0..``; ``clean``: known NaN-free."""
    cap = store.capacity
    a, b = k0 % cap, last % cap
    ring = series.values
    vals = ring[a : b + 1].tolist() if a <= b else ring[a:].tolist() + ring[: b + 1].tolist()
    ts = times if len(vals) == len(times) else times[: len(vals)]
    if clean:
        return labels, ts, vals, True
    total = sum(vals)
    if total == total:
        return labels, ts, vals, True
    # NaN somewhere: drop staleness markers and absent slots, keep real NaN samples
    keep_t, keep_v = [], []
    for tk, v in zip(ts, vals, strict=True):
        if v != v and (is_stale(v) or is_absent(v)):
            continue
        keep_t.append(tk)
        keep_v.append(v)
    if keep_v:
        return labels, keep_t, keep_v, not any(v != v for v in keep_v)
    return None
