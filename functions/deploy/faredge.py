"""The deploy function's far-edge target: a component placed on a far-edge device (a node of layer `far_edge`,
which the MQTT bridge registered from NextGenGW's announce) goes to the bridge, not to Karmada (seed 6.3.1.1).

| call                                     | does                                                                   |
|------------------------------------------|------------------------------------------------------------------------|
| `split(store, nodes)`                    | {component: device} of the placement's far-edge components             |
| `without(description, components)`      | the description with those left out (the rest goes to clusters)        |
| `adapters(description, devices, mqtt)`  | the layer-agnostic adapters (seed 6.3.5) the far-edge components ask   |
|                                          | for by annotation: components of their own, rendered for the clusters  |
| `await deploy(app, description, devices, | one `faredge.deploy.requested` per component to the bridge (its         |
| plan_id, data)`                          | `/faredge`, which runs LwM2M Software Management and answers            |
|                                          | `faredge.deployed`); the results, and what failed                       |
| `await remove(app, placed, data)`        | the same with `action: remove` for what an earlier deploy placed        |

The package a device gets is the component's embServe `service.json` (seed 6.3.1.1): `name`, `version`, and
`service`, here the component's first container image (the reference the device's loader resolves). The bridge
is MAPEMESH_BRIDGE_URL, else the one a running mesh recorded in DATA_DIR (`bridge` in endpoints.json).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import httpx

from mapemesh import endpoints
from mapemesh import events as catalogue
from mapemesh.eventing.binding import from_http, to_binary
from mapemesh.identity import sign_commands
from mapemesh.settings import current
from mapemesh.state import StateStore
from mapemesh.tls import client_context

LAYER = "far_edge"
TIMEOUT_S = 60.0


def split(store: StateStore, nodes: dict[str, str]) -> dict[str, str]:
    """The components the placement puts on far-edge devices: {component: device}."""
    out = {}
    for component, node in nodes.items():
        doc = store.get("infrastructure", node)
        description = (doc.value.get("description") or {}) if doc else {}
        if (description.get("MLSysOpsNode") or {}).get("continuum_layer") == LAYER:
            out[component] = node
    return out


def package(description: dict[str, Any], component: str) -> dict[str, Any]:
    """The embServe package (service.json) for a component."""
    app = description.get("MLSysOpsApp", description) if isinstance(description, dict) else {}
    spec = next((c for c in app.get("components") or [] if (c.get("metadata") or {}).get("name") == component), {})
    image = next((str(c.get("image")) for c in spec.get("containers") or [] if c.get("image")), component)
    return {"name": component, "version": 1, "service": image, "image": image}


def without(description: dict[str, Any], components: set[str]) -> dict[str, Any]:
    """The description with `components` left out (the far-edge ones: the rest is rendered for clusters)."""
    app = dict(description.get("MLSysOpsApp", description))
    app["components"] = [c for c in app.get("components") or []
                         if (c.get("metadata") or {}).get("name") not in components]
    return {"MLSysOpsApp": app} if "MLSysOpsApp" in description else app


def with_components(description: dict[str, Any], components: list[dict[str, Any]]) -> dict[str, Any]:
    """The description with `components` added."""
    app = dict(description.get("MLSysOpsApp", description))
    app["components"] = [*(app.get("components") or []), *components]
    return {"MLSysOpsApp": app} if "MLSysOpsApp" in description else app


ADAPTER = "communication-adapter.fita/"


def adapters(description: dict[str, Any], devices: dict[str, str], mqtt_url: str) -> list[dict[str, Any]]:
    """The layer-agnostic adapters (seed 6.3.5) of the far-edge components that ask for one: a component of the
    higher layers each (`NAME-communication-adapter`), which the rest of the application talks to as it would
    to the workload, translating to the device's SDF over MQTT. From the component's annotations
    `communication-adapter.fita/image` (required), `/ports` (JSON: `[{"name", "port", "protocol"}]`),
    `/service-name` (the SDF property it exposes) and `/pull-policy` (default IfNotPresent)."""
    app = description.get("MLSysOpsApp", description) if isinstance(description, dict) else {}
    out = []
    for spec in app.get("components") or []:
        name = (spec.get("metadata") or {}).get("name")
        notes = spec.get("annotations") or {}
        if name not in devices or not notes.get(ADAPTER + "image"):
            continue
        try:
            ports = json.loads(notes.get(ADAPTER + "ports") or "[]")
        except ValueError:
            raise ValueError(f"{name}: {ADAPTER}ports must be JSON, e.g. [{{\"name\": \"http\", \"port\": 80}}]"
                             ) from None
        out.append({"metadata": {"name": f"{name}-communication-adapter"}, "containers": [{
            "image": notes[ADAPTER + "image"], "image_pull_policy": notes.get(ADAPTER + "pull-policy", "IfNotPresent"),
            "ports": [{"container_port": int(p["port"]), "protocol": str(p.get("protocol", "TCP"))} for p in ports],
            "env": [{"name": "NODE_NAME", "value": devices[name]}, {"name": "MQTT_BROKER_URL", "value": mqtt_url},
                    {"name": "MQTT_CLIENT_NAME", "value": f"{name}-communication-adapter"},
                    {"name": "SERVICE_NAME", "value": notes.get(ADAPTER + "service-name", name)}]}]})
    return out


def _bridge(data: Path) -> str:
    url = current().bridge_url or endpoints.read(data).get("bridge")
    if not url:
        raise RuntimeError("no MQTT bridge for the far-edge devices: set MAPEMESH_BRIDGE_URL, or MAPEMESH_MQTT_URL "
                           "for `mapemesh up`")
    return url.rstrip("/")


async def _ask(http: httpx.AsyncClient, url: str, request: catalogue.FarEdgeDeployRequested
               ) -> catalogue.FarEdgeDeployed:
    event = catalogue.make_event(request, "/mapemesh/deploy", subject=request.device)
    (signed,) = sign_commands([event])  # the bridge applies it only when this identity (deploy) signed it
    headers, body = to_binary(signed)
    response = await http.post(f"{url}/faredge", headers=headers, content=body)
    if response.status_code != 200:
        raise RuntimeError(f"the bridge answered {response.status_code}: {response.text[:200]}")
    (event,) = from_http(response.headers, response.content)
    done = catalogue.parse_data(event)
    assert isinstance(done, catalogue.FarEdgeDeployed)
    return done


def _digest(package: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(package, sort_keys=True).encode()).hexdigest()


async def deploy(app_id: str, description: dict[str, Any], devices: dict[str, str], plan_id: str | None,
                 data: Path, active: dict[str, dict[str, Any]] | None = None
                 ) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """Deploy each far-edge component on its device; ({component: {device, instance, status, package}}, problems).

    A component `active` (what the last deploy placed) shows Active on the same device with the same package is
    kept as it is: a second plan placing it there again changes nothing (a device refuses a second create, and the
    rollback would remove the running one)."""
    placed: dict[str, dict[str, Any]] = {}
    todo: dict[str, tuple[str, dict[str, Any]]] = {}
    for component, device in sorted(devices.items()):
        wanted = package(description, component)
        was = (active or {}).get(component) or {}
        if was.get("status") == "Active" and was.get("device") == device and was.get("package") == _digest(wanted):
            placed[component] = dict(was)
        else:
            todo[component] = (device, wanted)
    if not todo:
        return placed, []
    url = _bridge(data)
    problems = []
    async with httpx.AsyncClient(timeout=TIMEOUT_S, verify=client_context()) as http:
        for component, (device, wanted) in todo.items():
            request = catalogue.FarEdgeDeployRequested(device=device, app_id=app_id, component=component,
                                                       plan_id=plan_id, package=wanted)
            done = await _ask(http, url, request)
            if done.status == "Active":
                placed[component] = {"device": device, "instance": done.instance, "status": done.status,
                                     "package": _digest(wanted)}
            else:
                problems.append(f"{component} on far-edge device {device}: {done.message}")
    return placed, problems


async def remove(app_id: str, placed: dict[str, dict[str, Any]], data: Path) -> list[str]:
    """Remove what `deploy` placed; the problems (none: all removed)."""
    if not placed:
        return []
    url = _bridge(data)
    problems = []
    async with httpx.AsyncClient(timeout=TIMEOUT_S, verify=client_context()) as http:
        for component, where in sorted(placed.items()):
            request = catalogue.FarEdgeDeployRequested(device=where["device"], app_id=app_id, component=component,
                                                       action="remove")
            done = await _ask(http, url, request)
            if done.status != "Removed":
                problems.append(f"{component} on {where['device']}: {done.message}")
    return problems
