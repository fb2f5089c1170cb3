"""The storage gateway as a mesh component (`mapemesh storage serve`, or `mapemesh up` with a locations file).

| face                            | what                                                                             |
|---------------------------------|----------------------------------------------------------------------------------|
| S3 endpoint (`--port`)          | `mapemesh.storage.s3api` over the erasure-coded store (`gateway.ECStore`)        |
| control (`--control-port`)      | `POST /` a signed `knob.apply` (`mapemesh.identity`) of its `StoragePolicy` knob  |
|                                 | (the gateway's Trigger,                                                           |
|                                 | `node-shim-NAME`, brings them): the bucket's policy set, its migration started in |
|                                 | the background, answered `knob.applied` (every bucket's policy before and after) |
|                                 | or `knob.failed`; `GET /status` the buckets, their policies and migrations        |
| into the mesh                   | the gateway as a node NAME offering `StoragePolicy` (the locations and buckets    |
|                                 | in its description); an `io.mapemesh.storage.accessed.v1` event per object access |
|                                 | (bucket, operation, country, bytes); every `telemetry_every_s`, telemetry of node |
|                                 | NAME: `storage_accesses:BUCKET:COUNTRY` (accesses in the interval),              |
|                                 | `location_latency_ms:LOCATION`, `location_bandwidth_mbps:LOCATION`; a bucket     |
|                                 | created or deleted: a `knob.applied` of no plan with every policy before, after  |

The client's country comes from the layout's address table (the first `X-Forwarded-For` address when there is one:
the gateway trusts its network, as it trusts S3 signatures it does not check); the address is not kept.
"""

from __future__ import annotations

import asyncio
import collections
import contextvars
import logging
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from aiohttp import web
from pydantic import ValidationError

from mapemesh import endpoints
from mapemesh import events as catalogue
from mapemesh.eventing.binding import from_http, to_binary
from mapemesh.eventing.cloudevent import MalformedEvent
from mapemesh.eventing.poster import Poster
from mapemesh.files import write_atomically
from mapemesh.identity.guard import Guard, refusal, sign_as
from mapemesh.names import dns_name
from mapemesh.state import StateStore, update
from mapemesh.storage import migrate
from mapemesh.storage.gateway import ECStore
from mapemesh.storage.locations import Layout, Stores
from mapemesh.storage.s3api import s3_app
from mapemesh.storage.sealing import Sealer

log = logging.getLogger(__name__)
_client: contextvars.ContextVar[str | None] = contextvars.ContextVar("mapemesh_storage_client", default=None)
"""The address of the client whose request is being served (set by `_remember_client`)."""
SOURCE = "/mapemesh/storage"
KNOB = "StoragePolicy"
ACCESS_QUEUE = 10_000


@dataclass
class Gateway:
    name: str
    layout: Layout
    store: StateStore
    data: Path
    broker: str | None = None
    manifests: Path | None = None
    host: str = "127.0.0.1"
    port: int = 0
    control_port: int = 0
    telemetry_every_s: float = 5.0
    url: str = ""
    control_url: str = ""
    accesses: collections.Counter[tuple[str, str]] = field(default_factory=collections.Counter)
    migrations: dict[str, asyncio.Task[Any]] = field(default_factory=dict)

    async def start(self) -> None:
        self.guard = Guard.from_environment(self.data)
        self.stores = Stores(self.layout)
        down = await self.stores.prepare()
        if down:
            log.warning("storage locations not answering now: %s", ", ".join(down))
        sealer = Sealer.from_file(Path(self.layout.key_file)) if self.layout.key_file else None
        self.ec = ECStore(self.store, self.layout, self.stores, self.data, on_access=self._accessed,
                          on_buckets=self._buckets_changed, sealer=sealer)
        self._known = self.policies()
        self.poster = Poster(self.broker, identity=self.name, data=self.data) if self.broker else None
        self._queue: asyncio.Queue[catalogue.EventData] = asyncio.Queue(ACCESS_QUEUE)
        self.dropped = 0
        app = s3_app(self.ec)
        app.middlewares.insert(0, _remember_client)
        self.s3 = web.AppRunner(app, access_log=None)
        self.control = web.AppRunner(self._control_app(), access_log=None)
        for runner, port in ((self.s3, self.port), (self.control, self.control_port)):
            await runner.setup()
            await web.TCPSite(runner, self.host, port).start()
        self.url = f"http://{self.host}:{self.s3.addresses[0][1]}"
        self.control_url = f"http://{self.host}:{self.control.addresses[0][1]}"
        self._tasks = [asyncio.create_task(self._telemetry_forever()), asyncio.create_task(self._post_forever())]
        await self._register()
        endpoints.register(self.data, "storage", self.url)
        endpoints.register(self.data, "storage-control", self.control_url)
        log.info("storage gateway %s: S3 on %s, control on %s, %d locations", self.name, self.url, self.control_url,
                 len(self.layout.locations))

    async def stop(self) -> None:
        for task in [*self._tasks, *self.migrations.values()]:
            task.cancel()
        if self.manifests is not None:
            (self.manifests / f"{dns_name('node-shim', self.name)}.yaml").unlink(missing_ok=True)
        endpoints.unregister(self.data, "storage", self.url)
        endpoints.unregister(self.data, "storage-control", self.control_url)
        await self.s3.cleanup()
        await self.control.cleanup()
        if self.poster is not None:
            await self.poster.close()
        self.stores.close()

    # -- into the mesh ---------------------------------------------------------------------------------------------

    def policies(self) -> dict[str, Any]:
        return {name: doc.value.get("policy") for name, doc in sorted(self.store.list("buckets").items())}

    def description(self) -> dict[str, Any]:
        return {"MLSysOpsNode": {
            "name": self.name, "continuum_layer": "cloud", "environment": {"node_type": "storage-gateway"},
            "mechanisms": [KNOB],
            "mechanism_options": {KNOB: {"locations": [loc.describe() for loc in self.layout.locations.values()],
                                         "restrictions": self.layout.restrictions,
                                         "default": {"k": self.layout.default_k, "m": self.layout.default_m}}},
            "mechanism_states": {KNOB: self.policies()}}}

    async def _register(self) -> None:
        await self._post(catalogue.InfraRegistered(infra_id=self.name, kind="node", description=self.description()))
        if self.manifests is not None:
            trigger = {"apiVersion": "eventing.knative.dev/v1", "kind": "Trigger",
                       "metadata": {"name": dns_name("node-shim", self.name), "namespace": "default",
                                    "labels": {"app.kubernetes.io/part-of": "mapemesh",
                                               "app.kubernetes.io/component": "storage"},
                                    "annotations": {"mapemesh.dev/node": self.name}},
                       "spec": {"broker": "default",
                                "filters": [{"exact": {"type": catalogue.KnobApply.event_type}},
                                            {"exact": {"node": self.name}}],
                                "subscriber": {"uri": self.control_url + "/"}}}
            write_atomically(self.manifests / f"{dns_name('node-shim', self.name)}.yaml",
                             f"# Storage gateway {self.name}: its StoragePolicy commands.\n" + yaml.safe_dump(trigger))

    async def _post(self, data: catalogue.EventData) -> None:
        if self.poster is not None:
            await self.poster.post(catalogue.make_event(data, f"{SOURCE}/{self.name}", subject=self.name))

    def _accessed(self, bucket: str, key: str, operation: str, size: int) -> None:
        country = self.layout.country_of(_client.get())
        self.accesses[(bucket, country)] += 1
        try:
            self._queue.put_nowait(catalogue.StorageAccessed(bucket=bucket, operation=operation,  # type: ignore[arg-type]
                                                             country=country, bytes=size))
        except asyncio.QueueFull:
            self.dropped += 1  # the counts above stay exact; only the per-access event is lost

    def _buckets_changed(self) -> None:
        """A bucket created or deleted through S3: the knob's state changed, said as a `knob.applied` of no plan
        (its `request` names no event), so the loop's record of the mechanism follows."""
        before, self._known = self._known, self.policies()
        try:
            self._queue.put_nowait(catalogue.KnobApplied(node=self.name, knob=KNOB, request=f"s3:{uuid.uuid4().hex}",
                                                         before=before, after=self._known))
        except asyncio.QueueFull:
            self.dropped += 1

    async def _post_forever(self) -> None:
        while True:
            await self._post(await self._queue.get())

    async def _telemetry_forever(self) -> None:
        while True:
            await asyncio.sleep(self.telemetry_every_s)
            counted, self.accesses = self.accesses, collections.Counter()
            metrics = [catalogue.Metric(name=f"storage_accesses:{bucket}:{country}", value=float(n))
                       for (bucket, country), n in sorted(counted.items())]
            for name in self.layout.locations:
                try:
                    latency, bandwidth = await self.stores.probe(name)
                except Exception as exc:
                    log.info("location %s does not answer a probe: %s", name, exc)
                    self.ec.failed(name)
                    continue
                metrics += [catalogue.Metric(name=f"location_latency_ms:{name}", value=round(latency, 3), unit="ms"),
                            catalogue.Metric(name=f"location_bandwidth_mbps:{name}", value=round(bandwidth, 3))]
            if metrics:
                await self._post(catalogue.TelemetryReported(asset=self.name, asset_kind="node", metrics=metrics))

    # -- control ---------------------------------------------------------------------------------------------------

    def _control_app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/", self._knob)
        app.router.add_get("/status", self._status)
        return app

    async def _status(self, request: web.Request) -> web.Response:
        return web.json_response({name: {"policy": doc.value.get("policy"), "migration": doc.value.get("migration")}
                                  for name, doc in sorted(self.store.list("buckets").items())})

    def set_policy(self, bucket: str, command: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        """Set a bucket's policy and start its migration; (every policy before, after). ValueError for a bad one."""
        unknown = set(command) - {"command", "bucket", "k", "m", "locations"}
        if command.get("command", "set") != "set" or unknown:
            raise ValueError(f"{KNOB} takes {{command: set, bucket, k, m, locations}}")
        bucket = str(command.get("bucket") or "")
        self.ec.bucket(bucket)  # NoSuchBucket
        policy = self.ec.check_policy(bucket, command)
        before = self.policies()
        update(self.store, "buckets", bucket, lambda d: None if d is None else {**d, "policy": policy})
        self._known = self.policies()
        running = self.migrations.get(bucket)
        if running is not None:
            running.cancel()
        self.migrations[bucket] = asyncio.create_task(migrate.migrate(self.ec, bucket, policy, self._post))
        return before, self.policies()

    async def _knob(self, request: web.Request) -> web.Response:
        try:
            (event,) = from_http(request.headers, await request.read())
            data = catalogue.parse_data(event)
        except (MalformedEvent, ValidationError, ValueError) as exc:
            return web.Response(status=400, text=str(exc))
        if not isinstance(data, catalogue.KnobApply):
            return web.Response(status=202)
        verdict = self.guard.check(event)
        if not verdict.allowed:  # nothing changes; audited; 403: the broker does not retry it
            await self._post(refusal(self.name, event, verdict))
            return web.Response(status=403, text=f"refused: {verdict.rule}: {verdict.reason}")
        reply: catalogue.EventData
        try:
            if data.knob != KNOB:
                raise ValueError(f"the storage gateway has no knob {data.knob} (it has {KNOB})")
            before, after = self.set_policy(data.command.get("bucket", ""), data.command)
            reply = catalogue.KnobApplied(node=self.name, knob=KNOB, request=event.id, plan_id=data.plan_id,
                                          before=before, after=after, noop=before == after)
        except Exception as exc:  # a bad command or an unknown bucket: the plan fails, saying why
            reply = catalogue.KnobFailed(node=self.name, knob=data.knob, request=event.id, plan_id=data.plan_id,
                                         code="invalid", error=getattr(exc, "message", None) or str(exc))
        out = catalogue.make_event(reply, f"{SOURCE}/{self.name}", subject=self.name, extensions={"node": self.name})
        headers, body = to_binary(sign_as(out, self.name, self.guard.root))  # the result's reporter, verifiable
        return web.Response(status=200, headers=headers, body=body)


@web.middleware
async def _remember_client(request: web.Request, handler: Any) -> web.StreamResponse:
    forwarded = request.headers.get("X-Forwarded-For", "").split(",")[0].strip()
    token = _client.set(forwarded or request.remote)
    try:
        return await handler(request)
    finally:
        _client.reset(token)


async def serve_gateway(gateway: Gateway) -> None:
    """Run `gateway` until SIGINT or SIGTERM."""
    from mapemesh.aio import stop_signals, until_stopped

    stop = stop_signals()
    await gateway.start()
    try:
        await until_stopped(stop)
    finally:
        await gateway.stop()
