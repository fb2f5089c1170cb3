"""Running the embedded broker: durable log, manifests watcher, ingress and dispatcher in one process."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass

from aiohttp import web

from mapemesh import endpoints
from mapemesh import metrics as prometheus
from mapemesh.aio import until_stopped
from mapemesh.eventing.authz import Authorizer
from mapemesh.eventing.brokers import BrokerRegistry
from mapemesh.eventing.delivery import Dispatcher
from mapemesh.eventing.ingress import Ingress
from mapemesh.eventing.log import EventLog
from mapemesh.eventing.stats import BrokerMetrics
from mapemesh.eventing.triggers import Resolver
from mapemesh.settings import Settings

log = logging.getLogger(__name__)
COMPACT_EVERY_S = 5.0


@dataclass(slots=True)
class RunningBroker:
    """A started broker: its base URL and the parts a caller may want to reach."""

    url: str
    ingress: Ingress
    event_log: EventLog
    dispatcher: Dispatcher
    metrics: BrokerMetrics
    runner: web.ServerRunner
    tasks: list[asyncio.Task[None]]
    settings: Settings

    async def stop(self) -> None:
        """Stop accepting and delivering, finish in-flight appends, close the log, forget the endpoint."""
        for task in self.tasks:
            task.cancel()
        for task in self.tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.runner.cleanup()
        await self.dispatcher.stop()
        await self.event_log.close()
        self.metrics.shutdown()
        endpoints.unregister(self.settings.data, "broker", self.url)


async def start_broker(settings: Settings) -> RunningBroker:
    """Open the log, read the brokers, bind the ingress and record it in endpoints.json."""
    registry = BrokerRegistry(settings.manifests, extra=[settings.deployed_manifests])
    if not registry.brokers:
        log.warning("no Broker manifests under %s: every POST will answer 404", settings.manifests)
    event_log = EventLog(settings.event_log_file, durability=settings.durability)  # type: ignore[arg-type]
    ingress = Ingress(registry, event_log, settings.max_event_bytes, accept_batch=settings.accept_batch)
    metrics = BrokerMetrics()
    resolver = Resolver(settings.data, broker_url="")
    dispatcher = Dispatcher(event_log, ingress, registry, resolver, metrics)

    ingress.metrics = metrics
    from mapemesh.identity.guard import identity_dir

    authorizer = Authorizer(identity_dir(settings.data))
    authorizer.refresh(registry.found)
    registry.on_change(lambda reg: authorizer.refresh(reg.found))
    ingress.authorizer = authorizer
    if authorizer.on:
        log.info("authentication-oidc on: the ingress takes a request with a token of this mesh's identities only "
                 "(%d EventPolicies, default-authorization-mode %s)", len(authorizer.policies),
                 authorizer.features.authorization_mode)

    async def stats(request: web.BaseRequest) -> web.Response:
        return web.json_response(dispatcher.stats())

    async def scrape(request: web.BaseRequest) -> web.Response:
        return web.Response(body=prometheus.text(metrics.registry), headers={"Content-Type": prometheus.CONTENT_TYPE})

    runner = web.ServerRunner(ingress.server({"/stats": stats, "/metrics": scrape}), handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, settings.host, settings.broker_port, backlog=1024, reuse_address=True)
    await site.start()
    host, port = runner.addresses[0][:2]
    url = f"http://{_url_host(host)}:{port}"
    resolver.broker_url = url
    await dispatcher.start()
    endpoints.register(settings.data, "broker", url)
    tasks = [asyncio.create_task(registry.watch()),
             asyncio.create_task(_compact_forever(event_log, settings.log_retention_s))]
    log.info("broker ingress on %s (brokers: %s; log %s, durability %s%s)", url,
             ", ".join(sorted(registry.brokers)) or "none", settings.event_log_file, settings.durability,
             "; batch extension on" if settings.accept_batch else "")
    return RunningBroker(url, ingress, event_log, dispatcher, metrics, runner, tasks, settings)


async def _compact_forever(event_log: EventLog, retention_s: float) -> None:
    while True:
        await asyncio.sleep(COMPACT_EVERY_S)
        try:
            await event_log.compact(retention_s)
        except Exception:
            log.exception("compacting the event log failed")


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


async def serve_broker(settings: Settings) -> None:
    """Run the broker until SIGINT or SIGTERM."""
    running = await start_broker(settings)
    try:
        await until_stopped()
    finally:
        log.info("broker stopping")
        await running.stop()
