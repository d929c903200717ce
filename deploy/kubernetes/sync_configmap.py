"""Rewrite configmap.yaml's remediations.yml from rules/remediations.yml with the kubernetes backend (its slot
Leases in the agent's namespace):
`python deploy/kubernetes/sync_configmap.py` after changing the default policy (tests/test_deploy.py checks)."""

from __future__ import annotations

import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SLURM = "    backend: slurm           # slurm | kubernetes | gpu-fence\n"
KUBERNETES = ("    backend: kubernetes      # slurm | kubernetes | gpu-fence\n"
              "    kubernetes:\n"
              "      lease_namespace: nodewarden  # blast-radius slot Leases: rbac.yaml grants leases here only\n")


def main() -> None:
    policy = (REPO / "rules" / "remediations.yml").read_text()
    assert SLURM in policy, "the default policy's backend line changed: update sync_configmap.py"
    path = REPO / "deploy" / "kubernetes" / "configmap.yaml"
    text = path.read_text()
    head = text[: text.index("  remediations.yml: |\n")]
    path.write_text(head + "  remediations.yml: |\n" + textwrap.indent(policy.replace(SLURM, KUBERNETES), "    "))


if __name__ == "__main__":
    main()
