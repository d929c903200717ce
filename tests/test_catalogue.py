"""The metric catalogue is complete and documented (habit 9: catalogue checked against what is emitted)."""

from pathlib import Path

from agent import catalogue
from tests.agentproc import AgentProcess, fixture_config
from tests.trees import build_scaled_tree

DOC = Path(__file__).resolve().parents[1] / "docs" / "metrics.md"


def test_docs_metrics_md_is_current():
    assert DOC.read_text() == catalogue.markdown(), "run: python -m agent.catalogue > docs/metrics.md"


def test_every_exported_family_is_catalogued(tmp_path):
    known = {s.name: s for _, specs in catalogue.sources() for s in specs}
    tree = build_scaled_tree(tmp_path / "tree")
    with AgentProcess(tmp_path, fixture_config(tree)) as agent:
        text = agent.metrics()
    families = {line.split()[2]: line.split()[3] for line in text.splitlines() if line.startswith("# TYPE")}
    assert len(families) > 40
    for name, mtype in families.items():
        assert name in known, f"{name} is exported but not in the catalogue"
        assert mtype == {"info": "gauge"}.get(known[name].type, known[name].type)
