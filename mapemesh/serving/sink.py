"""Publishing events from inside a function, beyond its one reply: the Knative `K_SINK` convention.

A function answers one event with at most one reply. A stage that has several events to send (the analyze
stage asking three policies, say) returns the first as its reply and publishes the others to its sink: the
broker named by `K_SINK` (what a Knative SinkBinding injects; the local host sets it to its broker). The
events are posted as one batch, so they are stored all or none; a failure raises, the function fails, and
the broker delivers the triggering event again (at least once).
"""

from __future__ import annotations

import asyncio
import os
import weakref
from collections.abc import Sequence

import httpx
import orjson

from mapemesh.eventing.binding import BATCH
from mapemesh.eventing.cloudevent import CloudEvent


class SinkError(RuntimeError):
    """The sink is not configured or did not accept the events."""


_clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, httpx.AsyncClient] = weakref.WeakKeyDictionary()
"""One client per event loop: its connections belong to the loop that opened them."""


def sink_url() -> str:
    """Where extra events go: `K_SINK`, else the broker the host named (`MAPEMESH_BROKER_URL`) at default/default."""
    url = os.environ.get("K_SINK")
    if url:
        return url
    broker = os.environ.get("MAPEMESH_BROKER_URL")
    if broker:
        return broker.rstrip("/") + "/default/default"
    raise SinkError("no sink: set K_SINK (or MAPEMESH_BROKER_URL) to the broker's URL")


async def publish(events: Sequence[CloudEvent], timeout_s: float = 10.0, url: str | None = None) -> None:
    """Post `events` to the sink (or to the broker ingress `url`) as one batch; SinkError unless the broker
    answers 202."""
    if not events:
        return
    loop = asyncio.get_running_loop()
    client = _clients.get(loop)
    if client is None:
        client = _clients[loop] = httpx.AsyncClient(timeout=timeout_s)
    body = orjson.dumps([e.to_structured() for e in events])
    url = url or sink_url()
    try:
        response = await client.post(url, content=body, headers={"content-type": BATCH})
    except httpx.HTTPError as exc:
        raise SinkError(f"publishing {len(events)} event(s) to {url} failed: {exc}") from exc
    if response.status_code != 202:
        raise SinkError(f"publishing {len(events)} event(s) to {url}: {response.status_code} {response.text[:200]}")


async def reply_and_publish(events: Sequence[CloudEvent]) -> CloudEvent | None:
    """The first event as the function's reply; the others published to the sink first."""
    if len(events) > 1:
        await publish(events[1:])
    return events[0] if events else None
