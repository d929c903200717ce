"""Compile-time behaviour of agent.engine.promql: rejections name the construct; selectors are listed."""

from __future__ import annotations

import re

import pytest

from agent.core.errors import RuleError
from agent.engine.promql import PromQLError, Selector, compile_expr
from agent.engine.promql.regex import RegexError, compile_anchored


@pytest.mark.parametrize(
    ("expr", "message"),
    [
        ("double_exponential_smoothing(x[5m], 0.5, 0.5)", "function double_exponential_smoothing not supported"),
        ('sort_by_label(x, "a")', "function sort_by_label not supported"),
        ("mad_over_time(x[5m])", "function mad_over_time not supported"),
        ("histogram_avg(x)", "function histogram_avg not supported"),
        ("sum(rate(x[5m]))[30m:1m]", "expression of type range vector is not supported"),
        ("scalar(x)[5m:1m]", "subquery is only allowed on vector"),
        ("limitk(2, x)", "aggregation limitk is not supported"),
        ('x{a="1" or b="2"}', "'or' inside a selector is not supported"),
        ('"just a string"', "expression of type string is not supported"),
        ("up[5m]", "expression of type range vector is not supported"),
        ('up{job=~"(?=x)"}', "regex"),
        ('{"quoted.name"}', "quoted metric or label names are not supported"),
        ("rate(up[5])", "has no unit"),
        ("up offset 5", "has no unit"),
        ("sum(", "parse error"),
        ("rate(up)", "parse error"),
        ("1 > 2", "parse error"),
    ],
)
def test_rejections_name_the_construct(expr: str, message: str) -> None:
    with pytest.raises(PromQLError, match=re.escape(message)):
        compile_expr(expr)


def test_error_offsets_point_at_the_construct() -> None:
    text = "sum(rate(x[5m])) + mad_over_time(y[5m])"
    with pytest.raises(PromQLError) as info:
        compile_expr(text)
    assert info.value.offset == text.index("mad_over_time")
    with pytest.raises(PromQLError) as info:
        compile_expr("a + limitk(2, b)")
    assert info.value.offset == 4


def test_promql_error_is_a_rule_error() -> None:
    assert issubclass(PromQLError, RuleError)


def test_selectors_listed_for_lint() -> None:
    q = compile_expr(
        'rate(node_disk_reads_completed_total{device=~"nvme.*"}[5m]) / on(device) group_left '
        '{__name__="node_disk_info", model!=""} > 0 unless absent({__name__=~"x.*"})'
    )
    assert q.selectors == [
        Selector("node_disk_reads_completed_total", [("device", "=~", "nvme.*")]),
        Selector("node_disk_info", [("model", "!=", "")]),
        Selector(None, [("__name__", "=~", "x.*")]),
    ]
    assert q.text.startswith("rate(")


def test_supported_subset_compiles() -> None:
    exprs = [
        "rate(a[5m]) + irate(a[1m]) + increase(a[1h]) + delta(g[5m]) + idelta(g[5m]) + deriv(g[5m])",
        "predict_linear(g[1h], 3600) + changes(g[5m]) + resets(a[5m])",
        "avg_over_time(g[5m]) + min_over_time(g[5m]) + max_over_time(g[5m]) + sum_over_time(g[5m])",
        "count_over_time(g[5m]) + last_over_time(g[5m]) + quantile_over_time(0.5, g[5m])",
        "stddev_over_time(g[5m]) + stdvar_over_time(g[5m])",
        "absent(g) + absent_over_time(g[5m]) + abs(g) + ceil(g) + floor(g) + round(g) + round(g, 5)",
        "clamp(g, 0, 1) + clamp_min(g, 0) + clamp_max(g, 1) + timestamp(g) + vector(time()) + scalar(g)",
        'sort(label_replace(g, "a", "$1", "b", "(.*)")) + sort_desc(label_join(g, "a", ",", "b", "c"))',
        "sum by (a) (g) + avg without (b) (g) + min(g) + max(g) + count(g) + stddev(g) + stdvar(g) + group(g)",
        'topk(3, g) or bottomk(1, g) or quantile(0.9, g) or count_values("v", g)',
        "g > bool 1 and g < 3 or g unless on(x) h",
        "g * on(a) group_left(b, c) h - ignoring(d) group_right h ^ 2 % 3 / -g",
        "g offset 5m + rate(a[5m] offset -1m)",
    ]
    for e in exprs:
        compile_expr(e)


@pytest.mark.parametrize(
    ("pattern", "matches", "rejects"),
    [
        ("abc", ["abc"], ["xabc", "abcx", "abc\n"]),
        ("a|b", ["a", "b"], ["ab"]),
        ("x(?i)abc", ["xABC", "xabc"], ["XABC"]),
        ("(?i)sda|NVME", ["SDA", "nvme"], ["sdb"]),
        ("a$", ["a"], ["a\n"]),
        ("\\d+", ["123"], ["١٢"]),
        ("\\w+", ["a_1"], ["é"]),
        ("[[:alpha:]]+", ["abC"], ["a1"]),
        ("[^[:digit:]]+", ["ab"], ["a1"]),
        ("\\Qa.b\\E", ["a.b"], ["axb"]),
        ("a\\z", ["a"], ["a\n"]),
        ("\\141", ["a"], ["\\141"]),
        ("\\x{41}\\x42", ["AB"], ["x"]),
        ("[a-c&&]", ["a", "&"], ["d"]),
        ("(?s:a.b)", ["a\nb"], ["ab"]),
        ("a.b", ["axb"], ["a\nb"]),
    ],
)
def test_go_regex_semantics(pattern: str, matches: list[str], rejects: list[str]) -> None:
    rx = compile_anchored(pattern)
    for s in matches:
        assert rx.match(s), (pattern, s)
    for s in rejects:
        assert not rx.match(s), (pattern, s)


@pytest.mark.parametrize(
    "pattern", ["(?=a)", "(?!a)", "(?<=a)b", "(a)\\1", "\\C", "\\Z", "a**", "(a", "a)", "x{1001}"]
)
def test_go_regex_rejections(pattern: str) -> None:
    with pytest.raises(RegexError):
        compile_anchored(pattern)


def test_named_groups() -> None:
    assert compile_anchored("(?P<dev>nvme)(\\d)").match("nvme1").group("dev") == "nvme"
    assert compile_anchored("(?P<dev>x)").groupindex == {"dev": 1}


# promql/parser/functions.go at v2.42.0
FUNCTIONS_242 = [
    "abs",
    "absent",
    "absent_over_time",
    "acos",
    "acosh",
    "asin",
    "asinh",
    "atan",
    "atanh",
    "avg_over_time",
    "ceil",
    "changes",
    "clamp",
    "clamp_max",
    "clamp_min",
    "cos",
    "cosh",
    "count_over_time",
    "days_in_month",
    "day_of_month",
    "day_of_week",
    "day_of_year",
    "deg",
    "delta",
    "deriv",
    "exp",
    "floor",
    "histogram_count",
    "histogram_sum",
    "histogram_fraction",
    "histogram_quantile",
    "holt_winters",
    "hour",
    "idelta",
    "increase",
    "irate",
    "label_replace",
    "label_join",
    "last_over_time",
    "ln",
    "log10",
    "log2",
    "max_over_time",
    "min_over_time",
    "minute",
    "month",
    "pi",
    "predict_linear",
    "present_over_time",
    "quantile_over_time",
    "rad",
    "rate",
    "resets",
    "round",
    "scalar",
    "sgn",
    "sin",
    "sinh",
    "sort",
    "sort_desc",
    "sqrt",
    "stddev_over_time",
    "stdvar_over_time",
    "sum_over_time",
    "tan",
    "tanh",
    "time",
    "timestamp",
    "vector",
    "year",
]


def test_every_242_function_is_implemented_and_documented() -> None:
    from agent.engine.promql.functions import FUNCTIONS
    from tests.conftest import REPO

    assert len(FUNCTIONS_242) == 70
    assert set(FUNCTIONS) == set(FUNCTIONS_242)
    table = re.findall(r"^\| `(\w+)` \| (\w+) \|", (REPO / "docs" / "promql.md").read_text(), re.M)
    documented = {name: status for name, status in table if name in FUNCTIONS_242}
    assert documented == dict.fromkeys(FUNCTIONS_242, "supported")
