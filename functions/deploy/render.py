"""Rendering an MLSysOps application description and its placement plan as Kubernetes, Knative and Karmada objects.

Per component (`MLSysOpsApp.components[i]`):

- a Deployment (`apps/v1`) and, when its containers have ports, a Service (`v1`; port names `p<port>`, with
  `-udp`/`-sctp` appended for those protocols so TCP and UDP on one port do not clash); or, for a component marked
  as a function, a Knative Service (`serving.knative.dev/v1`) and no Service (Knative routes to it itself);
- with Karmada, a PropagationPolicy (`policy.karmada.io/v1alpha1`) selecting exactly those objects for the
  component's clusters, and an OverridePolicy when clusters of different CPU architectures need different images.

Mapping: containers[j] -> container `<component>` (then `<component>-<j>`) with image, command, env (`value`, or
`value_from.field_ref.field_path` -> `valueFrom.fieldRef.fieldPath`), ports, image_pull_policy, and resources from
`platform_requirements.cpu/memory.requests/limits`. Node affinity (all terms ANDed, as MLSysOps matches them):
`node_placement.continuum_layer` -> `mlsysops.eu/continuum-layer` In [...]; each label "key:value" -> key In
[value] (a label without ":" -> key Exists); the CPU architectures every container accepts -> `kubernetes.io/arch`
In [...]; the node plan's node (else `node_placement.node`) -> `kubernetes.io/hostname` In [node]. GPU, disk,
frequency and the like are placement inputs (see `mapemesh.policy.placement`) and knobs, not pod resources.
`restart_policy` on_failure/always -> Always (the only value a Deployment accepts; the kubelet restarts a failed
container either way); never cannot be honoured and is an error.

Fields mapemesh adds to a component (not in the MLSysOps schema):
- `replicas` (int, default 1): the Deployment's replicas;
- `function: true` or `kind: function`: render a Knative Service. Knative must allow the pod features used
  (`kubernetes.podspec-affinity`, `-fieldref`, `-runtimeclassname` feature flags); a function has one port and no
  host network, and scales itself (no replicas, no Divided scheduling);
- `runtime_class_name`: the pod's runtimeClassName;
- `replica_scheduling: {type: Duplicated | Divided, weights: {cluster: weight}}`: Karmada replica scheduling
  (Divided is Weighted with a static weight list; clusters without a weight weigh 1);
- containers[j].`image_per_architecture: {arm64: image, amd64: image}`: with `cluster_arch` (cluster -> its
  nodes' architecture), an OverridePolicy replaces the image on the clusters of that architecture.

Output is deterministic: cluster lists and weight lists sorted, other lists in description order, keys sorted
when written as YAML.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import yaml

from mapemesh.names import dns_name, label_value
from mapemesh.policy.placement import app_of

PART_OF = "app.kubernetes.io/part-of"
NAME = "app.kubernetes.io/name"
MANAGED_BY = "app.kubernetes.io/managed-by"
APP_ID = "mapemesh.dev/app"
LAYER_KEY = "mlsysops.eu/continuum-layer"
ARCH_KEY = "kubernetes.io/arch"
HOSTNAME_KEY = "kubernetes.io/hostname"
KARMADA_API = "policy.karmada.io/v1alpha1"
KNATIVE_API = "serving.knative.dev/v1"
_PULL_POLICIES = ("Always", "IfNotPresent", "Never")
_PROTOCOLS = ("TCP", "UDP", "SCTP")
_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")


class RenderError(ValueError):
    """A description that cannot be rendered; the message starts with the field path."""


@dataclass(frozen=True)
class Rendering:
    """What an application renders to."""

    objects: list[dict[str, Any]]
    """Everything to submit (to Karmada): core objects, then PropagationPolicies, then OverridePolicies."""
    per_cluster: dict[str, list[dict[str, Any]]]
    """The core objects each cluster runs (overrides and replica shares applied), for writing without a cluster."""
    app: str
    """The application name (label value)."""


@dataclass(frozen=True)
class _Component:
    name: str
    workload: dict[str, Any]
    service: dict[str, Any] | None
    clusters: list[str]
    scheduling: dict[str, Any]
    shares: dict[str, int] | None
    images: dict[str, list[tuple[str, str]]]
    """cluster -> [(JSON pointer into the workload, image)] to replace there."""

    @property
    def core(self) -> list[dict[str, Any]]:
        return [self.workload] + ([self.service] if self.service is not None else [])


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    return list(value) if isinstance(value, list | tuple) else [value]


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _text(value: Any) -> str:
    # YAML gives true/1.5 where Kubernetes wants strings; keep what the author wrote, not Python's spelling.
    return ("true" if value else "false") if isinstance(value, bool) else str(value)


def _mapping(value: Any, path: str) -> Mapping[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise RenderError(f"{path}: must be a mapping")
    return value


def _env(env: Any, path: str) -> list[dict[str, Any]]:
    out = []
    for k, var in enumerate(_as_list(env)):
        here = f"{path}[{k}]"
        var = _mapping(var, here)
        if not var.get("name"):
            raise RenderError(f"{here}.name: required")
        if var.get("value_from") is not None:
            field = _mapping(_mapping(var["value_from"], f"{here}.value_from").get("field_ref"),
                             f"{here}.value_from.field_ref").get("field_path")
            if not field:
                raise RenderError(f"{here}.value_from.field_ref.field_path: required (the only value_from supported)")
            out.append({"name": str(var["name"]), "valueFrom": {"fieldRef": {"fieldPath": str(field)}}})
        else:
            out.append({"name": str(var["name"]), "value": _text(var.get("value", ""))})
    return out


def _ports(ports: Any, path: str) -> list[dict[str, Any]]:
    out = []
    for k, port in enumerate(_as_list(ports)):
        port = _mapping(port, f"{path}[{k}]")
        number = port.get("container_port")
        if not _is_int(number) or not 0 < number < 65536:
            raise RenderError(f"{path}[{k}].container_port: must be a port number (1-65535)")
        protocol = str(port.get("protocol", "TCP")).upper()
        if protocol not in _PROTOCOLS:
            raise RenderError(f"{path}[{k}].protocol: must be one of {', '.join(_PROTOCOLS)}")
        out.append({"containerPort": number, "protocol": protocol})
    return out


def _container(spec: Any, path: str, name: str) -> dict[str, Any]:
    spec = _mapping(spec, path)
    image = spec.get("image")
    if not isinstance(image, str) or not image.strip():
        raise RenderError(f"{path}.image: required")
    per_arch = _mapping(spec.get("image_per_architecture"), f"{path}.image_per_architecture")
    if not all(isinstance(v, str) and v.strip() for v in per_arch.values()):
        raise RenderError(f"{path}.image_per_architecture: must map architectures to image names")
    out: dict[str, Any] = {"name": name, "image": image}
    if spec.get("command") is not None:
        command = spec["command"]
        if not isinstance(command, list) or not all(isinstance(c, str | int | float) for c in command):
            raise RenderError(f"{path}.command: must be a list of strings")
        out["command"] = [_text(c) for c in command]
    if spec.get("env"):
        out["env"] = _env(spec["env"], f"{path}.env")
    if spec.get("ports"):
        out["ports"] = _ports(spec["ports"], f"{path}.ports")
    if spec.get("image_pull_policy") is not None:
        if spec["image_pull_policy"] not in _PULL_POLICIES:
            raise RenderError(f"{path}.image_pull_policy: must be one of {', '.join(_PULL_POLICIES)}")
        out["imagePullPolicy"] = spec["image_pull_policy"]
    needs = _mapping(spec.get("platform_requirements"), f"{path}.platform_requirements")
    resources: dict[str, dict[str, str]] = {}
    for resource in ("cpu", "memory"):
        given = _mapping(needs.get(resource), f"{path}.platform_requirements.{resource}")
        for bound in ("requests", "limits"):
            if given.get(bound) is not None:
                resources.setdefault(bound, {})[resource] = _text(given[bound])
    if resources:
        out["resources"] = resources
    return out


def _architectures(containers: list[Any], path: str) -> list[str] | None:
    """The CPU architectures every container accepts (None: no container says)."""
    arches: list[str] | None = None
    for spec in containers:
        cpu = ((spec.get("platform_requirements") or {}).get("cpu") or {}) if isinstance(spec, Mapping) else {}
        accepted = [str(a) for a in _as_list(cpu.get("architecture") if isinstance(cpu, Mapping) else None)]
        if accepted:
            arches = accepted if arches is None else [a for a in arches if a in accepted]
    if arches == []:
        raise RenderError(f"{path}.containers: no CPU architecture suits every container")
    return arches


def _affinity(component: Mapping[str, Any], path: str, node: str | None) -> dict[str, Any] | None:
    placement = _mapping(component.get("node_placement"), f"{path}.node_placement")
    terms: list[dict[str, Any]] = []
    layers = [str(layer) for layer in _as_list(placement.get("continuum_layer"))]
    if layers:
        terms.append({"key": LAYER_KEY, "operator": "In", "values": layers})
    for k, label in enumerate(_as_list(placement.get("labels"))):
        key, colon, value = str(label).partition(":")
        if not key.strip():
            raise RenderError(f"{path}.node_placement.labels[{k}]: a label is 'key:value'")
        terms.append({"key": key.strip(), "operator": "In", "values": [value.strip()]} if colon
                     else {"key": key.strip(), "operator": "Exists"})
    arches = _architectures(_as_list(component.get("containers")), path)
    if arches:
        terms.append({"key": ARCH_KEY, "operator": "In", "values": arches})
    node = node or placement.get("node")
    if node:
        terms.append({"key": HOSTNAME_KEY, "operator": "In", "values": [str(node)]})
    if not terms:
        return None
    return {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
        "nodeSelectorTerms": [{"matchExpressions": terms}]}}}


def _restart_policy(component: Mapping[str, Any], path: str) -> str:
    given = str(component.get("restart_policy", "always"))
    if given.lower().replace("_", "").replace("-", "") not in ("always", "onfailure"):
        raise RenderError(f"{path}.restart_policy: a Deployment restarts its pods (always or on_failure), "
                          f"got {given!r}")
    return "Always"


def _scheduling(component: Mapping[str, Any], path: str, clusters: list[str],
                function: bool) -> tuple[dict[str, Any], dict[str, int] | None]:
    """Karmada's replicaScheduling for the component, and the static weights when Divided."""
    spec = _mapping(component.get("replica_scheduling"), f"{path}.replica_scheduling")
    kind = str(spec.get("type", "Duplicated"))
    if kind.lower() == "duplicated":
        return {"replicaSchedulingType": "Duplicated"}, None
    if kind.lower() != "divided":
        raise RenderError(f"{path}.replica_scheduling.type: must be Duplicated or Divided, got {kind!r}")
    if function:
        raise RenderError(f"{path}.replica_scheduling.type: a function scales itself; Divided needs a Deployment")
    given = _mapping(spec.get("weights"), f"{path}.replica_scheduling.weights")
    weights = {}
    # Weights of clusters the plan did not choose are left out: the plan decides where, the weights how much.
    for cluster in clusters:
        weight = given.get(cluster, 1)
        if not _is_int(weight) or weight < 1:
            raise RenderError(f"{path}.replica_scheduling.weights.{cluster}: must be a positive integer")
        weights[cluster] = weight
    return {"replicaSchedulingType": "Divided", "replicaDivisionPreference": "Weighted",
            "weightPreference": {"staticWeightList": [
                {"targetCluster": {"clusterNames": [c]}, "weight": w} for c, w in sorted(weights.items())]}}, weights


def _divide(replicas: int, weights: dict[str, int]) -> dict[str, int]:
    """Replicas per cluster by weight: largest remainders first, ties by weight then name (as Karmada, closely)."""
    total = sum(weights.values())
    shares = {c: replicas * w // total for c, w in weights.items()}
    left = replicas - sum(shares.values())
    order = sorted(weights, key=lambda c: (-(replicas * weights[c] % total), -weights[c], c))
    for cluster in order[:left]:
        shares[cluster] += 1
    return shares


def _arch_images(containers: list[Any], clusters: list[str],
                 cluster_arch: Mapping[str, str]) -> dict[str, list[tuple[str, str]]]:
    out: dict[str, list[tuple[str, str]]] = {}
    for cluster in clusters:
        arch = cluster_arch.get(cluster)
        rules = [(f"/spec/template/spec/containers/{j}/image", str(spec["image_per_architecture"][arch]))
                 for j, spec in enumerate(containers)
                 if arch is not None and (spec.get("image_per_architecture") or {}).get(arch) not in (None,
                                                                                                     spec["image"])]
        if rules:
            out[cluster] = rules
    return out


def _component(component: Any, path: str, app: str, app_label: str, namespace: str, clusters: list[str],
               node: str | None, cluster_arch: Mapping[str, str]) -> _Component:
    component = _mapping(component, path)
    name = str(_mapping(component.get("metadata"), f"{path}.metadata").get("name") or "")
    if not name:
        raise RenderError(f"{path}.metadata.name: required")
    containers = _as_list(component.get("containers"))
    if not containers:
        raise RenderError(f"{path}.containers: required (at least one)")
    function = component.get("function") is True or component.get("kind") == "function"
    replicas = component.get("replicas", 1)
    if not _is_int(replicas) or replicas < 0:
        raise RenderError(f"{path}.replicas: must be a non-negative integer")
    short = dns_name(name)
    if not short:
        raise RenderError(f"{path}.metadata.name: {name!r} has no letters or digits to name objects by")
    labels = {PART_OF: label_value(app), NAME: label_value(name), MANAGED_BY: "mapemesh", APP_ID: app_label}
    meta = {"name": dns_name(app, name), "namespace": namespace, "labels": labels}
    pod: dict[str, Any] = {"containers": [
        _container(spec, f"{path}.containers[{j}]", short if j == 0 else f"{short[:62 - len(str(j))].rstrip('-')}-{j}")
        for j, spec in enumerate(containers)]}
    affinity = _affinity(component, path, node)
    if affinity:
        pod["affinity"] = affinity
    if component.get("runtime_class_name"):
        pod["runtimeClassName"] = str(component["runtime_class_name"])
    ports = [p for c in pod["containers"] for p in c.get("ports", [])]
    service = None
    if function:
        if component.get("host_network"):
            raise RenderError(f"{path}.host_network: a function cannot use the host network")
        if len(ports) > 1:
            raise RenderError(f"{path}.containers: a function serves exactly one port, found {len(ports)}")
        workload = {"apiVersion": KNATIVE_API, "kind": "Service", "metadata": copy.deepcopy(meta),
                    "spec": {"template": {"metadata": {"labels": dict(labels)}, "spec": pod}}}
    else:
        pod["restartPolicy"] = _restart_policy(component, path)
        if component.get("host_network") is not None:
            pod["hostNetwork"] = bool(component["host_network"])
        workload = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": copy.deepcopy(meta),
                    "spec": {"replicas": replicas, "selector": {"matchLabels": dict(labels)},
                             "template": {"metadata": {"labels": dict(labels)}, "spec": pod}}}
        unique = list(dict.fromkeys((p["containerPort"], p["protocol"]) for p in ports))
        if unique:
            # Named after the component, not the application: MLSysOps components reach each other by
            # component name (the upstream sample's client sets TCP_SERVER_IP=server-app).
            service = {"apiVersion": "v1", "kind": "Service", "metadata": {**copy.deepcopy(meta), "name": short},
                       "spec": {
                "selector": dict(labels),
                "ports": [{"name": f"p{port}" if protocol == "TCP" else f"p{port}-{protocol.lower()}",
                           "port": port, "targetPort": port, "protocol": protocol} for port, protocol in unique]}}
    scheduling, weights = _scheduling(component, path, clusters, function)
    return _Component(name=name, workload=workload, service=service, clusters=clusters, scheduling=scheduling,
                      shares=_divide(replicas, weights) if weights else None,
                      images=_arch_images(containers, clusters, cluster_arch))


def _selector(obj: Mapping[str, Any]) -> dict[str, str]:
    meta = obj["metadata"]
    return {"apiVersion": obj["apiVersion"], "kind": obj["kind"], "name": meta["name"], "namespace": meta["namespace"]}


def _policies(c: _Component) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """The component's PropagationPolicy, and its OverridePolicy when clusters need different images."""
    meta = copy.deepcopy(c.workload["metadata"])
    propagation = {"apiVersion": KARMADA_API, "kind": "PropagationPolicy", "metadata": meta, "spec": {
        "resourceSelectors": [_selector(o) for o in c.core],
        "placement": {"clusterAffinity": {"clusterNames": list(c.clusters)}, "replicaScheduling": c.scheduling}}}
    if not c.images:
        return propagation, None
    groups: dict[tuple[tuple[str, str], ...], list[str]] = {}
    for cluster, rules in c.images.items():
        groups.setdefault(tuple(rules), []).append(cluster)
    rules = [{"targetCluster": {"clusterNames": sorted(names)}, "overriders": {"plaintext": [
        {"path": path, "operator": "replace", "value": image} for path, image in group]}}
        for group, names in sorted(groups.items(), key=lambda item: sorted(item[1]))]
    override = {"apiVersion": KARMADA_API, "kind": "OverridePolicy", "metadata": copy.deepcopy(meta),
                "spec": {"resourceSelectors": [_selector(c.workload)], "overrideRules": rules}}
    return propagation, override


def _replace(obj: dict[str, Any], pointer: str, value: Any) -> None:
    """Replace the value at a JSON pointer, as Karmada's plaintext overrider does."""
    *parents, last = pointer.strip("/").split("/")
    target: Any = obj
    for part in parents:
        target = target[int(part)] if isinstance(target, list) else target[part]
    target[int(last) if isinstance(target, list) else last] = value


def _for_cluster(c: _Component, cluster: str) -> list[dict[str, Any]]:
    workload = copy.deepcopy(c.workload)
    for pointer, image in c.images.get(cluster, []):
        _replace(workload, pointer, image)
    if c.shares is not None:
        workload["spec"]["replicas"] = c.shares[cluster]
    return [workload] + ([copy.deepcopy(c.service)] if c.service is not None else [])


def render_app(description: dict[str, Any], placement: dict[str, list[str]], *, nodes: dict[str, str] | None = None,
               app_id: str | None = None, namespace: str = "default", karmada: bool = True,
               cluster_arch: dict[str, str] | None = None) -> Rendering:
    """Render an application description placed by a plan (component -> clusters, component -> node)."""
    body = app_of(description)
    app = body.get("name")
    if not isinstance(app, str) or not dns_name(app):
        raise RenderError("name: required")
    if not _DNS_LABEL.fullmatch(namespace):
        raise RenderError(f"namespace: {namespace!r} is not a DNS-1123 label")
    components = body.get("components")
    if not isinstance(components, list) or not components:
        raise RenderError("components: required (at least one)")
    fallback = sorted({str(c) for c in _as_list(_mapping(body.get("cluster_placement"), "cluster_placement")
                                                  .get("cluster_id"))})
    app_label = label_value(app_id or app)
    rendered: list[_Component] = []
    seen: dict[str, int] = {}
    # Placement or node entries for components the description no longer has are ignored: a plan can outlive them.
    for i, component in enumerate(components):
        path = f"components[{i}]"
        meta = component.get("metadata") if isinstance(component, Mapping) else None
        name = str(meta.get("name") or "") if isinstance(meta, Mapping) else ""
        clusters = sorted({str(c) for c in _as_list(placement.get(name))}) or fallback
        if name and not clusters:
            raise RenderError(f"{path}: component {name!r} has no clusters: it is not in the placement plan and "
                              "the description has no cluster_placement.cluster_id")
        c = _component(component, path, app, app_label, namespace, clusters, (nodes or {}).get(name),
                       cluster_arch or {})
        if c.workload["metadata"]["name"] in seen:
            raise RenderError(f"{path}.metadata.name: {name!r} gives the same object name as "
                              f"components[{seen[c.workload['metadata']['name']]}]")
        seen[c.workload["metadata"]["name"]] = i
        rendered.append(c)
    objects = [o for c in rendered for o in c.core]
    if karmada:
        policies = [_policies(c) for c in rendered]
        objects += [p for p, _ in policies] + [o for _, o in policies if o is not None]
    per_cluster = {cluster: [o for c in rendered if cluster in c.clusters for o in _for_cluster(c, cluster)]
                   for cluster in sorted({cl for c in rendered for cl in c.clusters})}
    return Rendering(objects=objects, per_cluster=per_cluster, app=label_value(app))


def to_yaml_files(objects: list[dict[str, Any]]) -> dict[str, str]:
    """One YAML text per object, by file name "<kind>-<name>.yaml" (lowercase; "-2", "-3"... where names clash)."""
    files: dict[str, str] = {}
    for obj in objects:
        meta = obj.get("metadata") or {}
        stem = re.sub(r"[^a-z0-9.-]", "-", f"{obj.get('kind', 'object')}-{meta.get('name', '')}".lower())
        name, n = f"{stem}.yaml", 1
        while name in files:
            n += 1
            name = f"{stem}-{n}.yaml"
        files[name] = yaml.safe_dump(obj, sort_keys=True, default_flow_style=False, width=4096)
    return files
