"""A test subscriber: a real HTTP server on loopback that records what it receives and answers as told."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from aiohttp import web

from mapemesh.eventing.binding import from_http
from mapemesh.eventing.cloudevent import CloudEvent

Handler = Callable[["Received"], Awaitable[web.StreamResponse] | web.StreamResponse]


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    event: CloudEvent
    at: float
    request: web.Request | None = None
    received_ok: bool = False
    """Whether this request was answered with a 2xx."""


@dataclass
class Subscriber:
    """Serve on a free port in a thread; `handlers[path]` decides the answer (default 202)."""

    handlers: dict[str, Handler] = field(default_factory=dict)
    received: list[Received] = field(default_factory=list)
    url: str = ""

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        started = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(started,), daemon=True)
        self._thread.start()
        started.wait(10)

    def _run(self, started: threading.Event) -> None:
        asyncio.set_event_loop(self._loop)
        app = web.Application()
        app.router.add_route("POST", "/{path:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        self._loop.run_until_complete(self._runner.setup())
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        self._loop.run_until_complete(site.start())
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"
        started.set()
        self._loop.run_forever()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        (event,) = from_http(request.headers, body)
        rec = Received(request.path, dict(request.headers), event, time.monotonic(), request)
        with self._lock:
            self.received.append(rec)
        handler = self.handlers.get(request.path)
        if handler is None:
            response: web.StreamResponse = web.Response(status=202)
        else:
            result = handler(rec)
            response = await result if asyncio.iscoroutine(result) else result  # type: ignore[assignment]
        rec.received_ok = 200 <= response.status < 300
        return response

    def at(self, path: str) -> list[Received]:
        with self._lock:
            return [r for r in self.received if r.path == path]

    def ids(self, path: str) -> list[str]:
        return [r.event.id for r in self.at(path)]

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
