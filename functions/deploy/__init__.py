"""The deploy function: application descriptions and placement plans to Kubernetes and Karmada objects.

`deploy.requested` (from the execute stage): the application's description (from the state store) and the
plan's placement (component -> clusters, and component -> node) are rendered (`render`) into Deployments or
Knative Services, Services, and Karmada PropagationPolicies/OverridePolicies, then

- applied with server-side apply (`apply`) to the API server of `MAPEMESH_KUBECONFIG` (context
  `MAPEMESH_KUBE_CONTEXT`): a Karmada control plane, or a plain cluster with `MAPEMESH_KARMADA=false` (then no
  policies); Karmada propagates them, and moving a component is Karmada's work once its policy names the new
  clusters;
- or, with no cluster configured, written under `DATA_DIR/deployments/APP/CLUSTER/` (one YAML file per object)
  with a STATUS file saying "rendered, not applied", so the local mesh still shows the whole path.

The answer is a `deploy.status` event (Applied, Written or Failed, with the clusters and the number of objects),
which the monitor stage turns into the plan's status. What was deployed is recorded (kind `deployments`);
`app.removed` deletes it again, policies included (or removes the folder).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any

import mapemesh
from mapemesh import events as catalogue
from mapemesh.eventing.cloudevent import CloudEvent
from mapemesh.functions._stage import data_of
from mapemesh.state import StateStore, from_environment, update

log = logging.getLogger(__name__)
SOURCE = "/mapemesh/deploy"
LOCAL_CLUSTER = "local"
"""Where components go when neither the plan nor the description names a cluster."""
STATUS_EVERY_S = float(os.environ.get("MAPEMESH_DEPLOY_STATUS_EVERY_S", "5"))
STATUS_WAIT_S = float(os.environ.get("MAPEMESH_DEPLOY_STATUS_WAIT_S", "300"))
"""After an apply, the function watches the objects this long and reports once they run (deploy.status)."""


def _target() -> Any:
    """The cluster target from the environment, or None (then objects are written locally)."""
    kubeconfig = os.environ.get("MAPEMESH_KUBECONFIG")
    if not kubeconfig:
        return None
    from mapemesh.functions.deploy.apply import KubernetesTarget, api_client

    return KubernetesTarget(api_client(kubeconfig, os.environ.get("MAPEMESH_KUBE_CONTEXT") or None),
                            karmada=os.environ.get("MAPEMESH_KARMADA", "true").lower() != "false")


def _identity(obj: dict[str, Any]) -> dict[str, Any]:
    meta = obj.get("metadata") or {}
    return {"apiVersion": obj["apiVersion"], "kind": obj["kind"],
            "metadata": {"name": meta.get("name"), **({"namespace": meta["namespace"]} if "namespace" in meta else {})}}


def write_local(data: Path, app_id: str, per_cluster: dict[str, list[dict[str, Any]]], plan_id: str | None) -> Path:
    """Write each cluster's objects under DATA_DIR/deployments/APP/CLUSTER/, replacing what was there, atomically."""
    from mapemesh.functions.deploy.render import to_yaml_files

    root = data / "deployments" / app_id
    tmp = root.with_name(f".{app_id}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    for cluster, objects in sorted(per_cluster.items()):
        folder = tmp / cluster
        folder.mkdir(parents=True)
        for name, text in to_yaml_files(objects).items():
            (folder / name).write_text(text, encoding="utf-8")
    (tmp / "STATUS").write_text(json.dumps({"status": "rendered, not applied", "plan_id": plan_id,
                                            "at": time.time(), "clusters": sorted(per_cluster)}, indent=1) + "\n")
    old = root.with_name(f".{app_id}.{os.getpid()}.old")
    if root.exists():
        root.rename(old)
    tmp.rename(root)
    shutil.rmtree(old, ignore_errors=True)
    return root


def _placement(request: catalogue.DeployRequested, previous: dict[str, Any] | None) -> tuple[dict[str, list[str]],
                                                                                            dict[str, str]]:
    """The request's placement over what was deployed before (a node plan keeps the clusters, and back)."""
    placement = dict((previous or {}).get("placement") or {})
    placement.update(request.placement)
    nodes = dict((previous or {}).get("nodes") or {})
    nodes.update(request.nodes)
    return placement, nodes


def _status(request: catalogue.DeployRequested | catalogue.AppRemoved, status: str, *,
            clusters: list[str] | None = None, objects: int = 0, message: str | None = None,
            deployed: bool | None = None) -> CloudEvent:
    plan_id = request.plan_id if isinstance(request, catalogue.DeployRequested) else None
    data = catalogue.DeployStatus(app_id=request.app_id, plan_id=plan_id, status=status,  # type: ignore[arg-type]
                                  clusters=sorted(clusters or []), objects=objects, message=message,
                                  deployed=deployed)
    return catalogue.make_event(data, SOURCE, subject=request.app_id)


async def on_deploy(store: StateStore, request: catalogue.DeployRequested, data_dir: Path) -> CloudEvent:
    """Render the application with the plan's placement; apply it, or write it locally; record it."""
    from mapemesh.functions.deploy.render import RenderError, render_app

    app = store.get("applications", request.app_id)
    if app is None:
        return _status(request, "Failed", message=f"application {request.app_id} is not known (submit it first)")
    description = app.value.get("description", app.value)
    previous = store.get("deployments", request.app_id)
    placement, nodes = _placement(request, previous.value if previous else None)
    target = _target()
    try:
        rendering = render_app(description, placement, nodes=nodes, app_id=request.app_id,
                               karmada=target.karmada if target is not None else True)
    except RenderError as exc:
        if "cluster" not in str(exc) or target is not None:
            return _status(request, "Failed", message=f"cannot render: {exc}")
        # No cluster named anywhere and no cluster to ask: the local target takes every component.
        placement = {**{c: [LOCAL_CLUSTER] for c in _components(description)}, **placement}
        try:
            rendering = render_app(description, placement, nodes=nodes, app_id=request.app_id)
        except RenderError as again:
            return _status(request, "Failed", message=f"cannot render: {again}")
    clusters = sorted({c for cs in placement.values() for c in cs})
    refused = await asyncio.to_thread(_unusable, store, target, clusters)
    if refused:
        return _status(request, "Failed", clusters=clusters, message="; ".join(refused))
    deployed: bool | None = None
    if target is not None:
        try:
            applied = await asyncio.to_thread(target.apply, rendering.objects)
            deployed = bool((await asyncio.to_thread(target.status, rendering.objects)).get("deployed"))
        except Exception as exc:  # ApplyError, or the API server unreachable
            return _status(request, "Failed", clusters=clusters, message=f"apply failed: {exc}")
        status, count, message = "Applied", len(applied), None
        if not deployed:
            _follow(target, request, rendering.objects, clusters, len(applied))
    else:
        root = await asyncio.to_thread(write_local, data_dir, request.app_id, rendering.per_cluster, request.plan_id)
        count = sum(len(objs) for objs in rendering.per_cluster.values())
        status, message = "Written", f"rendered, not applied (no cluster configured: MAPEMESH_KUBECONFIG): {root}"
    update(store, "deployments", request.app_id, lambda doc: {
        "app_id": request.app_id, "status": status, "placement": placement, "nodes": nodes, "clusters": clusters,
        "objects": [_identity(o) for o in rendering.objects], "target": "cluster" if target is not None else "local",
        "plan_id": request.plan_id, "message": message, "deployed": deployed, "at": time.time()})
    return _status(request, status, clusters=clusters, objects=count, message=message, deployed=deployed)


def _unusable(store: StateStore, target: Any, clusters: list[str]) -> list[str]:
    """Why planned clusters cannot take the application: not ready, or tainted unschedulable.

    Karmada's Cluster objects decide when there is a Karmada; else the registered infrastructure (a cluster
    nobody registered, such as the local target, is taken as it is).
    """
    from mapemesh.functions.deploy.clusters import from_karmada, from_registry

    if target is not None and target.karmada:
        known = {c.name: c for c in from_karmada(target.client)}
        missing = [f"cluster {c} is not a Karmada member cluster" for c in clusters if c not in known]
    else:
        known = {c.name: c for c in from_registry(store.list("infrastructure"))}
        missing = []
    bad = [f"cluster {c} cannot take it: {known[c].reason or ('not ready' if not known[c].ready else 'unschedulable')}"
           for c in clusters if c in known and not (known[c].ready and known[c].schedulable)]
    return missing + bad


_followers: set[asyncio.Task[None]] = set()


def _follow(target: Any, request: catalogue.DeployRequested, objects: list[dict[str, Any]], clusters: list[str],
            count: int) -> None:
    """Watch the applied objects until they run (or STATUS_WAIT_S passes); then publish a deploy.status."""

    async def follow() -> None:
        from mapemesh.serving import sink

        deadline = time.monotonic() + STATUS_WAIT_S
        status: dict[str, Any] = {}
        while time.monotonic() < deadline:
            await asyncio.sleep(STATUS_EVERY_S)
            try:
                status = await asyncio.to_thread(target.status, objects)
            except Exception as exc:  # the API server may be away for a moment
                log.warning("status of %s: %s", request.app_id, exc)
                continue
            if status.get("deployed"):
                await sink.publish([_status(request, "Applied", clusters=clusters, objects=count, deployed=True,
                                            message="every component runs on its clusters")])
                return
        await sink.publish([_status(request, "Applied", clusters=clusters, objects=count, deployed=False,
                                    message=f"not running everywhere after {STATUS_WAIT_S:g}s: "
                                            f"{json.dumps(status.get('components') or {}, default=str)[:500]}")])

    task = asyncio.get_running_loop().create_task(follow())
    _followers.add(task)
    task.add_done_callback(_followers.discard)


def _components(description: dict[str, Any]) -> list[str]:
    app = description.get("MLSysOpsApp", description) if isinstance(description, dict) else {}
    return [str((c.get("metadata") or {}).get("name")) for c in app.get("components") or []
            if isinstance(c, dict) and (c.get("metadata") or {}).get("name")]


async def on_removed(store: StateStore, removed: catalogue.AppRemoved, data_dir: Path) -> CloudEvent | None:
    """Delete what was deployed for the application (policies included), or its local folder."""
    record = store.get("deployments", removed.app_id)
    if record is None:
        return None
    objects = record.value.get("objects") or []
    if record.value.get("target") == "cluster":
        target = _target()
        if target is None:
            return _status(removed, "Failed", message="deployed to a cluster, but no cluster is configured now")
        try:
            await asyncio.to_thread(target.delete, objects)
        except Exception as exc:
            return _status(removed, "Failed", message=f"removal failed: {exc}")
    else:
        await asyncio.to_thread(shutil.rmtree, data_dir / "deployments" / removed.app_id, True)
    store.delete("deployments", removed.app_id)
    return _status(removed, "Removed", clusters=record.value.get("clusters") or [], objects=len(objects),
                   message="removed")


@mapemesh.function
async def deploy(event: CloudEvent) -> CloudEvent | None:
    """Carry out a placement (deploy.requested) or a removal (app.removed)."""
    data = data_of(event)
    store = from_environment()
    data_dir = Path(os.environ.get("MAPEMESH_DATA", ".mapemesh"))
    if isinstance(data, catalogue.DeployRequested):
        return await on_deploy(store, data, data_dir)
    if isinstance(data, catalogue.AppRemoved):
        return await on_removed(store, data, data_dir)
    return None
