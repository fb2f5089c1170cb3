"""Testing a policy offline: recorded events replayed through it, and the plans it would make.

Events (CloudEvents of the catalogue, one structured event per line) update a private state store as the
monitor stage would: applications, infrastructure and telemetry. After each telemetry event the policy is
asked to analyze the asset (no sooner than its `analyze_interval` after the last time, in event time) and,
when it says so, to plan; each plan goes through the scheduler as the loop would schedule it.
"""

from __future__ import annotations

import tempfile
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from mapemesh import events as catalogue
from mapemesh.eventing.cloudevent import CloudEvent, timestamp
from mapemesh.loop.plans import Discard, Plan, schedule_cycle
from mapemesh.policy.inputs import gather
from mapemesh.policy.loader import Policy, PolicyFailure
from mapemesh.state.sqlite import SQLiteStore

TEN_YEARS_S = 10 * 365 * 86400.0  # recorded telemetry may be old: keep all of it during a replay


@dataclass
class Replay:
    """What a replay saw and what the policy would have done."""

    events: int = 0
    skipped: list[str] = field(default_factory=list)
    analyses: int = 0
    spaced: int = 0
    verdicts: list[tuple[str, str, bool]] = field(default_factory=list)
    """(event id, asset, verdict)"""
    plans: list[Plan] = field(default_factory=list)
    discards: list[Discard] = field(default_factory=list)
    failures: list[tuple[str, PolicyFailure]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready summary."""
        return {
            "events": self.events, "skipped": self.skipped, "analyses": self.analyses, "spaced": self.spaced,
            "verdicts": [{"event": e, "asset": a, "verdict": v} for e, a, v in self.verdicts],
            "plans": [{"plan_id": p.plan_id, "asset": p.asset, "status": p.status, "mechanisms": p.mechanisms,
                       "event": p.inputs.get("event")} for p in self.plans],
            "discarded": [{"plan_id": d.plan.plan_id, "winner": d.winner.plan_id, "mechanism": d.mechanism}
                          for d in self.discards],
            "failures": [{"event": e, "method": f.method, "error": f.error, "traceback": f.traceback}
                         for e, f in self.failures],
        }


def _when(event: CloudEvent, fallback: float) -> float:
    found = timestamp(event.attributes.get("time"))
    return found.timestamp() if found is not None else fallback


async def replay(policy: Policy, events: Iterable[CloudEvent], store: SQLiteStore | None = None) -> Replay:
    """Run `events` through `policy` against a private state store; nothing leaves this process."""
    with tempfile.TemporaryDirectory(prefix="mapemesh-replay-") as tmp:
        store = store or SQLiteStore(Path(tmp) / "state.db", retention_s=TEN_YEARS_S)
        try:
            return await _replay(policy, events, store)
        finally:
            store.close()


async def _replay(policy: Policy, events: Iterable[CloudEvent], store: SQLiteStore) -> Replay:
    declaration = await policy.initialize()
    context: dict[str, Any] = dict(declaration.context)
    out = Replay()
    last_analyzed: dict[str, float] = {}
    current: dict[str, dict[str, Any]] = {}
    for n, event in enumerate(events):
        out.events += 1
        try:
            data = catalogue.parse_data(event)
        except (catalogue.UnknownEventType, ValidationError, ValueError) as exc:
            out.skipped.append(f"{event.id}: {type(exc).__name__}: {exc}")
            continue
        at = _when(event, float(n))
        if isinstance(data, catalogue.AppSubmitted):
            store.put("applications", data.app_id, {"description": data.description})
        elif isinstance(data, catalogue.AppRemoved):
            store.delete("applications", data.app_id)
        elif isinstance(data, catalogue.InfraRegistered):
            store.put("infrastructure", data.infra_id, {"kind": data.kind, "description": data.description})
        elif isinstance(data, catalogue.InfraUnregistered):
            store.delete("infrastructure", data.infra_id)
        elif isinstance(data, catalogue.TelemetryReported):
            store.append_telemetry(data.asset, [
                (m.name, m.value, m.time.timestamp() if m.time else at) for m in data.metrics])
            if declaration.scope == "application" and store.get("applications", data.asset) is None:
                continue  # an application-scope policy analyzes applications only
            if at - last_analyzed.get(data.asset, float("-inf")) < declaration.analyze_interval_s:
                out.spaced += 1
                continue
            last_analyzed[data.asset] = at
            context = await _analyze_and_plan(policy, store, declaration, data.asset, event, context, current, out)
    return out


async def _analyze_and_plan(policy: Policy, store: SQLiteStore, declaration: Any, asset: str, event: CloudEvent,
                            context: dict[str, Any], current: dict[str, dict[str, Any]],
                            out: Replay) -> dict[str, Any]:
    out.analyses += 1
    inputs = gather(store, declaration, asset, context=context, current_plan=current.get(asset))
    answer = await policy.analyze(inputs)
    if isinstance(answer, PolicyFailure):
        out.failures.append((event.id, answer))
        return context
    verdict, context = answer
    out.verdicts.append((event.id, asset, verdict))
    if not verdict:
        return context
    planned = await policy.plan({**inputs, "context": context})
    if isinstance(planned, PolicyFailure):
        out.failures.append((event.id, planned))
        return context
    mechanisms, context = planned
    if mechanisms and mechanisms != current.get(asset):
        plan = Plan(str(uuid.uuid4()), policy.name, asset, mechanisms, core=declaration.core,
                    inputs={"event": event.id, "telemetry": inputs["telemetry"]["data"]})
        scheduled, discarded = schedule_cycle([plan], cycle=len(out.plans) + 1)
        out.plans.append(plan)
        out.discards += discarded
        if scheduled:
            current[asset] = mechanisms
    return context
