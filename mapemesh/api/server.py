"""Serving the northbound API (uvicorn) inside `mapemesh up`'s event loop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import uvicorn

from mapemesh import endpoints, tokens
from mapemesh.api.app import TOKEN_FILE, ApiContext, create_app
from mapemesh.settings import Settings
from mapemesh.state import StateStore

log = logging.getLogger(__name__)


class _Server(uvicorn.Server):
    """uvicorn without its signal handlers: the process that embeds it owns SIGINT and SIGTERM."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


@dataclass(slots=True)
class RunningApi:
    url: str
    server: _Server
    task: asyncio.Task[None]
    store: StateStore
    settings: Settings
    ctx: ApiContext

    async def stop(self) -> None:
        """End open event streams, stop taking requests, forget the endpoint."""
        endpoints.unregister(self.settings.data, "api", self.url)
        self.ctx.closing.set()
        await asyncio.sleep(0.2)  # the streams see it within their 0.1 s poll and end their responses
        self.server.should_exit = True
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.task, 10)
        self.store.close()


async def start_api(settings: Settings, ingress_url: str, ping: Any = None) -> RunningApi:
    """Serve the API on settings.host:api_port (0: a free port), posting actions to the broker ingress at
    `ingress_url`; record it in endpoints.json as `api`."""
    from mapemesh.state import open_store

    store = open_store(settings.state, data=settings.data)
    token = tokens.ensure(settings.data, TOKEN_FILE)
    ctx = ApiContext(store=store, token=token, broker=ingress_url,
                     event_log=settings.event_log_file, ping=ping, data=settings.data)
    family = socket.AF_INET6 if ":" in settings.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((settings.host, settings.api_port))
        sock.listen(128)
        sock.setblocking(False)
    except OSError:
        sock.close()
        store.close()
        raise
    config = uvicorn.Config(create_app(ctx), log_level="warning", access_log=False, lifespan="off",
                            timeout_graceful_shutdown=2, loop="none", http="h11")
    server = _Server(config)
    task = asyncio.get_running_loop().create_task(server.serve(sockets=[sock]))
    while not server.started and not task.done():  # noqa: ASYNC110 (uvicorn exposes only a flag)
        await asyncio.sleep(0.01)
    if task.done():
        sock.close()
        store.close()
        task.result()
        raise RuntimeError("the API server stopped while starting")
    host, port = sock.getsockname()[:2]
    url = f"http://{'[' + host + ']' if ':' in host else host}:{port}"
    endpoints.register(settings.data, "api", url)
    log.info("northbound API on %s (token in %s)", url, settings.data / TOKEN_FILE)
    return RunningApi(url, server, task, store, settings, ctx)
