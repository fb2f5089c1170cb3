"""The analyze stage: a state change in, one analyze request out to each policy bound to the changed asset.

Binding: an application-scope policy runs for the application that changed; a global policy runs for the
node that changed, and for every registered node when an application, a cluster or the continuum changed
(a global policy that plans node mechanisms runs once per node).

A policy is asked when a metric it declared (any, when it declared none) or knowledge about the asset changed;
not when a mechanism's state changed (the result of the loop's own command: it is in the next inputs).
`analyze_interval` is a minimum spacing per (policy, asset), not a polling period: a change inside the
interval is not dropped but coalesced, and one analysis runs when the interval ends, on the state as it is
then. One (policy, asset) has one analysis in flight at a time (so a policy's context and plans follow one
another): a change that comes meanwhile is analyzed once more when the answer is in.

Management mode: in heuristic mode, policies that declared machine learning are skipped; under manual
override no policy is asked; either way the policy's registry entry says so.

The request carries every input the policy may name (gathered here from the state store), so the policy
function is pure. Several requests: the first is the reply, the others go to the sink.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import mapemesh
from mapemesh import events as catalogue
from mapemesh import tracing
from mapemesh.eventing.cloudevent import CloudEvent
from mapemesh.policy import registry
from mapemesh.policy.inputs import gather
from mapemesh.policy.loader import Declaration
from mapemesh.serving import sink
from mapemesh.state import StateStore, update

log = logging.getLogger(__name__)
SOURCE = "/mapemesh/analyze"
KNOWLEDGE = ("description", "removed", "deployment", "mode", "policy")
"""`changed` keys that are knowledge rather than telemetry metrics (plus `mechanism:NAME`)."""
WINDOW_SAMPLES = 60
"""Samples per metric sent in a request's telemetry window (the latest ones)."""
STALE_DEFERRAL_S = 5.0
"""A deferred analysis whose process vanished is taken over after its due time plus this."""
IN_FLIGHT_STALE_S = 60.0
"""An analysis whose answer never came (its policy function kept failing) stops holding others after this."""
CACHE_S = 0.5
"""How long a process reuses the policy registry it read (a newly registered policy is asked within this
long; `mapemesh policy deploy` returns later than that); every telemetry event reaches this stage."""
_cache: dict[str, tuple[float, Any]] = {}


def _cached(key: str, read: Any) -> Any:
    now = time.monotonic()
    hit = _cache.get(key)
    if hit is None or now - hit[0] > CACHE_S:
        hit = _cache[key] = (now, read())
    return hit[1]


def mode_of(store: StateStore) -> tuple[str, bool]:
    """(management mode, manual override) as the state store has them; heuristic and off by default."""
    doc = store.get("settings", "mode")
    value = doc.value if doc else {}
    return str(value.get("mode") or "heuristic"), bool(value.get("manual_override"))


def bound_assets(store: StateStore, declaration: Declaration, change: catalogue.StateChanged) -> list[str]:
    """The assets a policy runs for after `change`.

    Application scope: the application that changed; every application when knowledge about a node, a
    cluster or the continuum changed (a node registered or gone changes where components fit). Global scope:
    the node that changed (not one that is gone); every registered node when an application, a cluster or
    the continuum changed.
    """
    knowledge = any(key in KNOWLEDGE for key in change.changed)
    if declaration.scope == "application":
        if change.asset_kind == "application":
            return [change.asset] if store.get("applications", change.asset) is not None else []
        if change.asset_kind in ("node", "cluster", "continuum") and knowledge:
            return sorted(store.list("applications"))
        return []
    if change.asset_kind == "node":
        return [] if "removed" in change.changed else [change.asset]
    if change.asset_kind in ("application", "cluster", "continuum"):
        return sorted(k for k, v in store.list("infrastructure").items() if v.value.get("kind") == "node")
    return []


def relevant(declaration: Declaration, changed: list[str]) -> bool:
    """Does the change concern the policy: a declared metric (any metric when none is declared) or knowledge?

    A mechanism's new state (`mechanism:NAME`, the result of a command) is not a reason to ask: it is mostly
    the loop's own doing, and asking would spend the policy's analyze_interval on it. The policy sees the
    state in its inputs the next time it is asked.
    """
    for key in changed:
        if key in KNOWLEDGE:
            return True
        if key.startswith("mechanism:"):
            continue
        if not declaration.metrics or key in declaration.metrics:
            return True
    return False


def _context_key(policy: str, asset: str) -> str:
    return f"{policy}/{asset}"


def claim(store: StateStore, policy: str, asset: str, interval_s: float, now: float | None = None, *,
          rerun: dict[str, Any] | None = None) -> float | None:
    """May (policy, asset) be analyzed now?

    0: yes, and the analysis is recorded as in flight until the plan stage sees its answer; seconds: not
    before then (the caller waits, then claims again); None: the change is coalesced, into an analysis that
    is due already, or into one in flight, which then runs once more when it has answered (with `rerun`,
    the first change that came meanwhile: any of them makes the policy worth asking again, and the new
    analysis reads the state as it is then). So one (policy, asset) has one analysis at a time, on the
    latest state, and no change is lost.
    """
    now = time.time() if now is None else now
    current = store.get("policy_contexts", _context_key(policy, asset))
    if current is not None:  # the common case under a stream of telemetry: coalesced, nothing to write
        doc = current.value
        since, due = doc.get("in_flight_since"), doc.get("deferred_until")
        if since is not None and now - float(since) < IN_FLIGHT_STALE_S and doc.get("rerun"):
            return None
        if since is None and due is not None and now - float(doc.get("last_analyzed") or 0.0) < interval_s \
                and now <= float(due) + STALE_DEFERRAL_S:
            return None
    verdict: list[float | None] = [None]

    def change(doc: dict[str, Any] | None) -> dict[str, Any] | None:
        doc = dict(doc or {})
        last = float(doc.get("last_analyzed") or 0.0)
        since, due = doc.get("in_flight_since"), doc.get("deferred_until")
        if since is not None and now - float(since) < IN_FLIGHT_STALE_S:
            verdict[0] = None
            doc["rerun"] = doc.get("rerun") or _rerun(rerun)
            return doc
        if now - last >= interval_s:
            verdict[0] = 0.0
            doc.update(last_analyzed=now, in_flight_since=now)
            doc.pop("deferred_until", None)
            doc.pop("rerun", None)
            return doc
        if due is not None and now <= float(due) + STALE_DEFERRAL_S:
            verdict[0] = None  # someone waits for the interval's end already; it will see this change too
            return doc
        verdict[0] = last + interval_s - now
        doc["deferred_until"] = last + interval_s
        return doc

    update(store, "policy_contexts", _context_key(policy, asset), change)
    return verdict[0]


def _rerun(change: dict[str, Any] | None) -> dict[str, Any]:
    change = change or {}
    return {"asset_kind": change.get("asset_kind") or "node", "changed": list(change.get("changed") or ["description"]),
            "cause": change.get("cause"), "traceparent": change.get("traceparent")}


def release(store: StateStore, policy: str, asset: str) -> CloudEvent | None:
    """The analysis of (policy, asset) has answered: clear it; the change to analyze again, if one came meanwhile.

    The change comes back as a `state.changed` event for this policy only (extension `policy`).
    """
    rerun: list[dict[str, Any] | None] = [None]

    def change(doc: dict[str, Any] | None) -> dict[str, Any] | None:
        if doc is None:
            return None
        doc = dict(doc)
        doc.pop("in_flight_since", None)
        rerun[0] = doc.pop("rerun", None)
        return doc

    update(store, "policy_contexts", _context_key(policy, asset), change)
    if not rerun[0]:
        return None
    data = catalogue.StateChanged(asset=asset, asset_kind=rerun[0]["asset_kind"], changed=rerun[0]["changed"],
                                  cause=rerun[0].get("cause"))
    event = catalogue.make_event(data, SOURCE, subject=asset, extensions={"policy": policy})
    if rerun[0].get("traceparent"):  # the rerun is the coalesced change's effect, in its trace
        event.attributes[tracing.ATTRIBUTE] = rerun[0]["traceparent"]
    return event


def trim(telemetry: dict[str, Any]) -> dict[str, Any]:
    """The request's telemetry with each metric's window cut to its latest samples."""
    window = telemetry.get("window") or {}
    return {**telemetry, "window": {m: samples[-WINDOW_SAMPLES:] for m, samples in window.items()}}


def current_plan(store: StateStore, saved: dict[str, Any]) -> dict[str, Any] | None:
    """The policy's last plan for the asset (mechanism -> command) unless it was discarded or failed."""
    last = saved.get("current_plan")
    if not isinstance(last, dict):
        return None
    doc = store.get("plans", str(last.get("plan_id")))
    if doc is not None and doc.value.get("status") in ("Discarded", "Failed"):
        return None
    return dict(last.get("mechanisms") or {})


def request_for(store: StateStore, policy: str, declaration: Declaration, asset: str, mode: str,
                cause: str | None) -> CloudEvent:
    """The analyze request for one (policy, asset), with its inputs gathered now."""
    doc = store.get("policy_contexts", _context_key(policy, asset))
    saved = doc.value if doc else {}
    context = saved.get("context")
    if context is None or saved.get("declared") != declaration.context:
        context = dict(declaration.context)  # first time, or the policy was redeployed with a new initialize
    inputs = gather(store, declaration, asset, context=context, current_plan=current_plan(store, saved))
    data = catalogue.PolicyAnalyzeRequested(
        policy=policy, asset=asset, context=context, application_description=inputs["application_description"],
        system_description=inputs["system_description"], current_plan=inputs["current_plan"],
        mechanisms=inputs["mechanisms"], telemetry=trim(inputs["telemetry"]), mode=mode,  # type: ignore[arg-type]
        cause=cause, available_assets=inputs["available_assets"])
    return catalogue.make_event(data, SOURCE, subject=asset, extensions={"policy": policy})


_deferred: set[asyncio.Task[None]] = set()


async def _later(store: StateStore, policy: str, declaration: Declaration, asset: str, mode: str,
                 rerun: dict[str, Any], cause: str | None, wait: float) -> None:
    """Claim again once the interval is over (as often as needed), then send the request to the sink."""
    try:
        while wait and wait > 0:
            await asyncio.sleep(wait)
            wait = claim(store, policy, asset, declaration.analyze_interval_s, rerun=rerun)  # type: ignore[assignment]
        if wait == 0:
            await sink.publish([request_for(store, policy, declaration, asset, mode, cause)])
    except Exception:  # the deferral lapses; the next change after STALE_DEFERRAL_S claims anew
        log.exception("deferred analysis of %s for %s failed", asset, policy)


def _one(store: StateStore, policy: str, declaration: Declaration, asset: str, mode: str,
         change: catalogue.StateChanged, cause: str | None) -> CloudEvent | None:
    """The request to send now; None when there is none (coalesced, or deferred to a background task)."""
    hop = tracing.current.get()
    rerun = {"asset_kind": change.asset_kind if change.asset == asset else "node", "changed": change.changed,
             "cause": cause, "traceparent": hop.traceparent if hop is not None else None}
    wait = claim(store, policy, asset, declaration.analyze_interval_s, rerun=rerun)
    if wait is None:
        return None
    if wait > 0:
        # The request is answered now; the analysis runs when the interval ends, from the function's process
        # (which outlives the request: the local host's processes and functions-framework's event loop do).
        task = asyncio.get_running_loop().create_task(
            _later(store, policy, declaration, asset, mode, rerun, cause, wait))
        _deferred.add(task)
        task.add_done_callback(_deferred.discard)
        return None
    return request_for(store, policy, declaration, asset, mode, cause)


@mapemesh.on(catalogue.StateChanged)
def changed(change: catalogue.StateChanged, *, event: CloudEvent, store: StateStore) -> list[CloudEvent]:
    """Ask every policy bound to the changed asset for a verdict."""
    mode, manual = mode_of(store)  # read each time: a mode change must hold for the very next event
    requests: list[CloudEvent | None] = []
    only = event.get("policy")  # a rerun for one policy (see release), or a policy just registered
    # A policy just registered may be newer than the cached registry: read it afresh for a rerun.
    policies = registry.active(store) if only is not None else _cached("policies", lambda: registry.active(store))
    for name, (declaration, _doc) in sorted(policies.items()):
        if only is not None and name != only:
            continue
        if not relevant(declaration, change.changed):
            continue
        assets = bound_assets(store, declaration, change)
        if not assets:
            continue
        if manual:
            registry.record(store, name, asset=change.asset, method="analyze", skipped="manual override")
            continue
        if declaration.machine_learning and mode == "heuristic":
            registry.record(store, name, asset=change.asset, method="analyze",
                            skipped="heuristic mode (the policy uses machine learning)")
            continue
        requests += [_one(store, name, declaration, asset, mode, change, change.cause or event.id)
                     for asset in assets]
    return [r for r in requests if r is not None]


analyze = mapemesh.stage(__name__, source=SOURCE)
"""Several requests: the first is the reply, the others go to the sink."""
