"""Regexes run on RE2 (as Go's regexp in Prometheus and node_exporter): linear time whatever the pattern, and
Go's syntax. A pathological pattern against a long label value or device name answers at once; with Python's
backtracking ``re`` these took 7.6 s at 28 characters, doubling per character (the timeout turns a hang into
a failure)."""

from __future__ import annotations

import pytest

from agent.collectors.common import DeviceFilter
from agent.core.config import load_text
from agent.core.errors import ConfigError
from agent.core.metrics import Sample
from agent.core.regex import RegexError, compile_anchored, fullmatch
from agent.engine.promql import compile_expr
from agent.engine.store import Store

EVIL = "a" * 5000          # no trailing b: a backtracking engine tries 2**n ways


def _store(value: str) -> Store:
    store = Store(retention=60, interval=1)
    store.begin_tick(1000.0)
    store.add([Sample("up", (("job", value),), 1.0), Sample("up", (("job", "aab"),), 1.0)])
    return store


@pytest.mark.timeout(60)
def test_label_matcher_is_linear_time():
    store = _store(EVIL)
    assert [dict(lbl)["job"] for lbl, _ in compile_expr('up{job=~"(a+)+b"}').eval(store, 1000.0)] == ["aab"]
    got = compile_expr('up{job!~"(a+)+b"}').eval(store, 1000.0)
    assert [len(dict(lbl)["job"]) for lbl, _ in got] == [len(EVIL)]
    out = compile_expr('label_replace(up, "x", "$2", "job", "(a+)+(b)")').eval(store, 1000.0)
    assert sorted(dict(lbl).get("x", "-") for lbl, _ in out) == ["-", "b"]


@pytest.mark.timeout(60)
def test_device_filter_is_linear_time():
    wanted = DeviceFilter(None, "(a+)+b")
    assert wanted(EVIL) and not wanted("aaab")


def test_config_include_exclude_uses_go_syntax():
    load_text('collectors:\n  disk:\n    device_exclude: "\\\\pL+"\n')     # Go accepts Unicode classes
    with pytest.raises(ConfigError) as info:
        load_text('collectors:\n  disk:\n    device_exclude: "(?!loop)"\n')
    assert "<config>:3:21: collectors.disk.device_exclude: invalid regular expression" in str(info.value)


@pytest.mark.parametrize(("pattern", "text", "ok"), [
    ("\\pL+", "é日a", True),           # Unicode classes (Python's re has none)
    ("(?U)a+", "aaa", True),           # ungreedy flag
    ("a|b", "ab", False),              # anchored around the whole alternation
    ("\\d", "\u0661", False),               # ASCII digits only
    ("a.b", "a\nb", False),            # . does not match newline without (?s)
])
def test_go_semantics(pattern, text, ok):
    assert fullmatch(pattern, text) is ok


def test_byte_class_rejected_as_go_does():
    with pytest.raises(RegexError, match="invalid escape sequence"):
        compile_anchored("a\\C")
    assert fullmatch("\\Qa\\C\\E", "a\\C")           # literal inside \Q..\E


def test_cpu_flag_filters_use_go_syntax_unanchored():
    from agent.collectors.cpu import CpuCollector
    from agent.core.paths import Paths

    cfg = CpuCollector.Config.model_validate({"flags_include": "\\pL*512", "bugs_include": "spectre"})
    c = CpuCollector(cfg, Paths())   # with Python's re, the Go-valid \pL failed here (re.error)
    assert c._flags.search("avx512f") and not c._flags.search("sse2")   # Go MatchString: not anchored
    assert c._bugs.search("spectre_v1")


@pytest.mark.timeout(60)
def test_policy_route_matchers_are_linear_time_and_anchored():
    from agent.remediation.policy import parse_matcher

    m = parse_matcher('mountpoint=~"(a+)+b"')
    assert not m.matches({"mountpoint": EVIL}) and m.matches({"mountpoint": "aab"})
    assert not parse_matcher('job=~"a|b"').matches({"job": "ab"})   # anchored around the alternation
