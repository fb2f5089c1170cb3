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
`app.removed` deletes it again, policies included (or removes the folder). A request for the plan deployed already
(delivery is at least once) is answered as recorded, and nothing is deployed twice.
"""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any

import httpx

import mapemesh
from mapemesh import events as catalogue
from mapemesh.eventing.cloudevent import CloudEvent
from mapemesh.functions.deploy import faredge
from mapemesh.functions.deploy.local import write_local
from mapemesh.settings import current
from mapemesh.state import StateStore, update

log = logging.getLogger(__name__)
SOURCE = "/mapemesh/deploy"
LOCAL_CLUSTER = "local"
"""Where components go when neither the plan nor the description names a cluster."""
STATUS_EVERY_S = current().deploy_status_every_s
STATUS_WAIT_S = current().deploy_status_wait_s
"""After an apply, the function watches the objects this long and reports once they run (deploy.status)."""


def _target() -> Any:
    """The cluster target from the environment, or None (then objects are written locally)."""
    s = current()
    if not s.kubeconfig:
        return None
    from mapemesh.functions.deploy.apply import KubernetesTarget, api_client

    return KubernetesTarget(api_client(s.kubeconfig, s.kube_context or None), karmada=s.karmada)


def _identity(obj: dict[str, Any]) -> dict[str, Any]:
    meta = obj.get("metadata") or {}
    return {"apiVersion": obj["apiVersion"], "kind": obj["kind"],
            "metadata": {"name": meta.get("name"), **({"namespace": meta["namespace"]} if "namespace" in meta else {})}}


def _key(identity: dict[str, Any]) -> tuple[str, str, str, str]:
    meta = identity.get("metadata") or {}
    return identity["apiVersion"], identity["kind"], str(meta.get("namespace") or ""), str(meta.get("name"))


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
    """Render the application with the plan's placement; apply it, or write it locally; record it.

    What an earlier deploy of the application made and this one does not (a component dropped from the
    description, another target) is deleted afterwards, so a redeploy or a move leaves nothing behind.
    """
    from mapemesh.functions.deploy.render import APP_ID, RenderError, render_app

    previous = store.get("deployments", request.app_id)
    done = previous.value if previous is not None else {}
    if request.plan_id and done.get("plan_id") == request.plan_id and done.get("status") in ("Applied", "Written"):
        # The same plan again (its event redelivered, or the plan announced twice): what it did stands. Deploying
        # again is not harmless: a far-edge device refuses a second create, and the rollback removes the first.
        return _status(request, str(done["status"]), clusters=list(done.get("clusters") or []),
                       objects=int(done.get("count") or 0),
                       message=f"plan {request.plan_id} is deployed already: {done.get('message') or done['status']}",
                       deployed=done.get("deployed"))
    app = store.get("applications", request.app_id)
    if app is None:
        return _status(request, "Failed", message=f"application {request.app_id} is not known (submit it first, or "
                                                  "it was removed)")
    description = app.value.get("description", app.value)
    before = previous.value if previous else None
    placement, nodes = _placement(request, before)
    far = faredge.split(store, nodes)  # components on far-edge devices go to the MQTT bridge (LwM2M)
    placed_far: dict[str, Any] = {}
    if far:
        try:
            placed_far, problems = await faredge.deploy(request.app_id, description, far, request.plan_id, data_dir,
                                                        active=(before or {}).get("faredge"))
        except (RuntimeError, httpx.HTTPError) as exc:
            return _status(request, "Failed", message=f"far-edge: {exc}")
        if problems:
            return _status(request, "Failed", message="far-edge: " + "; ".join(problems))
        try:
            extra = faredge.adapters(description, far, current().mqtt_url)
        except ValueError as exc:
            return _status(request, "Failed", message=f"far-edge: {exc}")
        description = faredge.with_components(faredge.without(description, set(far)), extra)
        placement = {c: v for c, v in placement.items() if c not in far}
        nodes = {c: n for c, n in nodes.items() if c not in far}
        if not _components(description):
            _record(store, request, placement, nodes, [], [], "far_edge", "Applied", None, True, placed_far,
                    count=len(placed_far))
            return _status(request, "Applied", objects=len(placed_far), deployed=True,
                           message="far-edge: " + ", ".join(f"{c} on {p['device']}" for c, p in placed_far.items()))
    try:
        target = _target()
    except Exception as exc:  # a bad kubeconfig will not get better by retrying
        return _status(request, "Failed", message=f"cannot reach the cluster: {exc}")
    try:
        known = await asyncio.to_thread(_clusters, store, target)
    except Exception as exc:  # Karmada unreachable: raise, the broker delivers the request again
        raise RuntimeError(f"cannot read the clusters: {exc}") from exc
    arch = {c.name: c.architecture for c in known.values() if c.architecture}
    try:
        rendering = render_app(description, placement, nodes=nodes, app_id=request.app_id,
                               karmada=target.karmada if target is not None else True, cluster_arch=arch)
    except RenderError as exc:
        if "has no clusters" not in str(exc) or target is not None:
            return _status(request, "Failed", message=f"cannot render: {exc}")
        # No cluster named anywhere and no cluster to ask: the local target takes every component.
        placement = {**{c: [LOCAL_CLUSTER] for c in _components(description)}, **placement}
        try:
            rendering = render_app(description, placement, nodes=nodes, app_id=request.app_id)
        except RenderError as again:
            return _status(request, "Failed", message=f"cannot render: {again}")
    clusters = sorted(rendering.per_cluster)
    refused = _unusable(known, clusters, karmada=target is not None and target.karmada)
    if refused:
        return _status(request, "Failed", clusters=clusters, message="; ".join(refused))
    identities = [_identity(o) for o in rendering.objects]
    kind = "cluster" if target is not None else "local"
    keys = {_key(i) for i in identities}
    stale = [o for o in (before or {}).get("objects") or []
             if _key(o) not in keys or (before or {}).get("target") != kind]
    deployed: bool | None = None
    if target is not None:
        taken = await asyncio.to_thread(_owned_elsewhere, target, rendering.objects, request.app_id, APP_ID)
        if taken:
            return _status(request, "Failed", clusters=clusters, message="; ".join(taken))
        # Recorded before applying: whatever an apply that fails half way made is still deleted on removal.
        _record(store, request, placement, nodes, clusters, identities + stale, kind, "Applying", None, None)
        try:
            applied = await asyncio.to_thread(target.apply, rendering.objects)
        except Exception as exc:  # ApplyError, or the API server went away
            return _status(request, "Failed", clusters=clusters, message=f"apply failed: {exc}")
        try:
            deployed = bool((await asyncio.to_thread(target.status, rendering.objects)).get("deployed"))
        except Exception as exc:  # the objects are applied; their status can come later
            log.warning("status of %s: %s", request.app_id, exc)
            deployed = False
        status, count, message = "Applied", len(applied), None
    else:
        try:
            root = await asyncio.to_thread(write_local, data_dir, request.app_id, rendering.per_cluster,
                                           request.plan_id)
        except ValueError as exc:
            return _status(request, "Failed", clusters=clusters, message=str(exc))
        count = sum(len(objs) for objs in rendering.per_cluster.values())
        status, message = "Written", f"rendered, not applied (no cluster configured: MAPEMESH_KUBECONFIG): {root}"
    leftover = await _remove_stale(stale, before, target, data_dir, request.app_id, kind)
    if store.get("applications", request.app_id) is None:  # removed while this deploy ran: undo it
        await _delete_all(identities, target, data_dir, request.app_id)
        store.delete("deployments", request.app_id)
        return _status(request, "Removed", clusters=clusters, message="the application was removed meanwhile")
    _record(store, request, placement, nodes, clusters, identities + leftover, kind, status, message, deployed,
            placed_far, count=count)
    if target is not None and not deployed:
        _follow(target, request, rendering.objects, clusters, count)
    return _status(request, status, clusters=clusters, objects=count, message=message, deployed=deployed)


def _record(store: StateStore, request: catalogue.DeployRequested, placement: dict[str, list[str]],
            nodes: dict[str, str], clusters: list[str], objects: list[dict[str, Any]], target: str, status: str,
            message: str | None, deployed: bool | None, far: dict[str, Any] | None = None, *, count: int = 0) -> None:
    update(store, "deployments", request.app_id, lambda doc: {
        "app_id": request.app_id, "status": status, "placement": placement, "nodes": nodes, "clusters": clusters,
        "objects": objects, "count": count, "target": target, "plan_id": request.plan_id, "message": message,
        "deployed": deployed,
        "faredge": far if far is not None else (doc or {}).get("faredge") or {}, "at": time.time()})


async def _remove_stale(stale: list[dict[str, Any]], before: dict[str, Any] | None, target: Any, data_dir: Path,
                        app_id: str, kind: str) -> list[dict[str, Any]]:
    """Delete what an earlier deploy made that this one does not; return what could not be deleted."""
    if not stale or before is None:
        return []
    if before.get("target") == "local":
        if kind != "local":
            await asyncio.to_thread(shutil.rmtree, data_dir / "deployments" / app_id, True)
        return []
    if target is None:
        log.warning("%s: %d object(s) applied to a cluster earlier stay there: no cluster is configured now",
                    app_id, len(stale))
        return stale  # kept in the record, so a later removal with a cluster configured deletes them
    try:
        await asyncio.to_thread(target.delete, stale)
    except Exception as exc:
        log.warning("%s: deleting %d stale object(s) failed: %s", app_id, len(stale), exc)
        return stale
    return []


async def _delete_all(identities: list[dict[str, Any]], target: Any, data_dir: Path, app_id: str) -> None:
    if target is not None:
        await asyncio.to_thread(target.delete, identities)
    else:
        await asyncio.to_thread(shutil.rmtree, data_dir / "deployments" / app_id, True)


def _clusters(store: StateStore, target: Any) -> dict[str, Any]:
    """The clusters there are: Karmada's members, or the registered ones (by name)."""
    from mapemesh.functions.deploy.clusters import from_karmada, from_registry

    if target is not None and target.karmada:
        return {c.name: c for c in from_karmada(target.client)}
    return {c.name: c for c in from_registry(store.list("infrastructure"))}


def _unusable(known: dict[str, Any], clusters: list[str], *, karmada: bool) -> list[str]:
    """Why planned clusters cannot take the application: unknown to Karmada, not ready, or tainted unschedulable.

    Without Karmada a cluster nobody registered (such as the local target) is taken as it is.
    """
    missing = [f"cluster {c} is not a Karmada member cluster" for c in clusters if karmada and c not in known]
    bad = [f"cluster {c} cannot take it: {known[c].reason or ('not ready' if not known[c].ready else 'unschedulable')}"
           for c in clusters if c in known and not (known[c].ready and known[c].schedulable)]
    return missing + bad


def _owned_elsewhere(target: Any, objects: list[dict[str, Any]], app_id: str, label: str) -> list[str]:
    """Objects that exist already and belong to another application (server-side apply would take them over)."""
    from mapemesh.functions.deploy.apply import object_path, object_ref, request

    out = []
    for obj in objects:
        code, body = request(target.client, "GET", object_path(obj), timeout=target.request_timeout)
        if code != 200:
            continue
        try:
            owner = ((json.loads(body).get("metadata") or {}).get("labels") or {}).get(label)
        except (ValueError, AttributeError):
            continue
        ours = ((obj.get("metadata") or {}).get("labels") or {}).get(label, app_id)
        if owner is not None and owner != ours:
            out.append(f"{object_ref(obj)} belongs to application {owner}")
    return out


_followers: dict[str, asyncio.Task[None]] = {}
"""One follow-up per application: a newer deploy or a removal cancels the one before."""


def _follow(target: Any, request: catalogue.DeployRequested, objects: list[dict[str, Any]], clusters: list[str],
            count: int) -> None:
    """Watch the applied objects until they are applied everywhere (or STATUS_WAIT_S passes); report it.

    It runs in the function's process, which scales down when idle: a rollout slower than that is reported
    by the next deploy instead.
    """

    async def follow() -> None:
        from mapemesh.serving import sink
        from mapemesh.serving.sink import SinkError

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
                break
        done = bool(status.get("deployed"))
        message = ("applied on every planned cluster" if done else
                   f"not applied everywhere after {STATUS_WAIT_S:g}s: "
                   f"{json.dumps(status.get('components') or {}, default=str)[:500]}")
        try:
            await sink.publish([_status(request, "Applied", clusters=clusters, objects=count, deployed=done,
                                        message=message)])
        except SinkError as exc:  # the record stays as it was; the next deploy reports again
            log.warning("deploy status of %s not published: %s", request.app_id, exc)

    _stop_following(request.app_id)
    task = asyncio.get_running_loop().create_task(follow())
    _followers[request.app_id] = task
    task.add_done_callback(lambda t: _followers.pop(request.app_id, None) if _followers.get(request.app_id) is t
                           else None)


def _stop_following(app_id: str) -> None:
    task = _followers.pop(app_id, None)
    if task is not None:
        task.cancel()


def _components(description: dict[str, Any]) -> list[str]:
    app = description.get("MLSysOpsApp", description) if isinstance(description, dict) else {}
    return [str(meta.get("name")) for c in app.get("components") or []
            if isinstance(c, dict) and isinstance(meta := c.get("metadata"), dict) and meta.get("name")]


async def on_removed(store: StateStore, removed: catalogue.AppRemoved, data_dir: Path) -> CloudEvent | None:
    """Delete what was deployed for the application (policies included), or its local folder.

    A deploy still running for it undoes itself when it finds the application gone. A failure to reach the
    cluster raises, so that the broker delivers the removal again.
    """
    _stop_following(removed.app_id)
    record = store.get("deployments", removed.app_id)
    if record is None:
        return None
    objects = record.value.get("objects") or []
    far_problems = await faredge.remove(removed.app_id, record.value.get("faredge") or {}, data_dir)
    if far_problems:
        return _status(removed, "Failed", message="far-edge: " + "; ".join(far_problems))
    if record.value.get("target") == "cluster":
        try:
            target = _target()
        except Exception as exc:
            return _status(removed, "Failed", message=f"cannot reach the cluster to remove it: {exc}")
        if target is None:
            return _status(removed, "Failed", message="deployed to a cluster, but no cluster is configured now")
        await asyncio.to_thread(target.delete, objects)  # raises on failure: delivered again
    else:
        await asyncio.to_thread(shutil.rmtree, data_dir / "deployments" / removed.app_id, True)
    store.delete("deployments", removed.app_id)
    return _status(removed, "Removed", clusters=record.value.get("clusters") or [], objects=len(objects),
                   message="removed")


def _data_dir() -> Path:
    return current().data


@mapemesh.on(catalogue.DeployRequested)
async def requested(request: catalogue.DeployRequested, *, store: StateStore) -> CloudEvent:
    """Carry out a placement."""
    # One application's deploys and removal take turns: each reads what the one before recorded (two placement
    # plans at once, a node plan and a cluster plan, would otherwise both start from nothing).
    async with _app_locks.setdefault(request.app_id, asyncio.Lock()):
        return await on_deploy(store, request, _data_dir())


@mapemesh.on(catalogue.AppRemoved)
async def removed(removed: catalogue.AppRemoved, *, store: StateStore) -> CloudEvent | None:
    """Remove what an application's deploys made."""
    async with _app_locks.setdefault(removed.app_id, asyncio.Lock()):
        return await on_removed(store, removed, _data_dir())


_app_locks: dict[str, asyncio.Lock] = {}


deploy = mapemesh.stage(__name__, source=SOURCE)
"""Carry out placements (deploy.requested) and removals (app.removed)."""
