"""Prometheus rule files on the node: loading and validation, evaluation, the alert state machine.

Loading follows Prometheus 2.42 (``model/rulefmt``): ``groups[]`` with ``name, interval, limit, rules``
(plus ``labels``, which newer Prometheus releases accept), alerting rules ``alert, expr, for,
keep_firing_for, labels, annotations`` and recording rules ``record, expr, labels``. Every problem is
reported as ``file:line:column: message``; a set of files loads all-or-nothing.

Evaluation follows ``rules/alerting.go`` and ``rules/recording.go``: alerts go inactive -> pending ->
firing (once active for ``for``), stay firing for ``keep_firing_for`` after the expression stops
returning them, and are remembered as resolved for 15 minutes. Rule outputs (recording series, ``ALERTS``,
``ALERTS_FOR_STATE``) are written into the store's current tick as each rule finishes, so a later rule of
the same group sees them, exactly like Prometheus. Pending/firing state is persisted to a JSON file
(atomic replace) and restored at start, so a restart neither resets ``for`` timers nor fires again.

Modules, lowest first: ``model`` (rule and group definitions), ``load`` (YAML -> definitions, validation),
``alerting`` (one alerting rule's state machine), ``evaluate`` (rule and group state, evaluation),
``persist`` (the alert state file), ``api`` (HTTP API shapes), ``engine`` (:class:`RuleEngine`).
"""

from agent.engine.rules.engine import METRICS, RuleEngine
from agent.engine.rules.load import load_files, parse_rule_text
from agent.engine.rules.model import Compiler, GroupDef, RuleDef

__all__ = ["METRICS", "Compiler", "GroupDef", "RuleDef", "RuleEngine", "load_files", "parse_rule_text"]
