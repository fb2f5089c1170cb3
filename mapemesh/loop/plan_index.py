"""When the sweep must look at each plan and scheduling cycle next: an index by time, so that a sweep reads what is
due, never every plan the store keeps (finished plans are kept a day).

| document                   | holds                                                                          |
|----------------------------|--------------------------------------------------------------------------------|
| `plan_index/SLOT`          | `{"plans": {plan_id: due}, "cycles": {cause: due}}`: what falls due in the     |
|                            | buckets of time (BUCKET_S wide) of that slot: bucket number mod SLOTS, a ring  |
|                            | of a day, so the documents are reused and never pile up                        |
| `settings/sweep`           | `{"through": BUCKET, "indexed": TIME}`: the last bucket a sweep has taken in   |
|                            | full; when every plan was last filed from a full read                          |

The rule that keeps it right: every plan and cycle in the store has an entry at or before the time it next falls
due (a Pending plan's timeout, a Queued or Scheduled one's, a finished one's retention, a cycle's retention). A
writer adds one where that time comes earlier than the entry it has: a new plan (Queued), a plan going Pending, a
new cycle. Any other change only makes a plan fall due later (a result, a decision, a finish), and the sweep, taking
the entry, looks at the plan as it is then and files it again under its real time. An entry for a plan that is
gone is dropped.

Where it could slip, it heals: the sweep's marker trails the clock by GRACE_S, and the buckets within it are read
again by every sweep (an entry filed there late, by a writer or another sweep whose clock is behind, is still
found); an entry behind the marker all the same is found a lap of the ring later; and every REINDEX_S (and on the
first sweep of a store written before the index) every plan and cycle is filed again from one full read (a plan
written by an older version, during a rolling upgrade, is then indexed too).
"""

from __future__ import annotations

from typing import Any

from mapemesh.state import Ref

BUCKET_S = 5.0
"""How wide a bucket is (the sweep runs every few seconds: a plan fails at most this much after its timeout)."""
SLOTS = 17280
"""Documents in the ring: a day of buckets (a time further ahead shares a slot with nearer ones, told apart by
its due time)."""
MAX_BUCKETS = 2000
"""At most this many buckets per sweep (a sweep that has not run for a long time catches up over several)."""
GRACE_S = 60.0
"""How far the sweep's marker trails the clock: the buckets within it are read again by every sweep."""
REINDEX_S = 3600.0
"""How often every plan and cycle is filed again from a full read."""
SWEEP: Ref = ("settings", "sweep")


def bucket(t: float) -> int:
    return int(t // BUCKET_S)


def ref(number: int) -> Ref:
    """The index document of bucket `number` (its slot in the ring)."""
    return "plan_index", f"{number % SLOTS:05d}"


def at(t: float) -> Ref:
    """The index document where something due at `t` is filed."""
    return ref(bucket(t))


def add(doc: dict[str, Any] | None, *, plans: dict[str, float] | None = None,
        cycles: dict[str, float] | None = None) -> dict[str, Any]:
    """The bucket's document with these entries filed (an entry already there keeps the earlier time)."""
    doc = dict(doc or {})
    for field, new in (("plans", plans), ("cycles", cycles)):
        entries = dict(doc.get(field) or {})
        for key, due in (new or {}).items():
            entries[key] = min(due, entries.get(key, due))
        doc[field] = entries
    return doc


def remove(doc: dict[str, Any] | None, *, plans: dict[str, float], cycles: dict[str, float]) -> dict[str, Any]:
    """The slot's document without the entries a sweep took (an entry filed again meanwhile, at another time,
    stays; an empty slot stays too, to be used again)."""
    left_plans = {k: v for k, v in ((doc or {}).get("plans") or {}).items() if plans.get(k) != v}
    left_cycles = {k: v for k, v in ((doc or {}).get("cycles") or {}).items() if cycles.get(k) != v}
    return {"plans": left_plans, "cycles": left_cycles}


def entries(doc: dict[str, Any] | None, now: float) -> tuple[dict[str, float], dict[str, float]]:
    """(plans, cycles) of a slot's document that are due by `now`."""
    plans = {k: float(v) for k, v in ((doc or {}).get("plans") or {}).items() if float(v) <= now}
    cycles = {k: float(v) for k, v in ((doc or {}).get("cycles") or {}).items() if float(v) <= now}
    return plans, cycles
