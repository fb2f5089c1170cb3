"""Server-side apply to a Kubernetes API server (a cluster, or a Karmada control plane), for every component that
creates objects: the deploy function (applications) and the node shim (its own Trigger).

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
    ("eventing.knative.dev/v1", "Trigger"): ("triggers", True),
    ("work.karmada.io/v1alpha2", "ResourceBinding"): ("resourcebindings", True),
}


class ApplyError(RuntimeError):
    """A request to the API server failed; `status` is the HTTP status (None: no answer or a bad object)."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


IN_CLUSTER = "in-cluster"
"""The kubeconfig that means: the pod's own service account (its token and the cluster's CA, mounted by Kubernetes)."""


def api_client(kubeconfig: str | None = None, context: str | None = None) -> kubernetes.client.ApiClient:
    """An API client from a kubeconfig file (default: $KUBECONFIG or ~/.kube/config) and context, or from the pod's
    service account when `kubeconfig` is "in-cluster"."""
    try:
        if kubeconfig == IN_CLUSTER:
            config = kubernetes.client.Configuration()
            kubernetes.config.load_incluster_config(client_configuration=config)
            return kubernetes.client.ApiClient(config)
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


def namespace_of(obj: dict) -> str:
    """The object's namespace; "default" when it names none."""
    # As kubectl does without a namespace in the context: a namespaced object with none goes to "default".
    return str((obj.get("metadata") or {}).get("namespace") or "default")


def object_ref(obj: dict) -> str:
    """`Kind/namespace/name` of a namespaced object, `Kind/name` of a cluster-scoped one."""
    _, namespaced = _resource(obj)
    name = (obj.get("metadata") or {}).get("name") or "(unnamed)"
    return f"{obj['kind']}/{namespace_of(obj)}/{name}" if namespaced else f"{obj['kind']}/{name}"


def object_path(obj: dict) -> str:
    """The REST path of the object itself, e.g. /apis/apps/v1/namespaces/default/deployments/shop-web."""
    plural, namespaced = _resource(obj)
    name = (obj.get("metadata") or {}).get("name")
    if not name:
        raise ApplyError(f"{obj.get('kind')} ({obj.get('apiVersion')}) has no metadata.name")
    api_version = str(obj["apiVersion"])
    prefix = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
    scope = f"/namespaces/{quote(namespace_of(obj), safe='')}" if namespaced else ""
    return f"{prefix}{scope}/{plural}/{quote(str(name), safe='')}"


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


class KubeClient:
    """Applies and deletes objects in one API server."""

    def __init__(self, client: kubernetes.client.ApiClient, *, field_manager: str = "mapemesh", force: bool = True,
                 request_timeout: float = 30.0) -> None:
        self.client = client
        self.field_manager = field_manager
        self.force = force
        self.request_timeout = request_timeout

    def _request(self, method: str, path: str, *, query: list[tuple[str, str]] | None = None,
                 body: Any = None, content_type: str | None = None) -> tuple[int, bytes]:
        return request(self.client, method, path, query=query, body=body, content_type=content_type,
                       timeout=self.request_timeout)

    def _skip(self, obj: dict) -> str | None:
        """Why `obj` is not sent to this server (None: it is)."""
        return None

    def apply(self, objects: list[dict]) -> list[str]:
        """Server-side apply each object in order; the refs applied. Stops at the first failure (ApplyError)."""
        query = [("fieldManager", self.field_manager)]
        if self.force:
            # Taking over fields another manager set is what a controller re-applying its own objects wants.
            query.append(("force", "true"))
        applied = []
        for obj in objects:
            ref = object_ref(obj)
            skip = self._skip(obj)
            if skip is not None:
                log.info("skipping %s: %s", ref, skip)
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
            skip = self._skip(obj)
            if skip is not None:
                log.info("skipping %s: %s", ref, skip)
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
