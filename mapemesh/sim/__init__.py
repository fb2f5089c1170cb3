"""Simulated outside systems a cluster's mechanisms drive, for tests and the demo: a 5G core (`core5g`) and a
datacenter job scheduler (`datacenter`). Each serves the HTTP API its adapter calls, registers itself as a node
offering its mechanism (options and state, as a node shim does) and reports its telemetry to the broker, as the
real system's exporter would.

| call                      | does                                                                              |
|---------------------------|-----------------------------------------------------------------------------------|
| `await sim.start()`       | the API on `host:port` (`sim.url`); in the background, the registration, then    |
|                           | telemetry every interval                                                          |
| `await sim.register()`    | `infra.registered` of the node with its mechanism's options and state now         |
| `await sim.stop()`        | all of it stopped                                                                 |
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from mapemesh import events as catalogue
from mapemesh.eventing.poster import Poster

log = logging.getLogger(__name__)


@dataclass
class Simulator:
    """The plumbing a simulated system shares: its API server, its registration and its telemetry loop."""

    name: str
    cluster: str
    broker: str | None = None
    host: str = "127.0.0.1"
    port: int = 0
    telemetry_every_s: float = 1.0
    url: str = ""
    _tasks: list[asyncio.Task[Any]] = field(default_factory=list)

    source = "/mapemesh/sim"

    def routes(self, app: web.Application) -> None:
        raise NotImplementedError

    def description(self) -> dict[str, Any]:
        """The node's `MLSysOpsNode` description, its mechanism's options and state in it."""
        raise NotImplementedError

    def metrics(self) -> list[catalogue.Metric]:
        raise NotImplementedError

    async def start(self) -> None:
        app = web.Application()
        self.routes(app)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, self.host, self.port).start()
        self.url = f"http://{self.host}:{self._runner.addresses[0][1]}"
        self._poster = Poster(self.broker) if self.broker else None
        # Registered, then reporting, in the background: the API answers while the broker is not there yet.
        self._tasks.append(asyncio.create_task(self._telemetry_forever()))
        log.info("simulated %s %s of cluster %s on %s", type(self).__name__, self.name, self.cluster, self.url)

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await self._runner.cleanup()
        if self._poster is not None:
            await self._poster.close()

    async def post(self, data: catalogue.EventData) -> None:
        if self._poster is not None:
            await self._poster.post(catalogue.make_event(data, f"{self.source}/{self.name}", subject=self.name))

    async def register(self) -> None:
        await self.post(catalogue.InfraRegistered(infra_id=self.name, kind="node", description=self.description()))

    async def _telemetry_forever(self) -> None:
        await self.register()
        while True:
            await self.post(catalogue.TelemetryReported(asset=self.name, asset_kind="node", metrics=self.metrics()))
            await asyncio.sleep(self.telemetry_every_s)


async def serve(sim: Simulator, started: Callable[[Simulator], None] = lambda sim: None) -> None:
    """Run `sim` until SIGINT or SIGTERM (`started` is told once its API listens)."""
    from mapemesh.aio import stop_signals, until_stopped

    stop = stop_signals()
    await sim.start()
    started(sim)
    try:
        await until_stopped(stop)
    finally:
        await sim.stop()
