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
analyzed once more now (a `state.changed` for this policy only, see `mapemesh.loop.contexts.release`).
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import mapemesh
from mapemesh import events as catalogue
from mapemesh.eventing.cloudevent import CloudEvent
from mapemesh.loop import contexts, plan_store, requests
from mapemesh.loop.plans import Plan
from mapemesh.policy import registry
from mapemesh.policy.loader import Declaration
from mapemesh.state import StateStore

SOURCE = "/mapemesh/plan"
ANALYZE = "/mapemesh/analyze"
"""The source of a rerun: a request to the analyze stage, as if it had sent it."""
PLAN_IDS = uuid.UUID("5b0f6f55-3d55-4a4e-9d0e-6d61706c616e")
"""Namespace of plan ids (uuid5 of the reply event's id)."""


CACHE_S = 0.5
"""How long a process reuses the policy registry it read (as the analyze stage does)."""
_cache: dict[str, tuple[float, dict[str, Any]]] = {}


def _declaration(store: StateStore, policy: str) -> Declaration | None:
    """The policy's declaration from the registry (a moment old at most; read afresh for a policy not in it)."""
    now = time.monotonic()
    hit = _cache.get("policies")
    if hit is None or now - hit[0] > CACHE_S or policy not in hit[1]:
        hit = _cache["policies"] = (now, registry.active(store))
    found = hit[1].get(policy)
    return found[0] if found else None


def _done(out: CloudEvent | None, rerun: CloudEvent | None) -> list[CloudEvent]:
    return [e for e in (out, rerun) if e is not None]


def on_verdict(store: StateStore, reply: catalogue.PolicyAnalyzeReplied, event_id: str) -> list[CloudEvent]:
    """Record a verdict; a true one with its plan is proposed, one without asks the policy for its plan."""
    if reply.error is not None:
        registry.record(store, reply.policy, asset=reply.asset, method="analyze", error=reply.error,
                        traceback=reply.traceback)
        return _done(None, contexts.answered(store, reply.policy, reply.asset, ANALYZE)[1])
    declaration = _declaration(store, reply.policy)
    if declaration is None:
        return _done(None, contexts.answered(store, reply.policy, reply.asset, ANALYZE, verdict=reply.verdict)[1])
    if reply.plan is not None:
        return on_plan(store, catalogue.PolicyPlanReplied(
            policy=reply.policy, asset=reply.asset, request=reply.request, plan=reply.plan, context=reply.context,
            cause=reply.cause, inputs=reply.inputs), event_id, verdict=reply.verdict)
    answer = {"context": reply.context, "declared": declaration.context, "verdict": reply.verdict}
    if not reply.verdict:
        return _done(None, contexts.answered(store, reply.policy, reply.asset, ANALYZE, **answer)[1])
    mode, manual = contexts.mode_of(store)
    if manual:
        registry.record(store, reply.policy, asset=reply.asset, method="plan", skipped="manual override")
        return _done(None, contexts.answered(store, reply.policy, reply.asset, ANALYZE, **answer)[1])
    # The analysis goes on: the policy's plan is still to come (it is released when the plan comes).
    saved, _ = contexts.answered(store, reply.policy, reply.asset, ANALYZE, over=False, **answer)
    return [requests.plan_request(store, reply, declaration, mode, saved, SOURCE)]


def _malformed(plan: dict[str, Any], declaration: Declaration) -> str | None:
    undeclared = sorted(set(plan) - set(declaration.mechanisms))
    if undeclared:
        return (f"plan: names mechanism(s) {', '.join(undeclared)} that initialize did not declare "
                f"(declared: {', '.join(declaration.mechanisms) or 'none'})")
    bad = sorted(m for m, command in plan.items() if not isinstance(command, dict))
    if bad:
        return f"plan: the command for {', '.join(bad)} must be a dict"
    return None


def on_plan(store: StateStore, reply: catalogue.PolicyPlanReplied, event_id: str,
            verdict: bool | None = None) -> list[CloudEvent]:
    """Record a plan as Queued in its cycle and propose it to the scheduler; the analysis is over.

    The plan's id comes from the reply event's id, so a redelivered reply proposes the same plan again
    instead of making a second one.
    """
    if reply.error is not None:
        registry.record(store, reply.policy, asset=reply.asset, method="plan", error=reply.error,
                        traceback=reply.traceback)
        return _done(None, contexts.answered(store, reply.policy, reply.asset, ANALYZE, verdict=verdict)[1])
    declaration = _declaration(store, reply.policy)
    if declaration is None:
        return _done(None, contexts.answered(store, reply.policy, reply.asset, ANALYZE, verdict=verdict)[1])
    answer = {"context": reply.context, "declared": declaration.context, "verdict": verdict}
    problem = _malformed(reply.plan, declaration) if reply.plan else None
    if problem is not None:
        registry.record(store, reply.policy, asset=reply.asset, method="plan", error=problem)
    if not reply.plan or problem is not None:
        return _done(None, contexts.answered(store, reply.policy, reply.asset, ANALYZE, **answer)[1])
    now = time.time()
    plan_id = str(uuid.uuid5(PLAN_IDS, event_id))
    cause = reply.cause or plan_id
    plan = Plan(plan_id=plan_id, policy=reply.policy, asset=reply.asset, mechanisms=reply.plan,
                core=declaration.core, created=now, updated=now,
                inputs={"cause": cause, "request": reply.request, "telemetry": reply.inputs.get("telemetry")})
    # The plan and the answer in one write; not new: the same reply again (the scheduler decides the plan once).
    recorded = contexts.Answer(**answer)
    _, manual = plan_store.propose(store, plan, recorded)
    if manual:  # nothing was written
        registry.record(store, reply.policy, asset=reply.asset, method="plan", skipped="manual override")
        return _done(None, contexts.answered(store, reply.policy, reply.asset, ANALYZE, **answer)[1])
    rerun = recorded.again(reply.policy, reply.asset, ANALYZE)
    data = catalogue.PlanProposed(plan_id=plan_id, policy=reply.policy, asset=reply.asset, mechanisms=reply.plan,
                                  core=declaration.core, cause=cause)
    return _done(catalogue.make_event(data, SOURCE, subject=reply.asset), rerun)


@mapemesh.on(catalogue.PolicyAnalyzeReplied)
def verdict(reply: catalogue.PolicyAnalyzeReplied, *, event: CloudEvent, store: StateStore) -> list[CloudEvent]:
    """A verdict: a plan request, a proposal (a true verdict with its plan), or nothing."""
    return on_verdict(store, reply, event.id)


@mapemesh.on(catalogue.PolicyPlanReplied)
def planned(reply: catalogue.PolicyPlanReplied, *, event: CloudEvent, store: StateStore) -> list[CloudEvent]:
    """A plan: a proposal to the scheduler."""
    return on_plan(store, reply, event.id)


plan = mapemesh.stage(__name__, source=SOURCE)
"""Take policy replies: verdicts become plan requests, plans become proposals."""
