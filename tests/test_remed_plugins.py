"""Entry-point discovery: built-ins register like third-party plugins; a load error disables only that one."""

from __future__ import annotations

from agent.core.discovery import GROUP, discover, load_remediations

TEST_GROUP = "nodewarden.remediations.test"


def _dist(tmp_path, lines: str) -> None:
    info = tmp_path / "nodewarden_test_plugins-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: nodewarden-test-plugins\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(f"[{TEST_GROUP}]\n{lines}")


def test_builtin_rebalance_is_an_entry_point():
    assert discover(GROUP)["rebalance"].value == "remediations.rebalance:Rebalance"


def test_broken_plugins_are_disabled_one_by_one(tmp_path, monkeypatch):
    _dist(tmp_path, "marker = tests.remed_support:Marker\nmissing = no_such_module_xyz:Plugin\n"
                    "incomplete = json:JSONDecoder\nbadconf = tests.remed_support:Marker\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    result = load_remediations({"marker": {"dir": str(tmp_path)}, "badconf": {"dir": 5}, "ghost": {}},
                               group=TEST_GROUP)
    assert list(result.plugins) == ["marker"]
    assert sorted(result.errors) == ["badconf", "ghost", "incomplete", "missing"]
    assert "not installed" in result.errors["ghost"]
    assert "plugin 'missing' (no_such_module_xyz:Plugin): cannot import" in result.errors["missing"]
    assert "missing NAME" in result.errors["incomplete"]
    assert "bad settings" in result.errors["badconf"]
