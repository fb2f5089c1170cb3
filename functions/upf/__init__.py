"""The UPFSelect adapter (seed 5.2): a `knob.apply` of a cluster's `UPFSelect` mechanism in, the 5G core's slice
configuration API called, `knob.applied` (every UE's UPF before and after, read back) or `knob.failed` out.

The command is `{"command": "set", "ue": UE, "upf": UPF}`; the asset is the node the cluster's 5G core is
registered as (its `UPFSelect` options name the UPFs, `mapemesh.sim.core5g` registers one). The core's API
(`mapemesh.adapters.endpoint`: per cluster, from the operator's endpoints file) says which address the UPF has, and
is asked to steer the UE's PDU session to the UPF at that address, as the SMF is configured in 5.2:

    GET {API}/upfs  ->  {UPF: {"address": ADDRESS, ...}}      GET {API}/slices  ->  {UE: {"upf": NAME, ...}}
    POST {API}/slices/{UE}  {"upf_address": ADDRESS}

The address is the core's, never the registration's: a registration is not signed, and whoever may register could
otherwise steer a UE's traffic to an address of their choosing. A UPF the core does not list, an unknown UE, or a
command of another shape fails as `invalid`; an API that does not answer in time as `timeout`; one that answers an
error or a malformed document, or reads back another UPF, as `hardware` (`mapemesh.adapters.through`).
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
SOURCE = "/mapemesh/upf"
KNOB = "UPFSelect"


def _slices(answer: httpx.Response) -> dict[str, Any]:
    slices = adapters.document(answer)
    if not all(isinstance(s, dict) for s in slices.values()):
        raise adapters.Malformed(f"GET /slices answered {slices}, not {{UE: {{upf, ...}}}}")
    return {str(ue): s.get("upf") for ue, s in sorted(slices.items())}


def _addresses(answer: httpx.Response) -> dict[str, str]:
    upfs = adapters.document(answer)
    if not all(isinstance(u, dict) and u.get("address") for u in upfs.values()):
        raise adapters.Malformed(f"GET /upfs answered {upfs}, not {{UPF: {{address, ...}}}}")
    return {str(name): str(u["address"]) for name, u in upfs.items()}


@mapemesh.on(catalogue.KnobApply)
async def apply(data: catalogue.KnobApply, *, event: CloudEvent, store: StateStore) -> CloudEvent:
    """Steer the UE's user plane to the UPF, read back."""
    if data.knob != KNOB:
        return adapters.failed(event, data, "unknown_knob", f"this adapter applies {KNOB}, not {data.knob}", SOURCE)
    command = data.command
    if command.get("command", "set") != "set" or set(command) - {"command", "ue", "upf"} or not command.get("ue") \
            or not command.get("upf"):
        return adapters.failed(event, data, "invalid", f"{KNOB} takes {{command: set, ue, upf}}", SOURCE)
    ue, upf = str(command["ue"]), str(command["upf"])

    async def steer(client: httpx.AsyncClient, api: str) -> tuple[dict[str, Any], dict[str, Any]]:
        addresses = _addresses(await client.get(f"{api}/upfs"))
        if upf not in addresses:
            raise adapters.Refused(f"it has no UPF {upf} (it has {', '.join(sorted(addresses)) or 'none'})")
        address = addresses[upf]
        before = _slices(await client.get(f"{api}/slices"))
        if ue not in before:
            raise adapters.Refused(f"it serves no UE {ue}")
        answer = await client.post(f"{api}/slices/{ue}", json={"upf_address": address})
        if answer.status_code in (404, 422):
            raise adapters.Refused(answer.text)
        answer.raise_for_status()
        after = _slices(await client.get(f"{api}/slices"))
        if after.get(ue) != upf:
            raise adapters.Unapplied(f"it reads back {ue} on {after.get(ue)}, not {upf}")
        log.info("%s: UE %s moved from UPF %s to %s", data.node, ue, before.get(ue), upf)
        return before, after

    return await adapters.through(event, data, SOURCE, store, "the 5G core", steer)


upf = mapemesh.stage(__name__, source=SOURCE)
"""UPFSelect commands applied through the cluster's 5G core."""
