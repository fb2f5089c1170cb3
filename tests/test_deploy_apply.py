"""The deploy function's apply path through the real `kubernetes` client: a test of what is sent, not of a cluster.

A stand-in API server on loopback records every request (method, path, query, Content-Type, Authorization,
body) and answers as the Kubernetes API server would; the tests check what reached it.
"""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import kubernetes.client
import pytest
import yaml

from mapemesh.functions.deploy.apply import ApplyError, KubernetesTarget, api_client, object_path

TOKEN = "test"


@dataclass
class Recorded:
    """One request as the server saw it."""

    method: str
    path: str
    query: dict[str, list[str]]
    content_type: str | None
    authorization: str | None
    body: bytes


def _status(code: int, reason: str, message: str) -> dict[str, Any]:
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure" if code >= 400 else "Success",
            "message": message, "reason": reason, "code": code}


class FakeApiServer:
    """A stand-in for the Kubernetes API server: stores applied objects, serves them back, records every request."""

    def __init__(self) -> None:
        self.requests: list[Recorded] = []
        self.objects: dict[str, dict] = {}
        self.gone: set[str] = set()
        self.failures: dict[tuple[str, str], tuple[int, dict]] = {}
        self.answer: Callable[[Recorded], tuple[int, dict] | None] | None = None
        self._lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # Headers and body go out as two writes; without this each answer waits for a delayed ACK.
            disable_nagle_algorithm = True

            def _handle(self) -> None:
                url = urlsplit(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                recorded = Recorded(self.command, url.path, parse_qs(url.query), self.headers.get("Content-Type"),
                                    self.headers.get("Authorization"), self.rfile.read(length) if length else b"")
                code, body = fake.respond(recorded)
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_PATCH = do_DELETE = do_POST = do_PUT = _handle

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self._thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def respond(self, request: Recorded) -> tuple[int, dict]:
        """Record the request and answer it as the API server would."""
        with self._lock:
            self.requests.append(request)
            if self.answer is not None and (custom := self.answer(request)) is not None:
                return custom
            if (request.method, request.path) in self.failures:
                return self.failures[(request.method, request.path)]
            if request.method == "PATCH":
                obj = yaml.safe_load(request.body)
                self.objects[request.path] = obj
                return 200, obj
            if request.method == "GET":
                if request.path in self.objects:
                    return 200, self.objects[request.path]
                return 404, _status(404, "NotFound", f"{request.path} not found")
            if request.method == "DELETE":
                if request.path in self.gone:
                    return 404, _status(404, "NotFound", f"{request.path} not found")
                self.objects.pop(request.path, None)
                return 200, _status(200, "", "")
            return 405, _status(405, "MethodNotAllowed", request.method)

    def start(self) -> FakeApiServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self._thread.join(timeout=5)


def client_for(url: str, token: str = TOKEN) -> kubernetes.client.ApiClient:
    """The official client pointed at `url` with a bearer token, as a kubeconfig with a token would set it up."""
    return kubernetes.client.ApiClient(kubernetes.client.Configuration(
        host=url, api_key={"authorization": f"Bearer {token}"}))


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


DEPLOYMENT = {
    "apiVersion": "apps/v1", "kind": "Deployment",
    "metadata": {"name": "shop-web", "namespace": "default", "labels": {"mapemesh.io/app": "shop"}},
    "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "shop-web"}},
             "template": {"metadata": {"labels": {"app": "shop-web"}},
                          "spec": {"containers": [{"name": "web", "image": "registry.example/shop-web:1.2",
                                                   "ports": [{"containerPort": 8080}],
                                                   "env": [{"name": "MODE", "value": "on"}]}]}}},
}
SERVICE = {
    "apiVersion": "v1", "kind": "Service", "metadata": {"name": "shop-web", "namespace": "default"},
    "spec": {"selector": {"app": "shop-web"}, "ports": [{"port": 80, "targetPort": 8080}]},
}
KNATIVE_SERVICE = {
    "apiVersion": "serving.knative.dev/v1", "kind": "Service", "metadata": {"name": "shop-infer", "namespace": "shop"},
    "spec": {"template": {"metadata": {"annotations": {"autoscaling.knative.dev/min-scale": "0"}},
                          "spec": {"containers": [{"image": "registry.example/infer:0.3"}]}}},
}
PROPAGATION_POLICY = {
    "apiVersion": "policy.karmada.io/v1alpha1", "kind": "PropagationPolicy",
    "metadata": {"name": "shop-web", "namespace": "default"},
    "spec": {"resourceSelectors": [{"apiVersion": "apps/v1", "kind": "Deployment", "name": "shop-web"},
                                   {"apiVersion": "v1", "kind": "Service", "name": "shop-web"}],
             "placement": {"clusterAffinity": {"clusterNames": ["edge-1", "cloud-1"]},
                           "replicaScheduling": {"replicaSchedulingType": "Duplicated"}}},
}
OVERRIDE_POLICY = {
    "apiVersion": "policy.karmada.io/v1alpha1", "kind": "OverridePolicy",
    "metadata": {"name": "shop-web", "namespace": "default"},
    "spec": {"resourceSelectors": [{"apiVersion": "apps/v1", "kind": "Deployment", "name": "shop-web"}],
             "overrideRules": [{"targetCluster": {"clusterNames": ["edge-1"]},
                                "overriders": {"plaintext": [{"path": "/spec/template/spec/nodeSelector",
                                                              "operator": "add",
                                                              "value": {"kubernetes.io/hostname": "node-1"}}]}}]},
}
OBJECTS = [DEPLOYMENT, SERVICE, KNATIVE_SERVICE, PROPAGATION_POLICY, OVERRIDE_POLICY]
PATHS = [
    "/apis/apps/v1/namespaces/default/deployments/shop-web",
    "/api/v1/namespaces/default/services/shop-web",
    "/apis/serving.knative.dev/v1/namespaces/shop/services/shop-infer",
    "/apis/policy.karmada.io/v1alpha1/namespaces/default/propagationpolicies/shop-web",
    "/apis/policy.karmada.io/v1alpha1/namespaces/default/overridepolicies/shop-web",
]


def test_apply_sends_a_server_side_apply_patch_per_object(api_server: FakeApiServer,
                                                          client: kubernetes.client.ApiClient) -> None:
    refs = KubernetesTarget(client).apply(OBJECTS)

    assert refs == ["Deployment/default/shop-web", "Service/default/shop-web", "Service/shop/shop-infer",
                    "PropagationPolicy/default/shop-web", "OverridePolicy/default/shop-web"]
    assert [(r.method, r.path) for r in api_server.requests] == [("PATCH", p) for p in PATHS]
    for request, obj in zip(api_server.requests, OBJECTS, strict=True):
        assert request.content_type == "application/apply-patch+yaml"
        assert request.query == {"fieldManager": ["mapemesh"], "force": ["true"]}
        assert yaml.safe_load(request.body) == obj
        assert request.authorization == f"Bearer {TOKEN}"


def test_apply_without_force_and_with_another_field_manager(api_server: FakeApiServer,
                                                            client: kubernetes.client.ApiClient) -> None:
    KubernetesTarget(client, field_manager="mapemesh-test", force=False).apply([DEPLOYMENT])

    assert api_server.requests[0].query == {"fieldManager": ["mapemesh-test"]}


def test_object_paths_of_cluster_scoped_and_core_kinds() -> None:
    assert object_path({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop"}}) == \
        "/api/v1/namespaces/shop"
    assert object_path({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cfg", "namespace": "shop"}}) \
        == "/api/v1/namespaces/shop/configmaps/cfg"
    assert object_path({"apiVersion": "policy.karmada.io/v1alpha1", "kind": "ClusterPropagationPolicy",
                        "metadata": {"name": "ns-shop"}}) \
        == "/apis/policy.karmada.io/v1alpha1/clusterpropagationpolicies/ns-shop"
    assert object_path({"apiVersion": "node.k8s.io/v1", "kind": "RuntimeClass", "metadata": {"name": "kata"}}) \
        == "/apis/node.k8s.io/v1/runtimeclasses/kata"
    # A namespaced object without a namespace goes where kubectl would put it.
    assert object_path({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "x"}}) \
        == "/apis/apps/v1/namespaces/default/deployments/x"
    with pytest.raises(ApplyError, match="unsupported kind StatefulSet"):
        object_path({"apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": {"name": "db"}})
    with pytest.raises(ApplyError, match=r"no metadata\.name"):
        object_path({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {}})


def test_delete_goes_in_reverse_order_and_tolerates_what_is_gone(api_server: FakeApiServer,
                                                                 client: kubernetes.client.ApiClient) -> None:
    api_server.gone.add(PATHS[1])

    refs = KubernetesTarget(client).delete(OBJECTS)

    assert [(r.method, r.path) for r in api_server.requests] == [("DELETE", p) for p in reversed(PATHS)]
    assert refs == ["OverridePolicy/default/shop-web", "PropagationPolicy/default/shop-web",
                    "Service/shop/shop-infer", "Service/default/shop-web", "Deployment/default/shop-web"]
    assert all(r.authorization == f"Bearer {TOKEN}" for r in api_server.requests)


def test_a_plain_cluster_gets_no_karmada_policies(api_server: FakeApiServer,
                                                  client: kubernetes.client.ApiClient) -> None:
    target = KubernetesTarget(client, karmada=False)

    assert target.apply(OBJECTS) == ["Deployment/default/shop-web", "Service/default/shop-web",
                                     "Service/shop/shop-infer"]
    target.delete(OBJECTS)

    assert [(r.method, r.path) for r in api_server.requests] == \
        [("PATCH", p) for p in PATHS[:3]] + [("DELETE", p) for p in reversed(PATHS[:3])]


def test_a_rejected_object_raises_naming_it_and_stops(api_server: FakeApiServer,
                                                      client: kubernetes.client.ApiClient) -> None:
    api_server.failures[("PATCH", PATHS[1])] = (422, _status(
        422, "Invalid", 'Service "shop-web" is invalid: spec.ports[0].port: Invalid value: 0'))

    with pytest.raises(ApplyError) as failure:
        KubernetesTarget(client).apply(OBJECTS)

    assert failure.value.status == 422
    assert "Service/default/shop-web" in str(failure.value)
    assert "spec.ports[0].port: Invalid value" in str(failure.value)
    assert [r.path for r in api_server.requests] == PATHS[:2]


def test_a_failed_delete_raises(api_server: FakeApiServer, client: kubernetes.client.ApiClient) -> None:
    api_server.failures[("DELETE", PATHS[0])] = (403, _status(403, "Forbidden", "deployments is forbidden"))

    with pytest.raises(ApplyError, match=r"Deployment/default/shop-web.*forbidden") as failure:
        KubernetesTarget(client).delete([DEPLOYMENT])
    assert failure.value.status == 403


def test_no_answer_raises_without_a_status() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    # Nothing listens on the port any more: the connection is refused.
    api = kubernetes.client.ApiClient(kubernetes.client.Configuration(host=f"http://127.0.0.1:{port}"))
    try:
        with pytest.raises(ApplyError, match="no answer") as failure:
            KubernetesTarget(api).apply([DEPLOYMENT])
    finally:
        api.close()
    assert failure.value.status is None


def test_api_client_from_a_kubeconfig_file(api_server: FakeApiServer, tmp_path: Path) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "elsewhere",
        "clusters": [{"name": "fake", "cluster": {"server": api_server.url}},
                     {"name": "nowhere", "cluster": {"server": "http://127.0.0.1:9"}}],
        "users": [{"name": "deployer", "user": {"token": "from-kubeconfig"}}],
        "contexts": [{"name": "karmada-apiserver", "context": {"cluster": "fake", "user": "deployer"}},
                     {"name": "elsewhere", "context": {"cluster": "nowhere", "user": "deployer"}}],
    }))

    api = api_client(str(kubeconfig), "karmada-apiserver")
    try:
        KubernetesTarget(api).apply([DEPLOYMENT])
    finally:
        api.close()

    assert [(r.method, r.path, r.authorization) for r in api_server.requests] == \
        [("PATCH", PATHS[0], "Bearer from-kubeconfig")]
    with pytest.raises(ApplyError, match="no-such-context"):
        api_client(str(kubeconfig), "no-such-context")
    with pytest.raises(ApplyError, match="cannot load kubeconfig"):
        api_client(str(tmp_path / "missing"))


BINDING_PATH = "/apis/work.karmada.io/v1alpha2/namespaces/default/resourcebindings/shop-web-deployment"


def _live_deployment(ready: int, available: str) -> dict:
    return {**DEPLOYMENT, "status": {
        "replicas": 2, "readyReplicas": ready, "updatedReplicas": 2, "availableReplicas": ready,
        "conditions": [{"type": "Progressing", "status": "True", "reason": "NewReplicaSetAvailable"},
                       {"type": "Available", "status": available, "reason": "MinimumReplicasAvailable",
                        "message": "Deployment has minimum availability."}]}}


def _binding(*aggregated: dict) -> dict:
    return {"apiVersion": "work.karmada.io/v1alpha2", "kind": "ResourceBinding",
            "metadata": {"name": "shop-web-deployment", "namespace": "default"},
            "spec": {"resource": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "shop-web"},
                     "clusters": [{"name": "edge-1", "replicas": 2}, {"name": "cloud-1", "replicas": 2}]},
            "status": {"aggregatedStatus": list(aggregated)}}


def test_status_reads_the_deployment_and_its_resource_binding(api_server: FakeApiServer,
                                                              client: kubernetes.client.ApiClient) -> None:
    api_server.objects[PATHS[0]] = _live_deployment(2, "True")
    api_server.objects[BINDING_PATH] = _binding(
        {"clusterName": "edge-1", "applied": True, "health": "Healthy", "status": {"readyReplicas": 2}},
        {"clusterName": "cloud-1", "applied": True, "health": "Healthy"})
    target = KubernetesTarget(client)

    status = target.status(OBJECTS[:2])

    assert [(r.method, r.path) for r in api_server.requests] == [("GET", PATHS[0]), ("GET", BINDING_PATH)]
    assert status["deployed"] is True
    web = status["components"]["shop-web"]
    assert web["readyReplicas"] == 2 and web["replicas"] == 2 and web["available"] is True
    assert web["scheduled"] == ["edge-1", "cloud-1"] and web["healthy"] is True
    assert web["clusters"]["edge-1"] == {"applied": True, "health": "Healthy", "message": None}

    api_server.objects[BINDING_PATH] = _binding(
        {"clusterName": "edge-1", "applied": True, "health": "Healthy"},
        {"clusterName": "cloud-1", "applied": False, "health": "Unknown",
         "appliedMessage": "failed to apply: quota exceeded"})
    status = target.status(OBJECTS[:2])
    assert status["deployed"] is False
    assert status["components"]["shop-web"]["binding_reason"] == "not applied on cloud-1"
    assert status["components"]["shop-web"]["clusters"]["cloud-1"]["message"] == "failed to apply: quota exceeded"

    del api_server.objects[BINDING_PATH]
    status = target.status(OBJECTS[:2])
    assert status["deployed"] is False
    assert status["components"]["shop-web"]["binding_reason"] == "no ResourceBinding yet"


def test_status_on_a_plain_cluster_reads_availability(api_server: FakeApiServer,
                                                      client: kubernetes.client.ApiClient) -> None:
    target = KubernetesTarget(client, karmada=False)
    api_server.objects[PATHS[0]] = _live_deployment(1, "False")

    status = target.status([DEPLOYMENT])
    assert status["deployed"] is False and status["components"]["shop-web"]["readyReplicas"] == 1
    assert [r.path for r in api_server.requests] == [PATHS[0]]

    api_server.objects[PATHS[0]] = _live_deployment(2, "True")
    assert target.status([DEPLOYMENT])["deployed"] is True

    del api_server.objects[PATHS[0]]
    status = target.status([DEPLOYMENT])
    assert status["deployed"] is False
    assert status["components"]["shop-web"]["found"] is False
