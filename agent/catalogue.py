"""The complete metric catalogue: every family nodewarden can export, from the code that emits it.

``python -m agent.catalogue > docs/metrics.md`` regenerates the reference; a test keeps them equal.
"""

from __future__ import annotations

from agent import collectors
from agent.core.metrics import Catalogued, MetricSpec


def sources() -> list[tuple[str, list[MetricSpec]]]:
    """(source, specs) for the daemon's self-metrics and every installed collector."""
    from agent.daemon_tick import SELF_METRICS
    from agent.engine.rules import METRICS as RULE_METRICS
    from agent.remediation.remediator import METRICS as REMEDIATION_METRICS

    out: list[tuple[str, list[MetricSpec]]] = [
        ("daemon", list(SELF_METRICS)), ("rule engine", list(RULE_METRICS)),
        ("remediator", list(REMEDIATION_METRICS)),
    ]
    for name, ep in sorted(collectors.discover().items()):
        try:
            cls = collectors.load(ep)
        except Exception:  # a broken third-party plugin must not break the catalogue
            continue
        out.append((f"collector `{name}`", list(cls.metrics) if isinstance(cls, Catalogued) else []))
    from agent.core.discovery import classes

    for name, cls in sorted(classes().plugins.items()):
        if isinstance(cls, Catalogued) and cls.metrics:
            out.append((f"remediation plugin `{name}`", list(cls.metrics)))
    return out


def markdown() -> str:
    """The metric reference as Markdown."""
    lines = [
        "# Metric reference",
        "",
        "Generated from the code by `python -m agent.catalogue`; a test fails when this file is out of date.",
        "Disk, filesystem, network and InfiniBand families use node_exporter's names and labels, GPU families",
        "dcgm-exporter's, so existing dashboards and alert rules keep working.",
        "",
    ]
    for source, specs in sources():
        lines += [f"## {source}", "", "| metric | type | labels | help |", "|---|---|---|---|"]
        for s in specs:
            labels = ", ".join(s.labels) if s.labels else "—"
            lines.append(f"| `{s.name}` | {s.type} | {labels} | {s.help.replace('|', '/')} |")
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    print(markdown(), end="")
