"""Rule engine: loading/validation positions, the alert state machine, persistence, reload, API shapes.

Expressions are scripted (an injected compiler returns per-time vectors) so these tests pin the engine's
own semantics; the PromQL evaluator is exercised by the promtool differential tests.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from agent.core.errors import RuleError
from agent.engine.rules import RuleEngine, parse_rule_text
from agent.engine.store import Store


class ScriptError(Exception):
    def __init__(self, message: str, offset: int) -> None:
        super().__init__(message)
        self.message = message
        self.offset = offset


class Scripted:
    """``expr`` text -> function of t returning a vector; ``bad(...)`` texts fail to compile."""

    def __init__(self) -> None:
        self.script: dict[str, object] = {}

    def __call__(self, text: str):
        if text.startswith("bad"):
            raise ScriptError("unexpected end of input", 4)
        outer = self

        class Q:
            selectors: list = []

            def eval(self, store, t):
                fn = outer.script[text]
                return fn(t) if callable(fn) else fn

        return Q()


def write(tmp_path: Path, text: str, name: str = "r.yml") -> str:
    p = tmp_path / name
    p.write_text(text)
    return str(p)


ALERT_FILE = """
groups:
  - name: g
    rules:
      - alert: Hot
        expr: temp
        for: 2m
        keep_firing_for: {kff}
        labels:
          severity: page
          gpu: "{{{{ $labels.gpu }}}}"
        annotations:
          summary: "GPU {{{{ $labels.gpu }}}} at {{{{ $value }}}}C"
"""


def engine_with(tmp_path: Path, script: Scripted, kff: str = "0s", state: str | None = None) -> RuleEngine:
    eng = RuleEngine(state, {"cluster": "c1"}, clock=lambda: 1000.0, compiler=script, check_no_data=False)
    eng.load([write(tmp_path, ALERT_FILE.format(kff=kff))])
    return eng


def run(eng: RuleEngine, store: Store, t: float) -> list:
    store.begin_tick(t)
    return eng.evaluate(store, t)


def states(eng: RuleEngine) -> list[tuple[str, str, float]]:
    return sorted((a.labels["gpu"], a.state, a.active_at) for a in eng.alerts())


def test_for_pending_then_firing_and_alerts_series(tmp_path: Path) -> None:
    s = Scripted()
    hot = [({"__name__": "temp", "gpu": "0"}, 91.0)]
    s.script["temp"] = lambda t: hot if t >= 60 else []
    eng = engine_with(tmp_path, s)
    store = Store(retention=3600, interval=60)
    run(eng, store, 0)
    assert eng.alerts() == []
    run(eng, store, 60)
    assert states(eng) == [("0", "pending", 60.0)]
    run(eng, store, 120)
    assert states(eng) == [("0", "pending", 60.0)]
    out = run(eng, store, 180)  # 180 - 60 >= 2m
    assert states(eng) == [("0", "firing", 60.0)]
    alerts = {(x.name, dict(x.labels).get("alertstate")): x.value for x in out if x.name.startswith("ALERTS")}
    assert alerts == {("ALERTS", "firing"): 1.0, ("ALERTS_FOR_STATE", None): 60.0}
    # written into the store too, so the next rule / the exporter see them
    (series,) = [x for x in store.family("ALERTS").values() if store.latest(x) is not None]
    assert dict(series.labels) == {"alertname": "Hot", "alertstate": "firing", "gpu": "0", "severity": "page"}
    (a,) = eng.alerts()
    assert a.annotations == {"summary": "GPU 0 at 91C"}
    assert a.fired_at == 180.0


def test_pending_alert_that_clears_is_forgotten(tmp_path: Path) -> None:
    s = Scripted()
    s.script["temp"] = lambda t: [({"gpu": "1"}, 95.0)] if t == 60 else []
    eng = engine_with(tmp_path, s)
    store = Store(retention=3600, interval=60)
    for t in (0, 60, 120):
        run(eng, store, t)
    assert eng.alerts() == []


def test_keep_firing_for_then_resolved_and_retention(tmp_path: Path) -> None:
    s = Scripted()
    s.script["temp"] = lambda t: [({"gpu": "2"}, 99.0)] if t <= 180 else []
    eng = engine_with(tmp_path, s, kff="2m")
    store = Store(retention=7200, interval=60)
    for t in range(0, 240, 60):
        run(eng, store, t)
    assert states(eng) == [("2", "firing", 0.0)]
    run(eng, store, 240)  # gone from the expression: keep firing (since 240)
    run(eng, store, 300)
    assert states(eng) == [("2", "firing", 0.0)]
    run(eng, store, 360)  # 360 - 240 >= 2m: resolved
    (a,) = eng.alerts()
    assert (a.state, a.resolved_at) == ("inactive", 360.0)
    assert eng.api_alerts()["data"]["alerts"] == []
    for t in range(420, 360 + 16 * 60 + 60, 60):
        run(eng, store, t)
    assert eng.alerts() == []  # dropped after the 15 minute resolved retention


def test_keep_firing_for_resets_when_expression_returns(tmp_path: Path) -> None:
    s = Scripted()
    on = {0, 60, 120, 180, 300}
    s.script["temp"] = lambda t: [({"gpu": "3"}, 99.0)] if t in on else []
    eng = engine_with(tmp_path, s, kff="90s")
    store = Store(retention=7200, interval=60)
    for t in range(0, 420, 60):
        run(eng, store, t)
    # fired at 120; gap at 240 kept firing; back at 300 resets; gone at 360 -> keep since 360
    assert states(eng) == [("3", "firing", 0.0)]
    run(eng, store, 420)
    assert states(eng) == [("3", "firing", 0.0)]
    run(eng, store, 480)
    assert [a.state for a in eng.alerts()] == ["inactive"]


def test_limit_and_duplicate_labelsets_are_rule_failures(tmp_path: Path) -> None:
    s = Scripted()
    s.script["many"] = [({"i": str(i)}, 1.0) for i in range(3)]
    s.script["dups"] = [({"__name__": "a", "x": "1"}, 1.0), ({"__name__": "b", "x": "1"}, 2.0)]
    path = write(tmp_path, """
groups:
  - name: lim
    limit: 2
    rules:
      - alert: Many
        expr: many
  - name: dup
    rules:
      - record: x:dups
        expr: dups
""")
    eng = RuleEngine(None, compiler=s, check_no_data=False)
    eng.load([path])
    store = Store(retention=600, interval=60)
    out = run(eng, store, 0)
    healths = {rs.rule.name: (rs.health, rs.last_error) for _, rs in eng.rule_states()}
    assert healths["Many"] == ("err", "exceeded limit of 2 with 3 alerts")
    assert healths["x:dups"][0] == "err" and "same labelset" in healths["x:dups"][1]
    assert eng.alerts() == []
    fails = {dict(x.labels)["rule_group"]: x.value for x in out
             if x.name == "nodewarden_rule_evaluation_failures_total" and dict(x.labels)["reason"] == "error"}
    assert fails == {f"{path};lim": 1.0, f"{path};dup": 1.0}


def test_no_data_counts_as_failure_and_stays_inactive(tmp_path: Path) -> None:
    s = Scripted()

    class Sel:
        name = "node_gone_total"
        matchers: list = []

    def compiler(text):
        q = s(text)
        q.selectors = [Sel()]
        return q

    s.script["rate(node_gone_total[5m]) > 0"] = []
    path = write(tmp_path, "groups: [{name: g, rules: [{alert: Gone, expr: 'rate(node_gone_total[5m]) > 0'}]}]\n")
    eng = RuleEngine(None, compiler=compiler)
    eng.load([path])
    store = Store(retention=600, interval=60)
    out = run(eng, store, 0)
    (rule,) = eng.api_rules()["data"]["groups"][0]["rules"]
    assert (rule["state"], rule["health"]) == ("inactive", "err")
    assert "no data" in rule["lastError"]
    nodata = [x.value for x in out if x.name == "nodewarden_rule_evaluation_failures_total"
              and dict(x.labels)["reason"] == "no_data"]
    assert nodata == [1.0]


def test_recording_rule_output_and_group_interval_keepalive(tmp_path: Path) -> None:
    s = Scripted()
    s.script["src"] = lambda t: [({"__name__": "src", "dev": "a"}, t)]
    path = write(tmp_path, """
groups:
  - name: slow
    interval: 30s
    rules:
      - record: dev:src:copy
        expr: src
        labels: {origin: rule}
""")
    eng = RuleEngine(None, compiler=s, check_no_data=False)
    eng.load([path])
    store = Store(retention=600, interval=5)
    for t in range(0, 65, 5):
        out = run(eng, store, t)
        rec = [x for x in out if x.name == "dev:src:copy"]
        assert bool(rec) == (t % 30 == 0)
        (series,) = store.family("dev:src:copy").values()
        assert dict(series.labels) == {"dev": "a", "origin": "rule"}
        # between evaluations the series is not stale: the last value is what an instant query sees
        assert store.instant(series, t) == (t - t % 30, float(t - t % 30))


def test_state_persists_across_restart_without_reset_or_refire(tmp_path: Path) -> None:
    s = Scripted()
    s.script["temp"] = [({"gpu": "0"}, 90.0), ({"gpu": "1"}, 92.0)]
    state = str(tmp_path / "var" / "alerts.json")
    eng = engine_with(tmp_path, s, state=state)
    store = Store(retention=3600, interval=60)
    run(eng, store, 0)
    s.script["temp"] = [({"gpu": "0"}, 90.0), ({"gpu": "1"}, 92.0), ({"gpu": "2"}, 93.0)]
    for t in (60, 120):
        run(eng, store, t)
    assert states(eng) == [("0", "firing", 0.0), ("1", "firing", 0.0), ("2", "pending", 60.0)]
    eng.save_state()
    data = json.loads(Path(state).read_text())
    assert data["version"] == 1 and len(data["rules"][0]["alerts"]) == 3
    assert not [p for p in Path(state).parent.iterdir() if p.name.endswith(".tmp")]

    # "restart": a new engine, a new (empty) store
    eng2 = RuleEngine(state, {"cluster": "c1"}, compiler=s, check_no_data=False)
    eng2.restore_state()
    eng2.load([str(tmp_path / "r.yml")])
    store2 = Store(retention=3600, interval=60)
    run(eng2, store2, 150)
    got = {a.labels["gpu"]: (a.state, a.active_at, a.fired_at) for a in eng2.alerts()}
    assert got["0"] == ("firing", 0.0, 120.0)  # not re-fired: fired_at from before the restart
    assert got["2"] == ("pending", 60.0, None)  # for timer not reset
    run(eng2, store2, 180)
    assert eng2.alerts()[0].fired_at is not None
    assert {a.labels["gpu"]: a.state for a in eng2.alerts()}["2"] == "firing"  # 180 - 60 >= 2m


def test_reload_keeps_state_of_unchanged_rules_and_bad_reload_keeps_old(tmp_path: Path) -> None:
    s = Scripted()
    s.script["temp"] = [({"gpu": "0"}, 90.0)]
    s.script["other"] = [({"x": "1"}, 1.0)]
    eng = engine_with(tmp_path, s)
    store = Store(retention=3600, interval=60)
    run(eng, store, 0)
    run(eng, store, 120)
    assert states(eng) == [("0", "firing", 0.0)]
    text = (tmp_path / "r.yml").read_text() + "      - alert: Other\n        expr: other\n"
    (tmp_path / "r.yml").write_text(text)
    eng.load([str(tmp_path / "r.yml")])
    assert states(eng) == [("0", "firing", 0.0)]
    (tmp_path / "bad.yml").write_text("groups:\n  - name: g\n    rules:\n      - alert: X\n        expr: bad(\n")
    with pytest.raises(RuleError) as info:
        eng.load([str(tmp_path / "r.yml"), str(tmp_path / "bad.yml")])
    assert info.value.problems[0].startswith(f"{tmp_path / 'bad.yml'}:5:")
    assert [rs.rule.name for _, rs in eng.rule_states()] == ["Hot", "Other"]
    out = run(eng, store, 180)
    assert [x.value for x in out if x.name == "nodewarden_rules_last_reload_successful"] == [0.0]


def test_api_shapes(tmp_path: Path) -> None:
    s = Scripted()
    s.script["temp"] = [({"gpu": "0"}, 1234567.0)]
    eng = engine_with(tmp_path, s)
    store = Store(retention=3600, interval=60)
    run(eng, store, 0)
    (a,) = eng.api_alerts()["data"]["alerts"]
    assert a == {"labels": {"alertname": "Hot", "gpu": "0", "severity": "page"},
                 "annotations": {"summary": "GPU 0 at 1.234567e+06C"}, "state": "pending",
                 "activeAt": "1970-01-01T00:00:00.000000Z", "value": "1.234567e+06"}
    g = eng.api_rules()["data"]["groups"][0]
    assert (g["name"], g["interval"], g["limit"]) == ("g", 0.0, 0)
    (r,) = g["rules"]
    assert (r["type"], r["state"], r["duration"], r["health"]) == ("alerting", "pending", 120.0, "ok")
    assert r["query"] == "temp" and len(r["alerts"]) == 1


# -- loading and validation -------------------------------------------------------------------
BAD = """\
groups:
  - name: a
    interval: 1x
    rules:
      - record: foo:bar
        expr: ok
        for: 5m
      - alert: A
        expr: bad(
        foo: bar
        annotations:
          s: "{{ range $labels }}x{{ end }}"
      - record: "bad name"
        expr: ok
        labels:
          __name__: x
  - name: a
    rules: []
"""


def test_validation_problems_with_positions() -> None:
    _, problems = parse_rule_text(BAD, "b.yml", Scripted())
    assert problems == [
        'b.yml:3:15: not a valid duration string: "1x"',
        "b.yml:5:17: group \"a\", rule 1, \"foo:bar\": invalid field 'for' in recording rule",
        "b.yml:10:9: field foo not found in type rulefmt.RuleNode",
        'b.yml:9:19: group "a", rule 2, "A": could not parse expression: unexpected end of input',
        "b.yml:12:18: group \"a\", rule 2, \"A\": annotation 's': template: unsupported template action 'range'",
        'b.yml:13:17: group "a", rule 3, "bad name": invalid recording rule name: bad name',
        'b.yml:16:11: group "a", rule 3, "bad name": invalid label name: __name__',
        'b.yml:17:5: groupname: "a" is repeated in the same file',
    ]


@pytest.mark.parametrize("text, fragment", [
    ("groups:\n  - name: g\n    rules:\n      - expr: x\n", "one of 'record' or 'alert' must be set"),
    ("groups:\n  - name: g\n    rules:\n      - alert: A\n", "field 'expr' must be set in rule"),
    ("groups:\n  - name: g\n    rules:\n      - {alert: A, record: b, expr: x}\n", "only one of"),
    ("groups:\n  - name: g\n    rules:\n      - {record: b, expr: x, annotations: {a: b}}\n",
     "invalid field 'annotations'"),
    ("groups:\n  - name: g\n    rules:\n      - {record: b, expr: x, keep_firing_for: 1m}\n",
     "invalid field 'keep_firing_for'"),
    ("groups:\n  - rules: []\n", "Groupname must not be empty"),
    ("groupz: []\n", "field groupz not found"),
    ("groups:\n  - name: g\n    rules:\n      - {alert: A, expr: x, for: 5}\n", "not a valid duration"),
    ("groups:\n  - name: g\n    rules:\n      - {alert: A, expr: x, labels: {a-b: c}}\n", "invalid label name: a-b"),
])
def test_rejected_shapes(text: str, fragment: str) -> None:
    _, problems = parse_rule_text(text, "f.yml", Scripted())
    assert any(fragment in p for p in problems), problems
    assert all(p.startswith("f.yml:") for p in problems)


def test_accepts_full_schema() -> None:
    text = """
groups:
  - name: g
    interval: 30s
    limit: 10
    labels: {team: infra}
    rules:
      - alert: A
        expr: x
        for: 5m
        keep_firing_for: 1m
        labels: {severity: warning}
        annotations: {summary: "{{ $value | humanize }} {{ .Labels.x }}"}
      - record: a:b
        expr: x
        labels: {k: v}
"""
    groups, problems = parse_rule_text(text, "ok.yml", Scripted())
    assert problems == []
    (g,) = groups
    assert (g.interval, g.limit, g.labels) == (30.0, 10, (("team", "infra"),))
    assert [(r.kind, r.for_, r.keep_firing_for) for r in g.rules] == [("alerting", 300.0, 60.0), ("recording", 0, 0)]
    assert math.isclose(g.rules[0].for_, 300.0)


def test_evaluation_error_resolves_firing_alerts_and_persists_new_pending(tmp_path: Path) -> None:
    s = Scripted()
    s.script["temp"] = [({"gpu": "0"}, 90.0)]
    state = tmp_path / "alerts.json"
    eng = engine_with(tmp_path, s, state=str(state))
    store = Store(retention=3600, interval=60)
    run(eng, store, 0)
    assert json.loads(state.read_text())["rules"][0]["alerts"][0]["state"] == "pending"  # written at once
    run(eng, store, 120)
    assert states(eng) == [("0", "firing", 0.0)]

    def boom(t):
        raise RuntimeError("many-to-many matching not allowed")

    s.script["temp"] = boom
    out = run(eng, store, 180)
    (a,) = eng.alerts()
    assert (a.state, a.resolved_at) == ("inactive", 180.0)
    assert not [x for x in out if x.name == "ALERTS"]
    (rule,) = eng.api_rules()["data"]["groups"][0]["rules"]
    assert (rule["health"], rule["lastError"]) == ("err", "many-to-many matching not allowed")
    assert json.loads(state.read_text())["rules"] == []
    (series,) = [x for x in store.family("ALERTS").values() if x.labels[1] == ("alertstate", "firing")]
    assert store.instant(series, 180) is None  # stale right away, not kept visible by lookback


def test_default_library_on_a_live_store_with_restart(tmp_path: Path) -> None:
    """Real PromQL, real store, 5 s ticks: a read-only remount fires after 1m, survives a restart, GPU rules
    on a node without GPUs count no_data failures instead of looking healthy."""
    from tests.conftest import REPO

    files = [str(REPO / "rules" / "storage.yml"), str(REPO / "rules" / "gpu.yml")]
    state = str(tmp_path / "alerts.json")
    fs = (("device", "/dev/sdc1"), ("fstype", "xfs"), ("mountpoint", "/data"))

    def feed(store: Store, eng: RuleEngine, t0: float, n: int, ro: float) -> list:
        out: list = []
        for k in range(n):
            t = t0 + 5 * k
            store.begin_tick(t)
            store.add([("node_filesystem_readonly", fs, ro), ("node_filesystem_avail_bytes", fs, 5e11),
                       ("node_filesystem_size_bytes", fs, 1e12)])
            out = eng.evaluate(store, t)
        return out

    eng = RuleEngine(state)
    eng.load(files)
    store = Store(retention=900, interval=5)
    feed(store, eng, 1000.0, 6, 0.0)
    feed(store, eng, 1030.0, 12, 1.0)  # read-only from t=1030; last tick 1085
    (a,) = [a for a in eng.alerts() if a.name == "FilesystemReadOnly"]
    assert (a.state, a.active_at) == ("pending", 1030.0)
    out = feed(store, eng, 1090.0, 1, 1.0)
    (a,) = [a for a in eng.alerts() if a.name == "FilesystemReadOnly"]
    assert (a.state, a.fired_at) == ("firing", 1090.0)
    assert a.annotations == {"summary": "/data (/dev/sdc1) is read-only"}
    alerts = [dict(s.labels) for s in out if s.name == "ALERTS"]
    assert {"alertname": "FilesystemReadOnly", "alertstate": "firing", "severity": "critical", **dict(fs)} in alerts
    nodata = {dict(s.labels)["rule_group"].split(";")[1]: s.value for s in out
              if s.name == "nodewarden_rule_evaluation_failures_total" and dict(s.labels)["reason"] == "no_data"}
    assert nodata["nodewarden-gpu-health"] > 0  # no GPU metrics on this node
    health = {r["name"]: r["health"] for g in eng.api_rules()["data"]["groups"] for r in g["rules"]}
    assert (health["FilesystemReadOnly"], health["DiskSaturated"], health["GpuLost"]) == ("ok", "err", "err")
    eng.save_state()

    eng2 = RuleEngine(state)
    eng2.restore_state()
    eng2.load(files)
    store2 = Store(retention=900, interval=5)
    feed(store2, eng2, 1200.0, 1, 1.0)
    (b,) = [a for a in eng2.alerts() if a.name == "FilesystemReadOnly"]
    assert (b.state, b.active_at, b.fired_at) == ("firing", 1030.0, 1090.0)
    feed(store2, eng2, 1205.0, 1, 0.0)
    (b,) = [a for a in eng2.alerts() if a.name == "FilesystemReadOnly"]
    assert (b.state, b.resolved_at) == ("inactive", 1205.0)
