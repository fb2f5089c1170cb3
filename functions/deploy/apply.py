"""The deploy function's target: a Karmada control plane or a plain cluster, with what it reports about the
applications it placed (workload readiness, and Karmada's ResourceBindings per member cluster).

Applying and deleting are `mapemesh.kube`'s (server-side apply); the names below are re-exported for callers
of this module.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import kubernetes.client

from mapemesh.kube import (  # noqa: F401 (re-exported)
    APPLY_CONTENT_TYPE,
    IN_CLUSTER,
    ApplyError,
    KubeClient,
    api_client,
    namespace_of,
    object_path,
    object_ref,
    request,
)

KARMADA_POLICY_GROUP = "policy.karmada.io"
BINDING_PATH = "/apis/work.karmada.io/v1alpha2/namespaces/{namespace}/resourcebindings/{name}"


def _is_policy(obj: dict) -> bool:
    return str(obj.get("apiVersion") or "").split("/")[0] == KARMADA_POLICY_GROUP


class KubernetesTarget(KubeClient):
    """Applies, deletes and reports on objects in one API server (a Karmada control plane unless karmada=False)."""

    def __init__(self, client: kubernetes.client.ApiClient, *, field_manager: str = "mapemesh", karmada: bool = True,
                 force: bool = True, request_timeout: float = 30.0) -> None:
        super().__init__(client, field_manager=field_manager, force=force, request_timeout=request_timeout)
        self.karmada = karmada

    def _skip(self, obj: dict) -> str | None:
        if not self.karmada and _is_policy(obj):
            return "not a Karmada control plane, so there are no policy resources"
        return None

    def status(self, objects: list[dict]) -> dict[str, Any]:
        """Whether the Deployments (and Knative Services) are up: {"deployed": bool, "components": {name: {...}}}."""
        components: dict[str, Any] = {}
        for obj in objects:
            kind, api_version = obj.get("kind"), obj.get("apiVersion")
            if (api_version, kind) not in (("apps/v1", "Deployment"), ("serving.knative.dev/v1", "Service")):
                continue
            path, ref = object_path(obj), object_ref(obj)
            name, namespace = str(obj["metadata"]["name"]), namespace_of(obj)
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
