"""agent.core.formatting: Go's strconv.FormatFloat(v, fmt, -1, 64), the exposition float, RFC 3339 times."""

import math
import random
import struct
from decimal import Decimal

import pytest

from agent.core.formatting import format_value, go_float, rfc3339

# Outputs of Go 1.21 strconv.FormatFloat(v, fmt, -1, 64) (fmt.Println(strconv.FormatFloat(...))).
GO = [
    (1e6, "g", "1e+06"),
    (123456.0, "g", "123456"),
    (1234567.0, "g", "1.234567e+06"),
    (0.0001, "g", "0.0001"),
    (0.00001, "g", "1e-05"),
    (0.1 + 0.2, "g", "0.30000000000000004"),
    (-0.0, "g", "-0"),
    (0.0, "g", "0"),
    (1e21, "g", "1e+21"),
    (-2.5, "g", "-2.5"),
    (1.0, "e", "1e+00"),
    (1234.5, "e", "1.2345e+03"),
    (-0.00125, "e", "-1.25e-03"),
    (5e-324, "e", "5e-324"),
    (1.7976931348623157e308, "e", "1.7976931348623157e+308"),
    (0.0, "e", "0e+00"),
    (1234.5, "E", "1.2345E+03"),
    (1e21, "f", "1000000000000000000000"),
    (1e-7, "f", "0.0000001"),
    (100.0, "f", "100"),
    (-0.0, "f", "-0"),
    (123.456, "f", "123.456"),
    (math.nan, "g", "NaN"),
    (math.inf, "e", "+Inf"),
    (-math.inf, "f", "-Inf"),
]


@pytest.mark.parametrize(("v", "fmt", "want"), GO)
def test_go_float_matches_go(v, fmt, want):
    assert go_float(v, fmt) == want


def test_go_float_f_subnormal_has_every_digit():
    assert go_float(5e-324, "f") == "0." + "0" * 323 + "5"


def test_go_float_round_trips_and_g_picks_e_or_f_like_go():
    rnd = random.Random(17)
    for _ in range(5000):
        v = struct.unpack("d", struct.pack("Q", rnd.getrandbits(64)))[0]
        if not math.isfinite(v):
            continue
        for fmt in "efgE":
            assert float(go_float(v, fmt)) == v, (v, fmt)
        exp = Decimal(repr(v)).adjusted()  # the decimal exponent of the shortest digits
        assert ("e" in go_float(v, "g")) == (exp < -4 or exp >= 6), v


def test_go_float_refuses_other_formats():
    with pytest.raises(ValueError):
        go_float(1.0, "x")


def test_format_value_is_the_exposition_spelling():
    assert [format_value(v) for v in (1.0, -2.0, 0.5, 1e6, 1e16, math.inf, -math.inf, math.nan)] == [
        "1", "-2", "0.5", "1000000", "1e+16", "+Inf", "-Inf", "NaN"]


def test_rfc3339():
    assert rfc3339(0) == "1970-01-01T00:00:00.000000Z"
    assert rfc3339(1700000000.25) == "2023-11-14T22:13:20.250000Z"
    assert rfc3339(None) == "0001-01-01T00:00:00Z"
