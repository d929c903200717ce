"""Go-template subset: output matches what Prometheus 2.42 renders (strings recorded from promtool runs)."""

from __future__ import annotations

import math

import pytest

from agent.engine.templates import TemplateError, parse

TMPL = ('{{ $value }}|{{ humanize $value }}|{{ $value | humanize1024 }}|{{ humanizePercentage $value }}|'
        '{{ humanizeDuration $value }}|{{ printf "%.2f" $value }}|{{ if gt $value 5.0 }}big{{ else }}small{{ end }}|'
        '{{ .Labels.job }}|{{ $externalLabels.cluster }}')

# Rendered by promtool 2.42 for the same template (alert annotation) and values.
PROMETHEUS = [
    (1000000, "1e+06|1M|976.6ki|1e+08%|11d 13h 46m 40s|1000000.00|big|a|c1"),
    (0.000012, "1.2e-05|12u|1.2e-05|0.0012%|12us|0.00|small|a|c1"),
    (123456789, "1.23456789e+08|123.5M|117.7Mi|1.235e+10%|1428d 21h 33m 9s|123456789.00|big|a|c1"),
    (math.nan, "NaN|NaN|NaN|NaN%|NaN|NaN|big|a|c1"),
    (math.inf, "+Inf|+Inf|+Inf|+Inf%|+Inf|+Inf|big|a|c1"),
    (-math.inf, "-Inf|-Inf|-Inf|-Inf%|-Inf|-Inf|small|a|c1"),
    (3.14159, "3.14159|3.142|3.142|314.2%|3.142s|3.14|small|a|c1"),
    (100, "100|100|100|1e+04%|1m 40s|100.00|big|a|c1"),
    (0.5, "0.5|500m|0.5|50%|500ms|0.50|small|a|c1"),
    (1e21, "1e+21|1Z|867.4Ei|1e+23%|-106751991167300d -15h -30m -8s|1000000000000000000000.00|big|a|c1"),
    (1e20, "1e+20|100E|86.74Ei|1e+22%|-106751991167300d -15h -30m -8s|100000000000000000000.00|big|a|c1"),
    (123456.5, "123456.5|123.5k|120.6ki|1.235e+07%|1d 10h 17m 36s|123456.50|big|a|c1"),
]


@pytest.mark.parametrize("value, expected", PROMETHEUS)
def test_matches_prometheus_rendering(value: float, expected: str) -> None:
    assert parse(TMPL).render({"job": "a"}, float(value), {"cluster": "c1"}) == expected


def test_trim_markers_comments_else_if_and_missing_labels() -> None:
    t = parse("a  {{- /* note */ -}}  b {{ if eq $labels.sev \"page\" }}P{{ else if $labels.x }}X{{ else }}-{{ end }}"
              "[{{ $labels.nope }}]")
    assert t.render({"sev": "page"}, 1.0) == "ab P[]"
    assert t.render({"x": "1"}, 1.0) == "ab X[]"
    assert t.render({}, 1.0) == "ab -[]"


def test_execution_error_renders_like_prometheus() -> None:
    out = parse("{{ gt $value 5 }}").render({}, 7.0)  # float64 vs int: Go refuses to compare
    assert out.startswith("<error expanding template: ") and "incompatible types" in out


@pytest.mark.parametrize("text, offset, fragment", [
    ("x {{ range $labels }}{{ end }}", 5, "range"),
    ("{{ query \"up\" }}", 3, "query"),
    ("{{ $labels.a", 0, "unclosed action"),
    ("{{ if $value }}yes", 3, "missing {{end}}"),
    ("{{ end }}", 3, "unexpected {{end}}"),
    ("{{ .Foo }}", 3, ".Foo"),
    ("{{ nosuch $value }}", 3, "not defined"),
    ("{{ $x := 1 }}", 3, "$x"),
])
def test_unsupported_syntax_is_a_parse_error_with_offset(text: str, offset: int, fragment: str) -> None:
    with pytest.raises(TemplateError) as info:
        parse(text)
    assert info.value.offset == offset
    assert fragment in info.value.message
