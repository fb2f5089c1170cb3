"""The schedule stage: MLSysOps plan scheduling semantics, as a pure core the function wraps.

FIFO (by arrival); core plans before the others; within one scheduling cycle at most one plan per
mechanism of an asset (a node's CPUFrequency, say: as in MLSysOps, where each agent schedules its own
node's plans); a later plan that wants a mechanism already taken in the cycle is discarded, naming the plan
that won and the mechanism. A plan takes all its mechanisms or none.

Statuses: Queued -> Scheduled | Discarded; Scheduled -> Pending (execute dispatched it) -> Success | Failed;
Pending becomes Failed after a timeout.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

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


def schedule_cycle(queued: Iterable[Plan], cycle: int) -> tuple[list[Plan], list[Discard]]:
    """Run one scheduling cycle over the queued plans; update their statuses."""
    # FIFO by arrival (whatever order the caller read them in), core plans first.
    ordered = sorted((p for p in queued if p.status == "Queued"), key=lambda p: (not p.core, p.created))
    taken: dict[tuple[str, str], Plan] = {}
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
