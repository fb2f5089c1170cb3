"""The monitor stage: what happened in the continuum goes into the state store, and `state changed` out.

Telemetry lands in the asset's window; applications and infrastructure are recorded or removed; knob and
deploy results update the mechanism's state and the plan's status (Success once every mechanism of the
plan reported back, Failed as soon as one failed); a mode change is recorded; a node's isolation (or its end) is
marked in its description (`MLSysOpsNode.isolated`, kept across its registrations), which placement honours.
Each answers with a `io.mapemesh.state.changed.v1` reply naming the asset and what changed, which the analyze
stage takes.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import mapemesh
from mapemesh import Reply
from mapemesh import events as catalogue
from mapemesh.eventing.cloudevent import CloudEvent, timestamp
from mapemesh.loop.plan_store import record_result, sweep_now_and_then
from mapemesh.state import StateStore, update

log = logging.getLogger(__name__)

SOURCE = "/mapemesh/monitor"


def _changed(asset: str, kind: str, changed: list[str], cause: CloudEvent) -> Reply:
    data = catalogue.StateChanged(asset=asset, asset_kind=kind, changed=changed, cause=cause.id)  # type: ignore[arg-type]
    return Reply(data, subject=asset)


def _record_mechanisms(store: StateStore, node: str, description: dict[str, Any]) -> None:
    """A node's knobs as its shim registered them: each one's options, and its state then (policies get both as
    `mechanisms[NAME]`)."""
    doc = description.get("MLSysOpsNode") if isinstance(description, dict) else None
    options = (doc or {}).get("mechanism_options") or {}
    states = (doc or {}).get("mechanism_states") or {}
    for name, opts in options.items():
        # The state only where the loop has none yet: a knob.applied it recorded since is newer than this.
        update(store, "mechanisms", f"{node}/{name}", lambda current, o=opts, n=name: {
            **(current or {}), "options": o,
            **({"state": states[n]} if states.get(n) is not None and "state" not in (current or {}) else {}),
            "updated": time.time()})


def _forget_contexts(store: StateStore, asset: str) -> None:
    """Drop every policy's context about an asset that is gone: an application submitted again under the same
    name is a new one, and the policies must see it so (a placement policy remembers what it placed)."""
    for key in store.list("policy_contexts"):
        if key.split("/", 1)[-1] == asset:
            store.delete("policy_contexts", key)


@mapemesh.on(catalogue.TelemetryReported)
def telemetry(data: catalogue.TelemetryReported, *, event: CloudEvent, store: StateStore) -> Reply:
    """Samples into the asset's window."""
    now = time.time()
    store.append_telemetry(data.asset, [(m.name, m.value, m.time.timestamp() if m.time else now)
                                        for m in data.metrics])
    return _changed(data.asset, data.asset_kind, sorted({m.name for m in data.metrics}), event)


@mapemesh.on(catalogue.AppSubmitted)
def submitted(data: catalogue.AppSubmitted, *, event: CloudEvent, store: StateStore) -> Reply | None:
    """An application (or ML model) recorded, unless the name is the other kind's."""
    existing = store.get("applications", data.app_id)
    if existing is not None and existing.value.get("kind", "application") != data.kind:
        log.warning("%s %s not recorded: the name is taken by %s %s", data.kind, data.app_id,
                    existing.value.get("kind", "application"), data.app_id)
        return None  # an application and an ML model never overwrite each other
    store.put("applications", data.app_id, {"description": data.description, "kind": data.kind,
                                            "submitted": time.time()})
    return _changed(data.app_id, "application", ["description"], event)


@mapemesh.on(catalogue.AppRemoved)
def removed(data: catalogue.AppRemoved, *, event: CloudEvent, store: StateStore) -> Reply:
    """An application forgotten, with its policy contexts."""
    store.delete("applications", data.app_id)
    _forget_contexts(store, data.app_id)
    return _changed(data.app_id, "application", ["removed"], event)


def _sent_at(event: CloudEvent) -> float:
    """When the event's source sent it (its `time`; the ingress admits only RFC 3339 ones), now without one."""
    found = timestamp(event.get("time"))
    return found.timestamp() if found is not None else time.time()


@mapemesh.on(catalogue.InfraRegistered)
def registered(data: catalogue.InfraRegistered, *, event: CloudEvent, store: StateStore) -> Reply | None:
    """A node, cluster or continuum recorded (a node's mechanisms too). A registration sent before the latest
    unregistration of the same id, or before the registration recorded, is stale (a broker redelivers and reorders:
    at least once, in no set order) and changes nothing. The times are the senders' (`time`): a sender whose clock
    runs far ahead of another's wins against it; and a registration and an unregistration handled at the same
    instant by two monitor processes are not ordered (the two checks and writes are not one transaction)."""
    sent = _sent_at(event)
    departed = store.get("departed", data.infra_id)
    if departed is not None and float(departed.value.get("at", 0)) >= sent:
        log.info("%s: a registration sent before its unregistration, ignored (event %s)", data.infra_id, event.id)
        return None

    def newer(doc: dict[str, Any] | None) -> bool:
        return doc is not None and float(doc.get("registered_at", 0)) > sent

    current = store.get("infrastructure", data.infra_id)
    stale = [newer(current.value if current is not None else None)]

    def record(doc: dict[str, Any] | None) -> dict[str, Any] | None:
        stale[0] = newer(doc)  # a registration recorded between a Conflict and the retry
        if stale[0]:
            return doc
        description = data.description
        # The node does not know it is isolated: it stays so across its registrations, and across a departure.
        # Merged in the write itself, so that an isolation recorded since the read is kept, not overwritten.
        isolation = _isolation(doc) if doc is not None else (
            departed.value.get("isolated") if departed is not None else None)
        if data.kind == "node" and isolation:
            description = _with_isolation(description, isolation)
        return {"kind": data.kind, "description": description, "registered_at": sent}

    if not stale[0]:
        update(store, "infrastructure", data.infra_id, record, read=[current])
    if stale[0]:
        log.info("%s: a registration older than the one recorded, ignored (event %s)", data.infra_id, event.id)
        return None
    if data.kind == "node":
        _record_mechanisms(store, data.infra_id, data.description)
    return _changed(data.infra_id, data.kind, ["description"], event)


@mapemesh.on(catalogue.InfraUnregistered)
def unregistered(data: catalogue.InfraUnregistered, *, event: CloudEvent, store: StateStore) -> Reply | None:
    """Infrastructure forgotten, with its policy contexts; when it went is kept (`departed`), so that a stale
    registration delivered later does not bring it back. An unregistration sent before the record's registration
    is stale and changes nothing."""
    sent = _sent_at(event)
    previous = store.get("infrastructure", data.infra_id)
    if previous is not None and float(previous.value.get("registered_at", 0)) > sent:
        log.info("%s: an unregistration sent before its registration, ignored (event %s)", data.infra_id, event.id)
        return None
    isolation = _isolation(previous.value if previous else None)
    update(store, "departed", data.infra_id, lambda doc: {
        **({"isolated": isolation} if isolation else {}), "at": max(sent, float((doc or {}).get("at", 0)))})
    store.delete("infrastructure", data.infra_id)
    _forget_contexts(store, data.infra_id)
    kind = str(previous.value.get("kind", "node")) if previous else "node"
    return _changed(data.infra_id, kind, ["removed"], event)


@mapemesh.on(catalogue.KnobApplied)
def applied(data: catalogue.KnobApplied, *, store: StateStore) -> None:
    """A mechanism's new state, and its plan's result (one write of both). No `state.changed`: a mechanism's state
    is the loop's own doing, which no policy is asked about (it is in their next inputs), so the hop would always
    be dropped."""
    record_result(store, data.plan_id, data.knob, True, None, _idle_note(data), state=(data.node, data.after))


def _idle_note(data: catalogue.KnobApplied) -> str | None:
    """What the plan's status says of a change that needed its accelerator idle (a knob whose state has
    `last_reconfiguration.needs_idle`, the FPGABitstream's): the functions drained for it."""
    last = data.after.get("last_reconfiguration") if not data.noop else None
    if not isinstance(last, dict) or not last.get("needs_idle"):
        return None
    drained = [str(s) for s in last.get("drained") or []]
    if last.get("forced"):
        done = "nothing could drain its functions: the command's force said they were idle"
    else:
        done = f"drained {', '.join(drained)} first, released after" if drained else "no function used it"
    return "needed the accelerator idle (as a reboot would): " + done


@mapemesh.on(catalogue.KnobFailed)
def failed(data: catalogue.KnobFailed, *, store: StateStore) -> None:
    """A mechanism's failure: its plan failed (no `state.changed`, as for `applied`)."""
    record_result(store, data.plan_id, data.knob, False, f"{data.code}: {data.error}")


@mapemesh.on(catalogue.DeployStatus)
def deployed(data: catalogue.DeployStatus, *, event: CloudEvent, store: StateStore) -> Reply:
    """The deploy function's word on a placement: the plan's result, and whether the application runs."""
    record_result(store, data.plan_id, None, data.status != "Failed", data.message)
    if data.deployed is not None:  # the deploy function's later word on whether the application runs
        update(store, "deployments", data.app_id,
               lambda doc: None if doc is None else {**doc, "deployed": data.deployed, "message": data.message})
    return _changed(data.app_id, "application", ["deployment"], event)


@mapemesh.on(catalogue.ModeChanged)
def mode(data: catalogue.ModeChanged, *, event: CloudEvent, store: StateStore) -> Reply:
    """The management mode and manual override."""
    store.put("settings", "mode", {"mode": data.mode, "manual_override": data.manual_override})
    return _changed("continuum", "continuum", ["mode"], event)


def _isolation(record: dict[str, Any] | None) -> dict[str, Any] | None:
    """The isolation marked in an infrastructure record's node description, or None."""
    doc = ((record or {}).get("description") or {}) if isinstance(record, dict) else {}
    node = doc.get("MLSysOpsNode") if isinstance(doc, dict) else None
    return node.get("isolated") if isinstance(node, dict) else None


def _with_isolation(description: dict[str, Any], isolation: dict[str, Any] | None) -> dict[str, Any]:
    node = {k: v for k, v in (description.get("MLSysOpsNode") or {}).items() if k != "isolated"}
    return {**description, "MLSysOpsNode": {**node, **({"isolated": isolation} if isolation else {})}}


@mapemesh.on(catalogue.NodeIsolated)
def isolated(data: catalogue.NodeIsolated, *, event: CloudEvent, store: StateStore) -> Reply | None:
    """A node isolated (or let back in): marked in its description, so placement leaves it out; the placement
    policies are asked again (a component on it moves away). A node that departed keeps the mark (or loses it) for
    when it registers again."""
    mark = {"reason": data.reason, "by": data.by, "at": _sent_at(event),
            **({"credit": data.credit} if data.credit is not None else {}),
            **({"location": data.location} if data.location else {})} if data.isolated else None
    found: list[bool] = []

    def change(doc: dict[str, Any] | None) -> dict[str, Any] | None:
        found.clear()
        if doc is None or doc.get("kind") != "node":
            return doc
        found.append(True)
        return {**doc, "description": _with_isolation(doc.get("description") or {}, mark)}

    update(store, "infrastructure", data.node, change)
    # What a departed node comes back with (`registered`): a lift clears it even while the node is registered, so
    # that an isolation it departed with does not come back after its next departure.
    kept = None
    if not found or mark is None:
        kept = update(store, "departed", data.node, lambda doc: None if doc is None else {
            **{k: v for k, v in doc.items() if k != "isolated"}, **({"isolated": mark} if mark else {})})
    if not found:
        if kept is None:
            log.warning("isolation of %s: no such node registered (event %s)", data.node, event.id)
        else:
            log.warning("node %s, departed, %s by %s: %s", data.node, "isolated" if data.isolated else "let back in",
                        data.by, data.reason)
        return None
    log.warning("node %s %s by %s: %s", data.node, "isolated" if data.isolated else "let back in", data.by,
                data.reason)
    return _changed(data.node, "node", ["isolated"], event)


@mapemesh.on(catalogue.TrustUpdated)
def trusted(data: catalogue.TrustUpdated, *, event: CloudEvent, store: StateStore) -> Reply | None:
    """A credit moved (the trust function keeps it): placement may have to follow (a component with a trust
    minimum leaves a node that fell under it). Said only when some application asks for a minimum: otherwise no
    policy's answer can change."""
    if not any(_asks_trust(doc.value.get("description", doc.value)) for doc in store.list("applications").values()):
        return None
    return _changed(data.asset, data.asset_kind, ["trust"], event)


def _asks_trust(description: Any) -> bool:
    app = (description or {}).get("MLSysOpsApp", description) if isinstance(description, dict) else {}
    return any(isinstance(c, dict) and c.get("min_trust") is not None for c in (app or {}).get("components") or [])


monitor = mapemesh.stage(__name__, source=SOURCE, before=sweep_now_and_then)  # plans time out with no new plan
"""Record what each event reports; reply with what changed."""
