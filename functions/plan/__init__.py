"""The plan stage: a policy's verdict in, a plan request out; a policy's plan in, a Queued plan out.

- `policy.analyze.replied`: the policy's new context is saved and its verdict counted (a failure is recorded
  with its traceback, and goes no further). A true verdict normally carries the policy's plan already (the
  policy function plans at once, as MLSysOps does); one without a plan becomes a `policy.plan.requested` to
  the same policy, with the inputs gathered afresh.
- `policy.plan.replied` (or the plan in a verdict): the context is saved; a non-empty plan that names only
  mechanisms the policy declared is stored (status Queued, with the policy, the cause and the telemetry it
  saw: why it exists) and goes to the scheduler as `plan.proposed`. A malformed plan is recorded as the
  policy's failure.

Either way the analysis of (policy, asset) is then over; a change that arrived while it was in flight is
analyzed once more now (a `state.changed` for this policy only, see `analyze.release`).
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import mapemesh
from mapemesh import events as catalogue
from mapemesh.eventing.cloudevent import CloudEvent
from mapemesh.functions.analyze import current_plan, mode_of, release, trim
from mapemesh.policy import registry
from mapemesh.policy.inputs import gather
from mapemesh.policy.loader import Declaration
from mapemesh.state import Conflict, StateStore, update

SOURCE = "/mapemesh/plan"
PLAN_IDS = uuid.UUID("5b0f6f55-3d55-4a4e-9d0e-6d61706c616e")
"""Namespace of plan ids (uuid5 of the reply event's id)."""


def _contexts(store: StateStore, policy: str, asset: str, **fields: Any) -> dict[str, Any]:
    """Merge `fields` into the (policy, asset) document; return it."""
    result = update(store, "policy_contexts", f"{policy}/{asset}", lambda doc: {**(doc or {}), **fields})
    assert result is not None
    return result.value


def _declaration(store: StateStore, policy: str) -> Declaration | None:
    doc = store.get("policies", policy)
    if doc is None or doc.value.get("status") != "active":
        return None
    return Declaration.from_dict(doc.value.get("declaration") or {})


def on_verdict(store: StateStore, reply: catalogue.PolicyAnalyzeReplied, event_id: str) -> CloudEvent | None:
    """Record a verdict; a true one with its plan is proposed, one without asks the policy for its plan."""
    if reply.error is not None:
        registry.record(store, reply.policy, asset=reply.asset, method="analyze", error=reply.error,
                        traceback=reply.traceback)
        return None
    registry.record(store, reply.policy, asset=reply.asset, method="analyze", verdict=reply.verdict)
    if reply.plan is not None:
        return on_plan(store, catalogue.PolicyPlanReplied(
            policy=reply.policy, asset=reply.asset, request=reply.request, plan=reply.plan, context=reply.context,
            cause=reply.cause, inputs=reply.inputs), event_id)
    declaration = _declaration(store, reply.policy)
    if declaration is None:
        return None
    saved = _contexts(store, reply.policy, reply.asset, context=reply.context, declared=declaration.context)
    if not reply.verdict:
        return None
    mode, manual = mode_of(store)
    if manual:
        registry.record(store, reply.policy, asset=reply.asset, method="plan", skipped="manual override")
        return None
    inputs = gather(store, declaration, reply.asset, context=reply.context, current_plan=current_plan(store, saved))
    data = catalogue.PolicyPlanRequested(
        policy=reply.policy, asset=reply.asset, context=reply.context,
        application_description=inputs["application_description"], system_description=inputs["system_description"],
        current_plan=inputs["current_plan"], mechanisms=inputs["mechanisms"], telemetry=trim(inputs["telemetry"]),
        mode=mode, cause=reply.cause, available_assets=inputs["available_assets"])  # type: ignore[arg-type]
    return catalogue.make_event(data, SOURCE, subject=reply.asset, extensions={"policy": reply.policy})


def _malformed(plan: dict[str, Any], declaration: Declaration) -> str | None:
    undeclared = sorted(set(plan) - set(declaration.mechanisms))
    if undeclared:
        return (f"plan: names mechanism(s) {', '.join(undeclared)} that initialize did not declare "
                f"(declared: {', '.join(declaration.mechanisms) or 'none'})")
    bad = sorted(m for m, command in plan.items() if not isinstance(command, dict))
    if bad:
        return f"plan: the command for {', '.join(bad)} must be a dict"
    return None


def on_plan(store: StateStore, reply: catalogue.PolicyPlanReplied, event_id: str) -> CloudEvent | None:
    """Record a plan as Queued in its cycle and propose it to the scheduler.

    The plan's id comes from the reply event's id, so a redelivered reply proposes the same plan again
    instead of making a second one.
    """
    if reply.error is not None:
        registry.record(store, reply.policy, asset=reply.asset, method="plan", error=reply.error,
                        traceback=reply.traceback)
        return None
    declaration = _declaration(store, reply.policy)
    if declaration is None:
        return None
    _contexts(store, reply.policy, reply.asset, context=reply.context, declared=declaration.context)
    if not reply.plan:
        return None
    problem = _malformed(reply.plan, declaration)
    if problem is not None:
        registry.record(store, reply.policy, asset=reply.asset, method="plan", error=problem)
        return None
    if mode_of(store)[1]:
        registry.record(store, reply.policy, asset=reply.asset, method="plan", skipped="manual override")
        return None
    now = time.time()
    plan_id = str(uuid.uuid5(PLAN_IDS, event_id))
    cause = reply.cause or plan_id
    try:
        store.put("plans", plan_id, {
            "plan_id": plan_id, "policy": reply.policy, "asset": reply.asset, "mechanisms": reply.plan,
            "core": declaration.core, "created": now, "updated": now, "status": "Queued", "cycle": None,
            "winner": None, "reason": None,
            "inputs": {"cause": cause, "request": reply.request, "telemetry": reply.inputs.get("telemetry")},
        }, expected_version=0)
    except Conflict:
        pass  # the same reply again: the plan exists; propose it again (the scheduler decides it once)
    else:
        update(store, "cycles", cause, lambda doc: {**(doc or {"taken": {}, "created": now}),
                                                    "queued": [*((doc or {}).get("queued") or []), plan_id]})
        _contexts(store, reply.policy, reply.asset, current_plan={"plan_id": plan_id, "mechanisms": reply.plan})
        registry.record(store, reply.policy, asset=reply.asset, method="plan", planned=True)
    data = catalogue.PlanProposed(plan_id=plan_id, policy=reply.policy, asset=reply.asset, mechanisms=reply.plan,
                                  core=declaration.core, cause=cause)
    return catalogue.make_event(data, SOURCE, subject=reply.asset)


def _over(store: StateStore, reply: catalogue.PolicyAnalyzeReplied | catalogue.PolicyPlanReplied,
          out: CloudEvent | None) -> list[CloudEvent]:
    """`out`, and the rerun of the analysis a change asked for meanwhile, once the analysis is over."""
    events = [out] if out is not None else []
    rerun = release(store, reply.policy, reply.asset)
    return [*events, rerun] if rerun is not None else events


@mapemesh.on(catalogue.PolicyAnalyzeReplied)
def verdict(reply: catalogue.PolicyAnalyzeReplied, *, event: CloudEvent, store: StateStore) -> list[CloudEvent]:
    """A verdict: a plan request, a proposal (a true verdict with its plan), or nothing."""
    out = on_verdict(store, reply, event.id)
    if out is not None and out.type == catalogue.PolicyPlanRequested.event_type:
        return [out]  # the analysis goes on: the policy's plan is still to come
    return _over(store, reply, out)


@mapemesh.on(catalogue.PolicyPlanReplied)
def planned(reply: catalogue.PolicyPlanReplied, *, event: CloudEvent, store: StateStore) -> list[CloudEvent]:
    """A plan: a proposal to the scheduler."""
    return _over(store, reply, on_plan(store, reply, event.id))


plan = mapemesh.stage(__name__, source=SOURCE)
"""Take policy replies: verdicts become plan requests, plans become proposals."""
