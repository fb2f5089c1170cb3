"""The API's own event feed on a cluster: a Trigger's subscriber that keeps the mesh's recent events for the
live stream (`/events/stream`, `mapemesh watch`).

On one machine the stream reads the embedded broker's durable log. A cluster's broker (Kafka, RabbitMQ, the
channel-based one) keeps no log the API can read, so the bundle gives the API a Trigger (every `io.mapemesh.`
type) and the API appends what it is sent to a log of its own in DATA_DIR, which the stream reads the same way.

| request                               | answer                                                   |
|---------------------------------------|----------------------------------------------------------|
| `POST /` one CloudEvent (binary or    | 202 once it is in the feed's log (no reply)              |
| structured mode)                      |                                                          |
| a batch, or a malformed event         | 400 with the reason (the broker dead-letters or drops it)|
| the log cannot store it               | 503 with Retry-After (the broker retries)                |
| any other method                      | 405                                                      |
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

from mapemesh.eventing.binding import content_mode, from_http
from mapemesh.eventing.cloudevent import MalformedEvent
from mapemesh.eventing.log import EventLog

log = logging.getLogger(__name__)
FEED = "cluster/feed"
"""The log's broker key for the events the feed keeps."""
COMPACT_EVERY_S = 30.0


@dataclass(slots=True)
class RunningFeed:
    url: str
    runner: web.AppRunner
    event_log: EventLog
    task: asyncio.Task[None]

    async def stop(self) -> None:
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task
        await self.runner.cleanup()
        await self.event_log.close()


async def start_feed(log_file: Path, host: str, port: int, retention_s: float = 3600.0) -> RunningFeed:
    """Take events on host:port into `log_file` (kept `retention_s`), for the stream to read."""
    event_log = EventLog(log_file, durability="os")

    async def receive(request: web.BaseRequest) -> web.Response:
        if request.method != "POST":
            return _json(405, {"error": f"method {request.method} is not allowed; use POST"}, {"Allow": "POST"})
        if content_mode(request.headers.get("Content-Type")) == "batch":
            return _json(400, {"error": "one event per request"})
        try:
            events = from_http(request.headers, await request.read())
        except MalformedEvent as exc:
            return _json(400, exc.as_dict())
        try:
            await event_log.append(FEED, events, [[] for _ in events])
        except Exception as exc:
            log.error("the feed could not store %d event(s): %s", len(events), exc)
            return _json(503, {"error": "not stored; retry"}, {"Retry-After": "1"})
        return web.Response(status=202)

    runner = web.ServerRunner(web.Server(receive, access_log=None), handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, host, port, reuse_address=True)
    await site.start()
    bound, bound_port = runner.addresses[0][:2]
    task = asyncio.get_running_loop().create_task(_compact_forever(event_log, retention_s))
    log.info("event feed for the stream on %s:%d (log %s)", bound, bound_port, log_file)
    return RunningFeed(f"http://{bound}:{bound_port}", runner, event_log, task)


async def _compact_forever(event_log: EventLog, retention_s: float) -> None:
    while True:
        await asyncio.sleep(COMPACT_EVERY_S)
        try:
            await event_log.compact(retention_s)
        except Exception:
            log.exception("compacting the feed's log failed")


def _json(status: int, doc: object, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(status=status, body=json.dumps(doc).encode(), content_type="application/json",
                        headers=headers)
