"""The layers of docs/architecture.md hold: every import in agent/ and remediations/ points down, and no
module imports itself back through others (no cycle), counting imports inside functions too.

    core < collectors < engine < remediation < serve < top (agent/commands/, daemon, cli, catalogue)

``remediations/`` (the plugins) imports only ``agent.core`` and itself, and only the top layer imports it
(plugins are otherwise found through entry points). The root package ``agent`` (``__version__``) counts as
core. The walk is static (ast), so a lazy import is caught as well as one at the top of a file.
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LAYERS = ["agent.core", "agent.collectors", "agent.engine", "agent.remediation", "agent.serve"]
TOP = len(LAYERS)  # agent.commands, agent.daemon, agent.cli, agent.catalogue, agent.__main__
PLUGINS = "remediations"

# Known exceptions: (importer, imported) pairs allowed for now, each with the reason. Empty is the goal; an
# entry must name the engineer's work that removes it.
KNOWN: dict[tuple[str, str], str] = {}


def modules(repo: Path = REPO) -> dict[str, Path]:
    """Dotted module name -> file, for every module of agent/ and remediations/."""
    out = {}
    for top in ("agent", PLUGINS):
        for path in sorted((repo / top).rglob("*.py")):
            parts = list(path.relative_to(repo).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join(parts)] = path
    return out


def imports(name: str, path: Path, known: dict[str, Path]) -> set[tuple[str, int]]:
    """(module imported, line) for every import of our own modules in one file, anywhere in it."""
    is_pkg = path.name == "__init__.py"
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if is_pkg else name.split(".")[:-1]
                base = base[: len(base) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            # ``from pkg import sub`` imports the submodule; ``from mod import name`` the module.
            targets = [f"{mod}.{a.name}" if f"{mod}.{a.name}" in known else mod for a in node.names]
        for t in targets:
            while t and t not in known and "." in t:
                t = t.rsplit(".", 1)[0]
            if t in known and t != name:
                out.add((t, node.lineno))
    return out


def graph(repo: Path = REPO) -> tuple[dict[str, Path], dict[str, set[tuple[str, int]]]]:
    """The modules and their import edges."""
    known = modules(repo)
    return known, {m: imports(m, p, known) for m, p in known.items()}


def layer(module: str) -> int | str:
    """The layer's rank (0 = core), or ``PLUGINS``."""
    if module == PLUGINS or module.startswith(PLUGINS + "."):
        return PLUGINS
    if module == "agent":
        return 0
    for rank, prefix in enumerate(LAYERS):
        if module == prefix or module.startswith(prefix + "."):
            return rank
    return TOP


def violation(importer: str, imported: str) -> str | None:
    """Why ``importer`` may not import ``imported`` (None when it may)."""
    a, b = layer(importer), layer(imported)
    if a == PLUGINS:
        return None if b in (PLUGINS, 0) else "plugins import only agent.core and remediations"
    if b == PLUGINS:
        return None if a == TOP else "only the commands/daemon layer imports plugins (the rest discovers them)"
    if b > a:  # type: ignore[operator]
        return f"upward: layer {LAYERS[a] if a < TOP else 'top'} imports {LAYERS[b] if b < TOP else 'top'}"
    return None


def cycles(edges: dict[str, set[tuple[str, int]]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found = []
    for root in sorted(edges):
        if root in index:
            continue
        work = [(root, iter(sorted(t for t, _ in edges[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on.add(root)
        while work:
            v, it = work[-1]
            for w in it:
                if w not in index:
                    index[w] = low[w] = len(index)
                    stack.append(w)
                    on.add(w)
                    work.append((w, iter(sorted(t for t, _ in edges.get(w, ())))))
                    break
                if w in on:
                    low[v] = min(low[v], index[w])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[v])
                if low[v] == index[v]:
                    comp = []
                    while True:
                        w = stack.pop()
                        on.discard(w)
                        comp.append(w)
                        if w == v:
                            break
                    if len(comp) > 1:
                        found.append(sorted(comp))
    return found


def test_every_module_is_in_a_layer():
    known, _ = graph()
    assert "agent.core.plugin" in known and "agent.engine.store" in known and "remediations.throttle" in known
    tops = sorted(m for m in known if layer(m) == TOP)
    assert all(m.startswith(("agent.commands", "agent.daemon", "agent.cli", "agent.catalogue", "agent.__main__"))
               for m in tops), tops


def test_imports_point_down_only():
    known, edges = graph()
    bad = []
    for importer, targets in sorted(edges.items()):
        for imported, line in sorted(targets):
            why = violation(importer, imported)
            if why and (importer, imported) not in KNOWN:
                bad.append(f"{known[importer].relative_to(REPO)}:{line}: {importer} -> {imported}: {why}")
    assert bad == [], "\n".join(bad)


def test_known_exceptions_are_still_needed():
    _, edges = graph()
    for importer, imported in KNOWN:
        assert imported in {t for t, _ in edges.get(importer, ())}, f"remove the fixed exception {importer}"


def test_no_import_cycles():
    _, edges = graph()
    assert cycles(edges) == []


def test_the_checks_catch_what_they_look_for(tmp_path):
    """The walker on a small tree with one upward import, one plugin reaching into the engine and a cycle."""
    files = {
        "agent/__init__.py": "",
        "agent/core/__init__.py": "",
        "agent/core/a.py": "def f():\n    from agent.engine import b  # lazy, still upward\n",
        "agent/engine/__init__.py": "",
        "agent/engine/b.py": "from . import c\n",
        "agent/engine/c.py": "from agent.engine.b import x\n",
        "remediations/__init__.py": "",
        "remediations/p.py": "import agent.engine.c\nfrom agent.core.a import f\n",
    }
    for rel, text in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    _, edges = graph(tmp_path)
    bad = sorted((i, t) for i, ts in edges.items() for t, _ in ts if violation(i, t))
    assert bad == [("agent.core.a", "agent.engine.b"), ("remediations.p", "agent.engine.c")]
    assert cycles(edges) == [["agent.engine.b", "agent.engine.c"]]


# Issue 17: no module above ~500 lines mixes concerns. The largest single-concern modules (the fake pynvml API
# surface, the PromQL compiler) sit just under this bound; a module that grows past it is split by object.
MAX_MODULE_LINES = 600


def test_no_module_outgrows_the_split_bound():
    big = {str(p.relative_to(REPO)): n for top in ("agent", "remediations") for p in (REPO / top).rglob("*.py")
           if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_MODULE_LINES}
    assert big == {}, f"split these by object (each piece owning its state): {big}"
