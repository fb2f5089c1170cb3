"""What a policy is given: its inputs gathered from the state store for one asset."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from mapemesh.policy.loader import Declaration
from mapemesh.state.base import Ref, StateStore, Versioned


def matches(metric: str, declared: tuple[str, ...] | list[str]) -> bool:
    """Whether a policy that declared `declared` metrics takes `metric`: by name, or by a prefix ending in `*`
    (`storage_accesses:*` for per-bucket metrics)."""
    return metric in declared or any(d.endswith("*") and metric.startswith(d[:-1]) for d in declared)


def still_current(last: dict[str, Any], plan: dict[str, Any] | None) -> dict[str, Any] | None:
    """The policy's current plan (mechanism -> command) from the last plan its context saved (`{plan_id,
    mechanisms}`) and that plan's document as read: None when it was discarded or failed (a forgotten plan, None
    here, stays current)."""
    if plan is not None and plan.get("status") in ("Discarded", "Failed"):
        return None
    return dict(last.get("mechanisms") or {})


def gather(store: StateStore, declaration: Declaration, asset: str, *, context: dict[str, Any],
           current_plan: dict[str, Any] | None = None, ml_connector: Any = None,
           listed: Callable[[str], dict[str, Versioned]] | None = None,
           last_plan: dict[str, Any] | None = None, samples: int | None = None) -> dict[str, Any]:
    """Every input a policy method may name, for `asset` (a node for global policies, an app otherwise).

    - `telemetry["data"]`: the latest value of each declared metric (every metric when none is declared; a
      declared name ending in `*` is a prefix);
      `telemetry["window"]`: the samples in the retention time, metric -> [(time, value)] (the latest `samples`
      of each, when given: the others are not read);
    - `application_description`: the application's description (application scope) or the list of all
      applications' descriptions (global scope);
    - `system_description`: the asset's infrastructure description (empty when unregistered); for an
      application-scope policy, the continuum as registered: `{"nodes": {id: description},
      "clusters": {id: description}, "trust": {id: reputation credit}}` (the trust function's credits);
    - `mechanisms`: {name: {"state": ..., "options": ...}} for the declared mechanisms of the asset;
    - `available_assets`: the registered infrastructure ids.

    `listed(kind)` lists applications and infrastructure (default `store.list`; the analyze stage passes a
    short-lived cache for telemetry, which changes no knowledge). `last_plan`: the policy's last plan as its
    context saved it (`{plan_id, mechanisms}`), instead of `current_plan`: the plan's status is read with the
    other documents, and it is the current plan unless it was discarded or failed.

    The documents (the node's description, each mechanism's, the last plan's) and the telemetry window are read in
    one round trip (`snapshot`).
    """
    patterns = any(m.endswith("*") for m in declaration.metrics)
    wanted = None if patterns else (declaration.metrics or None)
    listed = listed or store.list
    refs: list[Ref] = [*([("infrastructure", asset)] if declaration.scope != "application" else []),
                       *(("mechanisms", f"{asset}/{name}") for name in declaration.mechanisms),
                       *([("plans", str(last_plan.get("plan_id")))] if last_plan is not None else [])]
    read, window = store.snapshot(refs, asset, wanted, samples)
    docs = dict(zip(refs, read, strict=True))
    if patterns:
        window = {m: samples for m, samples in window.items() if matches(m, declaration.metrics)}
    data = {m: samples[-1][1] for m, samples in window.items() if samples}  # the newest of each: one read
    apps = listed("applications")
    if declaration.scope == "application":
        app = apps.get(asset)
        application_description: Any = app.value.get("description", app.value) if app else {}
    else:
        application_description = [v.value.get("description", v.value) for v in apps.values()]
    if declaration.scope == "application":
        registered = listed("infrastructure")
        system_description: Any = {
            plural: {k: v.value.get("description", v.value) for k, v in registered.items()
                     if v.value.get("kind") == kind}
            for kind, plural in (("node", "nodes"), ("cluster", "clusters"))}
        system_description["trust"] = {k: v.value.get("credit") for k, v in listed("trust").items()}
    else:
        infra = docs[("infrastructure", asset)]
        system_description = infra.value.get("description", infra.value) if infra else {}
    mechanisms = {}
    for name in declaration.mechanisms:
        doc = docs[("mechanisms", f"{asset}/{name}")]
        mechanisms[name] = {"state": (doc.value.get("state") if doc else None) or {},
                            "options": (doc.value.get("options") if doc else None) or {}}
    if last_plan is not None:
        plan = docs[("plans", str(last_plan.get("plan_id")))]
        current_plan = still_current(last_plan, plan.value if plan is not None else None)
    return {
        "context": context,
        "application_description": application_description,
        "system_description": system_description,
        "current_plan": current_plan,
        "mechanisms": mechanisms,
        "telemetry": {"data": data, "window": window, "asset": asset},
        "ml_connector": ml_connector,
        "available_assets": sorted(listed("infrastructure")),
    }
