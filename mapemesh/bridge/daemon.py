"""The MQTT bridge: a persistent process (an MQTT session cannot scale to zero) between MQTT and the mesh.

| face                                  | what                                                                     |
|---------------------------------------|--------------------------------------------------------------------------|
| MQTT `--subscribe TOPIC` (repeatable) | CloudEvents in (`mapemesh.bridge.inbound`: posted to the broker, then     |
|                                       | acknowledged; malformed ones dead-lettered)                               |
| MQTT `announce`, `unregister`, ...    | NextGenGW's far-edge devices (`mapemesh.bridge.gateway`)                  |
| `POST /publish/N` (a Trigger's        | the event published on MQTT (QoS 1, binary mode on MQTT 5, structured on  |
| subscriber; `--publish-trigger        | 3.1.1) to the topic template of publish rule N: `{type}`, `{subject}`,   |
| PREFIX=TEMPLATE` writes the Trigger)  | `{source}`, `{id}` and extensions fill it in; 202 once the MQTT broker    |
|                                       | acknowledged it, 503 if it did not (the broker retries), 422 when the     |
|                                       | template names an attribute the event lacks                               |
| `POST /devices/ID` (the device's knob | a `knob.apply` for the far-edge device: `FarEdgeRadio` through its shell, |
| Trigger, `node-shim-ID`)              | answered `knob.applied` (read back) or `knob.failed`, as a node shim does |
| `POST /faredge`                       | `faredge.deploy.requested`: LwM2M Software Management on the device      |
|                                       | (`mapemesh.bridge.lwm2m`), answered `faredge.deployed`                    |
| `GET /healthz`                        | MQTT connected or not, devices, counters                                  |

The bridge records its URL in DATA_DIR/endpoints.json (`bridge`) and, on one machine, writes its Triggers to
DATA_DIR/manifests (the mesh reads them within a second).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import re
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import yaml
from aiohttp import web
from pydantic import ValidationError

from mapemesh import endpoints
from mapemesh import events as catalogue
from mapemesh.bridge import lwm2m
from mapemesh.bridge.binding import to_mqtt
from mapemesh.bridge.client import MqttClient
from mapemesh.bridge.gateway import Gateway
from mapemesh.bridge.inbound import Inbound, Poster
from mapemesh.eventing.binding import from_http, to_binary
from mapemesh.eventing.cloudevent import CloudEvent, MalformedEvent
from mapemesh.files import write_atomically
from mapemesh.identity.guard import Guard, refusal, sign_as

log = logging.getLogger(__name__)
SOURCE = "/mapemesh/bridge"
_FIELD = re.compile(r"\{([a-z0-9]+)\}")


@dataclass(frozen=True, slots=True)
class PublishRule:
    """Events whose type starts with `prefix` go to MQTT topic `template`."""

    prefix: str
    template: str

    @classmethod
    def parse(cls, text: str) -> PublishRule:
        prefix, sep, template = text.partition("=")
        if not sep or not template or "#" in template or "+" in template:
            raise ValueError(f"--publish-trigger {text!r}: give TYPE_PREFIX=TOPIC_TEMPLATE (a topic, no wildcards), "
                             "e.g. io.example.=devices/{subject}/events")
        for name in _FIELD.findall(template):
            if not re.fullmatch(r"[a-z0-9]+", name):
                raise ValueError(f"--publish-trigger {text!r}: {{{name}}} is no attribute name")
        return cls(prefix, template)

    def topic(self, event: CloudEvent) -> str:
        def value(match: re.Match[str]) -> str:
            got = event.attributes.get(match.group(1))
            if got is None:
                raise KeyError(match.group(1))
            return str(got).replace("/", "_").replace("+", "_").replace("#", "_")
        return _FIELD.sub(value, self.template)


@dataclass
class Bridge:
    """Everything one bridge process runs."""

    mqtt_url: str
    broker: str
    """The broker ingress events are posted to (BROKER/default/default)."""
    data: Path | None = None
    manifests: Path | None = None
    subscribe: list[str] = field(default_factory=list)
    publish: list[PublishRule] = field(default_factory=list)
    host: str = "127.0.0.1"
    port: int = 0
    client_id: str = field(default_factory=lambda: f"mapemesh-bridge-{socket.gethostname()}")
    telemetry_every_s: float = 5.0
    v5: bool = True
    url: str = ""
    stopping: asyncio.Event = field(default_factory=asyncio.Event)

    async def start(self) -> None:
        self.guard = Guard.from_environment(self.data)
        self.poster = Poster(self.broker, identity="bridge", data=self.data)
        self.client = MqttClient(self.mqtt_url, self.client_id, v5=self.v5, manual_ack=True,
                                 on_message=self._message)
        self.inbound = Inbound(self.client, self.poster, self.subscribe, self.stopping)
        self.runner = web.AppRunner(self._app(), access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, self.host, self.port)
        await site.start()
        bound = self.runner.addresses[0]
        self.url = f"http://{self.host}:{bound[1]}"
        self.gateway = Gateway(self.client, self.poster, self.url, self.manifests, self.telemetry_every_s)
        await self.inbound.start()
        await self.gateway.start()
        await self.client.start()
        self._write_triggers()
        if self.data is not None:
            endpoints.register(self.data, "bridge", self.url)
        log.info("MQTT bridge on %s: %s <-> %s", self.url, self.mqtt_url, self.broker)

    async def stop(self) -> None:
        """Stop what `start` started (all of it, or what it got to before it failed)."""
        self.stopping.set()
        started = vars(self)
        if "inbound" in started:
            await self.inbound.drain()
        if "gateway" in started:
            await self.gateway.stop()
        for i, _ in enumerate(self.publish):
            if self.manifests is not None:
                (self.manifests / f"mapemesh-bridge-publish-{i}.yaml").unlink(missing_ok=True)
        if self.data is not None and self.url:
            endpoints.unregister(self.data, "bridge", self.url)
        if "client" in started:
            await self.client.stop()
        if "runner" in started:
            await self.runner.cleanup()
        if "poster" in started:
            await self.poster.close()

    def _message(self, message: mqtt.MQTTMessage) -> Any:
        if self.gateway.owns(message.topic):
            return self.gateway.on_message(message)
        self.inbound.take(message)
        return None

    def _write_triggers(self) -> None:
        if self.manifests is None:
            return
        for i, rule in enumerate(self.publish):
            doc = {"apiVersion": "eventing.knative.dev/v1", "kind": "Trigger",
                   "metadata": {"name": f"mapemesh-bridge-publish-{i}", "namespace": "default",
                                "labels": {"app.kubernetes.io/part-of": "mapemesh",
                                           "app.kubernetes.io/component": "bridge"}},
                   "spec": {"broker": "default", "filters": [{"prefix": {"type": rule.prefix}}],
                            "subscriber": {"uri": f"{self.url}/publish/{i}"}}}
            write_atomically(self.manifests / f"mapemesh-bridge-publish-{i}.yaml",
                             f"# MQTT bridge: events {rule.prefix}* to {rule.template}\n" + yaml.safe_dump(doc))

    # -- HTTP ------------------------------------------------------------------------------------------------------

    def _app(self) -> web.Application:
        app = web.Application(client_max_size=1024 * 1024)
        app.router.add_post("/publish/{rule}", self._publish)
        app.router.add_post("/devices/{device}", self._knob)
        app.router.add_post("/faredge", self._faredge)
        app.router.add_get("/healthz", self._health)
        return app

    async def _health(self, request: web.Request) -> web.Response:
        return web.json_response({"mqtt": "connected" if self.client.connected else "disconnected",
                                  "devices": sorted(self.gateway.devices), "accepted": self.poster.accepted,
                                  "retried": self.poster.retried, "refused": self.inbound.refused},
                                 status=200 if self.client.connected else 503)

    @staticmethod
    async def _event(request: web.Request) -> CloudEvent:
        try:
            (event,) = from_http(request.headers, await request.read())
        except (MalformedEvent, ValueError) as exc:
            raise web.HTTPBadRequest(text=str(exc)) from None
        return event

    async def _publish(self, request: web.Request) -> web.Response:
        try:
            rule = self.publish[int(request.match_info["rule"])]
        except (ValueError, IndexError):
            raise web.HTTPNotFound(text="no such publish rule") from None
        event = await self._event(request)
        try:
            topic = rule.topic(event)
        except KeyError as exc:
            return web.Response(status=422, text=f"the topic template {rule.template} needs attribute {exc}")
        payload, content_type, properties = to_mqtt(event, binary=self.v5)
        try:
            await self.client.publish(topic, payload, content_type=content_type if self.v5 else None,
                                      user_properties=properties)
        except (TimeoutError, OSError) as exc:
            return web.Response(status=503, text=f"MQTT did not take it: {exc}", headers={"Retry-After": "1"})
        return web.Response(status=202)

    async def _knob(self, request: web.Request) -> web.Response:
        event = await self._event(request)
        device = request.match_info["device"]
        if event.type != catalogue.KnobApply.event_type:
            return web.Response(status=202)
        try:
            data = catalogue.parse_data(event)
        except (ValidationError, ValueError) as exc:
            return web.Response(status=422, text=f"invalid {event.type}: {exc}")
        assert isinstance(data, catalogue.KnobApply)
        if data.node != device:
            return web.Response(status=422, text=f"this is device {device}, the command is for {data.node}")
        refused = await self._refused(event, f"bridge/{device}")
        if refused is not None:
            return refused
        reply: catalogue.EventData
        try:
            if data.knob != "FarEdgeRadio":
                raise lwm2m.KnobError("unknown_knob", f"far-edge device {device} has no knob {data.knob} "
                                                      f"(it has {', '.join(lwm2m.OPTIONS)})")
            before, after = await lwm2m.radio(self.client, device, data.command)
            reply = catalogue.KnobApplied(node=device, knob=data.knob, request=event.id, plan_id=data.plan_id,
                                          before=before, after=after, noop=before == after)
        except lwm2m.KnobError as exc:
            reply = catalogue.KnobFailed(node=device, knob=data.knob, request=event.id, plan_id=data.plan_id,
                                         code=exc.code, error=str(exc))
        out = catalogue.make_event(reply, f"{SOURCE}/{device}", subject=device, extensions={"node": device})
        return _reply(sign_as(out, "bridge", self.guard.root))  # the result's reporter, verifiable

    async def _refused(self, event: CloudEvent, receiver: str) -> web.Response | None:
        """A command not signed by an identity the command policy allows: audited, answered 403 (nothing done)."""
        verdict = self.guard.check(event)
        if verdict.allowed:
            return None
        await self.poster.post(catalogue.make_event(refusal(receiver, event, verdict), SOURCE), stopping=self.stopping)
        return web.Response(status=403, text=f"refused: {verdict.rule}: {verdict.reason}")

    async def _faredge(self, request: web.Request) -> web.Response:
        event = await self._event(request)
        try:
            data = catalogue.parse_data(event)
        except (ValidationError, ValueError) as exc:
            return web.Response(status=422, text=f"invalid {event.type}: {exc}")
        if not isinstance(data, catalogue.FarEdgeDeployRequested):
            return web.Response(status=422, text=f"{event.type} is not a far-edge deploy request")
        refused = await self._refused(event, f"bridge/{data.device}")
        if refused is not None:
            return refused

        async def report(step: catalogue.EventData) -> None:
            await self.poster.post(catalogue.make_event(step, f"{SOURCE}/{data.device}", subject=data.device),
                                   stopping=self.stopping)

        run = lwm2m.deploy if data.action == "deploy" else lwm2m.remove
        done = await run(self.client, data, report)
        return _reply(catalogue.make_event(done, f"{SOURCE}/{data.device}", subject=data.device))


def _reply(event: CloudEvent) -> web.Response:
    headers, body = to_binary(event)
    return web.Response(status=200, headers=headers, body=body)


async def serve(bridge: Bridge) -> None:
    """Run `bridge` until SIGINT or SIGTERM."""
    from mapemesh.aio import stop_signals, until_stopped

    stop = stop_signals()
    try:
        await bridge.start()
    except BaseException:
        await bridge.stop()  # what started before the failure (the HTTP face, say) goes too
        raise
    try:
        await until_stopped(stop)
    finally:
        await bridge.stop()


def client_id_for(data: Path | None) -> str:
    """A stable client id (the MQTT session, and the messages not yet acknowledged, are found again after a
    restart): the host's name and the data directory's."""
    where = str(data.resolve()) if data is not None else os.getcwd()
    return f"mapemesh-bridge-{socket.gethostname()}-{hashlib.sha256(where.encode()).hexdigest()[:8]}"
