"""The JobOrder adapter (seed 5.2): a `knob.apply` of a datacenter's `JobOrder` mechanism in, the order sent to
the scheduler's configuration endpoint, `knob.applied` (the batch and order before and after, read back) or
`knob.failed` out.

The command is `{"command": "set", "batch": BATCH, "order": [JOB, ...]}` (and, from the job-order policy, perhaps
`"unplaceable": {JOB: WHY}`, the jobs it put last because the cluster can never start them: logged, not sent); the
asset is the node the datacenter's scheduler is registered as (its `JobOrder` options are the arriving batch and the
cluster's occupancy; `mapemesh.sim.datacenter` registers one). The scheduler's API
(`mapemesh.adapters.endpoint`: per cluster, from the endpoints file):

    PUT {API}/order  {"batch": BATCH, "order": [...]}      GET {API}/order  ->  {"batch": ..., "order": [...]}

A batch the scheduler does not have, an order that is not a permutation of it, or a command of another shape
fails as `invalid`; an API that does not answer in time as `timeout`; one that answers an error or a malformed
document, or reads back another order, as `hardware` (`mapemesh.adapters.through`).
"""

from __future__ import annotations

import logging
from typing import Any

import httpx

import mapemesh
from mapemesh import adapters
from mapemesh import events as catalogue
from mapemesh.eventing.cloudevent import CloudEvent
from mapemesh.state import StateStore

log = logging.getLogger(__name__)
SOURCE = "/mapemesh/jobs"
KNOB = "JobOrder"


def _order(answer: httpx.Response) -> dict[str, Any]:
    doc = adapters.document(answer)
    order = doc.get("order") or []
    if not isinstance(order, list):
        raise adapters.Malformed(f"GET /order answered {doc}, not {{batch, order: [job, ...]}}")
    return {"batch": doc.get("batch"), "order": [str(j) for j in order]}


@mapemesh.on(catalogue.KnobApply)
async def apply(data: catalogue.KnobApply, *, event: CloudEvent, store: StateStore) -> CloudEvent:
    """Send the batch's order to the scheduler, read back."""
    if data.knob != KNOB:
        return adapters.failed(event, data, "unknown_knob", f"this adapter applies {KNOB}, not {data.knob}", SOURCE)
    command = data.command
    if command.get("command", "set") != "set" or set(command) - {"command", "batch", "order", "unplaceable"} \
            or not command.get("batch") or not isinstance(command.get("order"), list):
        return adapters.failed(event, data, "invalid", f"{KNOB} takes {{command: set, batch, order: [job, ...]}}",
                               SOURCE)
    wanted = {"batch": str(command["batch"]), "order": [str(j) for j in command["order"]]}
    for job, why in (command.get("unplaceable") or {}).items() if isinstance(command.get("unplaceable"), dict) else ():
        log.warning("%s: batch %s: job %s put last: %s", data.node, wanted["batch"], job, why)

    async def send(client: httpx.AsyncClient, api: str) -> tuple[dict[str, Any], dict[str, Any]]:
        before = _order(await client.get(f"{api}/order"))
        answer = await client.put(f"{api}/order", json=wanted)
        if answer.status_code in (404, 409, 422):
            raise adapters.Refused(answer.text)
        answer.raise_for_status()
        after = _order(await client.get(f"{api}/order"))
        if after != wanted:
            raise adapters.Unapplied(f"it reads back {after}, not {wanted}")
        log.info("%s: batch %s ordered (%d jobs)", data.node, wanted["batch"], len(wanted["order"]))
        return before, after

    return await adapters.through(event, data, SOURCE, store, "the scheduler", send)


jobs = mapemesh.stage(__name__, source=SOURCE)
"""JobOrder commands sent to the datacenter's scheduler."""
