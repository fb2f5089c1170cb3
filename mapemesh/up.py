"""`mapemesh up`: the broker and the local function host in one process (the embedded mesh)."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from aiohttp import web

from mapemesh import endpoints
from mapemesh.aio import until_stopped
from mapemesh.eventing.server import RunningBroker, start_broker
from mapemesh.serving.host import LocalHost
from mapemesh.settings import Settings

log = logging.getLogger(__name__)


@dataclass(slots=True)
class RunningMesh:
    """A started mesh: the broker, the function host and their URLs."""

    broker: RunningBroker
    host: LocalHost
    host_runner: web.AppRunner
    serving_url: str

    async def stop(self) -> None:
        """Stop the function processes and the fork server (waiting requests get 503), then the servers."""
        self.broker.dispatcher.local.pop(self.serving_url, None)
        self.broker.dispatcher.resolver.serving_url = None
        await self.host.stop()
        await self.host_runner.cleanup()
        endpoints.unregister(self.broker.settings.data, "serving", self.serving_url)
        await self.broker.stop()


async def start_mesh(settings: Settings) -> RunningMesh:
    """Start the broker, then the function host on its own port; record both in endpoints.json."""
    broker = await start_broker(settings)
    host: LocalHost | None = None
    runner: web.AppRunner | None = None
    try:
        host = LocalHost(broker.ingress.brokers, settings.activator_queue, {
            "MAPEMESH_DATA": str(settings.data.resolve()), "MAPEMESH_STATE": settings.state,
            "MAPEMESH_BROKER_URL": broker.url,
            "K_SINK": f"{broker.url}/default/default"})
        await host.start()
        runner = web.AppRunner(host.app(), access_log=None, handle_signals=False, shutdown_timeout=5)
        await runner.setup()
        site = web.TCPSite(runner, settings.host, settings.serving_port, reuse_address=True)
        await site.start()
    except BaseException:  # a port in use, say: leave nothing behind
        if host is not None:
            await host.stop()
        if runner is not None:
            await runner.cleanup()
        await broker.stop()
        raise
    h, port = runner.addresses[0][:2]
    url = f"http://{h}:{port}"
    endpoints.register(settings.data, "serving", url)
    # The broker reaches the functions of this process directly, as the activator would, not over loopback HTTP.
    broker.dispatcher.local[url] = host.deliver
    broker.dispatcher.resolver.serving_url = url
    log.info("function host on %s (%d function(s))", url, len(host.revisions))
    return RunningMesh(broker, host, runner, url)


async def serve_mesh(settings: Settings) -> None:
    """Run the mesh until SIGINT or SIGTERM, then stop every child process."""
    mesh = await start_mesh(settings)
    try:
        await until_stopped()
    finally:
        log.info("mesh stopping")
        await mesh.stop()
