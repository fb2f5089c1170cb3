"""NextGenGW's far-edge devices as nodes of the continuum (seed 6.3.2): presence, telemetry, their knob Triggers.

| from the gateway                                  | into the mesh                                                |
|---------------------------------------------------|--------------------------------------------------------------|
| `announce` `{ID: {"sdfObject": ...}}`             | `infra.registered`: node ID, layer `far_edge`, labels from    |
|                                                   | its capabilities (`extra.resources.fhp/tinymml:true`, ...),   |
|                                                   | memory, the `FarEdgeRadio` knob, the SDF description kept;   |
|                                                   | the device's knob Trigger (`node-shim-ID`, to this bridge);   |
|                                                   | the radio signal observed                                     |
| `unregister` `ID` (text)                          | `infra.unregistered`; its Trigger removed                     |
| `ID/Connectivity_Monitoring/0` notifications      | telemetry `radio_signal_strength_dbm` (object 4, resource 2)  |
| a GET of `ID/Software_Package_Monitoring` every   | telemetry per workload and for the device: `cpu_usage_percent`,|
| `telemetry_every_s`                               | `memory_usage_bytes`, `uptime_ms`, `errors` (label `package`) |
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import yaml

from mapemesh import events as catalogue
from mapemesh.bridge import lwm2m
from mapemesh.bridge.client import MqttClient
from mapemesh.bridge.inbound import Poster
from mapemesh.files import write_atomically
from mapemesh.names import dns_name

log = logging.getLogger(__name__)
SOURCE = "/mapemesh/bridge/nextgengw"
LAYER = "far_edge"
LABEL = "extra.resources.fhp/{}:true"
RADIO = "Connectivity_Monitoring/0"
METRICS = {"CPU_Usage": "cpu_usage_percent", "Memory_Usage": "memory_usage_bytes", "Uptime": "uptime_ms",
           "Error": "errors"}


def _first(objects: dict[str, Any], name: str) -> dict[str, Any]:
    rows = objects.get(name) or [{}]
    return dict((rows[0] if isinstance(rows, list) and rows else {}).get("sdfProperty") or {})


def describe(device: str, sdf: dict[str, Any]) -> dict[str, Any]:
    """The MLSysOps node description of an announced device."""
    objects = dict(sdf.get("sdfObject") or {})
    caps = _first(objects, "DevCapMgmt")
    labels = [LABEL.format("embserve")]
    if str(caps.get("Group", "0")) == "0":
        labels += [LABEL.format(cap.strip()) for cap in str(caps.get("Property") or "").split(";") if cap.strip()]
    memory_kib = float(_first(objects, "Device").get("Memory_Total") or 256)
    return {"MLSysOpsNode": {
        "name": device, "continuum_layer": LAYER, "labels": sorted(set(labels)),
        "hardware": {"cpu": {"cores": 1, "architecture": "arm-v7"}, "memory": round(memory_kib / 2**20, 6)},
        "environment": {"os": "zephyr", "node_type": "embserve"},
        "mechanisms": sorted(lwm2m.OPTIONS), "mechanism_options": lwm2m.OPTIONS,
        "mechanism_states": {"FarEdgeRadio": {}}, "sdf": sdf}}


def trigger(device: str, url: str) -> dict[str, Any]:
    """The Trigger that brings the device's knob commands to this bridge (as a node shim's does to the shim)."""
    name = dns_name("node-shim", device)
    return {"apiVersion": "eventing.knative.dev/v1", "kind": "Trigger",
            "metadata": {"name": name, "namespace": "default",
                         "labels": {"app.kubernetes.io/part-of": "mapemesh", "app.kubernetes.io/component": "bridge"},
                         "annotations": {"mapemesh.dev/node": device}},
            "spec": {"broker": "default",
                     "filters": [{"exact": {"type": catalogue.KnobApply.event_type}}, {"exact": {"node": device}}],
                     "subscriber": {"uri": f"{url.rstrip('/')}/devices/{device}"}}}


class Gateway:
    """The devices one NextGenGW announces."""

    def __init__(self, client: MqttClient, poster: Poster, url: str, manifests: Path | None,
                 telemetry_every_s: float = 5.0):
        self.client, self.poster, self.url, self.manifests = client, poster, url, manifests
        self.telemetry_every_s = telemetry_every_s
        self.devices: dict[str, dict[str, Any]] = {}
        self._poll: asyncio.Task[None] | None = None

    async def start(self) -> None:
        for topic in ("announce", "unregister", f"+/{RADIO}"):
            await self.client.subscribe(topic, no_local=True)
        self._poll = asyncio.create_task(self._poll_forever())

    async def stop(self) -> None:
        if self._poll is not None:
            self._poll.cancel()
        for device in list(self.devices):
            self._forget_trigger(device)

    def owns(self, topic: str) -> bool:
        return topic in ("announce", "unregister") or mqtt.topic_matches_sub(f"+/{RADIO}", topic)

    async def on_message(self, message: mqtt.MQTTMessage) -> None:
        try:
            if message.topic == "announce":
                for device, sdf in json.loads(message.payload).items():
                    await self.announced(str(device), dict(sdf))
            elif message.topic == "unregister":
                await self.unregistered(bytes(message.payload).decode().strip())
            else:
                await self.radio_signal(message)
        except (ValueError, TypeError, AttributeError) as exc:
            log.warning("NextGenGW message on %s not understood: %s", message.topic, exc)
        finally:
            self.client.ack(message)

    async def announced(self, device: str, sdf: dict[str, Any]) -> None:
        new = device not in self.devices
        self.devices[device] = sdf
        await self._post(catalogue.InfraRegistered(infra_id=device, kind="node", description=describe(device, sdf)),
                         device)
        if new:
            self._write_trigger(device)
            try:
                await self.client.request(f"{device}/{RADIO}", {"operation": "START_OBSERVE"})
            except TimeoutError:
                log.warning("far-edge device %s: its radio signal cannot be observed (no answer)", device)
            log.info("far-edge device %s announced (%s)", device, ", ".join(describe(device, sdf)["MLSysOpsNode"]
                                                                             ["labels"]))

    async def unregistered(self, device: str) -> None:
        if not device:
            return
        self.devices.pop(device, None)
        self._forget_trigger(device)
        await self._post(catalogue.InfraUnregistered(infra_id=device), device)
        log.info("far-edge device %s unregistered", device)

    async def radio_signal(self, message: mqtt.MQTTMessage) -> None:
        doc = json.loads(message.payload)
        if not isinstance(doc, dict) or "operation" in doc:
            return  # a request (ours, echoed), not a notification
        device = message.topic.split("/", 1)[0]
        value = _first(dict((doc.get(device) or {}).get("sdfObject") or {}), "Connectivity_Monitoring").get(
            "Radio_Signal_Strength")
        if value is not None:
            await self._telemetry(device, [catalogue.Metric(name="radio_signal_strength_dbm", value=float(value),
                                                            unit="dBm")])

    async def _poll_forever(self) -> None:
        while True:
            await asyncio.sleep(self.telemetry_every_s)
            for device in list(self.devices):
                try:
                    answer = await self.client.request(f"{device}/Software_Package_Monitoring", {"operation": "GET"})
                except TimeoutError:
                    continue
                metrics = []
                for row in (answer.get("sdfObject") or {}).get("Software_Package_Monitoring") or []:
                    props = dict(row.get("sdfProperty") or {})
                    package = str(props.get("Software_Package") or props.get("Sofware_Package") or "Device/0")
                    metrics += [catalogue.Metric(name=ours, value=float(props[theirs]), labels={"package": package})
                                for theirs, ours in METRICS.items() if _number(props.get(theirs))]
                if metrics:
                    await self._telemetry(device, metrics)

    async def _telemetry(self, device: str, metrics: list[catalogue.Metric]) -> None:
        await self._post(catalogue.TelemetryReported(asset=device, asset_kind="node", metrics=metrics), device)

    async def _post(self, data: catalogue.EventData, device: str) -> None:
        await self.poster.post(catalogue.make_event(data, f"{SOURCE}/{device}", subject=device))

    def _write_trigger(self, device: str) -> None:
        if self.manifests is not None:
            write_atomically(self.manifests / f"{dns_name('node-shim', device)}.yaml",
                             f"# Far-edge device {device}: its knob commands, to the MQTT bridge ({time.ctime()}).\n"
                             + yaml.safe_dump(trigger(device, self.url), sort_keys=False))

    def _forget_trigger(self, device: str) -> None:
        if self.manifests is not None:
            (self.manifests / f"{dns_name('node-shim', device)}.yaml").unlink(missing_ok=True)


def _number(value: Any) -> bool:
    try:
        float(value)
    except (TypeError, ValueError):
        return False
    return True
