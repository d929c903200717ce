"""Through the daemon: the scrubber finds a corrupt file, a rule fires, the route restores it from a replica."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from tests.agentproc import NODEWARDEN, AgentProcess, sample_value, wait_for

RULES = """groups:
- name: integrity
  rules:
  - alert: DatasetDamaged
    expr: sum by (dataset) (nodewarden_integrity_files{state=~"corrupt|missing"}) > 0
    labels: {severity: critical}
"""

POLICY = """
defaults: {{mode: enforce, cooldown: 0s}}
plugins:
  restore:
    scrub_interval: 1s
    datasets:
      shards:
        root: {root}
        replicas: [{{type: local, path: {replica}}}]
routes:
  - name: repair
    matchers: ['alertname="DatasetDamaged"']
    steps:
      - action: restore
        params: {{dataset: "{{{{ $labels.dataset }}}}"}}
"""


def test_scrub_alert_restore_chain(tmp_path: Path):
    root, replica = tmp_path / "data", tmp_path / "replica"
    for d in (root, replica):
        (d / "sub").mkdir(parents=True)
    for i in range(20):
        content = f"shard {i}\n".encode() * 1000
        (root / "sub" / f"s{i}.bin").write_bytes(content)
        (replica / "sub" / f"s{i}.bin").write_bytes(content)
    res = subprocess.run([*NODEWARDEN, "manifest", "create", str(root)], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    good = (root / "sub" / "s7.bin").read_bytes()
    (root / "sub" / "s7.bin").write_bytes(b"bitrot" + good[6:])   # same size, different content
    (root / "sub" / "s9.bin").unlink()
    (tmp_path / "rules.yml").write_text(RULES)
    (tmp_path / "policy.yml").write_text(POLICY.format(root=root, replica=replica))
    cfg = {"interval": "1s", "mode": "enforce", "rule_files": ["rules.yml"], "remediation_policy": "policy.yml",
           "collectors": {"gpu": {"enabled": False}}}
    with AgentProcess(tmp_path, cfg) as agent:
        wait_for(lambda: (root / "sub" / "s9.bin").exists() and (root / "sub" / "s7.bin").read_bytes() == good,
                 timeout=60, what="files restored")
        wait_for(lambda: sample_value(agent.metrics(), "nodewarden_integrity_files", dataset="shards",
                                      state="ok") == 20, timeout=30, what="a clean scrub after the restore")
        text = agent.metrics()
        assert sample_value(text, "nodewarden_integrity_files", dataset="shards", state="corrupt") == 0
        res = subprocess.run([*NODEWARDEN, "history", "--json", "--state-dir", str(tmp_path / "state")],
                             capture_output=True, text=True, timeout=30)
        rows = [e for e in json.loads(res.stdout) if e["action"] == "restore"]
        assert [(r["alertname"], r["status"]) for r in rows] == [("DatasetDamaged", "succeeded")]
    quarantined = [p for p in (root / ".nodewarden-quarantine").rglob("*") if p.is_file()]
    assert any(p.read_bytes().startswith(b"bitrot") for p in quarantined)  # the damaged copy is kept
