"""The loop's plans in the state store: every read and write of a plan or a scheduling cycle goes through here.

| call                                   | does                                                                  |
|----------------------------------------|-----------------------------------------------------------------------|
| `queue(store, plan)`                   | a new plan, Queued, in its cycle's queue (False when it exists: a     |
|                                        | redelivered reply proposes the same plan again)                       |
| `cycle_number(store, cause)`           | the scheduling cycle of the reaction to `cause` (numbered once)       |
| `decide(store, cause, plan_id)`        | the cycle's queued plans decided inside one versioned write of the    |
|                                        | cycle (`mapemesh.loop.plans.schedule_cycle`), numbering a new cycle    |
| `save_decision(store, plan)`           | a decided plan's status, unless it moved on already                   |
| `dispatch(store, plan_id, status)`     | Scheduled -> Pending (or Failed); the status it had                   |
| `record_result(store, plan_id, ...)`   | one mechanism's result: Success once all applied, Failed at the first |
|                                        | failure                                                               |
| `sweep(store)` / `sweep_now_and_then`  | Pending past the timeout (or Queued/Scheduled twice as long) Failed;  |
|                                        | finished plans and cycles past their retention forgotten              |

Every write is versioned (`mapemesh.state.update`), so concurrent stages never lose each other's changes.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from typing import Any

from mapemesh.loop.plans import DEPLOY_MECHANISMS, FINAL, Plan, schedule_cycle
from mapemesh.state import Conflict, StateStore, update

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


def get(store: StateStore, plan_id: str) -> Plan | None:
    doc = store.get("plans", plan_id)
    return Plan.from_dict(doc.value) if doc else None


def cycle_number(store: StateStore, cause: str) -> int:
    """The number of the cycle of `cause` (numbered from the scheduler's counter when it is first used)."""
    doc = store.get("cycles", cause)
    if doc is not None and doc.value.get("cycle") is not None:
        return int(doc.value["cycle"])
    return decide(store, cause, None)[1]


def _next_number(store: StateStore) -> int:
    counter = update(store, "settings", "scheduler",
                     lambda d: {**(d or {}), "cycle": int((d or {}).get("cycle", 0)) + 1})
    assert counter is not None
    return int(counter.value["cycle"])


def save_decision(store: StateStore, plan: Plan, version: int | None = None) -> None:
    """Write a decided plan's status, unless it moved on already (redelivery, or execute ran first); `version`:
    the version it was decided on (one write then, unless it changed meanwhile)."""
    fields = {"status": plan.status, "cycle": plan.cycle, "winner": plan.winner, "reason": plan.reason,
              "updated": plan.updated}
    if version is not None and plan.status != "Queued":
        with contextlib.suppress(Conflict):
            store.put("plans", plan.plan_id, {**plan.as_dict(), **fields}, expected_version=version)
            return

    def change(doc: dict[str, Any] | None) -> dict[str, Any] | None:
        if doc is None or doc.get("status") != "Queued":
            return doc
        return {**doc, **fields}

    update(store, "plans", plan.plan_id, change)


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


def decide(store: StateStore, cause: str, also: str | None) -> tuple[list[tuple[Plan, str | None, int | None]], int]:
    """Decide the plans queued in the cycle of `cause` (and `also`); return every decision of the cycle as (plan,
    the mechanism it lost, the version it was decided on), and the cycle's number.

    The decisions are made inside the versioned write of the cycle's document, so two scheduler instances
    (a rollout, say) can never both give a mechanism away: the loser of the write decides again on the
    winner's record. Decisions already recorded are returned as recorded (a redelivery announces them again).
    The cycle keeps each winner's policy and core flag, so deciding against it reads no other plan.
    """
    outcome: list[tuple[Plan, str | None, int | None]] = []
    number: list[int] = []

    def change(doc: dict[str, Any] | None) -> dict[str, Any]:
        doc = dict(doc or {"created": time.time()})
        if doc.get("cycle") is None:
            number[:] = number or [_next_number(store)]  # once, whatever the retries
            doc["cycle"] = number[0]
        decided: dict[str, Any] = dict(doc.get("decided") or {})
        held: dict[str, str] = dict(doc.get("taken") or {})
        known: dict[str, Any] = dict(doc.get("winners") or {})
        ids = [i for i in dict.fromkeys([*(doc.get("queued") or []), *([also] if also else [])]) if i not in decided]
        loaded = {i: v for i in ids if (v := store.get("plans", i)) is not None}
        plans = [p for p in (Plan.from_dict(v.value) for v in loaded.values()) if p.status == "Queued"]
        winners = {i: Plan(plan_id=i, policy=str(w.get("policy")), asset="", mechanisms={}, core=bool(w.get("core")))
                   for i, w in known.items()}
        winners.update({i: w for i in set(held.values()) - set(winners) if (w := get(store, i)) is not None})
        taken = {(k.partition("\x00")[0], k.partition("\x00")[2]): winners[i] for k, i in held.items() if i in winners}
        scheduled, discarded = schedule_cycle(plans, int(doc["cycle"]), taken)
        for plan in scheduled:
            held.update({_pair(plan.asset, m): plan.plan_id for m in plan.mechanisms})
            known[plan.plan_id] = {"policy": plan.policy, "core": plan.core}
        mechanism_of = {d.plan.plan_id: d.mechanism for d in discarded}
        now_decided = {p.plan_id: p for p in [*scheduled, *(d.plan for d in discarded)]}
        for plan in now_decided.values():
            decided[plan.plan_id] = {"status": plan.status, "winner": plan.winner, "reason": plan.reason,
                                     "mechanism": mechanism_of.get(plan.plan_id), "updated": plan.updated}
        doc.update(taken=held, decided=decided, winners=known,
                   queued=[i for i in (doc.get("queued") or []) if i not in decided])
        outcome.clear()
        for plan_id in dict.fromkeys([*([also] if also in decided else []), *now_decided]):
            plan = now_decided.get(plan_id) or get(store, plan_id)  # `also`, decided before: a redelivery
            if plan is None:
                continue
            record = decided[plan_id]
            plan.status, plan.winner, plan.reason = record["status"], record["winner"], record["reason"]
            plan.cycle, plan.updated = int(doc["cycle"]), float(record["updated"])
            version = loaded[plan_id].version if plan_id in now_decided and plan_id in loaded else None
            outcome.append((plan, record.get("mechanism"), version))
        return doc

    written = update(store, "cycles", cause, change)
    assert written is not None
    return outcome, int(written.value["cycle"])


def queue(store: StateStore, plan: Plan) -> bool:
    """Store a new plan (Queued) and put it in its cycle's queue; False when it exists already."""
    cause = str(plan.inputs.get("cause") or plan.plan_id)
    try:
        store.put("plans", plan.plan_id, plan.as_dict(), expected_version=0)
    except Conflict:
        return False  # the same reply again: the plan exists (the scheduler decides it once)
    update(store, "cycles", cause, lambda doc: {**(doc or {"taken": {}, "created": plan.created}),
                                                "queued": [*((doc or {}).get("queued") or []), plan.plan_id]})
    return True


def dispatch(store: StateStore, plan_id: str, status: str = "Pending", reason: str | None = None) -> str | None:
    """Scheduled -> Pending (or Failed); return the status the plan had (None: unknown plan)."""
    before: list[str | None] = [None]

    def change(doc: dict[str, Any] | None) -> dict[str, Any] | None:
        if doc is None:
            return None
        before[0] = doc.get("status")
        if doc.get("status") != "Scheduled":
            return doc
        return {**doc, "status": status, "updated": time.time(), **({"reason": reason} if reason else {})}

    update(store, "plans", plan_id, change)
    return before[0]


def record_result(store: StateStore, plan_id: str | None, mechanism: str | None, ok: bool,
                  detail: str | None, note: str | None = None) -> None:
    """Record one mechanism's result (None: every placement mechanism of the plan, from the deploy function);
    `note`: what a user should know of a success (`notes[mechanism]`: a reconfiguration that drained functions)."""
    if not plan_id:
        return

    def change(plan: dict[str, Any] | None) -> dict[str, Any] | None:
        if plan is None:
            return None  # a plan the loop does not know (an operator's command, say): nothing to track
        results = dict(plan.get("results") or {})
        names = [mechanism] if mechanism else [m for m in plan.get("mechanisms") or {} if m in DEPLOY_MECHANISMS]
        for name in names or ["deploy"]:
            results[name] = "applied" if ok else f"failed: {detail}"
            if ok and note:
                plan["notes"] = {**(plan.get("notes") or {}), name: note}
        mechanism_label = ", ".join(names) or "deploy"
        plan["results"] = results
        if plan.get("status") in FINAL:
            return plan
        if not ok:
            plan["status"], plan["reason"] = "Failed", f"{mechanism_label}: {detail}"
        elif set(results) >= set(plan.get("mechanisms") or {}) and all(r == "applied" for r in results.values()):
            plan["status"] = "Success"
        plan["updated"] = time.time()
        return plan

    update(store, "plans", plan_id, change)
