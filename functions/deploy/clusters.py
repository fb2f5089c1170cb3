"""The clusters a component can be deployed to: from a Karmada control plane or from the registered descriptions.

Karmada's `Cluster` objects (cluster.karmada.io/v1alpha1, served by karmada-aggregated-apiserver) say whether
a member cluster is Ready, whether it is tainted against new work, where it is and what it can still hold. The
MLSysOps descriptions in the state store say which clusters and nodes exist when there is no Karmada.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import kubernetes.client

from mapemesh.functions.deploy.apply import ApplyError, request
from mapemesh.policy.placement import node_of

log = logging.getLogger(__name__)

CLUSTERS_PATH = "/apis/cluster.karmada.io/v1alpha1/clusters"
ARCH_LABEL = "kubernetes.io/arch"
# Taints that keep new work off a cluster; PreferNoSchedule only lowers its score in Karmada's scheduler.
BLOCKING_EFFECTS = ("NoSchedule", "NoExecute")


@dataclass(frozen=True)
class ClusterInfo:
    """A member cluster as far as placement cares: can it take work, where is it, what can it hold."""

    name: str
    ready: bool
    schedulable: bool
    labels: dict[str, str] = field(default_factory=dict)
    region: str | None = None
    zone: str | None = None
    architecture: str | None = None
    allocatable: dict[str, str] = field(default_factory=dict)
    reason: str | None = None


def _karmada_cluster(obj: Mapping[str, Any]) -> ClusterInfo:
    metadata, spec, status = obj.get("metadata") or {}, obj.get("spec") or {}, obj.get("status") or {}
    name = str(metadata.get("name"))
    labels = {str(k): str(v) for k, v in (metadata.get("labels") or {}).items()}
    reasons = []
    ready_condition = next((c for c in status.get("conditions") or [] if c.get("type") == "Ready"), None)
    ready = bool(ready_condition) and ready_condition.get("status") == "True"
    if ready_condition is None:
        reasons.append("no Ready condition")
    elif not ready:
        reasons.append(f"not Ready ({ready_condition.get('reason') or ready_condition.get('status')}"
                       f"{': ' + ready_condition['message'] if ready_condition.get('message') else ''})")
    blocking = [f"{t.get('key')}:{t.get('effect')}" for t in spec.get("taints") or []
                if t.get("effect") in BLOCKING_EFFECTS]
    if blocking:
        reasons.append(f"tainted {', '.join(blocking)}")
    # `zone` is deprecated in favour of `zones`; a cluster spanning several zones lists them comma-separated.
    zones = [str(z) for z in spec.get("zones") or []] or ([str(spec["zone"])] if spec.get("zone") else [])
    allocatable = (status.get("resourceSummary") or {}).get("allocatable") or {}
    return ClusterInfo(name=name, ready=ready, schedulable=not blocking, labels=labels,
                       region=str(spec["region"]) if spec.get("region") else None,
                       zone=",".join(zones) or None, architecture=labels.get(ARCH_LABEL),
                       allocatable={str(k): str(v) for k, v in allocatable.items()},
                       reason="; ".join(reasons) or None)


def from_karmada(client: kubernetes.client.ApiClient) -> list[ClusterInfo]:
    """The member clusters registered with a Karmada control plane, by name."""
    items: list[dict] = []
    token = None
    while True:
        # The list is paged so that a large federation does not come back as one huge answer.
        query = [("limit", "500")] + ([("continue", token)] if token else [])
        status, data = request(client, "GET", CLUSTERS_PATH, query=query)
        if not 200 <= status <= 299:
            raise ApplyError(f"list Karmada clusters: HTTP {status}: {data.decode('utf-8', 'replace')[:500]}", status)
        page = json.loads(data)
        items.extend(page.get("items") or [])
        token = (page.get("metadata") or {}).get("continue")
        if not token:
            break
    clusters = sorted((_karmada_cluster(item) for item in items), key=lambda c: c.name)
    log.debug("Karmada clusters: %s", ", ".join(f"{c.name} (ready={c.ready}, schedulable={c.schedulable})"
                                                 for c in clusters))
    return clusters


def _labels(value: Any) -> dict[str, str]:
    """Labels as a dict, from a dict or from MLSysOps' `key:value` (or `key=value`) strings."""
    if isinstance(value, Mapping):
        return {str(k): str(v) for k, v in value.items()}
    labels = {}
    for item in value if isinstance(value, list | tuple) else []:
        key, sep, val = str(item).replace("=", ":", 1).partition(":")
        labels[key.strip()] = val.strip() if sep else ""
    return labels


def _quantity(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def from_registry(infrastructure: Mapping[str, Any]) -> list[ClusterInfo]:
    """The clusters in the state store's infrastructure documents: described clusters and their nodes' clusters."""
    described: dict[str, dict[str, Any]] = {}
    registered_nodes: dict[str, dict[str, Any]] = {}
    for infra_id, document in infrastructure.items():
        # The store's documents carry their body in `.value`; plain dicts are taken as the document itself.
        document = getattr(document, "value", document) or {}
        description = document.get("description") or {}
        if document.get("kind") == "cluster":
            body = description.get("MLSysOpsCluster", description) if isinstance(description, Mapping) else {}
            described[str(body.get("cluster_id") or infra_id)] = dict(body)
        elif document.get("kind") == "node":
            registered_nodes[str(infra_id)] = node_of(description)
    # A node belongs to the cluster it names, else to the cluster description that lists it.
    listed = {str(n): c for c, body in described.items() for n in body.get("nodes") or []}
    nodes: dict[str, list[dict[str, Any]]] = {}
    for infra_id, node in registered_nodes.items():
        cluster = node.get("cluster_id") or listed.get(str(node.get("name") or infra_id)) or listed.get(infra_id)
        if cluster:
            nodes.setdefault(str(cluster), []).append(node)
    clusters = []
    for name in sorted(set(described) | set(nodes)):
        body = described.get(name, {})
        members = nodes.get(name, [])
        arches = {str(((n.get("hardware") or {}).get("cpu") or {}).get("architecture"))
                  for n in members if ((n.get("hardware") or {}).get("cpu") or {}).get("architecture")}
        labels = _labels(body.get("labels"))
        # One architecture for the cluster only when every described node agrees; a mixed cluster has none.
        architecture = labels.get(ARCH_LABEL) or (arches.pop() if len(arches) == 1 else None)
        given = body.get("allocatable")
        allocatable = {str(k): str(v) for k, v in given.items()} if isinstance(given, Mapping) else {}
        cores = [float(((n.get("hardware") or {}).get("cpu") or {}).get("cores") or 0) for n in members]
        memory = [float((n.get("hardware") or {}).get("memory") or 0) for n in members]
        if any(cores):
            allocatable.setdefault("cpu", _quantity(sum(cores)))
        if any(memory):
            # MLSysOps node descriptions give memory in GiB.
            allocatable.setdefault("memory", f"{_quantity(sum(memory))}Gi")
        ready = body.get("ready", True) is not False
        schedulable = body.get("schedulable", True) is not False
        reason = None
        if not ready or not schedulable:
            reason = str(body.get("reason") or f"described as {'not ready' if not ready else 'unschedulable'}")
        clusters.append(ClusterInfo(name=name, ready=ready, schedulable=schedulable, labels=labels,
                                    region=str(body["region"]) if body.get("region") else None,
                                    zone=str(body["zone"]) if body.get("zone") else None,
                                    architecture=architecture, allocatable=allocatable, reason=reason))
    return clusters


def candidates(clusters: list[ClusterInfo]) -> list[ClusterInfo]:
    """The clusters that can take new work now: ready and schedulable."""
    chosen = []
    for cluster in clusters:
        if cluster.ready and cluster.schedulable:
            chosen.append(cluster)
        else:
            log.debug("cluster %s is not a candidate: %s", cluster.name,
                      cluster.reason or ("not ready" if not cluster.ready else "not schedulable"))
    return chosen
