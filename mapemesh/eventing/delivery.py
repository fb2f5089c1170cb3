"""Routing and delivery: every accepted event reaches every matching trigger's subscriber at least once.

The ingress asks the dispatcher which triggers each event matches before storing it; the log stores the
event and one pending delivery per matching trigger in one transaction, and delivery starts once that is
durable. Deliveries follow the trigger's
DeliverySpec: retries with backoff on transport errors, 404, 408, 409, 429 and 5xx; a dead-letter sink with
Knative's error extensions; a 2xx reply carrying a CloudEvent is published back into the broker. Every
outcome is recorded in the log, so deliveries in flight when the broker dies run again after a restart.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import sqlite3
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import aiohttp

from mapemesh import tracing
from mapemesh.eventing.binding import content_mode, from_http, to_binary
from mapemesh.eventing.brokers import BrokerRegistry
from mapemesh.eventing.cloudevent import CloudEvent, MalformedEvent, validate
from mapemesh.eventing.deliveryspec import is_retryable
from mapemesh.eventing.ingress import TTL, Ingress
from mapemesh.eventing.log import EventLog, LoggedEvent
from mapemesh.eventing.stats import OUTCOMES, BrokerMetrics
from mapemesh.eventing.triggers import Resolver, Trigger, TriggerSet, load_triggers

log = logging.getLogger(__name__)

ERROR_DEST, ERROR_CODE, ERROR_DATA = "knativeerrordest", "knativeerrorcode", "knativeerrordata"
ERROR_DATA_MAX_CHARS = 1024
ERROR_BODY_BYTES = ERROR_DATA_MAX_CHARS // 4 * 3  # base64 turns 3 bytes into 4 characters
WINDOW = 1000
"""Deliveries per trigger held in memory; the rest wait in the log and are read back in order."""
MAX_IN_FLIGHT_PER_TRIGGER = 64
"""Requests in flight to one trigger's subscriber at once."""
MAX_REPLY_BYTES = 1024 * 1024
DEAD_LETTER_NEXT = -1
"""`not_before_ns` of a delivery whose retries are spent: after a restart it goes to the dead-letter sink."""


class Clock(Protocol):
    """Wall-clock time and sleeping, injectable so tests can check backoff without waiting."""

    def time(self) -> float: ...

    async def sleep(self, seconds: float) -> None: ...


class SystemClock:
    """The real clock."""

    def time(self) -> float:
        return time.time()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


@dataclass(slots=True)
class Attempt:
    """What one POST to a subscriber (or a dead-letter sink) came to."""

    status: int | None
    body: bytes = b""
    reply: CloudEvent | None = None
    error: str | None = None
    retry_after: str | None = None
    """The answer's Retry-After header (honoured on 429 and 503 when the delivery sets retryAfterMax)."""

    @property
    def ok(self) -> bool:
        return self.error is None and self.status is not None and 200 <= self.status < 300


def partition_key(event: CloudEvent) -> str | None:
    """The key ordered delivery serialises on: the `partitionkey` extension, else `subject`."""
    key = event.attributes.get("partitionkey", event.attributes.get("subject"))
    return None if key is None else str(key)


def dead_letter_event(event: CloudEvent, destination: str, attempt: Attempt) -> CloudEvent:
    """The original event plus Knative's error extensions, ready for the dead-letter sink."""
    attributes = {k: v for k, v in event.attributes.items() if k != TTL}
    attributes[ERROR_DEST] = destination
    attributes[ERROR_CODE] = str(attempt.status if attempt.status is not None else 500)
    if attempt.body:
        attributes[ERROR_DATA] = base64.b64encode(attempt.body[:ERROR_BODY_BYTES]).decode("ascii")
    return CloudEvent(attributes, event.data)


@dataclass(slots=True)
class _Lane:
    """One trigger's deliveries in memory: at most WINDOW; beyond that they wait in the log (backlog)."""

    scheduled_through: int = 0
    """The highest seq handed to a delivery task (later ones come from the ingress or the backlog)."""
    held: set[int] = field(default_factory=set)
    """The seqs handed to a delivery task and not finished (at most the window, plus late announcements)."""
    backlogged: bool = False
    """Pending deliveries beyond `scheduled_through` wait in the log, to be read back in order."""
    limit: asyncio.Semaphore | None = None

    @property
    def in_memory(self) -> int:
        return len(self.held)


@dataclass(slots=True)
class _Resume:
    """Where a delivery stands when it is (re)started: from the log after a restart, or fresh."""

    attempts: int = 0
    not_before_ns: int = 0
    last: Attempt | None = None


class Dispatcher:
    """Routes accepted events to triggers and delivers them; create, `start()`, and `stop()` it."""

    def __init__(self, event_log: EventLog, ingress: Ingress, registry: BrokerRegistry, resolver: Resolver,
                 metrics: BrokerMetrics, clock: Clock | None = None, window: int = WINDOW):
        self.log = event_log
        self.ingress = ingress
        self.registry = registry
        self.resolver = resolver
        self.metrics = metrics
        self.clock: Clock = clock or SystemClock()
        self.window = window
        self.triggers = TriggerSet()
        self._tasks: set[asyncio.Task[None]] = set()
        self._lanes: dict[str, _Lane] = {}
        self._ordered: dict[tuple[str, str], deque[tuple[LoggedEvent, _Resume]]] = {}
        self._session: aiohttp.ClientSession | None = None
        self._stopping = False
        self.local: dict[str, LocalDelivery] = {}
        """URL prefix -> a receiver in this process (the embedded function host): no HTTP round trip to it."""
        registry.on_change(lambda _: self.reload())
        self.reload()

    def reload(self) -> None:
        """Take the triggers (and the Services refs resolve to) from the manifests just read."""
        triggers, services = load_triggers(self.registry.found)
        self.triggers = TriggerSet.build(triggers)
        self.resolver.services = services
        log.info("triggers: %d ready, %d not ready", sum(t.ready for t in triggers),
                 sum(not t.ready for t in triggers))

    async def start(self) -> None:
        """Resume the deliveries the log still holds as pending, then take new events from the ingress."""
        connector = aiohttp.TCPConnector(limit=0, limit_per_host=256)
        self._session = aiohttp.ClientSession(connector=connector, auto_decompress=False)
        owed = self.log.pending_subscriptions()
        for key in owed:
            lane = self._lanes.setdefault(key, _Lane())
            lane.backlogged = True
            self._refill(key, lane)
        if owed:
            log.info("resuming pending deliveries for %d trigger(s)", len(owed))
        self.ingress.router = self

    async def stop(self) -> None:
        """Stop routing and delivering; what was not finished stays pending in the log."""
        self.ingress.router = None
        self._stopping = True  # cancelled deliveries must not start others on their way out
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._session is not None:
            await self._session.close()

    def stats(self) -> dict[str, object]:
        """Every trigger with its readiness and its delivery counters (what `mapemesh broker stats` shows)."""
        counters = self.metrics.snapshot()
        rows = {}
        for key, t in sorted(self.triggers.triggers.items()):
            sub = t.subscriber
            lane = self._lanes.get(key, _Lane())
            rows[key] = {
                "broker": t.broker, "ready": t.ready, "reason": t.reason, "ordered": t.ordered,
                "subscriber": None if sub is None else (sub.uri if sub.ref is None else
                                                        f"{sub.ref.get('kind')}/{sub.ref.get('name')}"
                                                        + (f" {sub.uri}" if sub.uri else "")),
                "in_flight": lane.in_memory, "backlogged": lane.backlogged,
                **counters.get(key, {o: 0 for o in OUTCOMES}),
            }
        return {"triggers": rows, "log": {"appended": self.log.appended, "commits": self.log.commits}}

    # -- routing (the ingress's Router) -------------------------------------------------------

    def routes(self, broker: str, events: Sequence[CloudEvent]) -> list[list[str]]:
        """The ready triggers each event matches, as subscription keys."""
        if not self.triggers.serves(broker):
            return [[] for _ in events]
        return [[t.key for t in self.triggers.match(broker, ev)] for ev in events]

    def accepted(self, broker: str, events: Sequence[CloudEvent], seqs: list[int],
                 routes: Sequence[Sequence[str]]) -> None:
        """The events and their routes are durable: deliver them (each once, announced in whatever order)."""
        now = time.time_ns()
        for event, seq, keys in zip(events, seqs, routes, strict=True):
            if not keys:
                continue
            logged = LoggedEvent(seq, broker, event, now)
            for key in keys:
                self.metrics.count(key, "accepted")
                lane = self._lanes.setdefault(key, _Lane())
                if seq in lane.held:
                    continue  # read back from the log by a refill before it was announced here
                if seq <= lane.scheduled_through:
                    # Announced after a later event of this trigger (a reply, answered once committed, overtakes
                    # an event still waiting for its fsync), or read back by a refill and finished already: the
                    # log says which. Taken beyond the window if it must: a refill reads after
                    # scheduled_through only.
                    try:
                        d = self.log.delivery(key, seq)
                    except sqlite3.Error:  # cannot tell: deliver it (at least once) rather than strand it
                        log.exception("reading the delivery of event %d to %s failed", seq, key)
                        self._take(key, lane, logged, _Resume())
                        continue
                    if d is not None and d.state == "pending":
                        self._take(key, lane, logged, _Resume(d.attempts, d.not_before_ns))
                    continue
                if lane.backlogged or lane.in_memory >= self.window:
                    lane.backlogged = True  # it waits in the log; a refill takes it in order
                    continue
                self._take(key, lane, logged, _Resume())

    # -- delivery ------------------------------------------------------------------------------

    def _refill(self, key: str, lane: _Lane) -> None:
        """Read a trigger's next pending deliveries back from the log, in log order (synchronous)."""
        lane.backlogged = False  # an accepted() skipped from now on sets it again
        room = self.window - lane.in_memory
        if room <= 0:  # late announcements took it beyond the window: read again once it has room
            lane.backlogged = True
            return
        rows = self.log.pending_after(key, lane.scheduled_through, room)
        events = self.log.get(d.seq for d in rows)
        for d in rows:
            logged = events.get(d.seq)
            if logged is None:  # cannot happen while its delivery is pending; never crash on it
                log.error("pending delivery of missing event %d to %s skipped", d.seq, key)
                lane.scheduled_through = max(lane.scheduled_through, d.seq)
                continue
            last = Attempt(d.last_status, d.last_body or b"", error=d.last_error) \
                if d.not_before_ns == DEAD_LETTER_NEXT else None
            self._take(key, lane, logged, _Resume(d.attempts, d.not_before_ns, last))
        if len(rows) == room:
            lane.backlogged = True  # maybe more: read again once the window has room

    def _take(self, key: str, lane: _Lane, logged: LoggedEvent, resume: _Resume) -> None:
        lane.scheduled_through = max(lane.scheduled_through, logged.seq)
        lane.held.add(logged.seq)
        trigger = self.triggers.triggers.get(key)
        partition = partition_key(logged.event) if trigger is not None and trigger.ordered else None
        if partition is None:
            self._spawn(self._deliver(key, logged, resume))
            return
        queue = self._ordered.get((key, partition))
        if queue is not None:
            # In log order, whatever order they were announced in (the one being delivered has left the queue).
            at = len(queue)
            while at > 0 and queue[at - 1][0].seq > logged.seq:
                at -= 1
            queue.insert(at, (logged, resume))
            return
        self._ordered[(key, partition)] = deque([(logged, resume)])
        self._spawn(self._drain_partition(key, partition))

    def _done(self, key: str, seq: int) -> None:
        lane = self._lanes[key]
        lane.held.discard(seq)
        if lane.backlogged and lane.in_memory <= self.window // 2 and not self._stopping:
            self._refill(key, lane)

    def _spawn(self, coro: object) -> None:
        task = asyncio.create_task(coro)  # type: ignore[arg-type]
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _drain_partition(self, key: str, partition: str) -> None:
        # One delivery at a time, in log order; the queue holds those not started (the task exists while it runs).
        queue = self._ordered[(key, partition)]
        try:
            while queue:
                logged, resume = queue.popleft()
                await self._deliver(key, logged, resume)
        finally:
            del self._ordered[(key, partition)]

    async def _current(self, key: str) -> Trigger | None:
        """The trigger as it is now; waits while it exists but is not ready (its events stay pending)."""
        while True:
            trigger = self.triggers.triggers.get(key)
            if trigger is None or trigger.ready:
                return trigger
            await self.clock.sleep(1.0)

    async def _deliver(self, key: str, logged: LoggedEvent, resume: _Resume) -> None:
        """Deliver one event to one trigger until it is delivered, dead-lettered or dropped."""
        failures = 0
        try:
            while True:
                try:
                    await self._deliver_once(key, logged, resume)
                    return
                except asyncio.CancelledError:
                    raise
                except Exception:
                    # Not the subscriber's answer but our own trouble (the log, a reply that could not be
                    # stored, ...): never give the event up; try again from what the log recorded.
                    failures += 1
                    log.exception("delivering event %d to %s failed; trying again", logged.seq, key)
                    await self.clock.sleep(min(30.0, 0.5 * 2 ** min(failures, 6)))
                    d = self.log.delivery(key, logged.seq)
                    if d is None or d.state != "pending":
                        return
                    last = Attempt(d.last_status, d.last_body or b"", error=d.last_error) \
                        if d.not_before_ns == DEAD_LETTER_NEXT else None
                    resume = _Resume(d.attempts, d.not_before_ns, last)
        finally:
            self._done(key, logged.seq)

    def _limit(self, key: str) -> asyncio.Semaphore:
        lane = self._lanes.setdefault(key, _Lane())
        if lane.limit is None:
            lane.limit = asyncio.Semaphore(MAX_IN_FLIGHT_PER_TRIGGER)
        return lane.limit

    async def _deliver_once(self, key: str, logged: LoggedEvent, resume: _Resume) -> None:
        parent = tracing.of(logged.event.attributes)
        hop = tracing.delivery(parent, key, logged.event.id) if parent is not None else None
        if hop is None or not tracing.enabled():
            await self._attempts(key, logged, resume, hop)
            return
        event = logged.event
        with tracing.span(f"deliver {key}", hop, parent, {
                "messaging.system": "knative", "mapemesh.trigger": key, "cloudevents.event_id": event.id,
                "cloudevents.event_type": event.type}) as current:
            last = await self._attempts(key, logged, resume, hop)
            if current is not None:
                current.set_attribute("http.response.status_code", last.status or 0)
                if last.error:
                    current.set_attribute("error.type", last.error[:200])

    async def _attempts(self, key: str, logged: LoggedEvent, resume: _Resume, hop: tracing.Hop | None) -> Attempt:
        """Try until delivered, dead-lettered or dropped (the delivery's hop on each copy sent); the last answer."""
        event, seq = logged.event, logged.seq
        attempts, not_before_ns = resume.attempts, resume.not_before_ns
        last = resume.last or Attempt(None, error="no attempt made")
        while True:
            trigger = await self._current(key)
            if trigger is None:
                await self.log.record_attempt(key, seq, "dead", error="trigger removed", attempted=False)
                self.metrics.count(key, "dropped")
                log.warning("event %s (seq %d) dropped: trigger %s was removed", event.id, seq, key)
                return last
            spec = trigger.delivery
            if not_before_ns == DEAD_LETTER_NEXT or attempts > spec.retry:
                break
            wait = not_before_ns / 1e9 - self.clock.time()
            if wait > 0:
                await self.clock.sleep(wait)
            assert trigger.subscriber is not None
            try:
                destination = self.resolver.resolve(trigger.subscriber, trigger.namespace)
            except LookupError as exc:
                last = Attempt(None, error=f"subscriber not resolvable: {exc}")
            else:
                async with self._limit(key):  # bounded concurrency per trigger; not held while backing off
                    sent = time.perf_counter()
                    last = await self.send(destination, event, spec.timeout, reply_expected=True, hop=hop)
                    self.metrics.answered(key, last.status, time.perf_counter() - sent)
            attempts += 1
            if last.ok:
                if last.reply is not None:
                    if hop is not None:  # a subscriber that is no mapemesh function: its reply is the delivery's
                        last.reply.attributes.setdefault(tracing.ATTRIBUTE, hop.traceparent)
                    await self.ingress.republish(trigger.broker, last.reply, event)
                await self.log.record_attempt(key, seq, "delivered", status=last.status)
                self.metrics.count(key, "delivered")
                self.metrics.latency(key, self.clock.time() - logged.received_ns / 1e9)
                return last
            if is_retryable(last.status) and attempts <= spec.retry:
                now = self.clock.time()
                not_before_ns = int((now + spec.wait(attempts, last.status, last.retry_after, now)) * 1e9)
                await self.log.record_attempt(key, seq, "pending", status=last.status, error=last.error,
                                              not_before_ns=not_before_ns)
                self.metrics.count(key, "retried")
                log.info("event %s to %s: %s; retry %d of %d", event.id, key, _describe(last), attempts,
                         spec.retry)
                continue
            await self.log.record_attempt(key, seq, "pending", status=last.status, error=last.error,
                                          body=last.body[:ERROR_BODY_BYTES], not_before_ns=DEAD_LETTER_NEXT)
            break
        await self._dead_letter(trigger, logged, self._destination(trigger), last)
        return last

    def _destination(self, trigger: Trigger) -> str:
        """The subscriber's address as `knativeerrordest` names it."""
        assert trigger.subscriber is not None
        try:
            return self.resolver.resolve(trigger.subscriber, trigger.namespace)
        except LookupError:
            ref = trigger.subscriber.ref or {}
            return trigger.subscriber.uri or f"{ref.get('kind')}/{ref.get('name')}"

    async def _dead_letter(self, trigger: Trigger, logged: LoggedEvent, destination: str, last: Attempt) -> None:
        key, event = trigger.key, logged.event
        why = _describe(last)
        sink = trigger.delivery.dead_letter_sink
        if sink is None:
            await self.log.record_attempt(key, logged.seq, "dead", status=last.status,
                                          error=f"dropped (no dead-letter sink): {why}", attempted=False)
            self.metrics.count(key, "dropped")
            log.warning("event %s (seq %d) to %s dropped after its retries, no dead-letter sink: %s",
                        event.id, logged.seq, key, why)
            return
        letter = dead_letter_event(event, destination, last)
        spec = trigger.delivery
        outcome = Attempt(None, error="no attempt made")
        for n in range(spec.retry + 1):
            if n:
                await self.clock.sleep(spec.backoff(n))
            try:
                url = self.resolver.resolve(sink, trigger.namespace)
            except LookupError as exc:
                outcome = Attempt(None, error=f"dead-letter sink not resolvable: {exc}")
                continue
            outcome = await self.send(url, letter, spec.timeout, reply_expected=False)
            if outcome.ok or not is_retryable(outcome.status):
                break
        if outcome.ok:
            await self.log.record_attempt(key, logged.seq, "dead", status=last.status,
                                          error=f"dead-lettered: {why}", attempted=False)
            self.metrics.count(key, "dead_lettered")
            log.info("event %s to %s dead-lettered: %s", event.id, key, why)
        else:
            await self.log.record_attempt(key, logged.seq, "dead", status=last.status,
                                          error=f"dropped (dead-letter sink failed: {_describe(outcome)}): {why}",
                                          attempted=False)
            self.metrics.count(key, "dropped")
            log.error("event %s to %s dropped: dead-letter sink failed (%s) after %s", event.id, key,
                      _describe(outcome), why)

    async def send(self, url: str, event: CloudEvent, timeout_s: float, *, reply_expected: bool,
                   hop: tracing.Hop | None = None) -> Attempt:
        """POST `event` in binary mode (TTL removed, as Knative does; `traceparent` the delivery's `hop`); read a
        reply event if one comes."""
        assert self._session is not None, "start() the dispatcher first"
        outgoing = CloudEvent({k: v for k, v in event.attributes.items() if k != TTL}, event.data)
        if hop is not None:
            outgoing.attributes[tracing.ATTRIBUTE] = hop.traceparent
        for prefix, deliver in self.local.items():
            if url.startswith(prefix + "/"):
                return await self._send_local(deliver, url[len(prefix):], outgoing, timeout_s, reply_expected)
        headers, body = to_binary(outgoing)
        if reply_expected:
            headers["Prefer"] = "reply"
        try:
            async with self._session.post(url, data=body, headers=headers,
                                          timeout=aiohttp.ClientTimeout(total=timeout_s)) as resp:
                payload = await _read_body(resp, MAX_REPLY_BYTES + 1)
                status, resp_headers = resp.status, resp.headers
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            return Attempt(None, error=f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__)
        if not 200 <= status < 300:
            return Attempt(status, payload[:MAX_REPLY_BYTES], error=f"HTTP {status}",
                           retry_after=resp_headers.get("Retry-After"))
        if not reply_expected or status == 202:  # 202 answers are never replies (Knative data plane)
            return Attempt(status, payload)
        is_event = "ce-specversion" in resp_headers or content_mode(resp_headers.get("Content-Type")) != "binary"
        if not is_event:
            if payload:
                return Attempt(status, payload, error=(
                    f"the subscriber answered {status} with a {len(payload)}-byte body that is not a CloudEvent "
                    f"(content-type {resp_headers.get('Content-Type')!r}); a reply must be empty or a CloudEvent"))
            return Attempt(status)
        if len(payload) > MAX_REPLY_BYTES:
            return Attempt(status, payload[:MAX_REPLY_BYTES], error="reply event larger than 1 MiB")
        try:
            replies = from_http(resp_headers, payload)
        except MalformedEvent as exc:
            return Attempt(status, payload, error=f"the reply is not a valid CloudEvent: {exc}")
        if len(replies) != 1:
            return Attempt(status, payload, error="a reply must be one CloudEvent, not a batch")
        return Attempt(status, payload, reply=replies[0])


    async def _send_local(self, deliver: LocalDelivery, path: str, event: CloudEvent, timeout_s: float,
                          reply_expected: bool) -> Attempt:
        """What `send` does over HTTP, handed to a receiver in this process: same statuses, same checks."""
        # Shielded: as over HTTP, giving up on the answer does not cancel the call; the host's own timeout
        # still ends a stuck request (and replaces its process).
        call = asyncio.ensure_future(deliver(path, event))
        try:
            answer = await asyncio.wait_for(asyncio.shield(call), timeout_s)
        except TimeoutError:
            call.add_done_callback(lambda f: f.cancelled() or f.exception())  # retrieved: no warning
            return Attempt(None, error="TimeoutError")
        status, reply, error = answer.status, answer.reply, answer.error
        if not 200 <= status < 300:
            body = json.dumps({"error": error or f"HTTP {status}"}).encode()
            return Attempt(status, body[:MAX_REPLY_BYTES], error=f"HTTP {status}", retry_after=answer.retry_after)
        if reply is None or not reply_expected or status == 202:
            return Attempt(status)
        try:
            validate(reply.attributes)
        except MalformedEvent as exc:
            return Attempt(status, error=f"the reply is not a valid CloudEvent: {exc}")
        if len(reply.data or b"") > MAX_REPLY_BYTES:
            return Attempt(status, error="reply event larger than 1 MiB")
        return Attempt(status, reply=reply)


@dataclass(frozen=True, slots=True)
class LocalAnswer:
    """What a receiver in this process answered: the HTTP status it stands for, the reply, the error message and
    the Retry-After it asks for."""

    status: int
    reply: CloudEvent | None = None
    error: str | None = None
    retry_after: str | None = None


LocalDelivery = Callable[[str, CloudEvent], Awaitable[LocalAnswer]]
"""A receiver in this process: (path, event) -> its answer."""


async def _read_body(resp: aiohttp.ClientResponse, limit: int) -> bytes:
    """The response body up to `limit` bytes: every chunk until the end, not just what has arrived."""
    chunks: list[bytes] = []
    size = 0
    while size < limit:
        chunk = await resp.content.read(limit - size)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


def _describe(attempt: Attempt) -> str:
    if attempt.error and attempt.status is not None and attempt.error != f"HTTP {attempt.status}":
        return f"HTTP {attempt.status}: {attempt.error}"
    return attempt.error or f"HTTP {attempt.status}"
