"""The broker ingress: the Knative broker HTTP contract on one machine.

One event per request, binary or structured mode, as Knative's ingress reads it (`binding.ToEvent` in
knative/eventing `pkg/broker/ingress/ingress_handler.go`: anything else is a 400). A JSON array of events
(`application/cloudevents-batch+json`) is a mapemesh-only extension, taken only with `accept_batch`
(`--accept-batch`, `MAPEMESH_ACCEPT_BATCH=1`).

| request                                   | answer                                                  |
|-------------------------------------------|---------------------------------------------------------|
| `POST /{ns}/{broker}` one valid event     | 202, once the event is in the durable log               |
| a batch, `accept_batch` off (the default) | 400, as from Knative (JSON body says why)               |
| a batch, `accept_batch` on                | 202 once every event is stored; 400 names the index     |
| malformed event                           | 400, JSON body naming the attribute                     |
| unknown broker or path                    | 404                                                     |
| `OPTIONS`                                 | 200 with `Allow: POST, OPTIONS`                         |
| any other method                          | 405 with `Allow: POST, OPTIONS`                         |
| body above the size limit                 | 413                                                     |
| `knativebrokerttl` not an integer or <= 0 | 400                                                     |
| the log cannot store the event            | 503 (nothing stored; retry)                             |
| `authentication-oidc` on: no valid token  | 401; a sender the EventPolicies do not admit: 403       |
|                                           | (`mapemesh.eventing.authz`, Knative's `VerifyRequest`)  |
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Protocol

from aiohttp import web

from mapemesh import tracing
from mapemesh.eventing.authz import Authorizer
from mapemesh.eventing.binding import BATCH, content_mode, from_http
from mapemesh.eventing.brokers import BrokerRegistry
from mapemesh.eventing.cloudevent import CloudEvent, MalformedEvent
from mapemesh.eventing.log import EventLog, UnstorableEvent

log = logging.getLogger(__name__)

TTL = "knativebrokerttl"
ARRIVAL = "knativearrivaltime"
DEFAULT_TTL = 255
MIN_MAX_EVENT_BYTES = 64 * 1024
DEFAULT_MAX_EVENT_BYTES = 1024 * 1024
ALLOW = "POST, OPTIONS"
Handler = Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]
_INTEGER = re.compile(r"-?[0-9]{1,11}")


_second_prefix: tuple[int, str] = (-1, "")


class Router(Protocol):
    """What the ingress asks of the dispatcher for every accepted request."""

    def routes(self, broker: str, events: Sequence[CloudEvent]) -> list[list[str]]:
        """The subscriptions each event must reach (stored with the event, atomically)."""
        ...

    def accepted(self, broker: str, events: Sequence[CloudEvent], seqs: list[int],
                 routes: Sequence[Sequence[str]]) -> None:
        """The events are durable: start delivering them. Calls come in any order: a reply is announced once it
        is committed, an event posted to the ingress once it is fsynced, so a later seq can come first."""
        ...


def arrival_time() -> str:
    """Now, as the RFC 3339 timestamp (UTC, microseconds) Knative puts in `knativearrivaltime`."""
    global _second_prefix
    now = time.time_ns()
    second, micros = divmod(now // 1000, 1_000_000)
    if second != _second_prefix[0]:  # formatting a datetime per event is costly; once a second is not
        _second_prefix = (second, datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S."))
    return f"{_second_prefix[1]}{micros:06d}Z"


def parse_ttl(value: object) -> int:
    """The value of a `knativebrokerttl` attribute, a CloudEvents Integer; MalformedEvent if it is not one."""
    if isinstance(value, bool):
        raise MalformedEvent(TTL, "must be an integer")
    if isinstance(value, str):
        if not _INTEGER.fullmatch(value):
            raise MalformedEvent(TTL, f"{value!r} is not an integer")
        value = int(value)
    if not isinstance(value, int):
        raise MalformedEvent(TTL, "must be an integer")
    if not -(2**31) <= value < 2**31:
        raise MalformedEvent(TTL, f"{value} is outside the CloudEvents Integer (32-bit) range")
    return value


def stamp(event: CloudEvent) -> tracing.Hop | None:
    """Set the broker's attributes on an incoming event: TTL (default 255, must be > 0), arrival time, and a
    `traceparent` where it has none (a new trace, returned; None when it came with one)."""
    attrs = event.attributes
    raw = attrs.get(TTL)
    ttl = DEFAULT_TTL if raw is None else parse_ttl(raw)
    if ttl <= 0:
        raise MalformedEvent(TTL, f"TTL is {ttl}: the event has been re-published too many times")
    attrs[TTL] = ttl
    attrs[ARRIVAL] = arrival_time()
    if tracing.ATTRIBUTE in attrs:  # the sender's trace (a value that is no W3C traceparent is kept, untraced)
        return None
    hop = tracing.root(attrs.get("source"), attrs.get("id"))
    attrs[tracing.ATTRIBUTE] = hop.traceparent
    return hop


class Ingress:
    """Accepts events for the declared brokers and appends them to the durable log."""

    def __init__(self, brokers: BrokerRegistry, event_log: EventLog,
                 max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES, accept_batch: bool = False):
        if max_event_bytes < MIN_MAX_EVENT_BYTES:
            raise ValueError(f"max event size must be at least {MIN_MAX_EVENT_BYTES} bytes "
                             f"(got {max_event_bytes})")
        self.brokers = brokers
        self.log = event_log
        self.max_event_bytes = max_event_bytes
        self.accept_batch = accept_batch
        self.metrics: Any = None
        """The broker's metrics (`received(broker, event_type, status)`), when it counts."""
        self.batches_refused = 0
        """Batch requests answered 400 because the extension is off (a mapemesh component must never send one)."""
        self.router: Router | None = None
        """Chooses each event's subscriptions before it is stored, and delivers once it is (the dispatcher)."""
        self.authorizer: Authorizer | None = None
        """Knative's OIDC authentication and EventPolicy authorization, when the manifests turn them on."""

    def server(self, extra_routes: Mapping[str, Handler] | None = None) -> web.Server:
        """A low-level aiohttp server for the ingress, `GET /healthz` and `extra_routes` (GET paths).

        The low-level server skips aiohttp's application router and middleware machinery, which would
        cost every event for nothing: the ingress has one route and decides everything itself.
        """
        routes: dict[str, Handler] = {"/healthz": self._healthz, **(extra_routes or {})}
        loop = asyncio.get_running_loop()
        limit = self.max_event_bytes

        async def dispatch(request: web.BaseRequest) -> web.StreamResponse:
            handler = routes.get(request.path)
            if handler is not None and request.method in ("GET", "HEAD"):
                return await handler(request)
            return await self.handle(request)

        def make_request(message, payload, protocol, writer, task):  # type: ignore[no-untyped-def]
            return web.BaseRequest(message, payload, protocol, writer, task, loop, client_max_size=limit)

        return web.Server(dispatch, request_factory=make_request, access_log=None)

    async def _healthz(self, request: web.BaseRequest) -> web.Response:
        return web.json_response({"status": "ok", "brokers": sorted(self.brokers.brokers),
                                  "manifest_errors": self.brokers.errors,
                                  "accept_batch": self.accept_batch, "batches_refused": self.batches_refused,
                                  "authentication_oidc": bool(self.authorizer and self.authorizer.on),
                                  "unauthorized": self.authorizer.refused if self.authorizer else 0,
                                  "log": {"appended": self.log.appended, "commits": self.log.commits,
                                          "fsyncs": self.log.syncs}})

    async def handle(self, request: web.BaseRequest) -> web.Response:
        """One request of the broker contract (see the module's table)."""
        method = request.method
        if method == "OPTIONS":
            headers = {"Allow": ALLOW}
            origin = request.headers.get("WebHook-Request-Origin")
            if origin:  # CloudEvents HTTP webhook abuse protection handshake
                headers["WebHook-Allowed-Origin"] = origin
                headers["WebHook-Allowed-Rate"] = "*"
            return web.Response(status=200, headers=headers)
        if method != "POST":
            return _error(405, f"method {method} is not allowed; use POST", {"Allow": ALLOW})
        parts = request.path.strip("/").split("/")
        broker = self.brokers.get(parts[0], parts[1]) if len(parts) == 2 else None
        if broker is None:
            return _error(404, f"no broker at {request.path} (the ingress path is /NAMESPACE/BROKER)")
        subject = None
        if self.authorizer is not None and self.authorizer.on:  # before the body, as Knative's VerifyRequest
            found = self.authorizer.authenticate(broker.key, request.headers)
            if isinstance(found, tuple):
                return self._unauthorized(broker.key, *found)
            subject = found
        length = request.content_length
        if length is not None and length > self.max_event_bytes:
            return _error(413, f"body of {length} bytes exceeds the limit of {self.max_event_bytes} bytes")
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return _error(413, f"body exceeds the limit of {self.max_event_bytes} bytes")
        if not self.accept_batch and content_mode(request.headers.get("Content-Type")) == "batch":
            self.batches_refused += 1
            log.warning("refused a %s request to %s: one event per request (Knative's broker contract)", BATCH,
                        broker.key)
            self._refused(broker.key, 400)
            reason = (f"{BATCH} is not accepted: a Knative broker ingress takes one event per request (binary or "
                      "structured mode); the batch extension is mapemesh-only, on with --accept-batch")
            return web.Response(status=400, content_type="application/json",
                                body=json.dumps({"error": "one event per request", "reason": reason}).encode())
        started = time.time_ns()
        roots: list[tuple[CloudEvent, tracing.Hop]] = []
        try:
            events = from_http(request.headers, body)
            for i, event in enumerate(events):
                try:
                    hop = stamp(event)
                except MalformedEvent as exc:
                    raise (exc.at(i) if len(events) > 1 else exc) from None
                if hop is not None:
                    roots.append((event, hop))
        except MalformedEvent as exc:
            self._refused(broker.key, 400)
            return _malformed(exc)
        if subject is not None and self.authorizer is not None:
            denied = self.authorizer.authorize(broker.key, subject, events)
            if denied is not None:
                return self._unauthorized(broker.key, *denied)
        if events:
            routes = self.router.routes(broker.key, events) if self.router is not None else ()
            try:
                seqs = await self.log.append(broker.key, events, routes)
            except UnstorableEvent as exc:
                self._refused(broker.key, 400)
                return _malformed(MalformedEvent(None, str(exc)))
            except Exception as exc:
                log.error("could not store %d event(s) for %s: %s", len(events), broker.key, exc)
                self._refused(broker.key, 503)
                return _error(503, "the event could not be stored; retry", {"Retry-After": "1"})
            if self.router is not None:
                self.router.accepted(broker.key, events, seqs, routes)
            if self.metrics is not None:
                for event in events:
                    self.metrics.received(broker.key, event.type, 202)
            if roots and tracing.enabled():
                for event, hop in roots:
                    with tracing.span(f"ingress {broker.key}", hop, None, {
                            "messaging.system": "knative", "cloudevents.event_id": event.id,
                            "cloudevents.event_type": event.type, "cloudevents.event_source": event.source},
                            start_ns=started):
                        pass
        return web.Response(status=202)

    def _unauthorized(self, broker: str, status: int, reason: str) -> web.Response:
        assert self.authorizer is not None
        self.authorizer.refused += 1
        log.warning("refused a request to %s: %s", broker, reason)
        self._refused(broker, status)
        return _error(status, reason)

    def _refused(self, broker: str, status: int) -> None:
        if self.metrics is not None:
            self.metrics.received(broker, "", status)  # no event type: the request held no event that could be read

    async def republish(self, broker: str, reply: CloudEvent, parent: CloudEvent) -> int | None:
        """Publish a subscriber's reply into `broker` with the parent's TTL minus one.

        Returns the reply's log position, or None when the TTL is exhausted and the reply is dropped.
        """
        ttl = parse_ttl(parent.attributes.get(TTL, DEFAULT_TTL)) - 1
        if ttl <= 0:
            log.warning("dropping reply %s to event %s: TTL exhausted (loop?)", reply.get("id"), parent.id)
            return None
        reply.attributes[TTL] = ttl
        reply.attributes[ARRIVAL] = arrival_time()
        routes = self.router.routes(broker, [reply]) if self.router is not None else ()
        # Delivered on as soon as it is committed: the parent's delivery is marked done only in a later
        # transaction, so a reply lost before its fsync is made again by the parent's redelivery.
        seqs = await self.log.append(broker, [reply], routes, durable=False)
        if self.router is not None:
            self.router.accepted(broker, [reply], seqs, routes)
        return seqs[0]


def _malformed(exc: MalformedEvent) -> web.Response:
    return web.Response(status=400, body=json.dumps(exc.as_dict()).encode(), content_type="application/json")


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(status=status, body=json.dumps({"error": message}).encode(),
                        content_type="application/json", headers=headers)
