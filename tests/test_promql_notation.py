"""promtool input-series notation and the Store loader."""

from __future__ import annotations

import math

import pytest

from agent.engine.promql import PromQLError
from agent.engine.promql.series_notation import load_series, parse_series, parse_values
from agent.engine.store import Store, is_absent, is_stale


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1 2 3", [1.0, 2.0, 3.0]),
        ("0+10x3", [0.0, 10.0, 20.0, 30.0]),
        ("-2-0.5x2", [-2.0, -2.5, -3.0]),
        ("3x2", [3.0, 3.0, 3.0]),
        ("3x0", [3.0]),
        ("_", [None]),
        ("_x3", [None, None, None]),
        ("_x0 1", [1.0]),
        ("1 stale 2", [1.0, "stale", 2.0]),
        ("+3 .5 1e3 1E3 1.", [3.0, 0.5, 1000.0, 1000.0, 1.0]),
        ("0x10", [0.0] * 11),  # promtool: 0 repeated, not hex
        ("  1   2  ", [1.0, 2.0]),
        ("", []),
    ],
)
def test_parse_values(text: str, expected: list) -> None:
    assert parse_values(text) == expected


def test_parse_values_special_floats() -> None:
    values = parse_values("Inf -Inf +Inf inf NaN nan Inf+1x1")
    assert values[:4] == [math.inf, -math.inf, math.inf, math.inf]
    assert all(math.isnan(v) for v in values[4:6])
    assert values[6:] == [math.inf, math.inf]


def test_expansion_accumulates_like_go() -> None:
    # promtool adds the increment repeatedly (a += b), so rounding error accumulates
    values = parse_values("0.1+0.1x3")
    assert values == [0.1, 0.1 + 0.1, 0.1 + 0.1 + 0.1, 0.1 + 0.1 + 0.1 + 0.1]
    assert values[2] != 0.3


@pytest.mark.parametrize("bad", ["1+-1x1", "0x1f", "1_000", "stalex2", "abc", "1+1", "x3", "1x"])
def test_parse_values_rejects(bad: str) -> None:
    with pytest.raises(PromQLError, match="invalid series value"):
        parse_values(bad)


def test_parse_series_forms() -> None:
    assert parse_series('up{job="a",instance="x:1"} 1 _ stale') == (
        "up",
        {"job": "a", "instance": "x:1"},
        [1.0, None, "stale"],
    )
    assert parse_series('{__name__="m", l="v"}', "2x1") == ("m", {"l": "v"}, [2.0, 2.0])
    assert parse_series('m{l="a\\"b"}', "1") == ("m", {"l": 'a"b'}, [1.0])


@pytest.mark.parametrize("bad", ['m{l=~"x"}', "m[5m]", "sum(m)", '{l="v"}', "m offset 1m"])
def test_parse_series_rejects(bad: str) -> None:
    with pytest.raises(PromQLError, match="invalid series"):
        parse_series(bad, "1")


def test_load_series_blank_stale_and_early_end() -> None:
    store = load_series(
        Store,
        [
            {"series": 'a{k="1"}', "values": "1 _ 3 stale 5"},
            {"series": "short", "values": "7"},
        ],
        60,
    )
    (a,) = store.family("a").values()
    (short,) = store.family("short").values()
    assert store.now == 240
    # `_` leaves no sample and no staleness marker: the lookback still finds the previous sample
    assert store.instant(a, 60, 300) == (0.0, 1.0)
    assert store.points(a, -1, 240) == [(0.0, 1.0), (120.0, 3.0), (240.0, 5.0)]
    # `stale` is a staleness marker: nothing at 180
    assert store.instant(a, 180, 300) is None
    # a series that ends early is not stale afterwards (promtool writes nothing after its last value)
    assert store.instant(short, 240, 300) == (0.0, 7.0)
    raw = short.values[store.tick % store.capacity]
    assert is_absent(raw) and not is_stale(raw)


def test_load_series_end_extends_ticks_and_retention_holds_all() -> None:
    store = load_series(Store, [{"series": "m", "values": "0+1x100"}], 15, end=3600)
    (m,) = store.family("m").values()
    assert store.now == 3600
    assert len(store.points(m, -1, 3600)) == 101
    assert store.instant(m, 1799, 300) == (1500.0, 100.0)
