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
|                                        | finished plans and cycles past their retention forgotten; it reads    |
|                                        | what the index by time says is due (`mapemesh.loop.plan_index`)       |

Every write is versioned (`mapemesh.state.update`, `update_many`), so concurrent stages never lose each other's
changes; `propose`, `decide` and `dispatch` file what they make for the sweep in the same write.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

from mapemesh.loop import contexts, plan_index
from mapemesh.loop.plans import DEPLOY_MECHANISMS, FINAL, Plan, schedule_cycle
from mapemesh.settings import current
from mapemesh.state import Conflict, Ref, StateStore, update, update_many

PLAN_TIMEOUT_S = current().plan_timeout_s
"""A Pending plan with no result after this long becomes Failed."""
PLAN_RETENTION_S = current().plan_retention_s
"""Finished plans (Success, Failed, Discarded) are kept this long."""
CYCLE_RETENTION_S = 600.0
SWEEP_EVERY_S = 5.0
_last_sweep = [0.0]
log = logging.getLogger(__name__)


def _pair(asset: str, mechanism: str) -> str:
    return f"{asset}\x00{mechanism}"


def cycle_number(store: StateStore, cause: str) -> int:
    """The number of the cycle of `cause` (numbered from the scheduler's counter when it is first used)."""
    doc = store.get("cycles", cause)
    if doc is not None and doc.value.get("cycle") is not None:
        return int(doc.value["cycle"])
    return decide(store, cause, None)[1]


def _expire(store: StateStore, plan_id: str, status: str, reason: str,
            now: float) -> tuple[dict[str, Any] | None, bool]:
    """Fail the plan unless it moved on from `status` meanwhile: (the plan as it is now, None when gone; whether
    this failed it)."""
    done = [False]

    def change(doc: dict[str, Any] | None) -> dict[str, Any] | None:
        done[0] = doc is not None and doc.get("status") == status
        return {**doc, "status": "Failed", "reason": reason, "updated": now} if done[0] else doc  # type: ignore[dict-item]

    written = update(store, "plans", plan_id, change)
    return (written.value if written is not None else None), done[0]


def due(plan: dict[str, Any]) -> float:
    """When the sweep must look at a plan next: Pending, its timeout; Queued or Scheduled, twice that (should an
    event have been lost); finished, the end of its retention."""
    status, updated = plan.get("status"), float(plan.get("updated") or plan.get("created") or 0.0)
    if status == "Pending":
        return updated + PLAN_TIMEOUT_S
    if status in FINAL:
        return updated + PLAN_RETENTION_S
    return updated + 2 * PLAN_TIMEOUT_S


def sweep(store: StateStore, now: float | None = None) -> list[Plan]:
    """Fail plans stuck past the timeout; forget finished plans and cycles past their retention.

    Pending with no result, and (should an event have been lost) Queued or Scheduled for twice as long,
    become Failed. Run by the schedule and monitor stages every few seconds while events flow. It reads the
    plans and cycles the index (`mapemesh.loop.plan_index`) says are due, not every plan: a handful of round trips
    whatever the store holds.
    """
    now = time.time() if now is None else now
    marker = store.get(*plan_index.SWEEP)
    if marker is None or now - float(marker.value.get("indexed") or 0.0) > plan_index.REINDEX_S:
        _index_everything(store, now)
        marker = store.get(*plan_index.SWEEP)
        assert marker is not None
    # From the marker (which trails the clock by GRACE_S) to now, at most MAX_BUCKETS; what is due by the end of
    # the last bucket read (and by now).
    first = int(marker.value.get("through", plan_index.bucket(now - plan_index.GRACE_S) - 1)) + 1
    last = min(plan_index.bucket(now), first + plan_index.MAX_BUCKETS - 1)
    until = min(now, (last + 1) * plan_index.BUCKET_S)
    slots = list(dict.fromkeys(plan_index.ref(n) for n in range(first, last + 1)))
    taken: dict[Ref, tuple[dict[str, float], dict[str, float]]] = {}
    for slot, doc in zip(slots, store.get_many(slots), strict=True):
        plans, cycles = plan_index.entries(doc.value if doc is not None else None, until)
        if plans or cycles:
            taken[slot] = (plans, cycles)
    taken_plans = {k: v for plans, _ in taken.values() for k, v in plans.items()}
    taken_cycles = {k: v for _, cycles in taken.values() for k, v in cycles.items()}
    plan_refs = [("plans", i) for i in taken_plans]
    cycle_refs = [("cycles", c) for c in taken_cycles]
    due_refs = [*plan_refs, *cycle_refs]
    found = dict(zip(due_refs, store.get_many(due_refs), strict=True)) if due_refs else {}
    failed: list[Plan] = []
    again: dict[str, dict[str, float]] = {"plans": {}, "cycles": {}}  # filed anew: key -> when it is due
    for (_, plan_id), versioned in ((r, found[r]) for r in plan_refs):
        if versioned is None:
            continue  # gone
        current: dict[str, Any] | None = versioned.value
        status = str(versioned.value.get("status"))
        age = now - float(versioned.value.get("updated") or versioned.value.get("created") or 0.0)
        failing = None
        if status == "Pending" and age > PLAN_TIMEOUT_S:
            failing = f"no result within {PLAN_TIMEOUT_S:g}s"
        elif status in ("Queued", "Scheduled") and age > 2 * PLAN_TIMEOUT_S:
            failing = f"still {status} after {2 * PLAN_TIMEOUT_S:g}s"
        elif status in FINAL and age > PLAN_RETENTION_S:
            with contextlib.suppress(Conflict):  # it changed meanwhile: looked at again next time
                store.delete("plans", plan_id, expected_version=versioned.version)
                continue
        if failing is not None:
            current, expired = _expire(store, plan_id, status, failing, now)
            if expired:
                with contextlib.suppress(TypeError):  # a document that is no plan is failed all the same
                    failed.append(Plan.from_dict(versioned.value))
        if current is not None:
            again["plans"][plan_id] = max(now, due(current))
    for (_, cause), versioned in ((r, found[r]) for r in cycle_refs):
        if versioned is None:
            continue
        expires = float(versioned.value.get("created") or 0) + CYCLE_RETENTION_S
        if expires <= now:
            with contextlib.suppress(Conflict):
                store.delete("cycles", cause, expected_version=versioned.version)
                continue
        again["cycles"][cause] = max(now, expires)
    # The marker stays GRACE_S behind: the buckets within it are read again next time (an entry filed there late
    # is still found).
    through = min(last, plan_index.bucket(now - plan_index.GRACE_S) - 1)
    _refile(store, taken, again, through)
    return failed


def _refile(store: StateStore, taken: dict[Ref, tuple[dict[str, float], dict[str, float]]],
            again: dict[str, dict[str, float]], through: int, indexed: float | None = None) -> None:
    """One write: the entries a sweep took out of their slots, those still to come filed under their time, and
    how far the sweep got (never back: another sweep may have got further)."""
    targets: dict[Ref, dict[str, dict[str, float]]] = {}
    for field, filed in again.items():
        for key, when in filed.items():
            targets.setdefault(plan_index.at(when), {"plans": {}, "cycles": {}})[field][key] = when
    refs = list(dict.fromkeys([*taken, *targets, plan_index.SWEEP]))

    def change(docs: dict[Ref, dict[str, Any] | None]) -> dict[Ref, dict[str, Any] | None]:
        out: dict[Ref, dict[str, Any] | None] = {}
        for r, (plans, cycles) in taken.items():
            out[r] = plan_index.remove(docs[r], plans=plans, cycles=cycles)
        for r, filed in targets.items():
            out[r] = plan_index.add(out[r] if r in out else docs[r], **filed)
        marker = dict(docs[plan_index.SWEEP] or {})
        done = marker.get("through")
        marker["through"] = max(through, int(done)) if done is not None else through
        if indexed is not None:
            marker["indexed"] = indexed
        out[plan_index.SWEEP] = marker
        return out

    update_many(store, refs, change)


def _index_everything(store: StateStore, now: float) -> None:
    """Every plan and cycle filed again, from one full read: on the first sweep of a store written before the
    index, and every REINDEX_S (what an older version wrote during a rolling upgrade gets indexed too). An entry
    already filed stays: a plan looked at twice is only looked at twice."""
    plans = {k: max(now, due(v.value)) for k, v in store.list("plans").items()}
    cycles = {k: max(now, float(v.value.get("created") or 0) + CYCLE_RETENTION_S)
              for k, v in store.list("cycles").items()}
    _refile(store, {}, {"plans": plans, "cycles": cycles}, plan_index.bucket(now - plan_index.GRACE_S) - 1,
            indexed=now)
    log.info("plans: %d plans and %d cycles indexed for the sweep", len(plans), len(cycles))


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
    round trips when the cycle's queue holds only `also` (the usual case); one more read otherwise. Each decision
    records the proposal whose call made it (`by`): a redelivery of that proposal announces its call's decisions
    again, as recorded, while another proposal of the cycle that was decided with it announces nothing (its
    decision went out once already; announcing it again would execute a plan twice). The cycle keeps each winner's
    policy and core flag, so deciding against it reads no other plan.
    """
    created = time.time()
    index = plan_index.at(created + CYCLE_RETENTION_S)  # a new cycle is filed for the sweep
    refs: list[Ref] = [("cycles", cause), SCHEDULER, *([("plans", also)] if also else []), index]
    outcome: list[tuple[Plan, str | None]] = []
    number: list[int] = []
    missing: list[Ref] = []

    def change(docs: dict[Ref, dict[str, Any] | None]) -> dict[Ref, dict[str, Any] | None]:
        doc = dict(docs[("cycles", cause)] or {"created": created})
        out: dict[Ref, dict[str, Any] | None] = {}
        if docs[("cycles", cause)] is None:
            out[index] = plan_index.add(docs[index], cycles={cause: created + CYCLE_RETENTION_S})
        decided: dict[str, Any] = dict(doc.get("decided") or {})
        held: dict[str, str] = dict(doc.get("taken") or {})
        known: dict[str, Any] = dict(doc.get("winners") or {})
        ids = [i for i in dict.fromkeys([*(doc.get("queued") or []), *([also] if also else [])]) if i not in decided]
        # Decided by an earlier call for this same proposal (a redelivery): announced again, as recorded (a record
        # from before `by` was kept: `also` alone).
        again = [i for i, r in decided.items() if also is not None and (r["by"] == also if "by" in r else i == also)]
        wanted = [("plans", i) for i in dict.fromkeys([*ids, *(set(held.values()) - set(known)), *again])]
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
                                     "mechanism": mechanism_of.get(plan.plan_id), "updated": plan.updated,
                                     "by": also}
            out[("plans", plan.plan_id)] = {**loaded[plan.plan_id], "status": plan.status, "cycle": plan.cycle,
                                            "winner": plan.winner, "reason": plan.reason, "updated": plan.updated}
        doc.update(taken=held, decided=decided, winners=known,
                   queued=[i for i in (doc.get("queued") or []) if i not in decided])
        out[("cycles", cause)] = doc
        outcome.clear()
        number[:] = [int(doc["cycle"])]
        for plan_id in dict.fromkeys([*again, *now_decided]):
            plan = now_decided.get(plan_id)
            if plan is None:  # in `again`
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
    plan_due, cycle_due = due(plan.as_dict()), plan.created + CYCLE_RETENTION_S  # filed for the sweep (plan_index)
    indexes = list(dict.fromkeys([plan_index.at(plan_due), plan_index.at(cycle_due)]))
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
            out[plan_index.at(plan_due)] = plan_index.add(docs[plan_index.at(plan_due)], plans={plan.plan_id: plan_due})
            if docs[cycle] is None:
                filed = out.get(plan_index.at(cycle_due), docs[plan_index.at(cycle_due)])
                out[plan_index.at(cycle_due)] = plan_index.add(filed, cycles={cause: cycle_due})
        answer.plan = {"plan_id": plan.plan_id, "mechanisms": plan.mechanisms} if outcome[0] else None
        out[context] = answer.apply(docs[context], plan.asset)
        return out

    update_many(store, [contexts.MODE, mine, cycle, context, *indexes], change)
    return outcome[0], outcome[1]


def dispatch(store: StateStore, plan_id: str, status: str = "Pending", reason: str | None = None) -> str | None:
    """Scheduled -> Pending (or Failed); return the status the plan had (None: unknown plan). A Pending plan is
    filed for the sweep at its timeout (sooner than it was, as Scheduled), in the same write."""
    before: list[str | None] = [None]
    now = time.time()
    mine = ("plans", plan_id)
    index = plan_index.at(now + PLAN_TIMEOUT_S) if status == "Pending" else None  # a failure is due later: not filed

    def change(docs: dict[Ref, dict[str, Any] | None]) -> dict[Ref, dict[str, Any] | None]:
        doc = docs[mine]
        before[0] = None if doc is None else doc.get("status")
        if doc is None or doc.get("status") != "Scheduled":
            return {}
        written = {**doc, "status": status, "updated": now, **({"reason": reason} if reason else {})}
        out: dict[Ref, dict[str, Any] | None] = {mine: written}
        if index is not None:
            out[index] = plan_index.add(docs[index], plans={plan_id: now + PLAN_TIMEOUT_S})
        return out

    update_many(store, [mine, *([index] if index else [])], change)
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
