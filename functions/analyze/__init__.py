"""The analyze stage: a state change in, one analyze request out to each policy bound to the changed asset.

Binding: an application-scope policy runs for the application that changed; a global policy runs for the
node that changed, and for every registered node when an application, a cluster or the continuum changed
(a global policy that plans node mechanisms runs once per node).

A policy is asked when a metric it declared (any, when it declared none) or knowledge about the asset changed;
not when a mechanism's state changed (the result of the loop's own command: it is in the next inputs).
`analyze_interval` is a minimum spacing per (policy, asset), not a polling period: a change inside the
interval is not dropped but coalesced, and one analysis runs when the interval ends, on the state as it is
then. The process that deferred it holds it on a timer; when the process is stopped first (scaled to zero) it
hands it to the broker on its way out, as an event (`mapemesh.loop.contexts`: a `state.changed` for that policy
with the extension `deferred`, answered 503 + Retry-After until it is due): a Service scaled to zero loses none.
One (policy, asset) has one analysis in flight at a time (so a policy's context and plans follow one another):
a change that comes meanwhile is analyzed once more when the answer is in.

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
from mapemesh.loop import contexts, requests
from mapemesh.loop.contexts import claim, mode_of
from mapemesh.loop.requests import WINDOW_SAMPLES, trim
from mapemesh.policy import registry
from mapemesh.policy.inputs import matches
from mapemesh.policy.loader import Declaration
from mapemesh.serving import sink
from mapemesh.serving.errors import TemporaryError
from mapemesh.state import StateStore, Versioned

log = logging.getLogger(__name__)
SOURCE = "/mapemesh/analyze"
KNOWLEDGE = ("description", "removed", "deployment", "mode", "policy", "trust")
"""`changed` keys that are knowledge rather than telemetry metrics (plus `mechanism:NAME`)."""
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


def bound_assets(store: StateStore, declaration: Declaration, change: catalogue.StateChanged) -> list[str]:
    """The assets a policy runs for after `change`.

    Application scope: the application that changed; every application when knowledge about a node, a
    cluster or the continuum changed (a node registered or gone, or its trust credit, changes where components
    fit). Global scope: the node that changed (not one that is gone, and not for a credit alone: it is not in
    their inputs); every registered node when an application, a cluster or the continuum changed.
    """
    knowledge = any(key in KNOWLEDGE for key in change.changed)
    if change.changed == ["trust"] and declaration.scope != "application":
        return []  # a credit is in application-scope policies' inputs only (`system_description["trust"]`)
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


def _offers(store: StateStore, asset: str, declaration: Declaration) -> bool:
    """Whether a node may be asked about: it offers one of the mechanisms the policy plans, or it does not say
    which it offers (a node registered by hand). A far-edge device without CPU frequency control is not asked
    about CPU frequency. Read from the registered infrastructure (a moment old at most)."""
    if declaration.scope == "application" or not declaration.mechanisms:
        return True
    doc = _cached("infrastructure", lambda: store.list("infrastructure")).get(asset)
    node = ((doc.value.get("description") or {}).get("MLSysOpsNode") or {}) if doc is not None else {}
    offered = node.get("mechanisms")
    return offered is None or bool(set(offered) & set(declaration.mechanisms))


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
        if not declaration.metrics or matches(key, declaration.metrics):
            return True
    return False


def _one(store: StateStore, policy: str, declaration: Declaration, asset: str, mode: str,
         change: catalogue.StateChanged, cause: str | None, deferred: bool,
         context: Versioned | None) -> CloudEvent | None:
    """The request to send now; a deferral event when it is not due yet; None when coalesced (`context`: the
    (policy, asset) document as just read)."""
    hop = tracing.current.get()
    rerun = {"asset_kind": change.asset_kind if change.asset == asset else "node", "changed": change.changed,
             "cause": cause, "traceparent": hop.traceparent if hop is not None else None}
    saved: dict[str, Any] = {}
    wait = contexts.claim(store, policy, asset, declaration.analyze_interval_s, rerun=rerun, deferred=deferred,
                          into=saved, read=[context])
    if wait is None:
        return None
    if wait > 0:
        if deferred:  # a deferral the broker holds (see _hand_over): it brings it back when the analysis is due
            raise TemporaryError(f"the analysis of {asset} for {policy} is due in {wait:.3f} s", delay=wait)
        task = asyncio.get_running_loop().create_task(_later(store, policy, declaration, asset, mode, cause, wait))
        _held[(policy, asset)] = (rerun, task)
        task.add_done_callback(lambda _t, k=(policy, asset): _held.pop(k, None))
        return None
    # Telemetry changes no knowledge: the lists of applications and infrastructure may be a moment old then.
    knowledge = any(key in KNOWLEDGE for key in change.changed)
    listed = None if knowledge else (lambda kind: _cached(kind, lambda: store.list(kind)))
    return requests.analyze_request(store, policy, declaration, asset, mode, cause, SOURCE, saved=saved,
                                    listed=listed)


_held: dict[tuple[str, str], tuple[dict[str, Any], asyncio.Task[None]]] = {}
"""The deferred analyses this process waits for: (policy, asset) -> (the change, its timer)."""


async def _later(store: StateStore, policy: str, declaration: Declaration, asset: str, mode: str,
                 cause: str | None, wait: float) -> None:
    """The deferral's holder: once due, claim the analysis (as the deferral) and send its request to the sink."""
    try:
        while wait is not None and wait > 0:
            await asyncio.sleep(wait)
            wait = contexts.claim(store, policy, asset, declaration.analyze_interval_s, deferred=True)
        if wait == 0:
            await sink.publish([requests.analyze_request(store, policy, declaration, asset, mode, cause, SOURCE)])
    except asyncio.CancelledError:
        raise
    except Exception:  # the deferral lapses: the next change after STALE_DEFERRAL_S claims anew
        log.exception("deferred analysis of %s for %s failed", asset, policy)


async def _hand_over() -> None:
    """The process is stopping (scaled to zero): hand each analysis it holds to the broker, as a deferral event
    (`state.changed` for that policy, extension `deferred`), which this stage answers 503 + Retry-After until it
    is due. So a deferred analysis outlives the process that deferred it."""
    held = list(_held.items())
    for _, (_, task) in held:
        task.cancel()
    events = [contexts.again(policy, asset, rerun, SOURCE, deferred=True) for (policy, asset), (rerun, _) in held]
    if events:
        await sink.publish(events)
        log.info("analyze: %d deferred analyses handed to the broker on the way out", len(events))


def release(store: StateStore, policy: str, asset: str) -> CloudEvent | None:
    """`mapemesh.loop.contexts.release` with this stage's source (the rerun is a request to this stage)."""
    return contexts.release(store, policy, asset, SOURCE)


@mapemesh.on(catalogue.StateChanged)
def changed(change: catalogue.StateChanged, *, event: CloudEvent, store: StateStore) -> list[CloudEvent]:
    """Ask every policy bound to the changed asset for a verdict."""
    only = event.get("policy")  # a rerun or deferral for one policy (see contexts), or a policy just registered
    deferred = only is not None and event.get(contexts.DEFERRED) == "true"
    # A policy just registered may be newer than the cached registry: read it afresh for a rerun.
    policies = registry.active(store) if only is not None else _cached("policies", lambda: registry.active(store))
    bound: list[tuple[str, Declaration, list[str]]] = []
    for name, (declaration, _doc) in sorted(policies.items()):
        if only is not None and name != only:
            continue
        if not relevant(declaration, change.changed):
            continue
        assets = [a for a in bound_assets(store, declaration, change) if _offers(store, a, declaration)]
        if assets:
            bound.append((name, declaration, assets))
    if not bound:
        return []  # no policy is concerned: nothing read from the store
    # The mode (read each time: a mode change must hold for the very next event) and every context to claim, in
    # one round trip.
    pairs = [(name, asset) for name, _, assets in bound for asset in assets]
    found = store.get_many([contexts.MODE, *(contexts.context_ref(name, asset) for name, asset in pairs)])
    mode, manual = contexts.mode_in(found[0].value if found[0] is not None else None)
    read = dict(zip(pairs, found[1:], strict=True))
    out: list[CloudEvent | None] = []
    for name, declaration, assets in bound:
        if manual:
            registry.record(store, name, asset=change.asset, method="analyze", skipped="manual override")
            continue
        if declaration.machine_learning and mode == "heuristic":
            registry.record(store, name, asset=change.asset, method="analyze",
                            skipped="heuristic mode (the policy uses machine learning)")
            continue
        out += [_one(store, name, declaration, asset, mode, change, change.cause or event.id, deferred,
                     read[(name, asset)]) for asset in assets]
    return [r for r in out if r is not None]


analyze = mapemesh.stage(__name__, source=SOURCE, on_stop=_hand_over)
"""Several requests: the first is the reply, the others go to the sink."""

__all__ = ["WINDOW_SAMPLES", "analyze", "bound_assets", "claim", "mode_of", "release", "relevant", "trim"]
