"""The trust function (seed 7.1): a reputation credit per node and cluster from what the mesh already carries.

| event in                     | index (asset)                    | observation                                  |
|------------------------------|----------------------------------|----------------------------------------------|
| `infra.registered`           | (the node or cluster)            | its record starts at the priors              |
| `infra.unregistered`         | (the node or cluster)            | its record is dropped                        |
| `knob.applied`               | knob_success (node)              | good                                         |
| `knob.failed`                | knob_success (node)              | bad for hardware, permission, timeout; a bad |
|                              |                                  | command (invalid, unsupported) is not the    |
|                              |                                  | node's fault and counts for nothing           |
| (a knob result not signed by its node's shim, the node itself or the bridge: counts for nothing, with identities |
| on; anyone who can post or reply could forge one)                                                                 |
| (any of the above, a node)   | telemetry_freshness (node)       | its newest telemetry in the store: good      |
|                              |                                  | within 2x the interval, less when older      |
| `deploy.status`              | deploy_success (each cluster)    | good when Applied, bad when Failed           |

When a node's credit falls under `isolate_below` (trust.yaml's update rule), the function also answers with
`io.mapemesh.node.isolated.v1` (seed 5.3: the isolation of a compromised or malfunctioning node, with its GPS
position from its description): the monitor marks the node isolated and placement leaves it out. It says so once
per fall under the threshold; letting the node back in is an operator's (or a policy's) `node.isolated` with
`isolated: false`.

The function does not take every telemetry report (it would double the monitor's work under a telemetry
stream): freshness is judged from the node's telemetry window each time something else is observed.

The indices, their weights and the update rule come from `trust.yaml` beside this file, or the file
MAPEMESH_TRUST_CONFIG names; `mapemesh.trust` is the model (windows of evidence, decay, the weighted credit).
The record lives in the store (kind `trust`, key the asset), so the function scales to zero. When the credit
moved by `report_delta` or more since the last report, the reply is `io.mapemesh.trust.updated.v1`; the monitor
turns it into a `state.changed` (`trust`), and placement policies see the credits in their inputs.
"""

from __future__ import annotations

import logging
import time
from functools import lru_cache
from pathlib import Path
from typing import Any

import mapemesh
from mapemesh import Reply, trust
from mapemesh import events as catalogue
from mapemesh.eventing.cloudevent import CloudEvent
from mapemesh.identity.guard import Guard, reported_by_the_node
from mapemesh.settings import current
from mapemesh.state import StateStore, update

log = logging.getLogger(__name__)
NODE_FAULTS = frozenset({"hardware", "permission", "timeout"})
"""knob.failed codes that say something about the node (the others are about the command)."""
S3_REQUEST = "s3:"
"""A storage gateway's `knob.applied` for a bucket made through S3 (no command was applied)."""


@lru_cache(maxsize=1)
def config() -> trust.TrustConfig:
    return trust.TrustConfig.load(Path(current().trust_config or Path(__file__).parent / "trust.yaml"))


def _observe(store: StateStore, asset: str, kind: str, index: str | None, good: float, cause: CloudEvent,
             extra: dict[str, Any] | None = None) -> list[Reply] | None:
    """One observation into the asset's record (None: only `extra`); a trust.updated reply when it moved enough, and
    a node.isolated when a node's credit fell under `isolate_below`."""
    cfg, now = config(), time.time()
    report: list[catalogue.EventData] = []
    fresh = _freshness(store, asset, now, cfg) if kind == "node" else None

    def change(doc: dict[str, Any] | None) -> dict[str, Any]:
        report.clear()
        doc = {**(doc or {"asset_kind": kind}), **(extra or {})}
        if index is not None:
            doc = trust.observe(cfg, doc, index, good, now)
        if fresh is not None and "telemetry_freshness" in cfg.indices:
            doc = trust.observe(cfg, doc, "telemetry_freshness", fresh, now)
        value = round(trust.credit(cfg, doc, now), 4)
        doc["credit"], doc["updated"] = value, now
        doc["values"] = {name: round(v, 4) for name, v in trust.values(cfg, doc, now).items()}
        previous = doc.get("reported")
        if previous is None or abs(value - previous) >= cfg.report_delta:
            report.append(catalogue.TrustUpdated(asset=asset, asset_kind=kind, credit=value,  # type: ignore[arg-type]
                                                 previous=previous, indices=doc["values"], cause=cause.id))
            doc["reported"] = value
        below = kind == "node" and cfg.isolate_below is not None and value < cfg.isolate_below
        if below and not doc.get("isolated"):
            report.append(catalogue.NodeIsolated(
                node=asset, reason=f"trust credit {value:.2f} fell under {cfg.isolate_below:.2f}", by="trust",
                credit=value, location=_location(store, asset)))
        doc["isolated"] = below
        return doc

    update(store, "trust", asset, change)
    return [Reply(data, subject=asset) for data in report] or None


def _location(store: StateStore, node: str) -> dict[str, Any] | None:
    """The node's position as its description gives it (seed 5.3: the GPS fix), None when it gives none."""
    record = store.get("infrastructure", node)
    description = (record.value.get("description") or {}) if record else {}
    location = (description.get("MLSysOpsNode") or {}).get("location") if isinstance(description, dict) else None
    return location if isinstance(location, dict) else None


def _freshness(store: StateStore, asset: str, now: float, cfg: trust.TrustConfig) -> float | None:
    """How fresh the node's newest telemetry is: 1 within twice the interval, less the older it is; None when it
    never reported (nothing to judge)."""
    newest = max((samples[-1][0] for samples in store.telemetry(asset).values() if samples), default=None)
    if newest is None:
        return None
    allowed = 2 * cfg.telemetry_interval_s
    return min(1.0, allowed / max(now - float(newest), 1e-3))


@mapemesh.on(catalogue.InfraRegistered)
def registered(data: catalogue.InfraRegistered, *, event: CloudEvent, store: StateStore) -> list[Reply] | None:
    if data.kind not in ("node", "cluster") or store.get("trust", data.infra_id) is not None:
        return None
    return _observe(store, data.infra_id, data.kind, None, 0.0, event)


@mapemesh.on(catalogue.InfraUnregistered)
def unregistered(data: catalogue.InfraUnregistered, *, store: StateStore) -> None:
    store.delete("trust", data.infra_id)


@lru_cache(maxsize=1)
def _guard() -> Guard:
    return Guard.from_environment()


def _reported(event: CloudEvent, node: str, knob: str) -> bool:
    """Whether a result of `knob` for `node` comes from what applied the knob (signed by its node shim, the node
    itself, the bridge or the adapter of that knob; `guard.reported_by_the_node`): any other sender could forge one
    to move a credit."""
    if reported_by_the_node(event, node, knob, _guard().anchor()):
        return True
    log.warning("a knob result for %s not signed by its reporter (from %s), left out of its credit", node,
                event.source)
    return False


@mapemesh.on(catalogue.KnobApplied)
def applied(data: catalogue.KnobApplied, *, event: CloudEvent, store: StateStore) -> list[Reply] | None:
    if data.request.startswith(S3_REQUEST) or not _reported(event, data.node, data.knob):
        return None
    return _observe(store, data.node, "node", "knob_success", 1.0, event)


@mapemesh.on(catalogue.KnobFailed)
def failed(data: catalogue.KnobFailed, *, event: CloudEvent, store: StateStore) -> list[Reply] | None:
    if data.code not in NODE_FAULTS or not _reported(event, data.node, data.knob):
        return None
    return _observe(store, data.node, "node", "knob_success", 0.0, event)


@mapemesh.on(catalogue.DeployStatus)
def deployed(data: catalogue.DeployStatus, *, event: CloudEvent, store: StateStore) -> list[Reply] | None:
    if data.status not in ("Applied", "Failed"):
        return None
    good = 1.0 if data.status == "Applied" else 0.0
    replies = [_observe(store, cluster, "cluster", "deploy_success", good, event) for cluster in data.clusters]
    return [r for found in replies for r in found or ()] or None


trust_stage = mapemesh.stage(__name__, source="/mapemesh/trust")
"""Each event's observation into the asset's trust record; a trust.updated when the credit moved."""
