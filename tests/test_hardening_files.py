"""Bad files of every kind get a located ``file:line:column`` message (never a traceback), in bounded time and
memory; values promtool or common sense rejects are rejected (issue 12, files part).

Through the CLI (``nodewarden check config|rules``) where a user meets them, and through the loaders.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from agent.core import config, yamlpos
from agent.core.durations import parse_duration
from agent.core.errors import ConfigError
from agent.engine.promql import PromQLError, compile_expr
from agent.remediation.policy import load_policy_text
from agent.serve.webconfig import load_web_config

LOCATED = re.compile(r"^\S+:\d+:\d+: \S")
LAUGHS = "".join(
    [
        'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n',
        *(f"{chr(98 + i)}: &{chr(98 + i)} [{','.join(['*' + chr(97 + i)] * 9)}]\n" for i in range(8)),
    ]
)


def cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "agent.cli", *args], capture_output=True, text=True, timeout=120,
                          cwd=cwd, check=False)


def assert_located(stderr: str, *fragments: str) -> None:
    assert "Traceback" not in stderr, stderr
    problems = [line for line in stderr.splitlines() if line and not line.startswith(" ")]
    assert problems and all(LOCATED.match(p) for p in problems), stderr
    for fragment in fragments:
        assert fragment in stderr, stderr


# ---------------------------------------------------------------- the daemon died on these


def test_yaml_tag_in_rule_file_is_a_located_error(tmp_path: Path) -> None:
    f = tmp_path / "r.yml"
    f.write_text('groups: !!python/object/apply:os.system ["true"]\n')
    res = cli("check", "rules", "--no-catalogue", str(f))
    assert res.returncode == 1
    assert_located(res.stderr, f"{f}:1:9: YAML error: unsupported YAML tag !!python/object/apply:os.system")


@pytest.mark.parametrize("text", ["mode: !!binary aGVsbG8=\n", "mode: !custom x\n", "collectors: !!set {a}\n"])
def test_yaml_tags_in_config_are_located_errors(text: str) -> None:
    with pytest.raises(ConfigError, match=r"^c\.yml:1:\d+: YAML error: unsupported YAML tag"):
        config.load_text(text, "c.yml")


def test_non_utf8_config_is_a_located_error(tmp_path: Path) -> None:
    f = tmp_path / "c.yml"
    f.write_bytes(b"mode: observe\nhostname: caf\xe9\n")
    res = cli("check", "config", str(f))
    assert res.returncode == 2
    assert_located(res.stderr, f"{f}:2:14: config is not UTF-8")


def test_non_utf8_web_config_is_a_located_error(tmp_path: Path) -> None:
    f = tmp_path / "web.yml"
    f.write_bytes(b"basic_auth_users:\n  \xff: x\n")
    with pytest.raises(ConfigError, match=rf"^{re.escape(str(f))}:2:3: web config is not UTF-8"):
        load_web_config(str(f))


def test_non_utf8_policy_and_rule_file_are_located(tmp_path: Path) -> None:
    rules = tmp_path / "r.yml"
    rules.write_bytes(b"groups:\n- name: \x80\n")
    policy = tmp_path / "p.yml"
    policy.write_bytes(b"routes: []\ndefaults: {cooldown: \xc3(}\n")
    res = cli("check", "rules", "--no-catalogue", str(rules), str(policy))
    assert res.returncode == 1
    assert_located(res.stderr, f"{rules}:2:9: rule file is not UTF-8")
    assert "Traceback" not in res.stdout + res.stderr


# ---------------------------------------------------------------- bounded time and memory


@pytest.mark.timeout(60)
@pytest.mark.parametrize("what", ["config", "policy", "rules"])
def test_billion_laughs_is_refused_at_the_alias(what: str) -> None:
    text = LAUGHS + ("groups: [*i]\n" if what == "rules" else "routes: *i\n" if what == "policy" else "x: *i\n")
    with pytest.raises(ConfigError) as err:
        if what == "config":
            config.load_text(text, "f.yml")
        elif what == "policy":
            load_policy_text(text, "f.yml")
        else:
            yamlpos.load(text, "f.yml")
    assert re.match(r"^f\.yml:\d+:\d+: YAML error: document expands to more than 2,000,000 nodes", str(err.value))


def test_aliases_within_the_limit_still_work() -> None:
    root = yamlpos.load("base: &b {cooldown: 5m}\nroute:\n  <<: *b\n  mode: enforce\n", "f.yml")
    assert root["route"] == {"cooldown": "5m", "mode": "enforce"}


def test_input_over_the_size_limit_is_refused(tmp_path: Path) -> None:
    f = tmp_path / "c.yml"
    with f.open("w") as fh:
        fh.write("# " + "x" * (yamlpos.MAX_BYTES + 10) + "\n")
    res = cli("check", "config", str(f))
    assert res.returncode == 2
    assert_located(res.stderr, "larger than the 32 MiB limit")


@pytest.mark.timeout(120)
def test_thirteen_megabyte_config_is_answered(tmp_path: Path) -> None:
    f = tmp_path / "c.yml"
    lines = ["external_labels:"] + [f"  label_{i}: value-{i}-{'v' * 20}" for i in range(300_000)]
    f.write_text("\n".join(lines) + "\n")
    assert f.stat().st_size > 13_000_000
    res = cli("check", "config", str(f))
    assert res.returncode == 0, res.stderr[-2000:]
    f.write_text("\n".join(lines) + "\n  bad-label: x\n")
    res = cli("check", "config", str(f))
    assert res.returncode == 2
    assert_located(res.stderr, f"{f}:300002:3: external_labels.bad-label: 'bad-label' is not a valid label name")


def test_deep_nesting_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"^f\.yml:1:\d+: YAML error: nesting deeper than 200"):
        yamlpos.load("[" * 300, "f.yml")


def test_validation_problems_are_capped() -> None:
    text = "external_labels:\n" + "".join(f"  bad-{i}: x\n" for i in range(500))
    with pytest.raises(ConfigError) as err:
        config.load_text(text, "c.yml")
    assert len(err.value.problems) == yamlpos.MAX_PROBLEMS + 1
    assert err.value.problems[-1] == "c.yml:1:1: ... and 400 more problems"


# ---------------------------------------------------------------- accepted though wrong


def test_duration_range_matches_go() -> None:
    assert parse_duration("292y") == 292 * 365 * 86400
    for text in ("293y", "99999999999999999999999y", "106752d"):
        with pytest.raises(ValueError, match="duration out of range"):
            parse_duration(text)


def test_config_duration_out_of_range_is_located() -> None:
    with pytest.raises(ConfigError, match=r"^c\.yml:2:23: collectors\.gpu\.call_timeout: duration out of range"):
        config.load_text("collectors:\n  gpu: {call_timeout: 99999999999999999999y}\n", "c.yml")


def test_promql_number_and_duration_out_of_range() -> None:
    with pytest.raises(PromQLError, match='parsing "1e999999": value out of range') as err:
        compile_expr("up > 1e999999")
    assert err.value.offset == 5
    with pytest.raises(PromQLError, match=r"^duration out of range") as err:
        compile_expr("rate(up[99999999999y])")
    assert err.value.offset == 8
    compile_expr("up > 1e308 and up < +Inf")  # in range: still fine
    compile_expr("rate(up[292y])")


@pytest.mark.parametrize(("text", "fragment"), [
    ("external_labels:\n  cluster: a\n  bad-name: x\n", "c.yml:3:3: external_labels.bad-name: 'bad-name' is not"),
    ("external_labels:\n  __reserved: x\n", "c.yml:2:3: external_labels.__reserved: label name '__reserved' is"),
    ("external_labels:\n  0abc: x\n", "c.yml:2:3: external_labels.0abc:"),
    ('hostname: "gpu-a1\\nINJECTED 1"\n', "c.yml:1:11: hostname: not a valid hostname"),
    ('hostname: ""\n', "c.yml:1:11: hostname: not a valid hostname"),
    ('hostname: "a b"\n', "c.yml:1:11: hostname: not a valid hostname"),
])
def test_config_values_rejected(text: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as err:
        config.load_text(text, "c.yml")
    assert any(p.startswith(fragment) for p in err.value.problems), err.value.problems


def test_config_values_accepted() -> None:
    cfg = config.load_text("hostname: gpu-a1.dc2.example\nexternal_labels: {cluster: c1, _dc: x}\n", "c.yml")
    assert cfg.hostname == "gpu-a1.dc2.example" and cfg.external_labels == {"cluster": "c1", "_dc": "x"}


POLICY = """\
routes:
  - name: hot
    matchers: ['alertname="A"']
    steps: [{action: page}]
  - name: hot
    matchers: ['alertname="B"']
    steps: [{action: page}]
plugins:
  migrate:
    tiers:
      fast: {path: /mnt/fast, high: 5, low: -1}
      capacity: {path: relative/dir}
  nosuch: {x: 1}
"""


def test_policy_problems_located_by_check_rules(tmp_path: Path) -> None:
    f = tmp_path / "remediations.yml"
    f.write_text(POLICY)
    res = cli("check", "rules", "--no-catalogue", str(f))
    assert res.returncode == 1
    assert_located(
        res.stderr,
        f"{f}:5:11: routes.1.name: route name 'hot' is already used by routes.0",
        f"{f}:11:37: plugins.migrate.tiers.fast.high: Input should be less than or equal to 1",
        f"{f}:11:45: plugins.migrate.tiers.fast.low: Input should be greater than 0",
        f"{f}:12:17: plugins.migrate.tiers.capacity: tier path must be absolute",
        f"{f}:13:3: plugins.nosuch: unknown plugin 'nosuch'",
    )


def test_policy_with_bad_plugin_settings_fails_to_load() -> None:
    from agent.core.discovery import classes

    with pytest.raises(ConfigError) as err:
        load_policy_text(POLICY, "p.yml", classes().plugins)
    assert any("plugins.migrate.tiers.fast.high" in p for p in err.value.problems)
    with pytest.raises(ConfigError, match="route name 'hot' is already used"):
        load_policy_text(POLICY.split("plugins:")[0], "p.yml")  # route names are checked even without plugins


# ---------------------------------------------------------------- the fast YAML path keeps YAML 1.2 semantics


def test_yaml_float_out_of_range_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"^c\.yml:1:11: YAML error: number 1e999999 is out of range"):
        config.load_text("interval: 1e999999\n", "c.yml")


def test_scalars_resolve_as_yaml_1_2() -> None:
    root = yamlpos.load("a: yes\nb: on\nc: 0x1F\nd: 1e3\ne: '1'\nf: ~\ng: true\nh: !!str 5\ni: .inf\nj: 2024-01-01\n",
                        "f.yml")
    assert root == {"a": "yes", "b": "on", "c": 31, "d": 1000.0, "e": "1", "f": None, "g": True, "h": "5",
                    "i": float("inf"), "j": "2024-01-01"}
    assert yamlpos.position(root, ["c"]) == (3, 4) and yamlpos.position(root, ["c"], key=True) == (3, 1)


@pytest.mark.parametrize(("text", "where"), [
    ("a: 1\na: 2\n", "f.yml:2:1: YAML error: found duplicate key 'a'"),
    ("---\na: 1\n---\nb: 2\n", "f.yml:3:1: YAML error: expected a single document"),
    ("? [a]\n: 1\n", "f.yml:1:3: YAML error: mapping keys must be scalars"),
    ("a: *nope\n", "f.yml:1:4: YAML error"),
    ("a: b: c\n", "f.yml:1:5: YAML error"),
])
def test_yaml_errors_located(text: str, where: str) -> None:
    with pytest.raises(ConfigError) as err:
        yamlpos.load(text, "f.yml")
    assert str(err.value).startswith(where), str(err.value)
