"""Pure parts of the policy: matchers, the template subset, loading errors with positions, params checks."""

from __future__ import annotations

import math

import pytest

from agent.core.alerts import Alert
from agent.core.discovery import classes
from agent.core.errors import ConfigError
from agent.remediation.policy import NoDataGate, check_policy_file, load_policy, load_policy_text, parse_matcher, render
from remediations.rebalance import Rebalance


@pytest.mark.parametrize("text,labels,hit", [
    ('alertname="GpuXid"', {"alertname": "GpuXid"}, True),
    ('alertname="GpuXid"', {"alertname": "GpuXidX"}, False),
    ('severity=~"critical|page"', {"severity": "page"}, True),
    ('severity=~"critical|page"', {"severity": "pager"}, False),        # fully anchored
    ('severity!~"info|warning"', {"severity": "critical"}, True),
    ('team!="ml"', {}, True),                                           # a missing label is ""
    ('xid=~""', {}, True),
    ("instance=gpu-a1", {"instance": "gpu-a1"}, True),                  # unquoted value
    (r'path="a\"b"', {"path": 'a"b'}, True),
])
def test_matchers(text, labels, hit):
    assert parse_matcher(text).matches(labels) is hit


@pytest.mark.parametrize("bad", ['alertname=="x"', '=x', 'a=~"("', "a b"])
def test_bad_matchers(bad):
    with pytest.raises(ValueError):
        parse_matcher(bad)


def test_render_substitutes_label_values_as_data():
    labels = {"gpu": "3", "node": "$(reboot)", "alertname": "X"}
    out = render({"a": "gpu {{ $labels.gpu }} on {{$labels.node}}", "b": ["{{ $labels.missing }}", 5],
                  "v": "{{ $value }}"}, labels, 79.0)
    assert out == {"a": "gpu 3 on $(reboot)", "b": ["", 5], "v": "79"}


def test_policy_errors_carry_file_line_column():
    text = ("defaults:\n  mode: enforcing\nroutes:\n  - matchers: ['alertname=\"X\"']\n    steps:\n"
            "      - action: rebalance\n        params: {gpu: '{{ .Labels.gpu }}'}\n        wait: 5\n"
            "    colour: red\n")
    with pytest.raises(ConfigError) as exc:
        load_policy_text(text, "p.yml")
    problems = exc.value.problems
    assert any(p.startswith("p.yml:2:9: defaults.mode:") for p in problems)
    assert any(p.startswith("p.yml:8:15: routes.0.steps.0.wait: duration must be a string") for p in problems)
    assert any(p.startswith("p.yml:9:5: routes.0.colour: unknown key") for p in problems)
    assert any("unsupported template" in p for p in problems)


def test_unknown_plugin_and_bad_params_are_load_errors():
    text = ("routes:\n  - matchers: ['alertname=\"X\"']\n    steps:\n      - action: rebalanse\n"
            "      - action: rebalance\n        params: {gpu: 'card{{ $labels.gpu }}', colour: red}\n")
    with pytest.raises(ConfigError) as exc:
        load_policy_text(text, "p.yml", plugins={"rebalance": Rebalance})
    msgs = exc.value.problems
    assert msgs[0].startswith("p.yml:4:17: routes.0.steps.0.action: unknown plugin 'rebalanse'")
    assert any(m.startswith("p.yml:6:23: routes.0.steps.1.params.gpu: not a valid GPU index") for m in msgs)
    assert any("routes.0.steps.1.params.colour: Extra inputs are not permitted" in m for m in msgs)


def test_check_policy_file_warns_about_a_route_matching_no_loaded_rule(tmp_path):
    p = tmp_path / "p.yml"
    p.write_text("routes:\n  - matchers: ['alertname=\"Nope\"']\n    steps: [{action: page}]\n"
                 "  - matchers: ['alertname=~\"Gpu.*\"']\n    steps: [{action: page}]\n")
    errors, warnings = check_policy_file(p, {}, known_alerts={"GpuXid"})
    assert errors == [] and warnings == [f"{p}:2:15: routes.0: matches no alert of the loaded rules"]


def test_default_policy_file_is_valid_and_observes():
    found = classes()
    assert "rebalance" in found.plugins, found.errors   # registered through the entry point
    policy = load_policy("rules/remediations.yml", found.plugins)
    assert policy.defaults.mode == "observe"
    assert [(r.name, policy.guards(r).revert_after) for r in policy.routes] == [("gpu-lost", None),
                                                                                 ("gpu-drain-node", None),
                                                                                 ("gpu-reset-needed", 1800.0),
                                                                                 ("gpu-overheat", 1800.0),
                                                                                 ("gpu-power-budget", 1800.0),
                                                                                 ("dataset-repair", None)]
    xid79 = {"alertname": "GpuFallenOffBus", "severity": "critical", "action": "drain_node", "gpu": "0"}
    assert [r.name for r in policy.routes if r.matches(xid79)] == ["gpu-drain-node"]
    damaged = {"alertname": "DatasetIntegrityDamaged", "severity": "critical", "action": "restore_dataset",
               "dataset": "shards"}
    assert [r.name for r in policy.routes if r.matches(damaged)] == ["dataset-repair"]


def test_route_overrides_defaults():
    policy = load_policy_text("defaults: {cooldown: 1h, rate_limit: {per_action: 2}}\nroutes:\n"
                              "  - {matchers: ['a=\"b\"'], cooldown: 5m, steps: [{action: page}]}\n")
    g = policy.guards(policy.routes[0])
    assert (g.cooldown, g.rate_limit.per_action, g.mode) == (300.0, 2, "observe")


@pytest.mark.parametrize("name,value,blocked", [("GpuXid", 1.0, False), ("GpuXid", math.nan, True),
                                                ("NodeExporterAbsent", 1.0, True), ("GpuMetricsStale", 0.0, True)])
def test_no_data_gate(name, value, blocked):
    a = Alert(labels={"alertname": name}, annotations={}, state="firing", active_at=0.0, value=value)
    assert NoDataGate().blocks(a) is blocked


def test_render_uses_the_annotation_engine_and_keeps_label_values_as_data():
    labels = {"node": "{{ $value }}", "gpu": "1"}
    out = render("{{ $labels.node }}/{{$labels.gpu}} {{ $value }}", labels, 1234567.5)
    assert out == "{{ $value }}/1 1.2345675e+06"
    assert render({"v": ["{{ $value }}"]}, labels, 79.125) == {"v": ["79.125"]}


@pytest.mark.parametrize("bad", ["{{ .Labels.gpu }}", "{{ $labels.gpu | toUpper }}", "{{ if $value }}x{{ end }}",
                                 '{{ "lit" }}', "a }} b", "{{ $externalURL }}", "{{ $labels }}"])
def test_param_templates_beyond_the_subset_are_refused(bad):
    from agent.remediation.policy import check_template

    with pytest.raises(ValueError, match="unsupported template"):
        check_template(bad)
