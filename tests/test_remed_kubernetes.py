"""``rebalance`` kubernetes backend against a small HTTP fake of the API server (127.0.0.1).

No real API server can run here, so this fake implements just the endpoints the backend uses (read/patch/
list nodes, list pods by node, the Eviction subresource with a PodDisruptionBudget refusal) and records
every request; the official ``kubernetes`` client talks to it over real HTTP.
"""

from __future__ import annotations

import copy
import json
import threading
import urllib.parse
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import kubernetes  # noqa: F401  (a declared dependency: fail, do not skip, when missing)
import pytest

from agent.core.alerts import Alert
from agent.core.discovery import load_remediations
from agent.remediation.journal import Journal
from agent.remediation.policy import load_policy_text
from agent.remediation.remediator import Remediator


def _node(name, unschedulable=False, taints=None):
    return {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "annotations": {}},
            "spec": {"unschedulable": unschedulable, "taints": taints or []}}


def _pod(ns, name, node, gpus=0, blocked=False):
    res = {"limits": {"nvidia.com/gpu": str(gpus)}} if gpus else {}
    uid = str(uuid.uuid5(uuid.NAMESPACE_DNS, f"{ns}/{name}"))
    return {"metadata": {"name": name, "namespace": ns, "uid": uid, "labels": {"pdb": "blocked"} if blocked else {}},
            "spec": {"nodeName": node, "containers": [{"name": "c", "image": "x", "resources": res}]},
            "status": {"phase": "Running"}}


def _merge(dst, patch):
    for k, v in patch.items():
        if v is None:
            dst.pop(k, None)
        elif isinstance(v, dict) and isinstance(dst.get(k), dict):
            _merge(dst[k], v)
        else:
            dst[k] = copy.deepcopy(v)


class FakeApiServer:
    """Nodes and pods in memory; ``requests`` is a list of (method, path, query, body)."""

    def __init__(self):
        self.nodes = {"nw1": _node("nw1"), "nw2": _node("nw2")}
        self.pods = [_pod("ml", "train-0", "nw1", gpus=8), _pod("ml", "eval-0", "nw1", gpus=1, blocked=True),
                     _pod("kube-system", "dns", "nw1"), _pod("ml", "train-1", "nw2", gpus=8)]
        self.requests = []
        self.leases = {}                  # (namespace, name) -> Lease; created atomically (409 AlreadyExists)
        self.lock = threading.Lock()
        self.version = 100                # resourceVersion counter
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def _send(self, code, obj):
                data = json.dumps(obj).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _handle(self, method):
                url = urllib.parse.urlsplit(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length)) if length else None
                query = dict(urllib.parse.parse_qsl(url.query))
                fake.requests.append((method, url.path, query, body, self.headers.get("Content-Type")))
                parts = url.path.strip("/").split("/")
                if parts[:3] == ["api", "v1", "nodes"]:
                    if len(parts) == 3:
                        return self._send(200, {"kind": "NodeList", "apiVersion": "v1", "metadata": {},
                                                "items": list(fake.nodes.values())})
                    node = fake.nodes.get(parts[3])
                    if node is None:
                        return self._send(404, {"kind": "Status", "code": 404})
                    if method == "PATCH":
                        _merge(node, body)
                    return self._send(200, node)
                if parts == ["api", "v1", "pods"]:
                    want = query.get("fieldSelector", "").removeprefix("spec.nodeName=")
                    items = [p for p in fake.pods if p["spec"]["nodeName"] == want]
                    return self._send(200, {"kind": "PodList", "apiVersion": "v1", "metadata": {}, "items": items})
                if parts[:4] == ["apis", "coordination.k8s.io", "v1", "namespaces"] and parts[5:6] == ["leases"]:
                    return self._send(*fake.lease(method, parts[4], parts[6] if len(parts) > 6 else None,
                                                  query, body))
                if len(parts) == 7 and parts[-1] == "eviction" and method == "POST":
                    pod = next((p for p in fake.pods if p["metadata"]["name"] == parts[5]), None)
                    if pod is None:
                        return self._send(404, {"kind": "Status", "code": 404})
                    if pod["metadata"]["labels"].get("pdb") == "blocked":
                        return self._send(429, {"kind": "Status", "code": 429, "reason": "TooManyRequests"})
                    fake.pods.remove(pod)
                    return self._send(201, {"kind": "Status", "apiVersion": "v1", "status": "Success"})
                return self._send(404, {"kind": "Status", "code": 404})

            def do_GET(self):
                self._handle("GET")

            def do_PATCH(self):
                self._handle("PATCH")

            def do_POST(self):
                self._handle("POST")

            def do_PUT(self):
                self._handle("PUT")

            def do_DELETE(self):
                self._handle("DELETE")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def lease(self, method, ns, name, query, body):
        """coordination.k8s.io/v1 Leases as the real API server answers: create is atomic (409 AlreadyExists),
        replace and delete honour resourceVersion (409 Conflict), a missing object is 404 NotFound."""
        def status(code, reason, message):
            return code, {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                          "message": message, "reason": reason, "code": code,
                          "details": {"name": name or "", "group": "coordination.k8s.io", "kind": "leases"}}

        what = f'leases.coordination.k8s.io "{name}"'
        with self.lock:
            if name is None and method == "GET":
                want = dict(kv.split("=", 1) for kv in query.get("labelSelector", "").split(",") if "=" in kv)
                items = [v for (n, _), v in sorted(self.leases.items()) if n == ns and
                         all(v["metadata"].get("labels", {}).get(k) == x for k, x in want.items())]
                return 200, {"kind": "LeaseList", "apiVersion": "coordination.k8s.io/v1",
                             "metadata": {"resourceVersion": str(self.version)}, "items": items}
            if name is None and method == "POST":
                name = body["metadata"]["name"]
                what = f'leases.coordination.k8s.io "{name}"'
                if (ns, name) in self.leases:
                    return status(409, "AlreadyExists", f"{what} already exists")
                self.version += 1
                obj = copy.deepcopy(body)
                obj["metadata"].update(namespace=ns, resourceVersion=str(self.version), uid=str(uuid.uuid4()))
                self.leases[(ns, name)] = obj
                return 201, obj
            cur = self.leases.get((ns, name))
            if cur is None:
                return status(404, "NotFound", f"{what} not found")
            if method == "GET":
                return 200, cur
            want = (body or {}).get("preconditions", {}).get("resourceVersion") if method == "DELETE" else \
                (body or {}).get("metadata", {}).get("resourceVersion")
            if want is not None and want != cur["metadata"]["resourceVersion"]:
                return status(409, "Conflict", f"Operation cannot be fulfilled on {what}: the object has been "
                                               "modified; please apply your changes to the latest version and "
                                               "try again")
            if method == "DELETE":
                del self.leases[(ns, name)]
                return 200, {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success"}
            if method == "PUT":
                self.version += 1
                obj = copy.deepcopy(body)
                obj["metadata"]["resourceVersion"] = str(self.version)
                self.leases[(ns, name)] = obj
                return 200, obj
            return status(405, "MethodNotAllowed", f"{method} not allowed")

    def close(self):
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


@pytest.fixture
def api():
    fake = FakeApiServer()
    yield fake
    fake.close()


def remediator(tmp_path, api, node="nw1", blast="{max_nodes: 1, max_fraction: null}"):
    policy = load_policy_text(f"""
defaults: {{mode: enforce, cooldown: 0s, blast_radius: {blast}}}
plugins:
  rebalance: {{backend: kubernetes, node_name: {node}, kubernetes: {{host: "{api.url}", timeout: 5}}}}
routes:
  - name: xid
    matchers: ['alertname="GpuXid"']
    revert_after: 1m
    steps:
      - action: rebalance
        params: {{gpu: "{{{{ $labels.gpu }}}}", reason: "XID 79 on GPU {{{{ $labels.gpu }}}}"}}
""")
    loaded = load_remediations(policy.plugins)
    assert "rebalance" in loaded.plugins, loaded.errors
    return Remediator(policy, Journal(str(tmp_path / node)), loaded.plugins, "enforce")


XID = Alert(labels={"alertname": "GpuXid", "gpu": "0"}, annotations={}, state="firing", active_at=0.0, value=79.0)


def tick(rem, alerts, now):
    rem.on_tick(alerts, now)
    rem.close(30)


def test_cordon_taint_evict_then_uncordon_on_resolve(tmp_path, api):
    rem = remediator(tmp_path, api)
    tick(rem, [XID], 1000.0)
    node = api.nodes["nw1"]
    assert node["spec"]["unschedulable"] is True
    assert node["spec"]["taints"] == [{"key": "nodewarden.io/unhealthy", "value": "XID_79_on_GPU_0",
                                       "effect": "NoSchedule"}]
    names = [p["metadata"]["name"] for p in api.pods]
    assert names == ["eval-0", "dns", "train-1"]              # GPU pod on nw1 evicted; others untouched
    patches = [r[4] for r in api.requests if r[0] == "PATCH"]
    assert patches and all(ct.endswith("merge-patch+json") for ct in patches)
    evictions = [(r[0], r[1], r[3]["kind"]) for r in api.requests if r[1].endswith("/eviction")]
    assert evictions == [("POST", "/api/v1/namespaces/ml/pods/train-0/eviction", "Eviction"),
                         ("POST", "/api/v1/namespaces/ml/pods/eval-0/eviction", "Eviction")]
    [row] = [e for e in rem.journal if e.op == "apply"]
    assert row.status == "succeeded"
    assert "eviction of ml/eval-0 refused by a PodDisruptionBudget" in row.output

    tick(rem, [], 1010.0)
    tick(rem, [], 1070.0)
    assert node["spec"] == {"unschedulable": False, "taints": []}
    assert node["metadata"]["annotations"] == {}
    assert [e.status for e in rem.journal if e.op == "apply"] == ["reverted"]


def test_node_cordoned_by_someone_else_stays_cordoned(tmp_path, api):
    api.nodes["nw1"]["spec"]["unschedulable"] = True
    rem = remediator(tmp_path, api)
    entry = rem.act("rebalance", {"reason": "x", "evict": "false"}, apply=True)
    assert entry.status == "succeeded" and "already cordoned" in entry.output
    rem.revert_entry(entry.id)
    assert api.nodes["nw1"]["spec"] == {"unschedulable": True, "taints": []}


def test_blast_radius_counts_tainted_nodes(tmp_path, api):
    tick(remediator(tmp_path, api, "nw1"), [XID], 1000.0)
    second = remediator(tmp_path, api, "nw2")
    tick(second, [XID], 1000.0)
    assert api.nodes["nw2"]["spec"]["unschedulable"] is False
    assert [(e.status, e.reason) for e in second.journal] == [("skipped", "blast_radius")]
    assert [p["metadata"]["name"] for p in api.pods if p["spec"]["nodeName"] == "nw2"] == ["train-1"]


class FakeNvml:
    """The few NVML calls the backend makes: compute processes per GPU index."""

    class NVMLError(Exception):
        pass

    def __init__(self, procs: dict[int, list[int]], lost: bool = False) -> None:
        self.procs, self.lost = procs, lost

    def nvmlInit(self):
        pass

    def nvmlShutdown(self):
        pass

    def nvmlDeviceGetHandleByIndex(self, i):
        if self.lost:
            raise self.NVMLError("GPU is lost")
        return i

    def nvmlDeviceGetComputeRunningProcesses(self, h):
        return [type("P", (), {"pid": pid})() for pid in self.procs.get(h, [])]


def _proc_tree(root, pid_to_cgroup: dict[int, str]):
    for pid, cgroup in pid_to_cgroup.items():
        (root / str(pid)).mkdir(parents=True)
        (root / str(pid) / "cgroup").write_text(cgroup)
    return root


def _uid(ns, name):
    return _pod(ns, name, "x")["metadata"]["uid"]


def test_pod_uid_from_cgroup_both_drivers():
    from remediations.backends.kubernetes import pod_uid_from_cgroup

    u = "0f4d2c1e-8a8b-4c2d-9e1f-1234567890ab"
    assert pod_uid_from_cgroup(f"0::/kubepods/besteffort/pod{u}/3f1c9e\n") == u
    systemd = f"0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{u.replace('-', '_')}.slice/cri-x\n"
    assert pod_uid_from_cgroup(systemd) == u
    assert pod_uid_from_cgroup("0::/system.slice/sshd.service\n") is None


def _rebalance(api, nvml, procfs):
    from agent.core.paths import Paths
    from remediations.rebalance import Config, Params, Rebalance

    cfg = Config.model_validate({"backend": "kubernetes", "node_name": "nw1",
                                 "kubernetes": {"host": api.url, "timeout": 5}})
    plugin = Rebalance(cfg, nvml=nvml, paths=Paths(procfs=str(procfs)))
    return plugin, Params.model_validate({"gpu": "0", "reason": "XID 79"})


def test_only_the_pods_holding_the_sick_gpu_are_evicted(tmp_path, api):
    train0 = _uid("ml", "train-0")
    procfs = _proc_tree(tmp_path / "proc", {
        4242: f"0::/kubepods/besteffort/pod{train0}/abc\n",
        4343: "0::/system.slice/nvidia-persistenced.service\n",   # a host process on the GPU: no pod
    })
    plugin, params = _rebalance(api, FakeNvml({0: [4242, 4343], 1: [9999]}), procfs)
    plan = plugin.plan(None, params)
    assert any("using GPU 0" in c for c in plan.changes)
    out = plugin.apply(plan).output
    evicted = [r[1] for r in api.requests if r[1].endswith("/eviction")]
    assert evicted == ["/api/v1/namespaces/ml/pods/train-0/eviction"]    # eval-0 (another GPU pod) stays
    assert f"GPU 0 is used by pods {train0}" in out


def test_unknown_gpu_holders_fall_back_to_every_gpu_pod(tmp_path, api):
    plugin, params = _rebalance(api, FakeNvml({}, lost=True), tmp_path / "proc")
    out = plugin.apply(plugin.plan(None, params)).output
    evicted = [r[1] for r in api.requests if r[1].endswith("/eviction")]
    assert evicted == ["/api/v1/namespaces/ml/pods/train-0/eviction", "/api/v1/namespaces/ml/pods/eval-0/eviction"]
    assert "cannot tell which pods use GPU 0" in out
