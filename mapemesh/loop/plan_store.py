"""The loop's plans in the state store: every read and write of a plan or a scheduling cycle goes through here.

| call                                   | does                                                                  |
|----------------------------------------|-----------------------------------------------------------------------|
| `propose(store, plan, answer)`         | a new plan, Queued, in its cycle's queue, and its policy's answer in  |
|                                        | its context: one read, one write (not new when it exists: a           |
|                                        | redelivered reply proposes the same plan again)                       |
| `cycle_number(store, cause)`           | the scheduling cycle of the reaction to `cause` (numbered once)       |
| `decide(store, cause, plan_id)`        | the cycle's queued plans decided (`mapemesh.loop.plans.schedule_cycle`)|
|                                        | and saved with the cycle, numbering a new cycle: one read, one write  |
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
from collections.abc import Callable
from typing import Any

from mapemesh.loop import contexts
from mapemesh.loop.plans import DEPLOY_MECHANISMS, FINAL, Plan, schedule_cycle
from mapemesh.state import Conflict, Ref, StateStore, update, update_many

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


SCHEDULER = ("settings", "scheduler")
"""The scheduler's counter of cycles."""


def decide(store: StateStore, cause: str, also: str | None) -> tuple[list[tuple[Plan, str | None]], int]:
    """Decide the plans queued in the cycle of `cause` (and `also`), and save each decision; return every decision
    of the cycle as (plan, the mechanism it lost), and the cycle's number.

    The cycle's document, its number (from the scheduler's counter, for a new cycle) and the decided plans are read
    together and written in one transaction, each with the version read, so two scheduler instances (a rollout,
    say) can never both give a mechanism away: the loser of the write decides again on the winner's record. Two
    round trips when the cycle's queue holds only `also` (the usual case); one more read otherwise. Decisions
    already recorded are returned as recorded (a redelivery announces them again). The cycle keeps each winner's
    policy and core flag, so deciding against it reads no other plan.
    """
    refs: list[Ref] = [("cycles", cause), SCHEDULER, *([("plans", also)] if also else [])]
    outcome: list[tuple[Plan, str | None]] = []
    number: list[int] = []
    missing: list[Ref] = []

    def change(docs: dict[Ref, dict[str, Any] | None]) -> dict[Ref, dict[str, Any] | None]:
        doc = dict(docs[("cycles", cause)] or {"created": time.time()})
        out: dict[Ref, dict[str, Any] | None] = {}
        decided: dict[str, Any] = dict(doc.get("decided") or {})
        held: dict[str, str] = dict(doc.get("taken") or {})
        known: dict[str, Any] = dict(doc.get("winners") or {})
        ids = [i for i in dict.fromkeys([*(doc.get("queued") or []), *([also] if also else [])]) if i not in decided]
        wanted = [("plans", i) for i in dict.fromkeys([*ids, *(set(held.values()) - set(known))])]
        missing[:] = [ref for ref in wanted if ref not in docs]
        if missing:
            return {}  # read them with the others, and decide again (see below)
        if doc.get("cycle") is None:
            counter = int((docs[SCHEDULER] or {}).get("cycle", 0)) + 1
            out[SCHEDULER] = {**(docs[SCHEDULER] or {}), "cycle": counter}
            doc["cycle"] = counter
        loaded = {i: d for i in ids if (d := docs[("plans", i)]) is not None}
        plans = [p for p in (Plan.from_dict(v) for v in loaded.values()) if p.status == "Queued"]
        winners = {i: Plan(plan_id=i, policy=str(w.get("policy")), asset="", mechanisms={}, core=bool(w.get("core")))
                   for i, w in known.items()}
        winners.update({i: Plan.from_dict(w) for i in set(held.values()) - set(winners)
                        if (w := docs[("plans", i)]) is not None})
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
            out[("plans", plan.plan_id)] = {**loaded[plan.plan_id], "status": plan.status, "cycle": plan.cycle,
                                            "winner": plan.winner, "reason": plan.reason, "updated": plan.updated}
        doc.update(taken=held, decided=decided, winners=known,
                   queued=[i for i in (doc.get("queued") or []) if i not in decided])
        out[("cycles", cause)] = doc
        outcome.clear()
        number[:] = [int(doc["cycle"])]
        for plan_id in dict.fromkeys([*([also] if also in decided else []), *now_decided]):
            plan = now_decided.get(plan_id)
            if plan is None:  # `also`, decided before: a redelivery announces it again, as recorded
                found = docs.get(("plans", plan_id))
                if found is None:
                    continue
                plan = Plan.from_dict(found)
            record = decided[plan_id]
            plan.status, plan.winner, plan.reason = record["status"], record["winner"], record["reason"]
            plan.cycle, plan.updated = int(doc["cycle"]), float(record["updated"])
            outcome.append((plan, record.get("mechanism")))
        return out

    while True:
        update_many(store, refs, change)
        if not missing:
            return outcome, number[0]
        refs += missing  # plans the cycle names beyond `also`: read with the rest, then decided on fresh data


def propose(store: StateStore, plan: Plan, answer: contexts.Answer) -> tuple[bool, bool]:
    """Store a new plan (Queued) in its cycle's queue and record its policy's `answer` (`contexts.answered`, with
    the plan as the policy's current one), in one read and one write.

    (new, manual): new is False when the plan exists already (the same reply again: the scheduler decides it once;
    only the answer is recorded); manual is True when the manual override is on, and then nothing is written."""
    cause = str(plan.inputs.get("cause") or plan.plan_id)
    mine, cycle, context = ("plans", plan.plan_id), ("cycles", cause), contexts.context_ref(plan.policy, plan.asset)
    outcome = [False, False]

    def change(docs: dict[Ref, dict[str, Any] | None]) -> dict[Ref, dict[str, Any] | None]:
        outcome[:] = [docs[mine] is None, contexts.mode_in(docs[contexts.MODE])[1]]
        if outcome[1]:
            return {}
        out: dict[Ref, dict[str, Any] | None] = {}
        if outcome[0]:
            queued = docs[cycle] or {"taken": {}, "created": plan.created}
            out[mine] = plan.as_dict()
            out[cycle] = {**queued, "queued": [*(queued.get("queued") or []), plan.plan_id]}
        answer.plan = {"plan_id": plan.plan_id, "mechanisms": plan.mechanisms} if outcome[0] else None
        out[context] = answer.apply(docs[context], plan.asset)
        return out

    update_many(store, [contexts.MODE, mine, cycle, context], change)
    return outcome[0], outcome[1]


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
                  detail: str | None, note: str | None = None, *,
                  state: tuple[str, dict[str, Any]] | None = None) -> None:
    """Record one mechanism's result (None: every placement mechanism of the plan, from the deploy function);
    `note`: what a user should know of a success (`notes[mechanism]`: a reconfiguration that drained functions).
    `state`: (node, the mechanism's state now), recorded in the same write as `mechanisms[NODE/MECHANISM].state`
    (also without a plan: an operator's command changes the state too)."""
    knob: Ref | None = ("mechanisms", f"{state[0]}/{mechanism}") if state is not None and mechanism else None
    refs: list[Ref] = [*([("plans", plan_id)] if plan_id else []), *([knob] if knob else [])]
    if not refs:
        return

    def both(docs: dict[Ref, dict[str, Any] | None]) -> dict[Ref, dict[str, Any] | None]:
        out: dict[Ref, dict[str, Any] | None] = {}
        if plan_id and (plan := change(docs[("plans", plan_id)])) is not None:
            out[("plans", plan_id)] = plan
        if knob is not None and state is not None:
            out[knob] = {**(docs[knob] or {}), "state": state[1], "updated": time.time()}
        return out

    change = _result(plan_id or "", mechanism, ok, detail, note)
    update_many(store, refs, both)


def _result(plan_id: str, mechanism: str | None, ok: bool, detail: str | None,
            note: str | None) -> Callable[[dict[str, Any] | None], dict[str, Any] | None]:
    """The change `record_result` makes to the plan's document."""

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

    return change
