"""Posting events to a broker's ingress from a long-running component (the MQTT bridge, the storage gateway):
one event per request in binary mode (Knative's contract), over kept-alive aiohttp connections (a fraction of
httpx's CPU per request: a bridge's rate is what it can post).

| the broker answers        | `post` does                                                                  |
|---------------------------|------------------------------------------------------------------------------|
| 2xx                       | returns it                                                                    |
| 4xx other than 429        | returns it (the event's fault: logged, not retried)                           |
| 429, 5xx, nothing         | tries again, backing off to at most RETRY_MAX_S, without end unless `stopping` |
|                           | is set (then returns the last status, 0 for none)                             |
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import aiohttp

from mapemesh.eventing.binding import to_binary
from mapemesh.eventing.cloudevent import CloudEvent
from mapemesh.identity.tokens import auth_headers

log = logging.getLogger(__name__)
RETRY_MAX_S = 5.0
NO_CONTENT_TYPE = frozenset({"Content-Type"})
"""aiohttp adds `application/octet-stream` to a body without one; in binary mode that would become the event's
datacontenttype."""


class Poster:
    """Posts events to the broker's ingress, one per request in binary mode, until each is taken (aiohttp: it
    costs a fraction of httpx's CPU per request, and the bridge's rate is what it can post)."""

    def __init__(self, broker: str, timeout_s: float = 10.0, identity: str | None = None,
                 data: Path | None = None):
        self.broker = broker
        self.identity, self.data = identity, data
        """The mesh identity whose token goes with each request (the broker asks for one with
        `authentication-oidc` on; from `data`'s identity folder); None: MAPEMESH_IDENTITY's, if any."""
        self.timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._session: aiohttp.ClientSession | None = None
        self.accepted = self.retried = 0

    @property
    def http(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self.timeout,
                                                  connector=aiohttp.TCPConnector(limit=128, force_close=False))
        return self._session

    async def post(self, event: CloudEvent, *, stopping: asyncio.Event | None = None) -> int:
        """The broker's final status for `event`: 2xx, or a 4xx that is the event's fault (retries otherwise,
        without end unless `stopping` is set: then the last status, or 0)."""
        headers, body = to_binary(event)
        headers.update(auth_headers(self.broker, self.identity, self.data))
        delay, status = 0.1, 0
        while True:
            try:
                async with self.http.post(self.broker, headers=headers, data=body, allow_redirects=False,
                                          skip_auto_headers=NO_CONTENT_TYPE) as response:
                    status = response.status
                    text = await response.text(errors="replace") if status >= 300 else ""
                if 200 <= status < 300:
                    self.accepted += 1
                    return status
                if 400 <= status < 500 and status != 429:
                    log.warning("the broker refused event %s (%s): %s %s", event.id, event.type, status, text[:200])
                    return status
            except (aiohttp.ClientError, TimeoutError) as exc:
                status = 0
                log.debug("the broker at %s does not answer: %s", self.broker, exc)
            if stopping is not None and stopping.is_set():
                return status
            self.retried += 1
            await asyncio.sleep(delay)
            delay = min(delay * 2, RETRY_MAX_S)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
