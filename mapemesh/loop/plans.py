"""Plans, as the loop keeps them: the lifecycle and the scheduling cycle, pure (no store here; `mapemesh.loop.store`
reads and writes them).

| status      | becomes                 | when                                                                  |
|-------------|-------------------------|-----------------------------------------------------------------------|
| Queued      | Scheduled or Discarded  | the plan's scheduling cycle decides it (FIFO, core plans first; at    |
|             |                         | most one plan per mechanism of an asset in a cycle)                   |
| Scheduled   | Pending or Failed       | execute dispatched its commands (or could not)                        |
| Pending     | Success or Failed       | every mechanism reported back (Failed at the first failure, or after  |
|             |                         | the timeout with no result)                                           |
| Discarded, Success, Failed | -        | final                                                                 |

A plan that loses its cycle is discarded naming the plan that won and the mechanism; a plan takes all its
mechanisms or none (MLSysOps' scheduler semantics).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

DEPLOY_MECHANISMS = ("ClusterPlacement", "ComponentPlacement")
"""Mechanisms the deploy function carries out; every other mechanism is a node knob."""
FINAL = ("Success", "Failed", "Discarded")

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
