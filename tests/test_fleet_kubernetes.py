"""The blast-radius cap on Kubernetes: one Lease per slot, created atomically (409 AlreadyExists for the loser).

Runs against the fake API server of test_remed_kubernetes (real HTTP, the official client), which answers
Lease create / delete / replace with the real server's 409 AlreadyExists and 409 Conflict bodies.
"""

from __future__ import annotations

import threading

import pytest
from kubernetes.client.exceptions import ApiException

from agent.core.plugin import Cap
from remediations.backends.kubernetes import KubernetesBackend
from remediations.rebalance import KubernetesSettings
from tests.test_remed_kubernetes import XID, FakeApiServer, _node, remediator, tick

NODES = [f"k{i:02d}" for i in range(1, 17)]


@pytest.fixture
def api():
    fake = FakeApiServer()
    fake.nodes.update({n: _node(n) for n in NODES})
    yield fake
    fake.close()


def backend(api) -> KubernetesBackend:
    return KubernetesBackend(KubernetesSettings(host=api.url, timeout=5))


def plan_for(b: KubernetesBackend, node: str):
    from remediations.rebalance import Params

    return b.plan(node, Params.model_validate({"reason": "leaf switch down", "evict": "false"}))


def test_sixteen_agents_claiming_at_once_get_exactly_the_slots(api):
    for cap in (1, 4):
        results: dict[str, tuple[str, str]] = {}
        barrier = threading.Barrier(len(NODES))

        def claim(node: str, cap=cap, results=results, barrier=barrier) -> None:
            b = backend(api)                      # one client per agent, like one process per node
            p = plan_for(b, node)
            barrier.wait()
            results[node] = b.claim(p, Cap(max_nodes=cap))

        threads = [threading.Thread(target=claim, args=(n,)) for n in NODES]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        granted = sorted(n for n, (r, _) in results.items() if not r)
        assert len(granted) == cap, results
        holders = sorted(v["spec"]["holderIdentity"] for v in api.leases.values())
        assert holders == granted
        assert {r for r, _ in results.values()} == {"", "blast_radius"}
        b = backend(api)
        for n in granted:
            b.release(plan_for(b, n))
        assert api.leases == {}


def test_the_fake_answers_like_the_api_server(api):
    b = backend(api)
    body = {"metadata": {"name": "nodewarden-slot-0", "namespace": "kube-system"}, "spec": {"holderIdentity": "x"}}
    b.leases.create_namespaced_lease("kube-system", body)
    with pytest.raises(ApiException) as err:
        b.leases.create_namespaced_lease("kube-system", body)
    assert err.value.status == 409 and '"reason":"AlreadyExists"' in err.value.body.replace(" ", "")
    with pytest.raises(ApiException) as err:
        b.leases.delete_namespaced_lease("nodewarden-slot-0", "kube-system", body={"preconditions": {
            "resourceVersion": "1"}})
    assert err.value.status == 409 and '"reason":"Conflict"' in err.value.body.replace(" ", "")


def test_release_never_deletes_a_slot_taken_over_meanwhile(api):
    b = backend(api)
    p = plan_for(b, "k01")
    assert b.claim(p, Cap(max_nodes=1))[0] == ""
    real_list = b.leases.list_namespaced_lease

    def stale_list(*a, **kw):        # we read the lease, then another writer replaced it before our delete
        out = real_list(*a, **kw)
        lease = api.leases[("kube-system", "nodewarden-slot-0")]
        api.version += 1
        lease["metadata"]["resourceVersion"] = str(api.version)
        return out

    b.leases.list_namespaced_lease = stale_list
    b.release(p)
    assert ("kube-system", "nodewarden-slot-0") in api.leases


def test_count_unavailable_gives_a_not_ready_node_a_slot(api):
    api.nodes["k16"]["status"] = {"conditions": [{"type": "Ready", "status": "False"}]}
    b = backend(api)
    assert b.claim(plan_for(b, "k01"), Cap(max_nodes=1, count_unavailable=True))[0] == "blast_radius"
    assert api.leases == {}
    assert b.claim(plan_for(b, "k01"), Cap(max_nodes=1))[0] == ""


def test_revert_releases_the_slot_for_the_next_node(tmp_path, api):
    first = remediator(tmp_path, api, "nw1")
    tick(first, [XID], 1000.0)
    assert [v["spec"]["holderIdentity"] for v in api.leases.values()] == ["nw1"]
    second = remediator(tmp_path, api, "nw2")
    tick(second, [XID], 1000.0)
    assert [(e.status, e.reason) for e in second.journal] == [("skipped", "blast_radius")]
    tick(first, [], 1010.0)
    tick(first, [], 1070.0)                       # resolved for revert_after: uncordoned, slot given back
    assert api.leases == {} and api.nodes["nw1"]["spec"]["unschedulable"] is False
    tick(second, [XID], 1031.0)                   # retry_interval later: the slot is free
    assert [v["spec"]["holderIdentity"] for v in api.leases.values()] == ["nw2"]
    assert api.nodes["nw2"]["spec"]["unschedulable"] is True


def test_maintenance_label_holds_the_action(tmp_path, api):
    api.nodes["nw1"]["metadata"]["labels"] = {"nodewarden.io/maintenance": "bios-update"}
    rem = remediator(tmp_path, api, "nw1")
    tick(rem, [XID], 1000.0)
    [row] = [e for e in rem.journal if e.op == "apply"]
    assert (row.status, row.reason) == ("skipped", "maintenance") and "bios-update" in row.output
    assert api.nodes["nw1"]["spec"]["unschedulable"] is False and api.leases == {}
