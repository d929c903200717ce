"""Every plugin and collector hook is declared in a Protocol (agent/core/plugin.py, agent/core/metrics.py) and
the built-ins have exactly the hooks the docs say; no call site finds a declared hook by getattr/hasattr."""

from __future__ import annotations

import ast
import inspect
import typing
from pathlib import Path

import pytest

from agent.core import metrics, model, plugin
from agent.core.discovery import COLLECTORS, discover, load_collector, load_remediations
from agent.core.paths import Paths
from agent.engine import store

REPO = Path(__file__).resolve().parents[1]

def _protocols() -> list[type]:
    mods = (plugin, metrics, model, store)
    return [c for m in mods for _, c in inspect.getmembers(m, inspect.isclass)
            if getattr(c, "_is_protocol", False) and c.__module__ == m.__name__]


def _members(proto: type) -> set[str]:
    own = set(inspect.get_annotations(proto))
    own |= {k for k, v in proto.__dict__.items() if callable(v) and not k.startswith("_")}
    return own


HOOKS = set().union(*(_members(p) for p in _protocols())) - {"name", "release"}  # too common to scan for


def test_every_protocol_is_runtime_checkable_and_says_required_or_optional():
    for proto in _protocols():
        assert getattr(proto, "_is_runtime_protocol", False), proto
        docs = (proto.__doc__ or "") + "".join(getattr(proto, m).__doc__ or "" for m in _members(proto)
                                               if callable(getattr(proto, m, None)))
        assert "Optional" in docs or "Required" in docs or "required" in docs, proto
        for m in _members(proto):
            if callable(getattr(proto, m, None)):
                assert getattr(proto, m).__doc__, (proto, m)


def test_hooks_cover_what_the_docs_table_lists():
    assert {"reconcile", "expired", "progress", "metrics", "samples", "start", "close", "reason", "cluster",
            "held", "describe", "Config"} <= HOOKS


def test_builtin_plugins_have_the_documented_hooks(tmp_path):
    loaded = load_remediations({}, paths=Paths(), state_dir=str(tmp_path))
    assert loaded.errors == {}
    hooks = (plugin.Reconciles, plugin.Expires, plugin.ReportsProgress, plugin.ExportsMetrics, plugin.Starts,
             plugin.Closes, plugin.HasCluster)
    found = {n: {h.__name__ for h in hooks if isinstance(p, h)} for n, p in loaded.plugins.items()}
    assert all(isinstance(p, plugin.Remediation) for p in loaded.plugins.values())
    assert found == {
        "gpu-reset": set(),
        "migrate": {"ReportsProgress", "ExportsMetrics"},
        "powercap": {"Reconciles", "Expires", "ExportsMetrics"},
        "rebalance": {"HasCluster"},
        "restore": {"ExportsMetrics", "Starts", "Closes"},
        "throttle": {"Reconciles", "Expires", "ExportsMetrics"},
    }
    assert isinstance(loaded.plugins["rebalance"].backend, plugin.Backend)
    assert isinstance(loaded.plugins["rebalance"].cluster, plugin.Cluster)  # slurm, the default backend


def test_backends_follow_the_backend_protocol():
    from remediations.backends.gpu_fence import GpuFenceBackend
    from remediations.backends.kubernetes import KubernetesBackend
    from remediations.backends.slurm import SlurmBackend

    for cls in (SlurmBackend, KubernetesBackend, GpuFenceBackend):
        assert isinstance(cls, plugin.Backend), cls  # every method of the protocol is on the class
        for name in _members(plugin.Backend):
            want = inspect.signature(getattr(plugin.Backend, name)).parameters
            got = inspect.signature(getattr(cls, name)).parameters
            assert list(got)[: len(want)] == list(want), (cls, name)
    assert isinstance(SlurmBackend, plugin.Cluster) and isinstance(KubernetesBackend, plugin.Cluster)
    assert not isinstance(GpuFenceBackend, plugin.Cluster)


@pytest.mark.parametrize("name", sorted(discover(COLLECTORS)))
def test_builtin_collectors_declare_a_class_catalogue_and_their_config(name):
    cls = load_collector(discover(COLLECTORS)[name])
    assert isinstance(cls, metrics.Catalogued) and all(isinstance(s, metrics.MetricSpec) for s in cls.metrics)
    assert callable(cls.collect)
    assert isinstance(cls, model.Configurable)


def test_hook_signatures_match_the_builtins():
    from remediations.restore import Restore
    from remediations.throttle import Throttle

    for cls, proto in ((Throttle, plugin.Reconciles), (Throttle, plugin.Expires), (Restore, plugin.Closes)):
        for name in _members(proto):
            want = list(inspect.signature(getattr(proto, name)).parameters)
            got = list(inspect.signature(getattr(cls, name)).parameters)
            assert got[: len(want)] == want, (cls, name, got)
    assert typing.get_type_hints(plugin.ReportsProgress)["progress"]


def _probes(path: Path) -> list[str]:
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("getattr", "hasattr") \
                and len(node.args) >= 2 and isinstance(node.args[1], ast.Constant) and node.args[1].value in HOOKS:
            out.append(f"{path.relative_to(REPO)}:{node.lineno}: {node.func.id}(..., {node.args[1].value!r})")
    return out


def test_no_call_site_probes_for_a_declared_hook():
    files = [p for d in ("agent", "remediations") for p in sorted((REPO / d).rglob("*.py"))]
    found = [hit for p in files for hit in _probes(p)]
    assert found == [], "use isinstance(obj, <the hook's Protocol>) instead:\n" + "\n".join(found)


def test_the_store_is_a_ring_source_and_the_plain_reader_only_a_series_source():
    from tests.test_promql_engine import PlainStore

    s = store.Store(60, 1)
    assert isinstance(s, store.RingSource) and isinstance(s, store.SeriesSource)
    assert isinstance(PlainStore(s), store.SeriesSource) and not isinstance(PlainStore(s), store.RingSource)
    assert store.source_kind(s) == (True, True) and store.is_ring(s)
    assert store.source_kind(PlainStore(s)) == (False, False) and not store.is_ring(PlainStore(s))


def test_a_versioned_reader_without_the_ring_keeps_its_selection_cache():
    from agent.engine.promql import compiler
    from tests.promqltest import SampleStore

    reader = SampleStore()
    reader.add("up", {"job": "a"}, 10.0, 1.0)
    assert store.source_kind(reader) == (True, False)
    q = compiler.compile_expr("up")
    q.eval(reader, 10.0)
    vs = q.root  # the query is its selector
    assert vs._cache_store is reader and vs._cache_version == reader.version


def _models(tp: object, seen: set[type]) -> None:
    """Every pydantic model class reachable from annotation ``tp`` (through unions, lists, dicts, ...)."""
    from pydantic import BaseModel

    if isinstance(tp, type) and issubclass(tp, BaseModel):
        if tp not in seen:
            seen.add(tp)
            for f in tp.model_fields.values():
                _models(f.annotation, seen)
        return
    for arg in typing.get_args(tp):
        _models(arg, seen)


def test_plugin_settings_and_params_models_share_one_base():
    """A plugin's Config, Params and every model nested in them derive from ParamsModel (frozen, unknown keys
    rejected): one behaviour for every policy section."""
    from agent.core.discovery import REMEDIATIONS, load_class

    seen: set[type] = set()
    for ep in discover(REMEDIATIONS).values():
        cls = load_class(ep)
        for attr in ("Config", "Params"):
            if hasattr(cls, attr):
                _models(getattr(cls, attr), seen)
    assert len(seen) >= 15, sorted(c.__name__ for c in seen)
    assert [c.__qualname__ for c in seen if not issubclass(c, plugin.ParamsModel)] == []
    assert all(c.model_config.get("frozen") for c in seen)
    assert {c.__name__ for c in seen if c.model_config.get("extra") != "forbid"} == {"Replica"}
