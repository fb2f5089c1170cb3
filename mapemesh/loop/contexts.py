"""Policy contexts: what the loop keeps per (policy, asset), and the rule that spaces analyses out.

One document per (policy, asset) in `policy_contexts`, key `POLICY/ASSET`:

| field             | what                                                                               |
|-------------------|------------------------------------------------------------------------------------|
| `context`         | the policy's own context, as its last answer returned it                           |
| `declared`        | the context `initialize` declared (a redeployed policy with a new one starts over) |
| `current_plan`    | the policy's last plan for the asset: `{plan_id, mechanisms}`                      |
| `last_analyzed`   | when the last analysis was let through                                             |
| `in_flight_since` | set while an analysis waits for its answer (the plan stage releases it)            |
| `rerun`           | a change that came while one was in flight: analyzed again once it has answered    |
| `deferred_until`  | a change came within `analyze_interval` of the last analysis: its analysis is due  |
|                   | then, held by a deferral event in the broker (see `claim`), not by a process       |

`claim` decides for each change: analyze now, coalesce (into the analysis in flight or the one due), or defer.
A deferred analysis is held by the process that deferred it (a timer), and by the broker once that process
stops: it hands it over as an event (`again(..., deferred=True)`: a `state.changed` for that policy with the
extension `deferred`), which the analyze stage answers with a `TemporaryError` (503 + Retry-After) until it is
due, so the broker keeps it and redelivers it. A function scaled to zero meanwhile loses nothing; one killed
outright (no SIGTERM) leaves `deferred_until` behind, and the next change after STALE_DEFERRAL_S claims anew.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from mapemesh import events as catalogue
from mapemesh import tracing
from mapemesh.eventing.cloudevent import CloudEvent
from mapemesh.state import StateStore, Versioned, update

STALE_DEFERRAL_S = 30.0
"""A deferral whose event was lost (dead-lettered after its retries) is taken over this long after it was due."""
IN_FLIGHT_STALE_S = 60.0
"""An analysis whose answer never came (its policy function kept failing) stops holding others after this."""
DEFERRED = "deferred"
"""The extension marking a deferred analysis's event (`true`)."""
NOW, COALESCED = 0.0, None


def key(policy: str, asset: str) -> str:
    return f"{policy}/{asset}"


def context_ref(policy: str, asset: str) -> tuple[str, str]:
    """The (policy, asset) document's ref (`mapemesh.state.Ref`)."""
    return "policy_contexts", key(policy, asset)


MODE = ("settings", "mode")
"""Where the management mode is kept (a ref, to read it with other documents: `mode_in`)."""


def mode_of(store: StateStore) -> tuple[str, bool]:
    """(management mode, manual override) as the state store has them; heuristic and off by default."""
    doc = store.get(*MODE)
    return mode_in(doc.value if doc else None)


def mode_in(doc: dict[str, Any] | None) -> tuple[str, bool]:
    """`mode_of` from the mode's document as read (None: never set)."""
    value = doc or {}
    return str(value.get("mode") or "heuristic"), bool(value.get("manual_override"))


def claim(store: StateStore, policy: str, asset: str, interval_s: float, now: float | None = None, *,
          rerun: dict[str, Any] | None = None, deferred: bool = False,
          into: dict[str, Any] | None = None, read: list[Versioned | None] | None = None) -> float | None:
    """May (policy, asset) be analyzed now?

    0 (`NOW`): yes, and the analysis is recorded as in flight until the plan stage sees its answer. Seconds: not
    before then; the caller holds the change as a deferral event (`deferral`), which claims again with
    `deferred=True` when redelivered. None (`COALESCED`): the change joins an analysis that is due already, or one
    in flight, which then runs once more when it has answered (with `rerun`, the first change that came
    meanwhile: the new analysis reads the state as it is then). So one (policy, asset) has one analysis at a
    time, on the latest state, and no change is lost. `into` receives the document as written (the request
    builder then need not read it again). `read`: `[the document as the caller just read it]` (not read again).
    """
    now = time.time() if now is None else now
    current = read.pop() if read else store.get("policy_contexts", key(policy, asset))
    if current is not None and not deferred:  # the common case under a stream of telemetry: nothing to write
        doc = current.value
        since, due = doc.get("in_flight_since"), doc.get("deferred_until")
        if since is not None and now - float(since) < IN_FLIGHT_STALE_S and doc.get("rerun"):
            return COALESCED
        if since is None and due is not None and now <= float(due) + STALE_DEFERRAL_S:
            return COALESCED
    first = [current]  # the read above is the versioned write's first read: no second one
    verdict: list[float | None] = [COALESCED]

    def change(doc: dict[str, Any] | None) -> dict[str, Any] | None:
        doc = dict(doc or {})
        last = float(doc.get("last_analyzed") or 0.0)
        since, due = doc.get("in_flight_since"), doc.get("deferred_until")
        if since is not None and now - float(since) < IN_FLIGHT_STALE_S:
            verdict[0] = COALESCED
            doc["rerun"] = doc.get("rerun") or _rerun(rerun)
            doc.pop("deferred_until", None)  # the rerun carries it now
            return doc
        if due is not None and not deferred and now <= float(due) + STALE_DEFERRAL_S:
            verdict[0] = COALESCED  # a deferral event holds the analysis due; it will see this change too
            return doc
        if now - last >= interval_s and (due is None or now >= float(due)):
            verdict[0] = NOW
            doc.update(last_analyzed=now, in_flight_since=now)
            doc.pop("deferred_until", None)
            doc.pop("rerun", None)
            return doc
        due = float(due) if due is not None else last + interval_s
        verdict[0] = max(due - now, 0.001)
        doc["deferred_until"] = due
        return doc

    written = update(store, "policy_contexts", key(policy, asset), change, read=first)
    if into is not None and written is not None:
        into.update(written.value)
    return verdict[0]


def _rerun(change: dict[str, Any] | None) -> dict[str, Any]:
    change = change or {}
    return {"asset_kind": change.get("asset_kind") or "node", "changed": list(change.get("changed") or ["description"]),
            "cause": change.get("cause"), "traceparent": change.get("traceparent")}


def again(policy: str, asset: str, change: dict[str, Any] | None, source: str, *, deferred: bool = False
          ) -> CloudEvent:
    """The `state.changed` that asks `policy` alone (extension `policy`) about `asset` again: a rerun, or a
    deferral (extension `deferred`), in the trace of the change it stands for."""
    change = _rerun(change)
    data = catalogue.StateChanged(asset=asset, asset_kind=change["asset_kind"], changed=change["changed"],
                                  cause=change.get("cause"))
    extensions = {"policy": policy, **({DEFERRED: "true"} if deferred else {})}
    event = catalogue.make_event(data, source, subject=asset, extensions=extensions)
    if change.get("traceparent"):  # the coalesced change's effect, in its trace
        event.attributes[tracing.ATTRIBUTE] = change["traceparent"]
    return event


def release(store: StateStore, policy: str, asset: str, source: str) -> CloudEvent | None:
    """The analysis of (policy, asset) has answered: clear it; the change to analyze again, if one came meanwhile
    (a `state.changed` for this policy only, see `again`)."""
    rerun: list[dict[str, Any] | None] = [None]

    def change(doc: dict[str, Any] | None) -> dict[str, Any] | None:
        if doc is None:
            return None
        doc = dict(doc)
        doc.pop("in_flight_since", None)
        rerun[0] = doc.pop("rerun", None)
        return doc

    update(store, "policy_contexts", key(policy, asset), change)
    return again(policy, asset, rerun[0], source) if rerun[0] else None


@dataclass
class Answer:
    """A policy's answer for (policy, asset) as its context document records it (`answered`): its new context
    (and the one `initialize` declared), its verdict, the plan it made, and whether the analysis is `over`."""

    context: dict[str, Any] | None = None
    declared: dict[str, Any] | None = None
    verdict: bool | None = None
    plan: dict[str, Any] | None = None
    over: bool = True
    rerun: dict[str, Any] | None = field(default=None, init=False)
    """What `apply` found to analyze again (a change that came while the analysis was in flight)."""

    def apply(self, doc: dict[str, Any] | None, asset: str) -> dict[str, Any]:
        """The context document with this answer recorded (for a versioned write: it may run more than once)."""
        now = time.time()
        doc = dict(doc or {})
        if self.context is not None:
            doc.update(context=self.context, declared=self.declared)
        if self.verdict is not None:
            doc["analyses"] = int(doc.get("analyses", 0)) + 1
            doc["verdicts"] = int(doc.get("verdicts", 0)) + (1 if self.verdict else 0)
            doc["last_verdict"] = {"at": now, "asset": asset, "verdict": self.verdict}
        if self.plan is not None:
            doc["current_plan"] = self.plan
            doc["plans"] = int(doc.get("plans", 0)) + 1
        self.rerun = None
        if self.over:
            doc.pop("in_flight_since", None)
            self.rerun = doc.pop("rerun", None)
        return doc

    def again(self, policy: str, asset: str, source: str) -> CloudEvent | None:
        """The rerun `apply` found, as the event that asks for it (`again`), or None."""
        return again(policy, asset, self.rerun, source) if self.rerun else None


def answered(store: StateStore, policy: str, asset: str, source: str, *, context: dict[str, Any] | None = None,
             declared: dict[str, Any] | None = None, verdict: bool | None = None, plan: dict[str, Any] | None = None,
             over: bool = True) -> tuple[dict[str, Any], CloudEvent | None]:
    """A policy's answer for (policy, asset), recorded in one write: its new context, the counts the registry
    shows (`analyses`, `verdicts`, `plans`, `last_verdict`; `mapemesh.policy.registry.stats` sums them), the plan
    it made (`current_plan`), and, when the analysis is `over`, its release (`release`'s rerun, if any)."""
    answer = Answer(context, declared, verdict, plan, over)
    written = update(store, "policy_contexts", key(policy, asset), lambda doc: answer.apply(doc, asset))
    assert written is not None
    return written.value, answer.again(policy, asset, source)


def merge(store: StateStore, policy: str, asset: str, **fields: Any) -> dict[str, Any]:
    """Merge `fields` into the (policy, asset) document; return it."""
    result = update(store, "policy_contexts", key(policy, asset), lambda doc: {**(doc or {}), **fields})
    assert result is not None
    return result.value
