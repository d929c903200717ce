"""When the cluster engine cannot be asked, a node-scope action is refused, never taken on a guess."""

from __future__ import annotations

from agent.core.alerts import Alert
from agent.core.discovery import load_remediations
from agent.remediation.journal import Journal
from agent.remediation.policy import load_policy_text
from agent.remediation.remediator import Remediator
from tests.conftest import free_port

ALERT = Alert(labels={"alertname": "LeafSwitchDown"}, annotations={}, state="firing", active_at=0.0, value=1.0)


def _rem(tmp_path, plugin: str) -> Remediator:
    policy = load_policy_text(f"""
defaults: {{mode: enforce, cooldown: 0s, blast_radius: {{max_nodes: 2, max_fraction: null}}}}
plugins:
  rebalance: {plugin}
routes:
  - matchers: ['alertname="LeafSwitchDown"']
    steps:
      - action: rebalance
        params: {{reason: "leaf switch down", evict: "false"}}
""")
    loaded = load_remediations(policy.plugins)
    assert "rebalance" in loaded.plugins, loaded.errors
    return Remediator(policy, Journal(str(tmp_path)), loaded.plugins, "enforce")


def _outcome(rem: Remediator) -> tuple[str, str]:
    rem.on_tick([ALERT], 100.0)
    rem.close(30)
    [row] = [e for e in rem.journal if e.op == "apply"]
    return row.status, row.reason


def test_slurm_unreachable_refuses(tmp_path):
    # the client programs fail the way they do when slurmctld is down (non-zero exit)
    rem = _rem(tmp_path, "{backend: slurm, node_name: n01, slurm: {sinfo: 'false', scontrol: 'false'}}")
    status, reason = _outcome(rem)
    assert status == "skipped" and reason in ("maintenance_unknown", "blast_radius_unknown")


def test_slurm_reservations_readable_but_sinfo_failing_refuses_on_the_cap(tmp_path):
    rem = _rem(tmp_path, "{backend: slurm, node_name: n01, slurm: {sinfo: 'false', scontrol: 'true'}}")
    assert _outcome(rem) == ("skipped", "blast_radius_unknown")


def test_kubernetes_api_server_unreachable_refuses(tmp_path):
    host = f"http://127.0.0.1:{free_port()}"
    rem = _rem(tmp_path, f"{{backend: kubernetes, node_name: k01, kubernetes: {{host: '{host}', timeout: 2}}}}")
    status, reason = _outcome(rem)
    assert status == "skipped" and reason in ("maintenance_unknown", "blast_radius_unknown")
    rem = _rem(tmp_path / "b", f"{{backend: kubernetes, node_name: k01, kubernetes: {{host: '{host}', timeout: 2, "
                               "maintenance_label: null}}")
    assert _outcome(rem) == ("skipped", "blast_radius_unknown")
