"""Randomized differential test: seeded random expressions over random promtool series, checked by promtool.

Complements the hand-written corpus with combinations nobody thought of. Generated shapes avoid what
promtool itself does not answer deterministically (it loads series in random order): topk/bottomk ties,
order-dependent float sums (sum only over raw, exactly summable samples; no avg/stddev aggregations),
and which two series a duplicate-series error names. ``@`` inside subqueries is generated too: there the
engine replays 2.42's own offset rewriting (agent/engine/promql/at242.py).
"""

from __future__ import annotations

import json
import os
import random
import re
from pathlib import Path
from typing import Any

import pytest

from agent.core.durations import parse_duration
from agent.engine.promql import PromQLError, compile_expr
from tests.test_promql_differential import build, go_duration, render, run_promtool

NAMES = ["a", "b", "c_total"]
# CI runs six seeds; NODEWARDEN_FUZZ_SEEDS=300 runs seeds 1..300 (a longer run; all agreed when last run, but
# min/max over a group holding NaN depends on the order promtool happens to load the series in)
SEEDS = list(range(1, int(os.environ.get("NODEWARDEN_FUZZ_SEEDS", "6")) + 1))
RANGE_FNS = [
    "rate", "irate", "increase", "delta", "idelta", "deriv", "changes", "resets", "avg_over_time", "min_over_time",
    "max_over_time", "sum_over_time", "count_over_time", "last_over_time", "stddev_over_time", "stdvar_over_time",
    "absent_over_time", "present_over_time",
]  # fmt: skip
INSTANT_FNS = [
    "abs", "ceil", "floor", "round", "clamp", "clamp_min", "clamp_max", "timestamp", "absent", "-", "label_replace",
    "label_join", "sort", "sgn", "exp", "sqrt", "ln", "log2", "log10", "deg", "rad", "year", "month",
    "day_of_month", "day_of_week", "day_of_year", "days_in_month", "hour", "minute", "histogram_quantile",
]  # fmt: skip


class Gen:
    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.in_subquery = 0

    def values(self) -> str:
        rng = self.rng
        parts: list[str] = []
        n = 0
        while n < 25:
            r = rng.random()
            if r < 0.5:
                k = rng.randint(0, 6)
                a = rng.choice([0, 1, 2, 5, 10, -3, 0.5])
                b = rng.choice([0, 1, 2, -1, 0.5, 3])
                parts.append(f"{a}+{b}x{k}" if b >= 0 else f"{a}{b}x{k}")
                n += k + 1
                continue
            if r < 0.6:
                parts.append("_")
            elif r < 0.67:
                parts.append("stale")
            elif r < 0.72:
                parts.append(rng.choice(["NaN", "Inf", "-Inf"]))
            else:
                parts.append(str(rng.choice([0, 1, 3, 7, 100, -2, 0.25])))
            n += 1
        return " ".join(parts)

    def series(self) -> list[dict[str, str]]:
        out = {}
        for name in NAMES:
            for i in range(self.rng.randint(1, 3)):
                text = f'{name}{{i="{i}",j="{self.rng.choice("xy")}"}}'
                out[text] = {"series": text, "values": self.values()}
        return list(out.values())

    def selector(self) -> str:
        rng = self.rng
        m = rng.choice(["", '{i="0"}', '{j=~"x|z"}', '{i!="1"}', '{j!~"y"}'])
        return rng.choice(NAMES) + m + rng.choice(["", "", "", " offset 1m", " offset 3m", " offset -1m"]) + self.at()

    def at(self) -> str:
        return self.rng.choice(["", "", "", "", " @ 300", " @ 610.5", " @ start()", " @ end()"])

    def range_selector(self, depth: int = 0) -> str:
        rng = self.rng
        if depth < 2 and rng.random() < 0.25:  # a subquery, with or without its own step
            r = rng.choice(["3m", "5m", "10m", "7m30s"])
            step = rng.choice(["", "1m", "30s", "2m", "45s"])
            offset = rng.choice(["", "", " offset 1m", " offset -2m"])
            at = self.at()
            self.in_subquery += 1
            inner = self.vector(depth + 1)
            self.in_subquery -= 1
            return f"({inner})[{r}:{step}]{offset}{at}"
        m = rng.choice(["", '{i="0"}', '{j=~"x"}'])
        r = rng.choice(["1m", "2m", "3m", "5m", "90s", "10m"])
        return f"{rng.choice(NAMES)}{m}[{r}]{rng.choice(['', '', ' offset 2m', ' offset -1m'])}{self.at()}"

    def vector(self, depth: int = 0) -> str:
        rng = self.rng
        r = rng.random()
        if depth > 2 or r < 0.3:
            return self.selector()
        if r < 0.5:
            f = rng.choice([*RANGE_FNS, "predict_linear", "quantile_over_time", "holt_winters"])
            if f == "predict_linear":
                return f"predict_linear({self.range_selector(depth)}, {rng.choice([60, 300, -120])})"
            if f == "quantile_over_time":
                return f"quantile_over_time({rng.choice([0, 0.3, 0.5, 1, 2, 'NaN'])}, {self.range_selector(depth)})"
            if f == "holt_winters":
                return f"holt_winters({self.range_selector(depth)}, {rng.choice([0.1, 0.5])}, {rng.choice([0.3, 0.9])})"
            return f"{f}({self.range_selector(depth)})"
        if r < 0.62:
            op = rng.choice(["min", "max", "count", "group", "quantile", "count_values", "sum"])
            g = rng.choice(["", " by (i)", " by (j)", " without (i)", " without (j)"])
            inner = self.selector() if op == "sum" else self.vector(depth + 1)
            if op == "quantile":
                return f"quantile{g} ({rng.choice([0.2, 0.5, 0.9, 'NaN'])}, {inner})"
            if op == "count_values":
                return f'count_values{g} ("v", {inner})'
            return f"{op}{g} ({inner})"
        if r < 0.82:
            return self.binary(depth)
        f = rng.choice(INSTANT_FNS)
        inner = self.vector(depth + 1)
        if f == "clamp":
            return f"clamp({inner}, {rng.choice([0, 1, -1])}, {rng.choice([2, 5, 0])})"
        if f in ("clamp_min", "clamp_max"):
            return f"{f}({inner}, {rng.choice([0, 1, 3])})"
        if f == "round":
            return f"round({inner}, {rng.choice([1, 0.5, 3])})"
        if f == "label_replace":
            return f'label_replace({inner}, "k", "$1-$2", "i", "(\\\\d)(.*)")'
        if f == "label_join":
            return f'label_join({inner}, "k", "/", "i", "j")'
        if f == "-":
            return f"-({inner})"
        if f == "histogram_quantile":
            le = f'label_replace({inner}, "le", "$1", "i", "(.*)")'
            return f"histogram_quantile({rng.choice([0.5, 0.9, 0])}, {le})"
        return f"{f}({inner})"

    def binary(self, depth: int) -> str:
        rng = self.rng
        op = rng.choice(["+", "-", "*", "/", "%", "^", ">", "<", "==", "!=", ">=", "<=", "and", "or", "unless"])
        comparison = op in (">", "<", "==", "!=", ">=", "<=")
        bool_mod = " bool" if comparison and rng.random() < 0.4 else ""
        if rng.random() < 0.35 and op not in ("and", "or", "unless"):
            scalar = rng.choice(["1", "0", "2.5", "-1", "NaN", "Inf"])
            inner = self.vector(depth + 1)
            return f"({inner}) {op}{bool_mod} {scalar}" if rng.random() < 0.5 else f"{scalar} {op}{bool_mod} ({inner})"
        match = rng.choice(["", "", " on(i)", " on(i, j)", " ignoring(j)", " on()", " ignoring(i)"])
        group = ""
        if op not in ("and", "or", "unless") and match and rng.random() < 0.3:
            group = rng.choice([" group_left", " group_right", " group_left(j)"])
        return f"({self.vector(depth + 1)}) {op}{bool_mod}{match}{group} ({self.vector(depth + 1)})"

    def groups(self, n_groups: int, n_exprs: int) -> list[dict[str, Any]]:
        out = []
        for _ in range(n_groups):
            cases = []
            while len(cases) < n_exprs:
                expr = self.vector()
                try:
                    compile_expr(expr)
                except PromQLError:
                    continue
                cases.append({"expr": expr, "at": [self.rng.choice(["3m", "7m", "12m", "20m", "24m", "30m"])]})
            out.append({"interval": "1m", "series": self.series(), "cases": cases})
        return out


def _error_kind(message: str) -> str:
    return message.split("[", 1)[0]  # which series a duplicate error names depends on promtool's load order


@pytest.mark.parametrize("seed", SEEDS)
def test_random_expressions_agree_with_promtool(seed: int, tmp_path: Path) -> None:
    groups = Gen(seed).groups(12, 15)
    tests, errors = build(groups)
    path = tmp_path / "fuzz.yml"
    path.write_text(render(tests))
    proc = run_promtool(path)
    assert proc.returncode == 0, f"seed {seed}: promtool disagrees with the engine:\n{proc.stdout}\n{proc.stderr}"
    if not errors:
        return
    wanted = {(e, t) for e, t, _ in errors}
    err_tests = []
    for g in groups:
        cases = [
            {"expr": c["expr"], "eval_time": parse_duration(at), "samples": []}
            for c in g["cases"]
            for at in c["at"]
            if (c["expr"], parse_duration(at)) in wanted
        ]
        if cases:
            err_tests.append({"interval": 60.0, "series": g["series"], "expr_tests": cases})
    path = tmp_path / "fuzz_errors.yml"
    path.write_text(render(err_tests))
    proc = run_promtool(path)
    out = proc.stdout + proc.stderr
    reported = {
        (json.loads(e), d): msg for e, d, msg in re.findall(r'^\s*expr: (".*"), time: (\S+), err: (.*)$', out, re.M)
    }
    for expr, t, message in errors:
        got = reported.get((expr, go_duration(t)))
        assert got is not None, f"seed {seed}: promtool evaluated {expr!r} at {go_duration(t)} without error"
        assert _error_kind(got) == _error_kind(message), (expr, got, message)
