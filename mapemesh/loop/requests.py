"""The requests the loop sends a policy: one builder for analyze and plan requests, with their inputs gathered.

| call                                          | gives                                                      |
|-----------------------------------------------|------------------------------------------------------------|
| `analyze_request(store, policy, decl, asset,  | `policy.analyze.requested` for (policy, asset): the saved  |
| mode, cause, source)`                         | context (or the declared one, for a new or redeployed      |
|                                               | policy) and every input the policy may name                |
| `plan_request(store, reply, decl, mode,       | `policy.plan.requested` after a true verdict that came     |
| saved, source)`                               | without its plan, with the inputs gathered afresh          |

Inputs are gathered by `mapemesh.policy.inputs.gather`; each telemetry window is its latest WINDOW_SAMPLES
samples (only those are read: a node's hour of samples costs no more than its last minute). Both carry the
extension `policy`, which the policy's Trigger filters on.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from mapemesh import events as catalogue
from mapemesh.eventing.cloudevent import CloudEvent
from mapemesh.loop import contexts
from mapemesh.policy.inputs import gather
from mapemesh.policy.loader import Declaration
from mapemesh.state import StateStore

WINDOW_SAMPLES = 60
"""Samples per metric sent in a request's telemetry window (the latest ones)."""


def trim(telemetry: dict[str, Any]) -> dict[str, Any]:
    """The request's telemetry with each metric's window cut to its latest samples."""
    window = telemetry.get("window") or {}
    return {**telemetry, "window": {m: samples[-WINDOW_SAMPLES:] for m, samples in window.items()}}


def _last_plan(saved: dict[str, Any]) -> dict[str, Any] | None:
    last = saved.get("current_plan")
    return last if isinstance(last, dict) else None


def analyze_request(store: StateStore, policy: str, declaration: Declaration, asset: str, mode: str,
                    cause: str | None, source: str, *, saved: dict[str, Any] | None = None,
                    listed: Callable[[str], dict[str, Any]] | None = None) -> CloudEvent:
    """The analyze request for one (policy, asset), with its inputs gathered now (`saved`: its context document
    as `claim` wrote it, else read here; `listed`: see `gather`)."""
    if saved is None:
        doc = store.get("policy_contexts", contexts.key(policy, asset))
        saved = doc.value if doc else {}
    context = saved.get("context")
    if context is None or saved.get("declared") != declaration.context:
        context = dict(declaration.context)  # first time, or the policy was redeployed with a new initialize
    inputs = gather(store, declaration, asset, context=context, last_plan=_last_plan(saved), listed=listed,
                    samples=WINDOW_SAMPLES)
    data = catalogue.PolicyAnalyzeRequested(
        policy=policy, asset=asset, context=context, application_description=inputs["application_description"],
        system_description=inputs["system_description"], current_plan=inputs["current_plan"],
        mechanisms=inputs["mechanisms"], telemetry=trim(inputs["telemetry"]), mode=mode,  # type: ignore[arg-type]
        cause=cause, available_assets=inputs["available_assets"])
    return catalogue.make_event(data, source, subject=asset, extensions={"policy": policy})


def plan_request(store: StateStore, reply: catalogue.PolicyAnalyzeReplied, declaration: Declaration, mode: str,
                 saved: dict[str, Any], source: str) -> CloudEvent:
    """The plan request after a true verdict without a plan, its inputs gathered afresh."""
    inputs = gather(store, declaration, reply.asset, context=reply.context, last_plan=_last_plan(saved),
                    samples=WINDOW_SAMPLES)
    data = catalogue.PolicyPlanRequested(
        policy=reply.policy, asset=reply.asset, context=reply.context,
        application_description=inputs["application_description"], system_description=inputs["system_description"],
        current_plan=inputs["current_plan"], mechanisms=inputs["mechanisms"], telemetry=trim(inputs["telemetry"]),
        mode=mode, cause=reply.cause, available_assets=inputs["available_assets"])  # type: ignore[arg-type]
    return catalogue.make_event(data, source, subject=reply.asset, extensions={"policy": reply.policy})
