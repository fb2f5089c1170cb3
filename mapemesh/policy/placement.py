"""Matching application components to nodes and clusters by their MLSysOps descriptions.

Used by the shipped placement policies. A component's `node_placement` (continuum layer, labels as
`key:value`, a named node) and its containers' `platform_requirements` (CPU architecture, GPU, memory) are
checked against each node's `MLSysOpsNode` description (`continuum_layer`, `labels`, `hardware.cpu`,
`hardware.gpu`, `hardware.memory` in GiB), and a component's `min_trust` against the node's reputation credit
(the trust function's, in the policy's `system_description["trust"]`). A far-edge device (layer `far_edge`)
takes only a component that asks for that layer or names it (as the seed's far-edge nodes are tainted), and
labels such as `extra.resources.fhp/tinymml:true` pick the AI-ready ones. A node isolated by the monitor (its
description's `isolated`, seed 5.3) takes nothing, and neither does a system registered as a node only to offer a
mechanism (its `environment.node_type` one of NOT_COMPUTE: a 5G core, a job scheduler, a storage gateway). Every
reason a node does not fit is kept, so a policy can say why a component has nowhere to go.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

FAR_EDGE = "far_edge"
"""The layer of far-edge devices (the MQTT bridge registers NextGenGW's so)."""
NOT_COMPUTE = {"5g-core": "a 5G core", "job-scheduler": "a job scheduler", "storage-gateway": "a storage gateway"}
"""`environment.node_type`s of systems registered as nodes to offer a cluster mechanism (`mapemesh.sim.core5g`,
`mapemesh.sim.datacenter`, or the real ones behind the adapters), with what each is: no place to run components."""
_QUANTITY = re.compile(r"^\s*([0-9.]+)\s*([KMGTP]i?)?\s*$")
_BYTES = {None: 1, "K": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15,
          "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50}


def app_of(description: Any) -> dict[str, Any]:
    """The `MLSysOpsApp` body of an application description (or the body itself)."""
    description = description or {}
    return description.get("MLSysOpsApp", description) if isinstance(description, dict) else {}


def node_of(description: Any) -> dict[str, Any]:
    """The `MLSysOpsNode` body of a node description (or the body itself)."""
    description = description or {}
    return description.get("MLSysOpsNode", description) if isinstance(description, dict) else {}


def components(app: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The components of an application body, each with a name."""
    return [c for c in app.get("components") or [] if isinstance(c, dict) and (c.get("metadata") or {}).get("name")]


def name_of(component: Mapping[str, Any]) -> str:
    return str((component.get("metadata") or {}).get("name"))


def _bytes(quantity: Any) -> float | None:
    match = _QUANTITY.match(str(quantity)) if quantity is not None else None
    return float(match.group(1)) * _BYTES[match.group(2)] if match else None


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    return list(value) if isinstance(value, list | tuple) else [value]


def untrusted(component: Mapping[str, Any], asset: str, trust: Mapping[str, Any] | None) -> str | None:
    """Why the node or cluster `asset` is not trusted enough for `component` (its `min_trust`, seed 7.1), or None.
    Zero trust: an asset with no credit recorded is not trusted by a component that asks for any."""
    minimum = component.get("min_trust")
    if minimum is None:
        return None
    credit = (trust or {}).get(asset)
    if credit is None:
        return f"no trust credit recorded for {asset} (the component needs {float(minimum):.2f})"
    if float(credit) < float(minimum):
        return f"trust credit {float(credit):.2f} is under the component's minimum {float(minimum):.2f}"
    return None


def misfits(component: Mapping[str, Any], node_name: str, node: Mapping[str, Any],
            trust: Mapping[str, Any] | None = None) -> list[str]:
    """Why `node` cannot run `component` (empty: it can); `trust`: the credits, {asset: credit}."""
    why = []
    environment = node.get("environment")
    node_type = environment.get("node_type") if isinstance(environment, dict) else None
    if node_type in NOT_COMPUTE:
        why.append(f"{NOT_COMPUTE[node_type]}, not a place to run components")
    isolation = node.get("isolated")
    if isolation:  # seed 5.3: a compromised or malfunctioning node is isolated; nothing is placed on it
        why.append(f"the node is isolated ({(isolation or {}).get('reason') or 'no reason given'})")
    distrust = untrusted(component, node_name, trust)
    if distrust:
        why.append(distrust)
    placement = component.get("node_placement") or {}
    if placement.get("node") and placement["node"] != node_name:
        why.append(f"the component is pinned to node {placement['node']}")
    layers = _as_list(placement.get("continuum_layer"))
    if layers and node.get("continuum_layer") not in layers:
        why.append(f"layer {node.get('continuum_layer')} is not one of {', '.join(map(str, layers))}")
    elif node.get("continuum_layer") == FAR_EDGE and FAR_EDGE not in layers and placement.get("node") != node_name:
        # As the seed's far-edge nodes are tainted (NoSchedule): a microcontroller runs only what asks for one.
        why.append("a far-edge device runs only components that ask for the far_edge layer or name it")
    labels = set(map(str, _as_list(node.get("labels"))))
    missing = [label for label in map(str, _as_list(placement.get("labels"))) if label not in labels]
    if missing:
        why.append(f"labels {', '.join(missing)} missing")
    hardware = node.get("hardware") or {}
    cpu = hardware.get("cpu") or {}
    for container in component.get("containers") or []:
        needs = (container or {}).get("platform_requirements") or {}
        arches = _as_list((needs.get("cpu") or {}).get("architecture"))
        if arches and cpu.get("architecture") not in arches:
            why.append(f"architecture {cpu.get('architecture')} is not one of {', '.join(map(str, arches))}")
        gpu = needs.get("gpu")
        if gpu:
            have = hardware.get("gpu")
            if not have:
                why.append("no GPU")
            elif isinstance(gpu, dict) and gpu.get("model") and isinstance(have, dict) \
                    and have.get("model") and have.get("model") != gpu.get("model"):
                why.append(f"GPU {have.get('model')} is not {gpu.get('model')}")
        wanted = _bytes((needs.get("memory") or {}).get("requests"))
        have = _bytes(f"{hardware.get('memory')}Gi") if hardware.get("memory") is not None else None
        if wanted is not None and have is not None and wanted > have:
            why.append(f"memory {hardware.get('memory')} GiB is less than {needs['memory']['requests']}")
    return why


def candidates(component: Mapping[str, Any], nodes: Mapping[str, Any], trust: Mapping[str, Any] | None = None
               ) -> tuple[list[str], dict[str, list[str]]]:
    """(the nodes that fit, best first; why each other node does not); `trust`: the credits, {asset: credit}."""
    fits, reasons = [], {}
    for name in sorted(nodes):
        why = misfits(component, name, node_of(nodes[name]), trust)
        if why:
            reasons[name] = why
        else:
            fits.append(name)
    # Prefer the node with the most CPU cores (a stable, explainable choice), then by name.
    fits.sort(key=lambda n: (-float(((node_of(nodes[n]).get("hardware") or {}).get("cpu") or {}).get("cores") or 0), n))
    return fits, reasons


def clusters_of(nodes: Mapping[str, Any], names: Iterable[str]) -> list[str]:
    """The clusters (`cluster_id`) the named nodes belong to, in order, without repeats."""
    return list(dict.fromkeys(str(node_of(nodes[n]).get("cluster_id")) for n in names
                              if node_of(nodes[n]).get("cluster_id")))
