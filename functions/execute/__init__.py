"""The execute stage: a scheduled plan in, each mechanism's command out to whoever applies it.

- Knob mechanisms (CPUFrequency, RAPLPowerCap, NVIDIAGPUFrequency, ...) go to the node shim of the plan's
  node as `knob.apply` events with the extension `node` (the shim's Trigger filters on it) and `knob` (the
  mechanism: an adapter function that applies one mechanism for every cluster, UPFSelect or JobOrder, filters
  on that).
- Placement mechanisms go to the deploy function as one `deploy.requested`:
  `ClusterPlacement` `{"placement": {component: [cluster, ...]}}` and
  `ComponentPlacement` `{"nodes": {component: node}}`; the plan's asset is the application.

The plan becomes Pending; the monitor stage marks it Success or Failed from the results, and the schedule
stage fails it when no result comes within its timeout. A redelivered plan is dispatched again (applying a
knob command twice is a no-op at the shim).
"""

from __future__ import annotations

from pydantic import ValidationError

import mapemesh
from mapemesh import events as catalogue
from mapemesh.eventing.cloudevent import CloudEvent
from mapemesh.loop import plan_store
from mapemesh.loop.plans import DEPLOY_MECHANISMS
from mapemesh.state import StateStore

SOURCE = "/mapemesh/execute"


def commands(plan: catalogue.PlanScheduled) -> list[CloudEvent]:
    """The events that carry out a plan; ValueError for a command that cannot be carried out."""
    out: list[CloudEvent] = []
    placement: dict[str, list[str]] = {}
    nodes: dict[str, str] = {}
    deploy = False
    for mechanism, command in plan.mechanisms.items():
        if not isinstance(command, dict):
            raise ValueError(f"{mechanism}: the command must be a dict, not {type(command).__name__}")
        if mechanism == "ClusterPlacement":
            deploy = True
            raw = command.get("placement")
            if not isinstance(raw, dict) or not all(isinstance(v, list) for v in raw.values()):
                raise ValueError("ClusterPlacement: 'placement' must map each component to a list of clusters")
            placement.update({str(k): [str(c) for c in v] for k, v in raw.items()})
        elif mechanism == "ComponentPlacement":
            deploy = True
            raw = command.get("nodes")
            if not isinstance(raw, dict):
                raise ValueError("ComponentPlacement: 'nodes' must map each component to a node")
            nodes.update({str(k): str(v) for k, v in raw.items()})
        else:
            data = catalogue.KnobApply(node=plan.asset, knob=mechanism, command=command, plan_id=plan.plan_id,
                                       requested_by=f"policy/{plan.policy}")
            out.append(catalogue.make_event(data, SOURCE, subject=plan.asset,
                                           extensions={"node": plan.asset, "knob": mechanism}))
    if deploy:
        data = catalogue.DeployRequested(app_id=plan.asset, plan_id=plan.plan_id, placement=placement, nodes=nodes)
        out.append(catalogue.make_event(data, SOURCE, subject=plan.asset))
    return out


@mapemesh.on(catalogue.PlanScheduled)
def scheduled(scheduled: catalogue.PlanScheduled, *, store: StateStore) -> list[CloudEvent] | None:
    """Dispatch a scheduled plan's commands; the plan becomes Pending."""
    try:
        out = commands(scheduled)
    except (ValueError, ValidationError) as exc:
        plan_store.dispatch(store, scheduled.plan_id, "Failed", f"cannot execute: {exc}")
        return None
    # Pending before the commands leave, so a fast result never finds the plan still Scheduled (one write,
    # which also tells what the plan was: one finished meanwhile, failed by its timeout say, sends nothing).
    before = plan_store.dispatch(store, scheduled.plan_id, "Pending")
    if before is not None and before not in ("Scheduled", "Pending"):
        return None
    return out


execute = mapemesh.stage(__name__, source=SOURCE)
"""Knob commands to the plan's node (extension `node`), placements to the deploy function."""

__all__ = ["DEPLOY_MECHANISMS", "commands", "execute"]
