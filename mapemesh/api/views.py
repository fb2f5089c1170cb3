"""What the northbound API answers, read from the state store (pure functions of the store's documents)."""

from __future__ import annotations

import math
import statistics
import time
from typing import Any

from mapemesh.descriptions import RELATIONS
from mapemesh.names import dns_name
from mapemesh.state import StateStore, Versioned

PLACEMENT_MECHANISMS = ("ClusterPlacement", "ComponentPlacement")
"""The mechanisms of a plan that place an application (the execute stage sends them to the deploy function)."""


def components(description: dict[str, Any]) -> list[dict[str, Any]]:
    """The components of an MLSysOpsApp description (dicts; malformed entries left out)."""
    app = description.get("MLSysOpsApp", description) if isinstance(description, dict) else {}
    return [c for c in app.get("components") or [] if isinstance(c, dict) and isinstance(c.get("metadata"), dict)]


def entries(store: StateStore, kind: str) -> dict[str, Versioned]:
    """The applications (kind "application") or ML models ("ml_model") in the store."""
    return {k: v for k, v in store.list("applications").items() if v.value.get("kind", "application") == kind}


def placement_plans(store: StateStore, app_id: str, since: float | None = None,
                    every: dict[str, Versioned] | None = None) -> list[dict[str, Any]]:
    """The application's plans made since it was submitted (not an earlier application's of that name), newest
    first (from `every` plan, when the caller has listed them already)."""
    listed = store.list("plans") if every is None else every
    plans = [p.value for p in listed.values()
             if p.value.get("asset") == app_id and (since is None or (p.value.get("created") or 0) >= since)]
    return sorted(plans, key=lambda p: p.get("created") or 0, reverse=True)


def statuses(store: StateStore, apps: dict[str, Versioned]) -> list[dict[str, Any]]:
    """`status` of each application, the plans listed once for all of them."""
    plans = store.list("plans")
    return [status(store, k, v.value, plans) for k, v in sorted(apps.items())]


def status(store: StateStore, app_id: str, app: dict[str, Any],
           plans: dict[str, Versioned] | None = None) -> dict[str, Any]:
    """The application's state: queued, planned, deploying, deployed or failed, and why.

    - queued: recorded, no placement plan yet;
    - planned: a placement plan is queued or scheduled;
    - deploying: applied to a cluster, not running everywhere yet;
    - deployed: running on its clusters, or written for the local target (no cluster configured);
    - failed: the newest placement plan failed (its reason says why).
    """
    record = store.get("deployments", app_id)
    deployment = record.value if record else None
    placing = [p for p in placement_plans(store, app_id, app.get("submitted"), plans)
               if any(m in PLACEMENT_MECHANISMS for m in p.get("mechanisms") or {})]
    newest = placing[0] if placing else None
    out: dict[str, Any] = {"app_id": app_id, "kind": app.get("kind", "application"),
                           "submitted": app.get("submitted"), "message": None}
    if newest is not None and newest.get("status") == "Failed" and \
            (deployment is None or (newest.get("updated") or 0) >= (deployment.get("at") or 0)):
        out.update(status="failed", message=newest.get("reason"))
    elif newest is not None and newest.get("status") in ("Queued", "Scheduled", "Pending") and \
            (deployment is None or newest.get("plan_id") != deployment.get("plan_id")):
        out.update(status="planned", message=f"plan {newest.get('plan_id')} from policy {newest.get('policy')} is "
                                             f"{newest.get('status')}")
    elif deployment is None:
        out.update(status="queued", message="waiting for a placement plan")
    elif deployment.get("status") == "Written":
        out.update(status="deployed", message=deployment.get("message"))
    elif deployment.get("status") == "Applied" and deployment.get("deployed"):
        out.update(status="deployed", message=deployment.get("message") or "applied on every planned cluster")
    else:
        out.update(status="deploying", message=deployment.get("message") or f"{deployment.get('status')}")
    if deployment is not None:
        out["deployment"] = {k: deployment.get(k) for k in ("status", "target", "clusters", "placement", "nodes",
                                                           "plan_id", "deployed", "at")}
    return out


def details(store: StateStore, app_id: str, app: dict[str, Any]) -> dict[str, Any]:
    """The status, the description, each component's placement and objects, and the newest plans."""
    state = status(store, app_id, app)
    deployment = state.get("deployment") or {}
    record = store.get("deployments", app_id)
    objects = (record.value.get("objects") or []) if record else []
    out_components = []
    for component in components(app.get("description") or {}):
        name = str(component["metadata"].get("name"))
        own = {dns_name(app_id, name), dns_name(name)}  # the workload and the component's Service
        mine = [o for o in objects if (n := str((o.get("metadata") or {}).get("name", ""))) in own
                or n.startswith(dns_name(app_id, name) + "-")]
        out_components.append({
            "name": name,
            "clusters": (deployment.get("placement") or {}).get(name, []),
            "node": (deployment.get("nodes") or {}).get(name),
            "objects": [f"{o.get('kind')}/{(o.get('metadata') or {}).get('name')}" for o in mine],
        })
    plans = [{k: p.get(k) for k in ("plan_id", "policy", "status", "reason", "mechanisms", "created", "updated")}
             for p in placement_plans(store, app_id, app.get("submitted"))[:20]]
    return {**state, "state": state["status"], "description": app.get("description"), "components": out_components,
            "plans": plans}


def performance(store: StateStore, app_id: str, app: dict[str, Any], now: float | None = None) -> dict[str, Any]:
    """The application's telemetry: each declared QoS metric against its target, and every other metric reported
    for the application (asset APP) or one of its components (asset APP/COMPONENT), over the retention window."""
    now = time.time() if now is None else now
    targets: dict[tuple[str | None, str], dict[str, Any]] = {}
    names: list[str | None] = [None]
    for component in components(app.get("description") or {}):
        name = str(component["metadata"].get("name"))
        names.append(name)
        for qos in component.get("qos_metrics") or []:
            if isinstance(qos, dict) and qos.get("application_metric_id"):
                targets[(name, str(qos["application_metric_id"]))] = qos
    metrics = []
    for name in names:
        window = store.telemetry(app_id if name is None else f"{app_id}/{name}")
        # A component's declared metric reported at application level counts for the component.
        wanted = {m for (c, m) in targets if c == name} | set(window)
        for metric in sorted(wanted):
            samples = window.get(metric) or (store.telemetry(app_id, [metric]).get(metric) if name else None) or []
            if name is None and any(m == metric for (_c, m) in targets):
                continue  # shown with its component
            qos = targets.get((name, metric)) if name else None
            values = [v for _t, v in samples]
            row: dict[str, Any] = {"metric": metric, "component": name, "samples": len(values),
                                   "latest": values[-1] if values else None,
                                   "at": samples[-1][0] if samples else None,
                                   "age_s": round(now - samples[-1][0], 3) if samples else None,
                                   "mean": statistics.fmean(values) if values else None,
                                   "min": min(values) if values else None, "max": max(values) if values else None}
            if qos is not None:
                relation = str(qos.get("relation", "lower_or_equal"))
                check = RELATIONS.get(relation)
                target = qos.get("target")
                usable = isinstance(target, int | float) and not isinstance(target, bool) and math.isfinite(target)
                row.update(target=target, relation=relation,
                           met=bool(check(values[-1], float(target))) if values and check and usable else None)
            metrics.append(row)
    verdicts = [m["met"] for m in metrics if m.get("met") is not None]
    return {"app_id": app_id, "metrics": metrics, "qos_met": all(verdicts) if verdicts else None}
