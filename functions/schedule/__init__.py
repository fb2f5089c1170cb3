"""The schedule stage: MLSysOps plan scheduling semantics, as a pure core the function wraps.

FIFO (by arrival); core plans before the others; within one scheduling cycle at most one plan per
mechanism of an asset (a node's CPUFrequency, say: as in MLSysOps, where each agent schedules its own
node's plans); a later plan that wants a mechanism already taken in the cycle is discarded, naming the plan
that won and the mechanism. A plan takes all its mechanisms or none.

Statuses: Queued -> Scheduled | Discarded; Scheduled -> Pending (execute dispatched it) -> Success | Failed;
Pending becomes Failed after a timeout.

The core is `mapemesh.loop.plans` (pure) and `mapemesh.loop.plan_store` (its records); the `schedule` function
below runs it in the loop. A scheduling cycle is the loop's reaction to one
cause (the event that started it): every plan made in reaction to the same telemetry event contends in the
same cycle, whenever its policy answers. The plans queued in a cycle when the function runs are decided
together (core first, then FIFO); a plan that arrives after the cycle gave its mechanism to another plan is
discarded, naming that plan. The Service runs one event at a time in one instance (containerConcurrency 1,
max-scale 1), and every write is versioned, so two cycles never decide the same plan.
"""

from __future__ import annotations

import mapemesh
from mapemesh import events as catalogue
from mapemesh.eventing.cloudevent import CloudEvent
from mapemesh.loop.plan_store import (
    PLAN_RETENTION_S,
    PLAN_TIMEOUT_S,
    cycle_number,
    decide,
    sweep,
    sweep_now_and_then,
)
from mapemesh.loop.plans import TRANSITIONS, Discard, InvalidTransition, Plan, PlanStatus, expire, schedule_cycle
from mapemesh.state import StateStore

SOURCE = "/mapemesh/schedule"


def _announce(plan: Plan, mechanism: str | None = None) -> CloudEvent:
    if plan.status == "Discarded":
        data: catalogue.EventData = catalogue.PlanDiscarded(
            plan_id=plan.plan_id, policy=plan.policy, asset=plan.asset,
            mechanism=mechanism or next(iter(plan.mechanisms)), winner=plan.winner or "?",
            reason=plan.reason or "conflict", cycle=plan.cycle or 0)
    else:
        data = catalogue.PlanScheduled(plan_id=plan.plan_id, policy=plan.policy, asset=plan.asset,
                                       mechanisms=plan.mechanisms, cycle=plan.cycle or 0)
    return catalogue.make_event(data, SOURCE, subject=plan.asset)


@mapemesh.on(catalogue.PlanProposed)
def proposed(proposed: catalogue.PlanProposed, *, store: StateStore) -> list[CloudEvent]:
    """Schedule the plans queued in the proposed plan's cycle; announce each one scheduled or discarded."""
    decisions, _ = decide(store, proposed.cause or proposed.plan_id, proposed.plan_id)
    return [_announce(plan, mechanism) for plan, mechanism in decisions]


schedule = mapemesh.stage(__name__, source=SOURCE, before=sweep_now_and_then)
"""FIFO, one plan per mechanism of an asset in a cycle; plans time out while events flow."""

__all__ = ["PLAN_RETENTION_S", "PLAN_TIMEOUT_S", "TRANSITIONS", "Discard", "InvalidTransition", "Plan", "PlanStatus",
           "cycle_number",
           "decide", "expire", "schedule", "schedule_cycle", "sweep", "sweep_now_and_then"]
