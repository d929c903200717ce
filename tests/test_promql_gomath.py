"""agent.engine.promql.gomath: Go's trigonometric/hyperbolic functions (promtool checks the values bit for bit
in tests/promql_corpus.yml); here, their special cases and the constants they are built from."""

from __future__ import annotations

import math
import random

import pytest

from agent.engine.promql import gomath as g

INF, NAN = math.inf, math.nan


def test_four_over_pi_digits_are_gos_table() -> None:
    # first and last words of mPi4 in Go's math/trig_reduce.go
    assert g._M_PI4_DIGITS[:3] == [0x1, 0x45F306DC9C882A53, 0xF84EAFA3EA69BB81]
    assert g._M_PI4_DIGITS[-1] == 0xAC06608DF8F6D757
    assert 4 / math.pi == g.FOUR_OVER_PI and g.PI3_4 == 2.356194490192345


@pytest.mark.parametrize(
    ("f", "x", "want"),
    [
        (g.go_sin, -0.0, -0.0), (g.go_sin, INF, NAN), (g.go_cos, -INF, NAN), (g.go_tan, 0.0, 0.0),
        (g.go_asin, 1.5, NAN), (g.go_acos, -2.0, NAN), (g.go_atan, INF, math.pi / 2), (g.go_atan, -0.0, -0.0),
        (g.go_sinh, -INF, -INF), (g.go_cosh, -INF, INF), (g.go_tanh, -INF, -1.0), (g.go_tanh, -0.0, -0.0),
        (g.go_asinh, -INF, -INF), (g.go_acosh, 0.5, NAN), (g.go_acosh, 1.0, 0.0), (g.go_atanh, 1.0, INF),
        (g.go_atanh, -1.0, -INF), (g.go_atanh, 1.5, NAN), (g.go_log1p, -1.0, -INF), (g.go_log1p, -2.0, NAN),
    ],
)  # fmt: skip
def test_special_cases(f, x: float, want: float) -> None:
    got = f(x)
    assert (got != got and want != want) or (got == want and math.copysign(1, got) == math.copysign(1, want))


def test_atan2_special_cases() -> None:
    assert g.go_atan2(NAN, 1) != g.go_atan2(NAN, 1)
    assert math.copysign(1, g.go_atan2(-0.0, 1.0)) < 0
    assert g.go_atan2(0.0, -1.0) == math.pi and g.go_atan2(-0.0, -0.0) == -math.pi
    assert g.go_atan2(INF, -INF) == g.PI3_4 and g.go_atan2(-INF, INF) == -math.pi / 4
    assert g.go_atan2(1.0, INF) == 0.0 and g.go_atan2(-1.0, -INF) == -math.pi


@pytest.mark.parametrize("name", ["sin", "cos", "tan", "atan", "asin", "sinh", "cosh", "tanh", "asinh", "log1p"])
def test_close_to_the_c_library(name: str) -> None:
    ours, ref = getattr(g, f"go_{name}"), getattr(math, name)
    rng = random.Random(name)
    for _ in range(2000):
        x = rng.uniform(-1, 1) * rng.choice([1e-6, 0.5, 1, 3, 20, 1e3, 1e9, 1e17])
        if name == "asin":
            x = max(-1.0, min(1.0, x))
        if name == "log1p":
            x = abs(x)
        if name in ("sinh", "cosh") and abs(x) > 700:
            continue
        a, b = ours(x), ref(x)
        # Go's Cephes reduction loses bits for large arguments (as Prometheus does): compare below 1e5
        tolerance = 1e-14 if name == "tan" else 1e-15  # Go's tan returns x itself for x*x <= 1e-14
        assert abs(a - b) <= tolerance * abs(b) or (name in ("sin", "cos", "tan") and abs(x) > 1e5), (x, a, b)
