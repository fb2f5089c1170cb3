"""Which clusters the deploy function may use: Karmada's Cluster objects (from a stand-in API server) and the
MLSysOps descriptions registered in the state store."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import kubernetes.client
import pytest
import yaml

from mapemesh.functions.deploy.apply import ApplyError
from mapemesh.functions.deploy.clusters import ClusterInfo, candidates, from_karmada, from_registry

from .conftest import SHARED
from .test_deploy_apply import TOKEN, FakeApiServer, Recorded, client_for

CLUSTERS = "/apis/cluster.karmada.io/v1alpha1/clusters"


@pytest.fixture
def api_server() -> Iterator[FakeApiServer]:
    server = FakeApiServer().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def client(api_server: FakeApiServer) -> Iterator[kubernetes.client.ApiClient]:
    api = client_for(api_server.url)
    try:
        yield api
    finally:
        api.close()


def _cluster(name: str, *, ready: str | None = "True", reason: str = "ClusterReady", message: str = "",
             spec: dict | None = None, labels: dict | None = None, allocatable: dict | None = None) -> dict:
    status: dict[str, Any] = {"kubernetesVersion": "v1.31.2"}
    if ready is not None:
        status["conditions"] = [{"type": "Ready", "status": ready, "reason": reason, "message": message,
                                 "lastTransitionTime": "2025-07-25T10:00:00Z"}]
    if allocatable:
        status["resourceSummary"] = {"allocatable": allocatable, "allocated": {"cpu": "1", "pods": "12"}}
    return {"apiVersion": "cluster.karmada.io/v1alpha1", "kind": "Cluster",
            "metadata": {"name": name, "labels": labels or {}},
            "spec": {"syncMode": "Push", "apiEndpoint": f"https://{name}.example:6443", **(spec or {})},
            "status": status}


KARMADA_CLUSTERS = [
    _cluster("cloud-1", spec={"region": "eu-west", "zones": ["eu-west-1a"], "provider": "openstack"},
             labels={"kubernetes.io/arch": "amd64", "mapemesh.io/layer": "cloud"},
             allocatable={"cpu": "64", "memory": "256Gi", "pods": "330", "nvidia.com/gpu": "2"}),
    _cluster("edge-1", spec={"region": "eu-west", "zone": "lab-2"}, labels={"kubernetes.io/arch": "arm64"},
             allocatable={"cpu": "8", "memory": "16Gi"}),
    _cluster("edge-2", ready="False", reason="ClusterNotReachable", message="cluster is not reachable"),
    _cluster("edge-3", spec={"taints": [{"key": "cluster.karmada.io/unreachable", "effect": "NoSchedule",
                                         "timeAdded": "2025-07-25T10:01:00Z"}]}),
    _cluster("edge-4", spec={"taints": [{"key": "mapemesh.io/busy", "effect": "PreferNoSchedule"}]}),
    _cluster("new-1", ready=None),
]


def _paged(request: Recorded) -> tuple[int, dict] | None:
    """Answer the cluster list in two pages, as an API server with `limit` does."""
    if request.method != "GET" or request.path != CLUSTERS:
        return None
    if request.query.get("continue") == ["page-2"]:
        return 200, {"apiVersion": "cluster.karmada.io/v1alpha1", "kind": "ClusterList", "metadata": {},
                     "items": KARMADA_CLUSTERS[3:]}
    return 200, {"apiVersion": "cluster.karmada.io/v1alpha1", "kind": "ClusterList",
                 "metadata": {"continue": "page-2"}, "items": KARMADA_CLUSTERS[:3]}


def test_karmada_clusters_and_which_are_candidates(api_server: FakeApiServer, client: kubernetes.client.ApiClient,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    api_server.answer = _paged

    clusters = {c.name: c for c in from_karmada(client)}

    assert [(r.method, r.path, r.authorization) for r in api_server.requests] == \
        [("GET", CLUSTERS, f"Bearer {TOKEN}")] * 2
    assert api_server.requests[1].query == {"limit": ["500"], "continue": ["page-2"]}
    assert clusters["cloud-1"] == ClusterInfo(
        name="cloud-1", ready=True, schedulable=True,
        labels={"kubernetes.io/arch": "amd64", "mapemesh.io/layer": "cloud"}, region="eu-west", zone="eu-west-1a",
        architecture="amd64", allocatable={"cpu": "64", "memory": "256Gi", "pods": "330", "nvidia.com/gpu": "2"},
        reason=None)
    assert (clusters["edge-1"].zone, clusters["edge-1"].architecture) == ("lab-2", "arm64")
    assert clusters["edge-2"].ready is False and "ClusterNotReachable" in (clusters["edge-2"].reason or "")
    assert clusters["edge-3"].ready is True and clusters["edge-3"].schedulable is False
    assert "cluster.karmada.io/unreachable:NoSchedule" in (clusters["edge-3"].reason or "")
    assert clusters["edge-4"].schedulable is True
    assert clusters["new-1"].ready is False and clusters["new-1"].reason == "no Ready condition"

    with caplog.at_level(logging.DEBUG, logger="mapemesh.functions.deploy.clusters"):
        chosen = candidates(list(clusters.values()))
    assert [c.name for c in chosen] == ["cloud-1", "edge-1", "edge-4"]
    assert "edge-3 is not a candidate: tainted cluster.karmada.io/unreachable:NoSchedule" in caplog.text


def test_a_refused_cluster_list_raises(api_server: FakeApiServer, client: kubernetes.client.ApiClient) -> None:
    api_server.failures[("GET", CLUSTERS)] = (403, {"kind": "Status", "code": 403, "message": "clusters is forbidden"})

    with pytest.raises(ApplyError, match="clusters is forbidden") as failure:
        from_karmada(client)
    assert failure.value.status == 403


def _reference(name: str) -> dict:
    path = SHARED / "reference" / "mlsysops" / name
    if not path.exists():
        pytest.skip(f"{path} is not here (../shared is laid beside the checkout in CI)")
    return yaml.safe_load(path.read_text())


def test_registered_clusters_and_nodes() -> None:
    cluster = _reference("cluster-description.yaml")
    node1 = _reference("node-description.node1.yaml")
    infrastructure = {
        "uth-prod-cluster": {"kind": "cluster", "description": cluster},
        "node-1": {"kind": "node", "description": node1},
        # Listed by the cluster description but naming no cluster itself.
        "csl-rpi5-1": {"kind": "node", "description": {"MLSysOpsNode": {
            "name": "csl-rpi5-1", "continuum_layer": "edge", "hardware": {"cpu": {"cores": 4, "architecture": "arm64"},
                                                                          "memory": 8}}}},
        # A cluster known only through its nodes.
        "far-1": {"kind": "node", "description": {"MLSysOpsNode": {
            "name": "far-1", "cluster_id": "far-edge", "hardware": {"cpu": {"cores": 2, "architecture": "arm64"},
                                                                    "memory": 2}}}},
        "lab": {"kind": "cluster", "description": {"MLSysOpsCluster": {
            "cluster_id": "lab", "ready": False, "reason": "under maintenance", "region": "gr-thessaly",
            "labels": ["tier:test"]}}},
        "app-x": {"kind": "application", "description": {}},
    }

    clusters = {c.name: c for c in from_registry(infrastructure)}

    assert sorted(clusters) == ["far-edge", "lab", "uth-prod-cluster"]
    prod = clusters["uth-prod-cluster"]
    assert prod.ready and prod.schedulable and prod.reason is None
    # node-1 is amd64 and csl-rpi5-1 arm64: a mixed cluster has no single architecture.
    assert prod.architecture is None
    assert prod.allocatable == {"cpu": "34", "memory": "12Gi"}
    far = clusters["far-edge"]
    assert (far.ready, far.architecture, far.allocatable) == (True, "arm64", {"cpu": "2", "memory": "2Gi"})
    lab = clusters["lab"]
    assert (lab.ready, lab.reason, lab.region, lab.labels) == (False, "under maintenance", "gr-thessaly",
                                                               {"tier": "test"})
    assert [c.name for c in candidates(list(clusters.values()))] == ["far-edge", "uth-prod-cluster"]


def test_a_lone_node_description_gives_its_cluster() -> None:
    node1 = _reference("node-description.node1.yaml")

    (only,) = from_registry({"node-1": {"kind": "node", "description": node1}})

    assert only == ClusterInfo(name="uth-prod-cluster", ready=True, schedulable=True, labels={}, region=None,
                               zone=None, architecture="amd64", allocatable={"cpu": "30", "memory": "4Gi"},
                               reason=None)
