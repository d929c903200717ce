"""Rule and group definitions: the immutable result of loading a rule file."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from agent.engine import templates

Compiler = Callable[[str], Any]


@dataclass(frozen=True)
class RuleDef:
    """One alerting or recording rule as loaded."""

    kind: str  # "alerting" | "recording"
    name: str
    expr: str
    query: Any
    for_: float = 0.0
    keep_firing_for: float = 0.0
    labels: tuple[tuple[str, str], ...] = ()
    annotations: tuple[tuple[str, str], ...] = ()
    label_tmpls: tuple[tuple[str, templates.Template], ...] = ()
    annotation_tmpls: tuple[tuple[str, templates.Template], ...] = ()
    expr_pos: tuple[int, int] = field(default=(1, 1), compare=False)  # (line, column) of expr in its file

    @property
    def identity(self) -> tuple:
        """What must be equal for state to carry over a reload."""
        return (self.kind, self.name, self.expr, self.for_, self.keep_firing_for, self.labels, self.annotations)


@dataclass(frozen=True)
class GroupDef:
    """One rule group as loaded."""

    name: str
    file: str
    interval: float | None
    limit: int
    labels: tuple[tuple[str, str], ...]
    rules: tuple[RuleDef, ...]

    @property
    def key(self) -> str:
        """Prometheus's group key ``file;name`` (the ``rule_group`` label)."""
        return f"{self.file};{self.name}"

