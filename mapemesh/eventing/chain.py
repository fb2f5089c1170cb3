"""The causal chain of a reaction, read back from the broker's log: which event caused which, through which
Trigger, and how long each hop took (what `mapemesh trace` prints; no collector needed).

Every event carries a `traceparent` (`mapemesh.tracing`) whose span id is the hop that made it: `derive(D,
"function")` for an event a function sent, `derive(D, "knob apply")` for the node shim's answer, where D is
`delivery_span(parent's span, trigger, cause's id)`, the delivery of its cause through a Trigger. The log keeps
each event's deliveries (the Triggers it went to), so the chain is rebuilt by computing those ids for every event
of the trace.

A hop's latency is the time from its cause's arrival at the broker to its own (delivery, the function's work, and
its reply's way back in): along one path they add up to the path's end to end.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from mapemesh import tracing
from mapemesh.eventing.log import LoggedEvent, read_after

LABELS = ("function", "knob apply")
PLAN_TYPES = ("io.mapemesh.plan.proposed.v1", "io.mapemesh.plan.scheduled.v1", "io.mapemesh.knob.apply.v1",
              "io.mapemesh.deploy.requested.v1")


class TraceNotFound(LookupError):
    """No event of the log matches the id (it was never there, or it has been compacted away)."""


@dataclass(slots=True)
class Step:
    """One event of a trace: what caused it and through which Trigger."""

    logged: LoggedEvent
    parent: Step | None = None
    via: str | None = None
    """The Trigger that delivered the parent to whatever sent this event."""
    label: str | None = None
    """`function`, or `knob apply` for the node shim's answer."""
    children: list[Step] = field(default_factory=list)

    @property
    def at(self) -> float:
        """When the broker accepted the event (seconds since the epoch)."""
        return self.logged.received_ns / 1e9

    @property
    def latency_ms(self) -> float:
        """From its cause's arrival to its own (0 for the root)."""
        return 0.0 if self.parent is None else (self.logged.received_ns - self.parent.logged.received_ns) / 1e6


@dataclass(slots=True)
class Trace:
    """A trace's events as a tree, the root first."""

    trace_id: str
    root: Step
    steps: list[Step]

    def path_to(self, step: Step) -> list[Step]:
        """The steps from the root to `step`."""
        out: list[Step] = []
        current: Step | None = step
        while current is not None:
            out.append(current)
            current = current.parent
        return out[::-1]

    def last(self, event_type: str | None = None) -> Step:
        """The latest step (of `event_type`, when given; the latest of all when none has it)."""
        chosen = [s for s in self.steps if event_type is None or s.logged.event.type == event_type]
        return max(chosen or self.steps, key=lambda s: s.logged.received_ns)

    @property
    def end_to_end_ms(self) -> float:
        return (self.last().logged.received_ns - self.root.logged.received_ns) / 1e6

    def to_dict(self) -> dict[str, Any]:
        """The trace as JSON: each event with its parent, the Trigger it came through, and its latency."""
        return {"trace_id": self.trace_id, "end_to_end_ms": round(self.end_to_end_ms, 3), "events": [
            {"seq": s.logged.seq, "id": s.logged.event.id, "type": s.logged.event.type,
             "source": s.logged.event.get("source"), "subject": s.logged.event.get("subject"),
             "policy": s.logged.event.get("policy"), "parent": s.parent.logged.event.id if s.parent else None,
             "via": s.via, "by": s.label, "offset_ms": round((s.logged.received_ns - self.root.logged.received_ns)
                                                             / 1e6, 3),
             "latency_ms": round(s.latency_ms, 3), "summary": summary(s.logged.event)} for s in self.steps]}


def summary(event: Any) -> dict[str, Any]:
    """What an event says in a word or two (its knob and command, a plan's mechanisms): for reading a trace."""
    try:
        data = json.loads(event.data) if event.data else None
    except (ValueError, UnicodeDecodeError):
        return {}
    if not isinstance(data, dict):
        return {}
    out = {k: data[k] for k in ("asset", "knob", "command", "after", "status", "verdict") if data.get(k) is not None}
    for key in ("mechanisms", "plan"):  # commands (a plan's), not a policy's inputs (mechanisms' states)
        value = data.get(key)
        if isinstance(value, dict) and value and all(isinstance(v, dict) and "command" in v for v in value.values()):
            out[key] = value
    return out


def find(db: sqlite3.Connection, ident: str) -> Trace:
    """The trace of an event id, a plan id or a trace id; TraceNotFound when the log holds none of them."""
    events = read_after(db)
    trace_id = _trace_of(events, ident)
    if trace_id is None:
        raise TraceNotFound(f"no event, plan or trace {ident!r} in the log (events are kept for "
                            "MAPEMESH_LOG_RETENTION_S after they are handled)")
    return build(db, [e for e in events if (hop := tracing.of(e.event.attributes)) and hop.trace_id == trace_id],
                 trace_id)


def _trace_of(events: list[LoggedEvent], ident: str) -> str | None:
    for logged in events:
        hop = tracing.of(logged.event.attributes)
        if hop is not None and (logged.event.id == ident or hop.trace_id == ident):
            return hop.trace_id
    for logged in events:  # a plan id, in the data of the plan's events (the first: its proposal)
        if logged.event.type in PLAN_TYPES and logged.event.data and ident.encode() in logged.event.data:
            try:
                plan_id = json.loads(logged.event.data).get("plan_id")
            except (ValueError, AttributeError):
                continue
            hop = tracing.of(logged.event.attributes)
            if plan_id == ident and hop is not None:
                return hop.trace_id
    return None


def build(db: sqlite3.Connection, events: Iterable[LoggedEvent], trace_id: str) -> Trace:
    """The tree of a trace's events (in log order), linked through their deliveries."""
    ordered = sorted(events, key=lambda e: e.seq)
    if not ordered:
        raise TraceNotFound(f"trace {trace_id} has no event in the log")
    steps = {e.seq: Step(e) for e in ordered}
    via = _deliveries(db, list(steps))
    causes: dict[str, tuple[Step, str, str]] = {}
    for step in steps.values():
        hop = tracing.of(step.logged.event.attributes)
        assert hop is not None
        for trigger in via.get(step.logged.seq, ()):
            delivery = tracing.delivery_span(hop.span_id, trigger, step.logged.event.id)
            for label in LABELS:
                causes[tracing.derive(delivery, label)] = (step, trigger, label)
    root: Step | None = None
    for step in steps.values():
        hop = tracing.of(step.logged.event.attributes)
        cause = causes.get(hop.span_id) if hop is not None else None
        if cause is None or cause[0] is step:
            root = root or step
            continue
        step.parent, step.via, step.label = cause
        cause[0].children.append(step)
    assert root is not None
    return Trace(trace_id, root, list(steps.values()))


def _deliveries(db: sqlite3.Connection, seqs: list[int]) -> dict[int, list[str]]:
    out: dict[int, list[str]] = {}
    for i in range(0, len(seqs), 500):
        chunk = seqs[i:i + 500]
        rows = db.execute(f"SELECT seq, subscription FROM deliveries WHERE seq IN ({','.join('?' * len(chunk))})",
                          chunk).fetchall()
        for seq, subscription in rows:
            out.setdefault(seq, []).append(subscription)
    return out
