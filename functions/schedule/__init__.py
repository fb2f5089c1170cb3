"""The schedule stage: MLSysOps plan scheduling semantics, as a pure core the function wraps.

FIFO (by arrival); core plans before the others; within one scheduling cycle at most one plan per
mechanism of an asset (a node's CPUFrequency, say: as in MLSysOps, where each agent schedules its own
node's plans); a later plan that wants a mechanism already taken in the cycle is discarded, naming the plan
that won and the mechanism. A plan takes all its mechanisms or none.

Statuses: Queued -> Scheduled | Discarded; Scheduled -> Pending (execute dispatched it) -> Success | Failed;
Pending becomes Failed after a timeout.

The `schedule` function below runs this core in the loop. A scheduling cycle is the loop's reaction to one
cause (the event that started it): every plan made in reaction to the same telemetry event contends in the
same cycle, whenever its policy answers. The plans queued in a cycle when the function runs are decided
together (core first, then FIFO); a plan that arrives after the cycle gave its mechanism to another plan is
discarded, naming that plan. The Service runs one event at a time in one instance (containerConcurrency 1,
max-scale 1), and every write is versioned, so two cycles never decide the same plan.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import mapemesh
from mapemesh import events as catalogue
from mapemesh.eventing.cloudevent import CloudEvent
from mapemesh.state import Conflict, StateStore, update

PlanStatus = Literal["Queued", "Scheduled", "Discarded", "Success", "Pending", "Failed"]
TRANSITIONS: dict[str, tuple[str, ...]] = {
    "Queued": ("Scheduled", "Discarded"),
    "Scheduled": ("Pending", "Failed"),
    "Pending": ("Success", "Failed"),
    "Discarded": (),
    "Success": (),
    "Failed": (),
}


class InvalidTransition(ValueError):
    """A status change the plan lifecycle does not allow."""


@dataclass
class Plan:
    """A plan a policy proposed, with why it exists (the policy and the inputs it saw)."""

    plan_id: str
    policy: str
    asset: str
    mechanisms: dict[str, Any]
    core: bool = False
    inputs: dict[str, Any] = field(default_factory=dict)
    created: float = field(default_factory=time.time)
    status: PlanStatus = "Queued"
    updated: float = field(default_factory=time.time)
    cycle: int | None = None
    winner: str | None = None
    reason: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """The plan as the state store keeps it."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> Plan:
        """A plan from its stored document (unknown keys, such as results, are left out)."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in doc.items() if k in names})

    def move(self, status: PlanStatus, reason: str | None = None, now: float | None = None) -> None:
        """Change status along the lifecycle; InvalidTransition otherwise."""
        if status not in TRANSITIONS[self.status]:
            raise InvalidTransition(f"plan {self.plan_id}: {self.status} -> {status} is not allowed")
        self.status = status
        self.updated = time.time() if now is None else now
        if reason is not None:
            self.reason = reason


@dataclass(frozen=True, slots=True)
class Discard:
    """A plan that lost, to whom, over which mechanism."""

    plan: Plan
    winner: Plan
    mechanism: str
    reason: str


def schedule_cycle(queued: Iterable[Plan], cycle: int,
                   taken: Mapping[tuple[str, str], Plan] | None = None) -> tuple[list[Plan], list[Discard]]:
    """Run one scheduling cycle over the queued plans; update their statuses.

    `taken` holds the (asset, mechanism) pairs plans already scheduled in this cycle hold (and is not changed).
    """
    # FIFO by arrival (whatever order the caller read them in), core plans first.
    ordered = sorted((p for p in queued if p.status == "Queued"), key=lambda p: (not p.core, p.created))
    taken = dict(taken or {})
    scheduled: list[Plan] = []
    discarded: list[Discard] = []
    for plan in ordered:
        clash = next(((m, taken[(plan.asset, m)]) for m in plan.mechanisms if (plan.asset, m) in taken), None)
        plan.cycle = cycle
        if clash is not None:
            mechanism, winner = clash
            why = (f"{mechanism} on {plan.asset} was already planned in cycle {cycle} by plan {winner.plan_id} "
                   f"(policy {winner.policy}{', a core plan' if winner.core and not plan.core else ''})")
            plan.winner = winner.plan_id
            plan.move("Discarded", why)
            discarded.append(Discard(plan, winner, mechanism, why))
            continue
        for m in plan.mechanisms:
            taken[(plan.asset, m)] = plan
        plan.move("Scheduled")
        scheduled.append(plan)
    return scheduled, discarded


def expire(plans: Iterable[Plan], timeout_s: float, now: float | None = None) -> list[Plan]:
    """Pending plans older than the timeout become Failed; return them."""
    now = time.time() if now is None else now
    failed = []
    for plan in plans:
        if plan.status == "Pending" and now - plan.updated > timeout_s:
            plan.move("Failed", f"no result within {timeout_s:g}s", now=now)
            failed.append(plan)
    return failed


# -- the schedule function -------------------------------------------------------------------------------

SOURCE = "/mapemesh/schedule"
PLAN_TIMEOUT_S = float(os.environ.get("MAPEMESH_PLAN_TIMEOUT_S", "60"))
"""A Pending plan with no result after this long becomes Failed."""
PLAN_RETENTION_S = float(os.environ.get("MAPEMESH_PLAN_RETENTION_S", "86400"))
"""Finished plans (Success, Failed, Discarded) are kept this long."""
CYCLE_RETENTION_S = 600.0
SWEEP_EVERY_S = 5.0
_last_sweep = [0.0]
log = logging.getLogger(__name__)


def _pair(asset: str, mechanism: str) -> str:
    return f"{asset}\x00{mechanism}"


def _plan(store: StateStore, plan_id: str) -> Plan | None:
    doc = store.get("plans", plan_id)
    return Plan.from_dict(doc.value) if doc else None


def _cycle_number(store: StateStore, cause: str) -> int:
    doc = store.get("cycles", cause)
    if doc is not None and doc.value.get("cycle") is not None:
        return int(doc.value["cycle"])
    counter = update(store, "settings", "scheduler",
                     lambda d: {**(d or {}), "cycle": int((d or {}).get("cycle", 0)) + 1})
    assert counter is not None
    number = int(counter.value["cycle"])
    result = update(store, "cycles", cause, lambda d: {**(d or {"taken": {}, "queued": [], "created": time.time()}),
                                                       "cycle": (d or {}).get("cycle") or number})
    assert result is not None
    return int(result.value["cycle"])


def _save(store: StateStore, plan: Plan) -> None:
    """Write a decided plan's status, unless it moved on already (redelivery, or execute ran first)."""

    def change(doc: dict[str, Any] | None) -> dict[str, Any] | None:
        if doc is None or doc.get("status") != "Queued":
            return doc
        return {**doc, "status": plan.status, "cycle": plan.cycle, "winner": plan.winner, "reason": plan.reason,
                "updated": plan.updated}

    update(store, "plans", plan.plan_id, change)


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


def _expire(store: StateStore, plan_id: str, status: str, reason: str, now: float) -> bool:
    done = [False]

    def change(doc: dict[str, Any] | None) -> dict[str, Any] | None:
        if doc is None or doc.get("status") != status:
            return doc
        done[0] = True
        return {**doc, "status": "Failed", "reason": reason, "updated": now}

    update(store, "plans", plan_id, change)
    return done[0]


def sweep(store: StateStore, now: float | None = None) -> list[Plan]:
    """Fail plans stuck past the timeout; forget finished plans and cycles past their retention.

    Pending with no result, and (should an event have been lost) Queued or Scheduled for twice as long,
    become Failed. Run by the schedule and monitor stages every few seconds while events flow.
    """
    now = time.time() if now is None else now
    failed = []
    for plan_id, versioned in store.list("plans").items():
        plan = Plan.from_dict(versioned.value)
        age = now - plan.updated
        if plan.status == "Pending" and age > PLAN_TIMEOUT_S:
            if _expire(store, plan_id, "Pending", f"no result within {PLAN_TIMEOUT_S:g}s", now):
                failed.append(plan)
        elif plan.status in ("Queued", "Scheduled") and age > 2 * PLAN_TIMEOUT_S:
            if _expire(store, plan_id, plan.status, f"still {plan.status} after {2 * PLAN_TIMEOUT_S:g}s", now):
                failed.append(plan)
        elif plan.status in ("Success", "Failed", "Discarded") and age > PLAN_RETENTION_S:
            with contextlib.suppress(Conflict):  # it changed meanwhile: next time
                store.delete("plans", plan_id, expected_version=versioned.version)
    for cause, versioned in store.list("cycles").items():
        if now - float(versioned.value.get("created") or 0) > CYCLE_RETENTION_S:
            with contextlib.suppress(Conflict):
                store.delete("cycles", cause, expected_version=versioned.version)
    return failed


def sweep_now_and_then(store: StateStore) -> None:
    """`sweep`, at most every SWEEP_EVERY_S in this process (a stage calls it on its way)."""
    if time.time() - _last_sweep[0] > SWEEP_EVERY_S:
        _last_sweep[0] = time.time()
        try:
            sweep(store)
        except Exception:  # housekeeping must never fail the event that triggered it
            log.exception("sweeping plans failed")


def decide(store: StateStore, cause: str, also: str, number: int) -> list[tuple[Plan, str | None]]:
    """Decide the plans queued in the cycle of `cause` (and `also`); return every decision of the cycle.

    The decisions are made inside the versioned write of the cycle's document, so two scheduler instances
    (a rollout, say) can never both give a mechanism away: the loser of the write decides again on the
    winner's record. Decisions already recorded are returned as recorded (a redelivery announces them again).
    """
    outcome: list[tuple[Plan, str | None]] = []

    def change(doc: dict[str, Any] | None) -> dict[str, Any]:
        doc = dict(doc or {"created": time.time()})
        doc["cycle"] = doc.get("cycle") or number
        decided: dict[str, Any] = dict(doc.get("decided") or {})
        held: dict[str, str] = dict(doc.get("taken") or {})
        ids = [i for i in dict.fromkeys([*(doc.get("queued") or []), also]) if i not in decided]
        plans = [p for p in (_plan(store, i) for i in ids) if p is not None and p.status == "Queued"]
        winners = {i: w for i in set(held.values()) if (w := _plan(store, i)) is not None}
        taken = {(k.partition("\x00")[0], k.partition("\x00")[2]): winners[i] for k, i in held.items() if i in winners}
        scheduled, discarded = schedule_cycle(plans, int(doc["cycle"]), taken)
        for plan in scheduled:
            held.update({_pair(plan.asset, m): plan.plan_id for m in plan.mechanisms})
        mechanism_of = {d.plan.plan_id: d.mechanism for d in discarded}
        for plan in [*scheduled, *(d.plan for d in discarded)]:
            decided[plan.plan_id] = {"status": plan.status, "winner": plan.winner, "reason": plan.reason,
                                     "mechanism": mechanism_of.get(plan.plan_id), "updated": plan.updated}
        doc.update(taken=held, decided=decided,
                   queued=[i for i in (doc.get("queued") or []) if i not in decided])
        outcome.clear()
        for plan_id in ([also] if also in decided else []) + [p.plan_id for p in (*scheduled,
                                                                                   *(d.plan for d in discarded))]:
            plan = _plan(store, plan_id)
            if plan is None:
                continue
            record = decided[plan_id]
            plan.status, plan.winner, plan.reason = record["status"], record["winner"], record["reason"]
            plan.cycle, plan.updated = int(doc["cycle"]), float(record["updated"])
            outcome.append((plan, record.get("mechanism")))
        return doc

    update(store, "cycles", cause, change)
    return list({p.plan_id: (p, m) for p, m in outcome}.values())


@mapemesh.on(catalogue.PlanProposed)
def proposed(proposed: catalogue.PlanProposed, *, store: StateStore) -> list[CloudEvent]:
    """Schedule the plans queued in the proposed plan's cycle; announce each one scheduled or discarded."""
    cause = proposed.cause or proposed.plan_id
    decisions = decide(store, cause, proposed.plan_id, _cycle_number(store, cause))
    for plan, _ in decisions:
        _save(store, plan)
    return [_announce(plan, mechanism) for plan, mechanism in decisions]


schedule = mapemesh.stage(__name__, source=SOURCE, before=sweep_now_and_then)
"""FIFO, one plan per mechanism of an asset in a cycle; plans time out while events flow."""
