"""Server-side apply of rendered objects to a Kubernetes API server: a Karmada control plane or a plain cluster.

Requests go through the official `kubernetes` client's `ApiClient` (its serialisation, authentication and TLS),
but with the REST path built here, so one small table of kinds (`object_path`) replaces a typed API class per
group. Objects are applied with `Content-Type: application/apply-patch+yaml` as field manager `mapemesh`; the
client JSON-encodes the object, which is valid YAML and what `kubectl apply --server-side` also sends.
"""

from __future__ import annotations

import json
import logging
from typing import Any
from urllib.parse import quote

import kubernetes.client
import kubernetes.config
import urllib3
from kubernetes.client.exceptions import ApiException

log = logging.getLogger(__name__)

APPLY_CONTENT_TYPE = "application/apply-patch+yaml"
KARMADA_POLICY_GROUP = "policy.karmada.io"
BINDING_PATH = "/apis/work.karmada.io/v1alpha2/namespaces/{namespace}/resourcebindings/{name}"

# (apiVersion, kind) -> (plural, namespaced).
_RESOURCES: dict[tuple[str, str], tuple[str, bool]] = {
    ("apps/v1", "Deployment"): ("deployments", True),
    ("v1", "Service"): ("services", True),
    ("v1", "ConfigMap"): ("configmaps", True),
    ("v1", "Namespace"): ("namespaces", False),
    ("serving.knative.dev/v1", "Service"): ("services", True),
    ("policy.karmada.io/v1alpha1", "PropagationPolicy"): ("propagationpolicies", True),
    ("policy.karmada.io/v1alpha1", "OverridePolicy"): ("overridepolicies", True),
    ("policy.karmada.io/v1alpha1", "ClusterPropagationPolicy"): ("clusterpropagationpolicies", False),
    ("policy.karmada.io/v1alpha1", "ClusterOverridePolicy"): ("clusteroverridepolicies", False),
    ("node.k8s.io/v1", "RuntimeClass"): ("runtimeclasses", False),
    ("work.karmada.io/v1alpha2", "ResourceBinding"): ("resourcebindings", True),
}


class ApplyError(RuntimeError):
    """A request to the API server failed; `status` is the HTTP status (None: no answer or a bad object)."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


def api_client(kubeconfig: str | None = None, context: str | None = None) -> kubernetes.client.ApiClient:
    """An API client from a kubeconfig file (default: $KUBECONFIG or ~/.kube/config) and context."""
    try:
        return kubernetes.config.new_client_from_config(config_file=kubeconfig, context=context)
    except (kubernetes.config.ConfigException, OSError) as e:
        raise ApplyError(f"cannot load kubeconfig {kubeconfig or '(default)'}"
                         f"{f' context {context}' if context else ''}: {e}") from e


def _resource(obj: dict) -> tuple[str, bool]:
    key = (str(obj.get("apiVersion") or ""), str(obj.get("kind") or ""))
    if key not in _RESOURCES:
        raise ApplyError(f"unsupported kind {key[1] or '(none)'} ({key[0] or 'no apiVersion'}) for "
                         f"{(obj.get('metadata') or {}).get('name') or '(unnamed)'}")
    return _RESOURCES[key]


def _namespace(obj: dict) -> str:
    # As kubectl does without a namespace in the context: a namespaced object with none goes to "default".
    return str((obj.get("metadata") or {}).get("namespace") or "default")


def object_ref(obj: dict) -> str:
    """`Kind/namespace/name` of a namespaced object, `Kind/name` of a cluster-scoped one."""
    _, namespaced = _resource(obj)
    name = (obj.get("metadata") or {}).get("name") or "(unnamed)"
    return f"{obj['kind']}/{_namespace(obj)}/{name}" if namespaced else f"{obj['kind']}/{name}"


def object_path(obj: dict) -> str:
    """The REST path of the object itself, e.g. /apis/apps/v1/namespaces/default/deployments/shop-web."""
    plural, namespaced = _resource(obj)
    name = (obj.get("metadata") or {}).get("name")
    if not name:
        raise ApplyError(f"{obj.get('kind')} ({obj.get('apiVersion')}) has no metadata.name")
    api_version = str(obj["apiVersion"])
    prefix = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
    scope = f"/namespaces/{quote(_namespace(obj), safe='')}" if namespaced else ""
    return f"{prefix}{scope}/{plural}/{quote(str(name), safe='')}"


def _is_policy(obj: dict) -> bool:
    return str(obj.get("apiVersion") or "").split("/")[0] == KARMADA_POLICY_GROUP


def _server_message(data: bytes | str | None) -> str:
    """The `message` of a Kubernetes Status answer, else the answer's text (shortened)."""
    if isinstance(data, bytes):
        data = data.decode("utf-8", "replace")
    try:
        parsed = json.loads(data or "")
    except ValueError:
        return (data or "").strip()[:500]
    return str(parsed.get("message") or parsed)[:500] if isinstance(parsed, dict) else str(parsed)[:500]


def request(client: kubernetes.client.ApiClient, method: str, path: str, *, query: list[tuple[str, str]] | None = None,
            body: Any = None, content_type: str | None = None, timeout: float = 30.0) -> tuple[int, bytes]:
    """(HTTP status, body) of one request through the client; raises ApplyError only when no answer came back."""
    headers = {"Accept": "application/json"}
    if content_type:
        headers["Content-Type"] = content_type
    try:
        if hasattr(client, "param_serialize"):
            # Clients from the newer OpenAPI generator (37.x) serialise, then send; non-2xx answers come back as data.
            serialized = client.param_serialize(method, path, query_params=list(query or []), header_params=headers,
                                                body=body, auth_settings=["BearerToken"])
            response = client.call_api(*serialized, _request_timeout=timeout)
            return response.status, response.read() or b""
        # Older clients (up to 35.x) send in one call and raise ApiException for a non-2xx answer.
        raw = client.call_api(path, method, query_params=list(query or []), header_params=headers, body=body,
                              auth_settings=["BearerToken"], _preload_content=False, _return_http_data_only=True,
                              _request_timeout=timeout)
        return raw.status, raw.data or b""
    except ApiException as e:
        if e.status:
            return e.status, (e.body.encode() if isinstance(e.body, str) else e.body) or b""
        raise ApplyError(f"{method} {path}: {e.reason}") from e
    except urllib3.exceptions.HTTPError as e:
        raise ApplyError(f"{method} {path}: no answer from {client.configuration.host}: {e}") from e


class KubernetesTarget:
    """Applies, deletes and reports on objects in one API server (a Karmada control plane unless karmada=False)."""

    def __init__(self, client: kubernetes.client.ApiClient, *, field_manager: str = "mapemesh", karmada: bool = True,
                 force: bool = True, request_timeout: float = 30.0) -> None:
        self.client = client
        self.field_manager = field_manager
        self.karmada = karmada
        self.force = force
        self.request_timeout = request_timeout

    def _request(self, method: str, path: str, *, query: list[tuple[str, str]] | None = None,
                 body: Any = None, content_type: str | None = None) -> tuple[int, bytes]:
        return request(self.client, method, path, query=query, body=body, content_type=content_type,
                       timeout=self.request_timeout)

    def apply(self, objects: list[dict]) -> list[str]:
        """Server-side apply each object in order; the refs applied. Stops at the first failure (ApplyError)."""
        query = [("fieldManager", self.field_manager)]
        if self.force:
            # Taking over fields another manager set is what a controller re-applying its own objects wants.
            query.append(("force", "true"))
        applied = []
        for obj in objects:
            ref = object_ref(obj)
            if not self.karmada and _is_policy(obj):
                log.info("skipping %s: not a Karmada control plane, so there are no policy resources", ref)
                continue
            path = object_path(obj)
            status, data = self._request("PATCH", path, query=query, body=obj, content_type=APPLY_CONTENT_TYPE)
            if not 200 <= status <= 299:
                raise ApplyError(f"apply {ref} ({obj['apiVersion']}) failed after {len(applied)} of "
                                 f"{len(objects)} objects: HTTP {status}: {_server_message(data)}", status)
            log.debug("applied %s", ref)
            applied.append(ref)
        log.info("applied %d objects to %s", len(applied), self.client.configuration.host)
        return applied

    def delete(self, objects: list[dict]) -> list[str]:
        """Delete each object, last first (404: already gone); the refs deleted or already gone."""
        # Background: the API server removes a Deployment's ReplicaSets and Pods after answering, as kubectl does.
        options = {"apiVersion": "v1", "kind": "DeleteOptions", "propagationPolicy": "Background"}
        deleted = []
        for obj in reversed(objects):
            ref = object_ref(obj)
            if not self.karmada and _is_policy(obj):
                log.info("skipping %s: not a Karmada control plane, so it was never applied", ref)
                continue
            status, data = self._request("DELETE", object_path(obj), body=options, content_type="application/json")
            if status == 404:
                log.info("%s was already gone", ref)
            elif not 200 <= status <= 299:
                raise ApplyError(f"delete {ref} ({obj['apiVersion']}): HTTP {status}: {_server_message(data)}", status)
            deleted.append(ref)
        return deleted

    def _get(self, path: str, what: str) -> dict | None:
        """The object at `path`, None when it does not exist."""
        status, data = self._request("GET", path)
        if status == 404:
            return None
        if not 200 <= status <= 299:
            raise ApplyError(f"read {what}: HTTP {status}: {_server_message(data)}", status)
        try:
            return json.loads(data)
        except ValueError as e:
            raise ApplyError(f"read {what}: the answer is not JSON: {e}", status) from e

    def status(self, objects: list[dict]) -> dict[str, Any]:
        """Whether the Deployments (and Knative Services) are up: {"deployed": bool, "components": {name: {...}}}."""
        components: dict[str, Any] = {}
        for obj in objects:
            kind, api_version = obj.get("kind"), obj.get("apiVersion")
            if (api_version, kind) not in (("apps/v1", "Deployment"), ("serving.knative.dev/v1", "Service")):
                continue
            path, ref = object_path(obj), object_ref(obj)
            name, namespace = str(obj["metadata"]["name"]), _namespace(obj)
            live = self._get(path, ref)
            component: dict[str, Any] = {"kind": kind, "namespace": namespace, "found": live is not None}
            component.update(_workload_status(obj, live))
            if self.karmada:
                # Karmada names a resource's binding <name>-<kind, lowercased>.
                binding_name = f"{name}-{str(kind).lower()}"
                binding = self._get(BINDING_PATH.format(namespace=quote(namespace, safe=""),
                                                        name=quote(binding_name, safe="")),
                                    f"ResourceBinding/{namespace}/{binding_name}")
                component.update(_binding_status(binding))
                # The template in the Karmada API server carries aggregated replica counts but no conditions, so
                # propagation is judged from the binding.
                component["deployed"] = component["found"] and component["applied"]
            else:
                component["deployed"] = bool(component["available"])
            components[name] = component
        return {"deployed": all(c["deployed"] for c in components.values()), "components": components}


def _condition(live: dict, kind: str) -> dict:
    return next((c for c in (live.get("status") or {}).get("conditions") or [] if c.get("type") == kind), {})


def _workload_status(obj: dict, live: dict | None) -> dict[str, Any]:
    """Replica counts and availability of a live Deployment (condition Available) or Knative Service (Ready)."""
    if live is None:
        return {"available": False, "reason": "not found"}
    status = live.get("status") or {}
    condition = _condition(live, "Available" if obj.get("kind") == "Deployment" else "Ready")
    result: dict[str, Any] = {"available": condition.get("status") == "True",
                              "reason": condition.get("message") or condition.get("reason")}
    if obj.get("kind") == "Deployment":
        result.update(replicas=(live.get("spec") or {}).get("replicas", status.get("replicas")),
                      readyReplicas=status.get("readyReplicas", 0), updatedReplicas=status.get("updatedReplicas", 0),
                      availableReplicas=status.get("availableReplicas", 0))
    else:
        result["url"] = status.get("url")
    return result


def _binding_status(binding: dict | None) -> dict[str, Any]:
    """Where Karmada scheduled a resource and whether each member cluster applied it and finds it healthy."""
    if binding is None:
        return {"applied": False, "healthy": False, "scheduled": [], "clusters": {},
                "binding_reason": "no ResourceBinding yet"}
    scheduled = [str(c.get("name")) for c in (binding.get("spec") or {}).get("clusters") or [] if c.get("name")]
    clusters = {str(a.get("clusterName")): {"applied": bool(a.get("applied")), "health": a.get("health"),
                                            "message": a.get("appliedMessage")}
                for a in (binding.get("status") or {}).get("aggregatedStatus") or [] if a.get("clusterName")}
    missing = [c for c in scheduled if c not in clusters]
    failed = [c for c, s in clusters.items() if not s["applied"]]
    reason = None
    if not scheduled:
        reason = "not scheduled to any cluster yet"
    elif missing or failed:
        reason = f"not applied on {', '.join(sorted(set(missing + failed)))}"
    return {"applied": bool(scheduled) and not missing and not failed,
            "healthy": bool(scheduled) and all(clusters.get(c, {}).get("health") == "Healthy" for c in scheduled),
            "scheduled": scheduled, "clusters": clusters, "binding_reason": reason}
