"""What the bridge does on a far-edge device, through NextGenGW's SDF topics (seed 6.3.1; the topics and codes in
/work/notes is the contract the device simulator speaks too).

Software Management (LwM2M object 9), one workload per instance:

| step       | request                                                               | success             |
|------------|-----------------------------------------------------------------------|---------------------|
| `create`   | POST `ID/LWM2M_Software_Management` `{"label": INSTANCE}`             | 65 Created          |
| `package`  | POST `ID/LWM2M_Software_Management/INSTANCE/Property/Package` PACKAGE | 68, Update State 3  |
| `install`  | POST `.../INSTANCE/Action/Install`                                    | 68, Update State 4  |
| `activate` | POST `.../INSTANCE/Action/Activate`                                   | 68, Activation 1    |
| `remove`   | DELETE `ID/LWM2M_Software_Management/INSTANCE`                        | 66 Deleted          |

Each step is checked (its code, and the instance's states read back with a GET after `package`, `install` and
`activate`) and reported as an `io.mapemesh.faredge.step.v1` event; a failed step rolls back (the instance is
deleted, reported as `rollback`). The radio knob (`FarEdgeRadio`, TX power) goes through the BinaryAppDataContainer
(object 19) shell: `mlsysops knobs set TX_PWR LEVEL` to `ID/BinaryAppDataContainer/0/Property/Data/0`, then
`mlsysops knobs get TX_PWR` and the reply read from `.../Data/1`, which must say the new level.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from mapemesh import events as catalogue
from mapemesh.bridge.client import MqttClient

log = logging.getLogger(__name__)
CREATED, DELETED, CHANGED, CONTENT = 65, 66, 68, 69
SOFTWARE = "LWM2M_Software_Management"
SHELL_TX, SHELL_RX = "BinaryAppDataContainer/0/Property/Data/0", "BinaryAppDataContainer/0/Property/Data/1"
TX_POWER = ("LOW", "MEDIUM", "HIGH")
Report = Callable[[catalogue.EventData], Awaitable[None]]


class StepFailed(RuntimeError):
    def __init__(self, step: str, code: int | None, detail: str):
        super().__init__(f"{step}: {detail}" + (f" (code {code})" if code is not None else ""))
        self.step, self.code, self.detail = step, code, detail


def instance_of(app_id: str, component: str) -> str:
    """The Software Management instance a component gets on a device: the same one every time (a redelivered
    request finds it), short and numeric as LwM2M instance ids are."""
    return str(int(hashlib.sha256(f"{app_id}/{component}".encode()).hexdigest()[:6], 16) % 60000 + 1)


def _states(answer: dict[str, Any]) -> dict[str, Any]:
    rows = ((answer.get("sdfObject") or {}).get(SOFTWARE) or [{}])
    return dict((rows[0] if rows else {}).get("sdfProperty") or {})


async def _ask(client: MqttClient, step: str, topic: str, doc: dict[str, Any], expected: int,
               timeout_s: float) -> dict[str, Any]:
    try:
        answer = await client.request(topic, doc, timeout_s)
    except TimeoutError:
        raise StepFailed(step, None, f"no answer on {topic} within {timeout_s:g}s") from None
    code = answer.get("response_code")
    if code != expected:
        raise StepFailed(step, code if isinstance(code, int) else None,
                         f"{topic} answered {code} ({answer.get('message') or 'refused'}), not {expected}")
    return answer


async def deploy(client: MqttClient, request: catalogue.FarEdgeDeployRequested, report: Report,
                 timeout_s: float = 10.0) -> catalogue.FarEdgeDeployed:
    """The four steps on the device; a failure rolls back. Every step is reported."""
    device, inst = request.device, instance_of(request.app_id, request.component)
    base = f"{device}/{SOFTWARE}/{inst}"

    async def step(name: str, topic: str, doc: dict[str, Any], expected: int,
                   check: Callable[[dict[str, Any]], str | None] | None = None) -> None:
        answer = await _ask(client, name, topic, doc, expected, timeout_s)
        problem = None
        if check is not None:
            states = _states(await _ask(client, name, base, {"operation": "GET"}, CONTENT, timeout_s))
            problem = check(states)
        if problem is not None:
            raise StepFailed(name, answer.get("response_code"), problem)
        await report(catalogue.FarEdgeStep(device=device, app_id=request.app_id, component=request.component,
                                           instance=inst, step=name, ok=True, code=answer.get("response_code")))

    def state(expected: str) -> Callable[[dict[str, Any]], str | None]:
        return lambda s: None if str(s.get("Update_State")) == expected else \
            f"Update State is {s.get('Update_State')}, not {expected}"

    try:
        await step("create", f"{device}/{SOFTWARE}", {"operation": "POST", "data": {"label": inst}}, CREATED)
        await step("package", f"{base}/Property/Package", {"operation": "POST", "data": request.package}, CHANGED,
                   state("3"))
        await step("install", f"{base}/Action/Install", {"operation": "POST"}, CHANGED, state("4"))
        await step("activate", f"{base}/Action/Activate", {"operation": "POST"}, CHANGED,
                   lambda s: None if str(s.get("Activation_State")).lower() in ("1", "true") else
                   f"Activation State is {s.get('Activation_State')}, not 1")
    except StepFailed as exc:
        await report(catalogue.FarEdgeStep(device=device, app_id=request.app_id, component=request.component,
                                           instance=inst, step=exc.step, ok=False, code=exc.code, detail=exc.detail))
        rolled = await _delete(client, base, timeout_s)
        await report(catalogue.FarEdgeStep(device=device, app_id=request.app_id, component=request.component,
                                           instance=inst, step="rollback", ok=rolled is None, detail=rolled))
        return catalogue.FarEdgeDeployed(device=device, app_id=request.app_id, component=request.component,
                                         plan_id=request.plan_id, instance=inst, status="Failed", message=str(exc))
    return catalogue.FarEdgeDeployed(device=device, app_id=request.app_id, component=request.component,
                                     plan_id=request.plan_id, instance=inst, status="Active")


async def _delete(client: MqttClient, base: str, timeout_s: float) -> str | None:
    """Delete an instance; None when it is gone (or was never there), else why not."""
    try:
        answer = await client.request(base, {"operation": "DELETE"}, timeout_s)
    except TimeoutError:
        return f"no answer to the DELETE of {base}"
    return None if answer.get("response_code") in (DELETED, 132) else f"DELETE answered {answer.get('response_code')}"


async def remove(client: MqttClient, request: catalogue.FarEdgeDeployRequested, report: Report,
                 timeout_s: float = 10.0) -> catalogue.FarEdgeDeployed:
    """Remove a component's workload (delete its instance)."""
    inst = instance_of(request.app_id, request.component)
    problem = await _delete(client, f"{request.device}/{SOFTWARE}/{inst}", timeout_s)
    await report(catalogue.FarEdgeStep(device=request.device, app_id=request.app_id, component=request.component,
                                       instance=inst, step="remove", ok=problem is None, detail=problem))
    return catalogue.FarEdgeDeployed(device=request.device, app_id=request.app_id, component=request.component,
                                     plan_id=request.plan_id, instance=inst,
                                     status="Removed" if problem is None else "Failed", message=problem)


# -- the radio knob ---------------------------------------------------------------------------------------------

class KnobError(ValueError):
    """A radio command that is invalid, or that the device did not carry out."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code


async def shell(client: MqttClient, device: str, command: str, timeout_s: float = 10.0) -> str:
    """Send a shell command to the device's BinaryAppDataContainer and read its reply text."""
    await _ask(client, "shell", f"{device}/{SHELL_TX}", {"operation": "POST", "data": command}, CHANGED, timeout_s)
    answer = await _ask(client, "shell", f"{device}/{SHELL_RX}", {"operation": "GET"}, CONTENT, timeout_s)
    rows = (answer.get("sdfObject") or {}).get("BinaryAppDataContainer") or [{}]
    return str(((rows[0] if rows else {}).get("sdfProperty") or {}).get("Data") or "")


def knobs_of(reply: str) -> dict[str, str]:
    """`Knob ID | Value` table lines as {knob: value} (the header and the dashes left out)."""
    out = {}
    for line in reply.splitlines():
        if "|" not in line or set(line.strip()) <= {"-"}:
            continue
        key, _, value = (part.strip() for part in line.partition("|"))
        if key and key != "Knob ID":
            out[key] = value
    return out


async def radio(client: MqttClient, device: str, command: dict[str, Any], timeout_s: float = 10.0
                ) -> tuple[dict[str, Any], dict[str, Any]]:
    """Apply a `FarEdgeRadio` command (`{"command": "set", "tx_power": LEVEL}`); (before, after) as read back."""
    if command.get("command", "set") != "set" or set(command) - {"command", "tx_power"}:
        raise KnobError("invalid", f"FarEdgeRadio takes {{'command': 'set', 'tx_power': one of {', '.join(TX_POWER)}}}")
    level = str(command.get("tx_power", "")).upper()
    if level not in TX_POWER:
        raise KnobError("invalid", f"tx_power must be one of {', '.join(TX_POWER)}, not {command.get('tx_power')!r}")
    try:
        before = knobs_of(await shell(client, device, "mlsysops knobs get TX_PWR", timeout_s)).get("TX_PWR")
        said = await shell(client, device, f"mlsysops knobs set TX_PWR {level}", timeout_s)
        if said.lower().startswith("error"):
            raise KnobError("invalid", f"the device refused it: {said}")
        after = knobs_of(await shell(client, device, "mlsysops knobs get TX_PWR", timeout_s)).get("TX_PWR")
    except StepFailed as exc:
        raise KnobError("hardware", f"the device does not answer its shell: {exc}") from None
    if after != level:
        raise KnobError("hardware", f"TX_PWR reads {after!r} after setting {level}")
    return {"tx_power": before}, {"tx_power": after}


OPTIONS = {"FarEdgeRadio": {"tx_power": list(TX_POWER), "commands": ["set"]}}
"""The knobs a far-edge device offers through the bridge, as a node shim describes its own."""
