"""Deployment files: the Kubernetes manifests (loaded into the official `kubernetes` client's models; no cluster
is available here, so nothing is applied), the central Prometheus / Alertmanager examples (promtool, amtool) and
the container image recipe.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from agent.cli import build_parser
from agent.core import config as configmod
from agent.core.discovery import classes
from agent.remediation.policy import load_policy_text
from tests.conftest import require_binary

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "deploy" / "kubernetes"))
from sync_configmap import KUBERNETES, SLURM

REPO = Path(__file__).resolve().parents[1]
K8S = REPO / "deploy" / "kubernetes"
CENTRAL = REPO / "examples" / "central"
MODELS = {"Namespace": "V1Namespace", "ServiceAccount": "V1ServiceAccount", "ClusterRole": "V1ClusterRole",
          "ClusterRoleBinding": "V1ClusterRoleBinding", "Role": "V1Role", "RoleBinding": "V1RoleBinding",
          "ConfigMap": "V1ConfigMap", "DaemonSet": "V1DaemonSet", "Service": "V1Service"}
CRDS = {"ServiceMonitor", "PrometheusRule"}  # prometheus-operator kinds: no model in the client


def load_all(path: Path) -> list[dict]:
    return [json.loads(json.dumps(d)) for d in yaml.safe_load_all(path.read_text()) if d]


@pytest.fixture(scope="module")
def manifests() -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for path in sorted(K8S.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        for doc in load_all(path):
            out.setdefault(doc["kind"], []).append(doc)
    return out


def one(manifests, kind: str) -> dict:
    (doc,) = manifests[kind]
    return doc


def test_every_manifest_loads_into_the_client_models_without_losing_a_field(manifests):
    from kubernetes import client

    api = client.ApiClient()
    assert set(manifests) == set(MODELS) | CRDS
    for kind, docs in manifests.items():
        if kind in CRDS:
            continue
        for doc in docs:
            obj = api.deserialize(json.dumps(doc), MODELS[kind], "application/json")  # required fields, types
            assert type(obj).__name__ == MODELS[kind]
            # a misspelled or misplaced key is silently dropped by the models: the round trip must be lossless
            assert api.sanitize_for_serialization(obj) == doc, f"{kind} {doc['metadata']['name']}"


def test_kustomization_lists_every_manifest():
    kust = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert sorted(kust["resources"]) == sorted(p.name for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")


def test_daemonset_host_access_and_capabilities_are_the_documented_ones(manifests):
    ds = one(manifests, "DaemonSet")
    pod = ds["spec"]["template"]["spec"]
    assert pod["hostPID"] is True and pod["hostNetwork"] is True
    assert {"operator": "Exists"} in pod["tolerations"]  # also on nodes nodewarden tainted itself
    (ctr,) = pod["containers"]
    caps = ctr["securityContext"]["capabilities"]
    assert caps["drop"] == ["ALL"]
    header = (K8S / "daemonset.yaml").read_text().split("apiVersion:")[0]
    documented = set(re.findall(r"^#\s{3}([A-Z_]+)\s{2,}", header, re.M))
    assert set(caps["add"]) == documented == {"SYSLOG", "DAC_READ_SEARCH", "NET_ADMIN", "SYS_ADMIN"}
    assert ctr["securityContext"]["privileged"] is False and ctr["securityContext"]["readOnlyRootFilesystem"]
    mounts = {m["mountPath"]: m["name"] for m in ctr["volumeMounts"]}
    host = {v["name"]: v.get("hostPath", {}).get("path") for v in pod["volumes"]}
    assert host[mounts["/host/proc"]] == "/proc" and host[mounts["/host/sys"]] == "/sys"
    assert host[mounts["/host/root"]] == "/" and host[mounts["/dev/kmsg"]] == "/dev/kmsg"
    assert host[mounts["/var/lib/nodewarden"]] == "/var/lib/nodewarden"
    # the container's command line is a valid nodewarden command line, reading the ConfigMap's config
    args = build_parser().parse_args(ctr["args"])
    assert args.command == "run" and args.config.startswith("/etc/nodewarden/config/")
    probe_port = ctr["livenessProbe"]["httpGet"]["port"]
    assert probe_port in [p["name"] for p in ctr["ports"]] and ctr["livenessProbe"]["httpGet"]["path"] == "/healthz"


def test_configmap_config_and_policy_are_valid_and_track_the_defaults(manifests):
    cm = one(manifests, "ConfigMap")
    cfg = configmod.load_text(cm["data"]["config.yml"], "configmap:config.yml")
    assert (cfg.paths.procfs, cfg.paths.sysfs, cfg.paths.rootfs) == ("/host/proc", "/host/sys", "/host/root")
    assert cfg.state_dir == "/var/lib/nodewarden" and cfg.mode == "observe"
    ctr = one(manifests, "DaemonSet")["spec"]["template"]["spec"]["containers"][0]
    mount = next(m["mountPath"] for m in ctr["volumeMounts"] if m["name"] == "config")
    assert cfg.remediation_policy == f"{mount}/remediations.yml"
    assert configmod.parse_listen(cfg.listen)[1] == ctr["ports"][0]["containerPort"]
    policy = load_policy_text(cm["data"]["remediations.yml"], classes().plugins)
    assert policy.plugins["rebalance"]["backend"] == "kubernetes"
    assert policy.plugins["rebalance"]["kubernetes"]["lease_namespace"] == cm["metadata"]["namespace"]
    default = (REPO / "rules" / "remediations.yml").read_text()
    # after changing rules/remediations.yml: python deploy/kubernetes/sync_configmap.py
    assert cm["data"]["remediations.yml"] == default.replace(SLURM, KUBERNETES)


# kubernetes client method -> (resource, verb) it needs: cluster-wide (CoreV1Api) and in the lease namespace
API_NEEDS = {"read_node": ("nodes", "get"), "patch_node": ("nodes", "patch"), "list_node": ("nodes", "list"),
             "list_pod_for_all_namespaces": ("pods", "list"),
             "create_namespaced_pod_eviction": ("pods/eviction", "create")}
LEASE_NEEDS = {"list_namespaced_lease": "list", "create_namespaced_lease": "create",
               "delete_namespaced_lease": "delete", "read_namespaced_lease": "get",
               "replace_namespaced_lease": "update", "patch_namespaced_lease": "patch"}


def test_rbac_grants_what_the_kubernetes_backend_calls_and_no_more(manifests):
    source = (REPO / "remediations" / "backends" / "kubernetes.py").read_text()
    used = set(re.findall(r"self\.api\.([a-z_]+)", source)) - {"api_client"}  # the connection, not a call
    assert used and used <= set(API_NEEDS), f"new API calls need RBAC: {used - set(API_NEEDS)}"
    lease_calls = set(re.findall(r"self\.leases\.([a-z_]+)", source))
    assert lease_calls <= set(LEASE_NEEDS), f"new Lease calls need RBAC: {lease_calls - set(LEASE_NEEDS)}"
    needed = {API_NEEDS[m] for m in used}
    (role,) = manifests["ClusterRole"]
    granted = {(res, verb) for rule in role["rules"] for res in rule["resources"] for verb in rule["verbs"]}
    assert granted == needed
    (binding,) = manifests["ClusterRoleBinding"]
    sa = one(manifests, "ServiceAccount")
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": sa["metadata"]["name"],
                                    "namespace": sa["metadata"]["namespace"]}]
    ds = one(manifests, "DaemonSet")
    assert ds["spec"]["template"]["spec"]["serviceAccountName"] == sa["metadata"]["name"]
    (lease_role,) = manifests["Role"]
    assert lease_role["metadata"]["namespace"] == one(manifests, "ConfigMap")["metadata"]["namespace"]
    assert lease_role["rules"] == [{"apiGroups": ["coordination.k8s.io"], "resources": ["leases"],
                                    "verbs": sorted(LEASE_NEEDS[c] for c in lease_calls)}]


def test_service_and_servicemonitor_select_the_agents(manifests):
    ds, svc, sm = one(manifests, "DaemonSet"), one(manifests, "Service"), one(manifests, "ServiceMonitor")
    pod_labels = ds["spec"]["template"]["metadata"]["labels"]
    assert svc["spec"]["selector"].items() <= pod_labels.items()
    assert svc["spec"]["clusterIP"] == "None"
    assert sm["apiVersion"] == "monitoring.coreos.com/v1"
    assert sm["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
    assert sm["spec"]["namespaceSelector"]["matchNames"] == [svc["metadata"]["namespace"]]
    (ep,) = sm["spec"]["endpoints"]
    assert ep["port"] in [p["name"] for p in svc["spec"]["ports"]] and ep["path"] == "/metrics"
    ctr_ports = [p["name"] for p in ds["spec"]["template"]["spec"]["containers"][0]["ports"]]
    assert svc["spec"]["ports"][0]["targetPort"] in ctr_ports
    # the same metric renames as the file_sd scrape config (the fleet rules depend on them)
    prom = yaml.safe_load((CENTRAL / "prometheus.yml").read_text())
    renames = [(r["regex"], r["replacement"]) for r in prom["scrape_configs"][0]["metric_relabel_configs"]]
    assert [(r["regex"], r["replacement"]) for r in ep["metricRelabelings"]] == renames


def test_prometheusrule_is_the_promtool_tested_fleet_rules(manifests, tmp_path):
    rule = one(manifests, "PrometheusRule")
    fleet = yaml.safe_load((CENTRAL / "fleet-rules.yml").read_text())
    assert rule["spec"] == json.loads(json.dumps(fleet))
    promtool = require_binary("promtool")
    (tmp_path / "spec.yml").write_text(json.dumps(rule["spec"]))
    proc = subprocess.run([promtool, "check", "rules", str(tmp_path / "spec.yml")], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


# -- central side -----------------------------------------------------------------------------------------------
def test_fleet_rules_pass_their_promtool_tests():
    promtool = require_binary("promtool")
    proc = subprocess.run([promtool, "test", "rules", "tests/fleet-rules.test.yml"], cwd=CENTRAL,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "SUCCESS" in proc.stdout, proc.stdout + proc.stderr
    tested = set(re.findall(r"alertname: (\w+)", (CENTRAL / "tests" / "fleet-rules.test.yml").read_text()))
    defined = set(re.findall(r"- alert: (\w+)", (CENTRAL / "fleet-rules.yml").read_text()))
    assert defined == tested  # every fleet alert has a test


def test_scrape_config_is_valid_and_uses_file_sd(tmp_path):
    promtool = require_binary("promtool")
    for name in ("prometheus.yml", "fleet-rules.yml"):
        shutil.copy(CENTRAL / name, tmp_path / name)
    proc = subprocess.run([promtool, "check", "config", str(tmp_path / "prometheus.yml")], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    prom = yaml.safe_load((CENTRAL / "prometheus.yml").read_text())
    (job,) = prom["scrape_configs"]
    assert job["job_name"] == "nodewarden" and job["file_sd_configs"]
    targets = yaml.safe_load((CENTRAL / "targets" / "gpu-nodes.yml").read_text())
    assert all(t.endswith(":9842") for group in targets for t in group["targets"])


@pytest.mark.parametrize("labels,receiver", [
    (["remediation=exhausted", "alertname=GpuLost", "instance=gpu-a1"], "gpu-oncall-pager"),
    (["alertname=GpuLost", "instance=gpu-a1"], "gpu-fleet-chat"),
    (["alertname=NodewardenTooManyNodesDrained"], "gpu-oncall-pager"),
])
def test_alertmanager_pages_for_exhausted_remediation(labels, receiver):
    amtool = require_binary("amtool")
    cfg = str(CENTRAL / "alertmanager.yml")
    check = subprocess.run([amtool, "check-config", cfg], capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr
    proc = subprocess.run([amtool, "config", "routes", "test", f"--config.file={cfg}", *labels],
                          capture_output=True, text=True, timeout=60)
    assert proc.stdout.strip() == receiver, proc.stdout + proc.stderr


# -- container image --------------------------------------------------------------------------------------------
def test_dockerfile_installs_the_wheel_and_copies_files_that_exist(manifests):
    text = (REPO / "deploy" / "Dockerfile").read_text()
    copies = re.findall(r"^COPY (.+) (\S+)$", text, re.M)
    assert copies
    for sources, _dest in copies:
        for src in sources.split():
            if src.startswith("dist/"):
                assert re.fullmatch(r"dist/nodewarden-\*-py3-none-any\.whl", src)  # `make wheel` writes it
            else:
                assert (REPO / src).exists(), src
    rules_copy = next(src for src, dest in copies if dest == "/etc/nodewarden/rules/")
    assert rules_copy.split() == list(configmod.DEFAULT_RULE_FILES)  # the whole default library, not the policy
    entry = json.loads(re.search(r"^ENTRYPOINT (.+)$", text, re.M).group(1))
    assert entry == ["/opt/nodewarden/bin/nodewarden"]
    assert build_parser().parse_args(json.loads(re.search(r"^CMD (.+)$", text, re.M).group(1))).command == "run"
    makefile = (REPO / "Makefile").read_text()
    assert "pip wheel -q --no-deps -w dist ." in makefile and "deploy/Dockerfile" in makefile
