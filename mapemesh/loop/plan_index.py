"""When the sweep must look at each plan and scheduling cycle next: an index by time, so that a sweep reads what is
due, never every plan the store keeps (finished plans are kept a day).

| document                   | holds                                                                          |
|----------------------------|--------------------------------------------------------------------------------|
| `plan_index/BUCKET`        | `{"plans": {plan_id: due}, "cycles": {cause: due}}`: what falls due in that    |
|                            | bucket of time (BUCKET_S wide; the key is the bucket's number, zero-padded)    |
| `settings/sweep`           | `{"through": BUCKET}`: the last bucket a sweep has taken in full               |

The rule that keeps it right: every plan and cycle in the store has an entry at or before the time it next falls
due (a Pending plan's timeout, a Queued or Scheduled one's, a finished one's retention, a cycle's retention). A
writer adds one where that time comes earlier than the entry it has: a new plan (Queued), a plan going Pending, a
new cycle. Any other change only makes a plan fall due later (a result, a decision, a finish), and the sweep, taking
the entry, looks at the plan as it is then and files it again under its real time. An entry for a plan that is
gone is dropped. A store written before the index is indexed once, by one full read, on its first sweep.
"""

from __future__ import annotations

from typing import Any

from mapemesh.state import Ref

BUCKET_S = 5.0
"""How wide a bucket is (the sweep runs every few seconds: a plan fails at most this much after its timeout)."""
MAX_BUCKETS = 2000
"""At most this many buckets per sweep (a sweep that has not run for a long time catches up over several)."""
SWEEP: Ref = ("settings", "sweep")


def bucket(t: float) -> int:
    return int(t // BUCKET_S)


def ref(number: int) -> Ref:
    """The index document of bucket `number`."""
    return "plan_index", f"{number:012d}"


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


def remove(doc: dict[str, Any] | None, *, plans: set[str], cycles: set[str]) -> dict[str, Any] | None:
    """The bucket's document without the entries a sweep took (None: nothing left, the document goes)."""
    left_plans = {k: v for k, v in ((doc or {}).get("plans") or {}).items() if k not in plans}
    left_cycles = {k: v for k, v in ((doc or {}).get("cycles") or {}).items() if k not in cycles}
    return {"plans": left_plans, "cycles": left_cycles} if left_plans or left_cycles else None


def entries(doc: dict[str, Any] | None, now: float) -> tuple[dict[str, float], dict[str, float]]:
    """(plans, cycles) of a bucket's document that are due by `now` (inf: all of them)."""
    plans = {k: float(v) for k, v in ((doc or {}).get("plans") or {}).items() if float(v) <= now}
    cycles = {k: float(v) for k, v in ((doc or {}).get("cycles") or {}).items() if float(v) <= now}
    return plans, cycles
