"""Config parsing: typed, frozen, every problem with file:line:column."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from agent.core import config
from agent.core.durations import format_duration, parse_duration
from agent.core.errors import ConfigError


@pytest.mark.parametrize(("text", "seconds"), [
    ("5s", 5), ("1m30s", 90), ("250ms", 0.25), ("1h", 3600), ("2d", 172800), ("1w", 604800), ("0", 0),
])
def test_durations(text, seconds):
    assert parse_duration(text) == seconds
    assert parse_duration(format_duration(seconds)) == seconds


@pytest.mark.parametrize("bad", ["", "5", "5 s", "1.5m", "s", "-1s", "1s1m"])
def test_bad_durations(bad):
    with pytest.raises(ValueError):
        parse_duration(bad)


def test_defaults_are_observe_and_frozen():
    cfg = config.Config()
    assert cfg.mode == "observe" and cfg.interval == 5 and cfg.retention == 900
    assert cfg.listen == config.DEFAULT_LISTEN
    with pytest.raises(ValidationError):
        cfg.mode = "enforce"  # type: ignore[misc]


def test_every_problem_is_positioned():
    text = "interval: 500ms\nmode: enforcing\ncollectors:\n  disk:\n    export: 'no'\n  gpu: {call_timeout: 3}\n"
    with pytest.raises(ConfigError) as err:
        config.load_text(text, "c.yml")
    problems = err.value.problems
    assert "c.yml:1:11: interval: interval must be between 1s and 1h" in problems
    assert any(p.startswith("c.yml:2:7: mode:") for p in problems)
    assert any(p.startswith("c.yml:5:13: collectors.disk.export:") for p in problems)
    assert any(p.startswith("c.yml:6:23: collectors.gpu.call_timeout: duration must be a string") for p in problems)


def test_yaml_syntax_error_is_positioned():
    with pytest.raises(ConfigError) as err:
        config.load_text("collectors:\n  disk: [\n", "c.yml")
    assert str(err.value).startswith("c.yml:3:1: YAML error")


def test_duplicate_key_rejected():
    with pytest.raises(ConfigError, match=r"c\.yml:2:1"):
        config.load_text("mode: observe\nmode: enforce\n", "c.yml")


def test_overrides_validated():
    cfg = config.with_overrides(config.Config(), listen="127.0.0.1:1", state_dir=None)
    assert cfg.listen == "127.0.0.1:1" and cfg.state_dir == "var"
    with pytest.raises(ConfigError, match="listen"):
        config.with_overrides(config.Config(), listen="nope")


def test_parse_listen():
    assert config.parse_listen("[::1]:9842") == ("::1", 9842)
    assert config.parse_listen(":9842") == ("0.0.0.0", 9842)
    with pytest.raises(ValueError):
        config.parse_listen("localhost")
