"""The reads behind the dashboard (`mapemesh/api/ui/`): what `mapemesh status`, `infra list`, `policy list` and
`mapemesh trace` show, one JSON document per view, each behind the API's bearer token like every other route.

| route                        | what                                                                             |
|------------------------------|----------------------------------------------------------------------------------|
| `GET /dashboard/now`         | functions (scale, cold starts), Triggers (counters), the broker's backlog        |
| `GET /dashboard/continuum`   | clusters, nodes (far-edge devices too) with their knobs' values and what runs    |
|                              | there; each application's QoS targets with their recent samples                  |
| `GET /dashboard/policies`    | the management mode and override; each policy with its last verdicts, failures   |
| `GET /trace/{ident}`         | the causal chain of an event, plan or trace id, each hop's latency (404: not in   |
|                              | the log, or compacted away)                                                      |

Functions and Triggers come from the function host's `/status` and the broker's `/stats`, found in
DATA_DIR/endpoints.json (the embedded mesh); where this API runs without them (beside Knative) they are null and
`errors` says why. Everything else is read from the state store and the event log.
"""

from __future__ import annotations

import asyncio
import math
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import httpx
from fastapi import APIRouter, HTTPException, Query
from fastapi import Path as PathParam

from mapemesh import endpoints
from mapemesh.api import views
from mapemesh.descriptions import RELATIONS
from mapemesh.state import StateStore
from mapemesh.tls import client_context

if TYPE_CHECKING:
    from mapemesh.api.app import ApiContext

MAX_POINTS = 120
"""The most samples a target's series carries (the newest; the page draws them as they come)."""
MAX_VERDICTS = 20
"""The most per-asset verdicts listed for a policy (the newest)."""


def router(ctx: ApiContext) -> APIRouter:
    """The dashboard's routes over `ctx` (the caller adds the token check)."""
    api = APIRouter(tags=["Dashboard"])

    @api.get("/dashboard/now")
    async def now() -> dict[str, Any]:
        """Functions with their scale (processes, min/max, cold starts), Triggers with their delivery counters, and
        the broker's backlog (deliveries not made yet, per Trigger, and the oldest one's age)."""
        return await mesh_now(ctx.data, ctx.event_log)

    @api.get("/dashboard/continuum")
    async def continuum_view(
            window: Annotated[float, Query(gt=0, le=86_400, description="Targets' samples of the last this many "
                                                                        "seconds.")] = 600.0) -> dict[str, Any]:
        """Clusters, nodes (far-edge devices too) with their knobs' current values and the applications placed on
        them; each application's QoS targets against its measured samples."""
        return await asyncio.to_thread(continuum, ctx.store, time.time(), window)

    @api.get("/dashboard/policies")
    async def policies_view() -> dict[str, Any]:
        """The management mode and manual override; each policy, its kind, counts, last verdicts per asset and its
        recent failures."""
        return await asyncio.to_thread(policies, ctx.store)

    @api.get("/trace/{ident}")
    async def trace(ident: Annotated[str, PathParam(min_length=1, max_length=253,
                                                    description="An event id, a plan id or a trace id.")]
                    ) -> dict[str, Any]:
        """The causal chain of a reaction from the event log: each event, the Trigger it came through, and each
        hop's latency (what `mapemesh trace -o json` prints)."""
        from mapemesh.eventing.chain import TraceNotFound

        try:
            return await asyncio.to_thread(_trace, ctx.event_log, ident)
        except TraceNotFound as exc:
            raise HTTPException(404, str(exc)) from None

    return api


def _trace(log_file: Path, ident: str) -> dict[str, Any]:
    from mapemesh.eventing.chain import TraceNotFound, find
    from mapemesh.eventing.log import open_readonly

    if not log_file.exists():
        raise TraceNotFound(f"no event log at {log_file}")
    db = open_readonly(log_file)
    try:
        return find(db, ident).to_dict()
    finally:
        db.close()


async def mesh_now(data: Path | None, log_file: Path) -> dict[str, Any]:
    """The function host's and the broker's status (from endpoints.json in `data`) and the log's backlog."""
    out: dict[str, Any] = {"at": time.time(), "functions": None, "triggers": None, "log": None, "backlog": None,
                           "errors": {}}
    try:
        found = endpoints.read(data) if data is not None else {}
    except ValueError as exc:
        found, out["errors"]["endpoints"] = {}, str(exc)
    async with httpx.AsyncClient(timeout=5, verify=client_context()) as http:
        for name, path in (("serving", "/status"), ("broker", "/stats")):
            if name not in found:
                out["errors"][name] = "no embedded mesh beside this API (not in DATA_DIR/endpoints.json)"
                continue
            try:
                doc = (await http.get(found[name] + path)).raise_for_status().json()
            except (httpx.HTTPError, ValueError) as exc:
                out["errors"][name] = f"{found[name]} did not answer: {exc}"
                continue
            if name == "serving":
                out["functions"] = doc.get("functions") or {}
            else:
                out["triggers"], out["log"] = doc.get("triggers") or {}, doc.get("log") or {}
    if "broker" in found:  # the log is the broker's own (a cluster's API reads a feed with no deliveries)
        out["backlog"] = await asyncio.to_thread(backlog, log_file, out["at"])
    return out


def backlog(log_file: Path, now: float) -> dict[str, Any]:
    """Deliveries the broker has not made yet (pending, retries included): per Trigger, with the oldest's age."""
    from mapemesh.eventing.log import backlog as pending
    from mapemesh.eventing.log import open_readonly

    out: dict[str, Any] = {"pending": 0, "oldest_age_s": None, "by_trigger": {}}
    if not log_file.exists():
        return out
    db = open_readonly(log_file)
    try:
        rows = pending(db)
    finally:
        db.close()
    for subscription, count, oldest in rows:
        age = round(max(0.0, now - oldest / 1e9), 3)
        out["by_trigger"][subscription] = {"pending": count, "oldest_age_s": age}
        out["pending"] += count
        out["oldest_age_s"] = max(out["oldest_age_s"] or 0.0, age)
    return out


def _node(doc: dict[str, Any]) -> dict[str, Any]:
    description = doc.get("description") or {}
    return description.get("MLSysOpsNode") or {} if isinstance(description, dict) else {}


def continuum(store: StateStore, now: float, window_s: float = 600.0) -> dict[str, Any]:
    """The continuum as the page draws it: clusters with their nodes, nodes with their knobs and placed
    components, applications with their targets' samples."""
    infra = {k: v.value for k, v in sorted(store.list("infrastructure").items())}
    knobs: dict[str, dict[str, Any]] = {}
    for key, versioned in store.list("mechanisms").items():
        node, _, knob = key.partition("/")
        knobs.setdefault(node, {})[knob] = {"state": versioned.value.get("state"),
                                            "updated": versioned.value.get("updated")}
    placed_on: dict[str, list[str]] = {}
    applications = []
    deployments = {k: v.value for k, v in store.list("deployments").items()}
    for app_id, versioned in sorted(store.list("applications").items()):
        deployment = deployments.get(app_id) or {}
        for component, clusters in (deployment.get("placement") or {}).items():
            for cluster in clusters or []:
                placed_on.setdefault(str(cluster), []).append(f"{app_id}/{component}")
        for component, node in (deployment.get("nodes") or {}).items():
            placed_on.setdefault(str(node), []).append(f"{app_id}/{component}")
        applications.append({"app_id": app_id, "kind": versioned.value.get("kind", "application"),
                             "placement": deployment.get("placement") or {}, "nodes": deployment.get("nodes") or {},
                             "targets": targets(store, app_id, versioned.value, now - window_s)})
    clusters, nodes, members = [], [], {}
    for ident, doc in infra.items():
        if doc.get("kind") == "cluster":
            listed = ((doc.get("description") or {}).get("MLSysOpsCluster") or {}).get("nodes") or []
            members.update((str(n), ident) for n in listed)
            clusters.append({"cluster_id": ident, "nodes": [str(n) for n in listed], "apps": placed_on.get(ident, [])})
    for ident, doc in infra.items():
        if doc.get("kind") != "node":
            continue
        node = _node(doc)
        layer = node.get("continuum_layer")
        own = knobs.get(ident) or {k: {"state": v, "updated": None} for k, v in
                                   (node.get("mechanism_states") or {}).items()}
        nodes.append({"node": ident, "cluster": members.get(ident), "layer": layer, "far_edge": layer == "far_edge",
                      "node_type": (node.get("environment") or {}).get("node_type"),
                      "knobs": dict(sorted(own.items())), "apps": placed_on.get(ident, [])})
    continua = [{"continuum_id": k, "clusters": ((v.get("description") or {}).get("MLSysOpsContinuum") or {})
                 .get("clusters") or []} for k, v in infra.items() if v.get("kind") == "continuum"]
    return {"at": now, "continuum": continua, "clusters": clusters, "nodes": nodes, "applications": applications}


def targets(store: StateStore, app_id: str, app: dict[str, Any], since: float) -> list[dict[str, Any]]:
    """Each QoS target of the application's components with its samples since `since` (the newest MAX_POINTS;
    a component's metric reported for the whole application counts for it, as in `apps performance`)."""
    out = []
    for component in views.components(app.get("description") or {}):
        name = str(component["metadata"].get("name"))
        for qos in component.get("qos_metrics") or []:
            if not isinstance(qos, dict) or not qos.get("application_metric_id"):
                continue
            metric = str(qos["application_metric_id"])
            samples = store.telemetry(f"{app_id}/{name}", [metric], since).get(metric) or \
                store.telemetry(app_id, [metric], since).get(metric) or []
            relation, goal = str(qos.get("relation", "lower_or_equal")), qos.get("target")
            check = RELATIONS.get(relation)
            usable = isinstance(goal, int | float) and not isinstance(goal, bool) and math.isfinite(goal)
            latest = samples[-1][1] if samples else None
            out.append({"component": name, "metric": metric, "target": goal, "relation": relation, "latest": latest,
                        "met": bool(check(latest, float(goal))) if latest is not None and check and usable else None,
                        "samples": [[round(t, 3), v] for t, v in samples[-MAX_POINTS:]]})
    return out


def policies(store: StateStore) -> dict[str, Any]:
    """The mode and override, and each policy as `mapemesh policy list` counts it, with its verdicts per asset."""
    from mapemesh.policy import registry

    found = store.get("settings", "mode")
    mode = found.value if found else {}
    by_policy: dict[str, list[dict[str, Any]]] = {}
    for key, versioned in store.list("policy_contexts").items():
        name, _, asset = key.partition("/")
        last = versioned.value.get("last_verdict")
        if isinstance(last, dict):
            by_policy.setdefault(name, []).append({"asset": asset, **last})
    rows = []
    for name, versioned in sorted(store.list("policies").items()):
        doc = registry.stats(store, name, versioned.value)
        declaration = doc.get("declaration") or {}
        verdicts = sorted(by_policy.get(name, []), key=lambda v: float(v.get("at") or 0), reverse=True)
        rows.append({"name": name, "status": doc.get("status"), "error": doc.get("error"),
                     "kind": "ml" if declaration.get("machine_learning") else "heuristic",
                     "scope": declaration.get("scope"), "mechanisms": declaration.get("mechanisms") or [],
                     "core": bool(declaration.get("core")), "skipped": doc.get("skipped"),
                     **{k: int(doc.get(k, 0)) for k in ("analyses", "verdicts", "plans", "failures")},
                     "last_verdict": doc.get("last_verdict"), "verdicts_by_asset": verdicts[:MAX_VERDICTS],
                     "recent_failures": [{k: f.get(k) for k in ("at", "asset", "method", "error")}
                                         for f in doc.get("recent_failures") or []]})
    return {"mode": mode.get("mode", "heuristic"), "manual_override": bool(mode.get("manual_override", False)),
            "policies": rows}
