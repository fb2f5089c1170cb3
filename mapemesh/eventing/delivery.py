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
import logging
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import aiohttp

from mapemesh.eventing.binding import content_mode, from_http, to_binary
from mapemesh.eventing.brokers import BrokerRegistry
from mapemesh.eventing.cloudevent import CloudEvent, MalformedEvent
from mapemesh.eventing.deliveryspec import is_retryable
from mapemesh.eventing.ingress import TTL, Ingress
from mapemesh.eventing.log import EventLog, LoggedEvent
from mapemesh.eventing.stats import OUTCOMES, BrokerMetrics
from mapemesh.eventing.triggers import Resolver, Trigger, TriggerSet, load_triggers

log = logging.getLogger(__name__)

ERROR_DEST, ERROR_CODE, ERROR_DATA = "knativeerrordest", "knativeerrorcode", "knativeerrordata"
ERROR_DATA_MAX_CHARS = 1024
MAX_IN_FLIGHT_PER_TRIGGER = 64
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
        # base64 grows 3 bytes into 4 characters: keep the encoded form within the limit.
        attributes[ERROR_DATA] = base64.b64encode(attempt.body[:ERROR_DATA_MAX_CHARS // 4 * 3]).decode("ascii")
    return CloudEvent(attributes, event.data)


class Dispatcher:
    """Routes the log's events to triggers and delivers them; create, `start()`, and `stop()` it."""

    def __init__(self, event_log: EventLog, ingress: Ingress, registry: BrokerRegistry, resolver: Resolver,
                 metrics: BrokerMetrics, clock: Clock | None = None):
        self.log = event_log
        self.ingress = ingress
        self.registry = registry
        self.resolver = resolver
        self.metrics = metrics
        self.clock: Clock = clock or SystemClock()
        self.triggers = TriggerSet()
        self._tasks: set[asyncio.Task[None]] = set()
        self._limits: dict[str, asyncio.Semaphore] = {}
        self._ordered: dict[tuple[str, str], deque[tuple[LoggedEvent, int, int]]] = {}
        self._session: aiohttp.ClientSession | None = None
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
        pending = self.log.deliveries(state="pending")
        events = self.log.get({d.seq for d in pending})
        for d in pending:
            logged = events.get(d.seq)
            if logged is None:  # cannot happen while its delivery is pending; never crash on it
                log.error("pending delivery of missing event %d to %s: dropped", d.seq, d.subscription)
                continue
            self._schedule(d.subscription, logged, d.attempts, d.not_before_ns)
        if pending:
            log.info("resuming %d pending deliveries", len(pending))
        self.ingress.router = self

    async def stop(self) -> None:
        """Stop routing and delivering; what was not finished stays pending in the log."""
        self.ingress.router = None
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
            rows[key] = {
                "broker": t.broker, "ready": t.ready, "reason": t.reason, "ordered": t.ordered,
                "subscriber": None if sub is None else (sub.uri if sub.ref is None else
                                                        f"{sub.ref.get('kind')}/{sub.ref.get('name')}"
                                                        + (f" {sub.uri}" if sub.uri else "")),
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
        """The events and their routes are durable: deliver them."""
        now = time.time_ns()
        for event, seq, keys in zip(events, seqs, routes, strict=True):
            if not keys:
                continue
            logged = LoggedEvent(seq, broker, event, now)
            for key in keys:
                self.metrics.count(key, "accepted")
                self._schedule(key, logged, 0, 0)

    # -- delivery ------------------------------------------------------------------------------

    def _schedule(self, key: str, logged: LoggedEvent, attempts: int, not_before_ns: int) -> None:
        trigger = self.triggers.triggers.get(key)
        partition = partition_key(logged.event) if trigger is not None and trigger.ordered else None
        if partition is None:
            self._spawn(self._deliver_limited(key, logged, attempts, not_before_ns))
            return
        queue = self._ordered.get((key, partition))
        if queue is not None:
            queue.append((logged, attempts, not_before_ns))
            return
        self._ordered[(key, partition)] = deque([(logged, attempts, not_before_ns)])
        self._spawn(self._drain_partition(key, partition))

    def _spawn(self, coro: object) -> None:
        task = asyncio.create_task(coro)  # type: ignore[arg-type]
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _drain_partition(self, key: str, partition: str) -> None:
        queue = self._ordered[(key, partition)]
        try:
            while queue:
                logged, attempts, not_before_ns = queue[0]
                await self._deliver(key, logged, attempts, not_before_ns)
                queue.popleft()
        finally:
            del self._ordered[(key, partition)]

    async def _deliver_limited(self, key: str, logged: LoggedEvent, attempts: int, not_before_ns: int) -> None:
        limit = self._limits.setdefault(key, asyncio.Semaphore(MAX_IN_FLIGHT_PER_TRIGGER))
        async with limit:
            await self._deliver(key, logged, attempts, not_before_ns)

    async def _current(self, key: str) -> Trigger | None:
        """The trigger as it is now; waits while it exists but is not ready (its events stay pending)."""
        while True:
            trigger = self.triggers.triggers.get(key)
            if trigger is None or trigger.ready:
                return trigger
            await self.clock.sleep(1.0)

    async def _deliver(self, key: str, logged: LoggedEvent, attempts: int, not_before_ns: int) -> None:
        """Deliver one event to one trigger's subscriber until it succeeds or is dead-lettered."""
        try:
            await self._deliver_inner(key, logged, attempts, not_before_ns)
        except asyncio.CancelledError:
            raise
        except Exception:  # never lose the task silently: the delivery stays pending for a restart
            log.exception("delivery of event %d to %s failed unexpectedly", logged.seq, key)

    async def _deliver_inner(self, key: str, logged: LoggedEvent, attempts: int, not_before_ns: int) -> None:
        event, seq = logged.event, logged.seq
        last = Attempt(None, error="no attempt made")
        destination = "?"
        while True:
            trigger = await self._current(key)
            if trigger is None:
                await self.log.record_attempt(key, seq, "dead", error="trigger removed", attempted=False)
                self.metrics.count(key, "dropped")
                log.warning("event %s (seq %d) dropped: trigger %s was removed", event.id, seq, key)
                return
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
                last = await self.send(destination, event, spec.timeout, reply_expected=True)
            attempts += 1
            if last.ok:
                if last.reply is not None:
                    await self.ingress.republish(trigger.broker, last.reply, event)
                await self.log.record_attempt(key, seq, "delivered", status=last.status)
                self.metrics.count(key, "delivered")
                self.metrics.latency(key, self.clock.time() - logged.received_ns / 1e9)
                return
            if is_retryable(last.status) and attempts <= spec.retry:
                not_before_ns = int((self.clock.time() + spec.backoff(attempts)) * 1e9)
                await self.log.record_attempt(key, seq, "pending", status=last.status, error=last.error,
                                              not_before_ns=not_before_ns)
                self.metrics.count(key, "retried")
                log.info("event %s to %s: %s; retry %d of %d", event.id, key, _describe(last), attempts,
                         spec.retry)
                continue
            await self.log.record_attempt(key, seq, "pending", status=last.status, error=last.error,
                                          not_before_ns=DEAD_LETTER_NEXT)
            break
        await self._dead_letter(trigger, logged, destination, last)

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

    async def send(self, url: str, event: CloudEvent, timeout_s: float, *, reply_expected: bool) -> Attempt:
        """POST `event` in binary mode (TTL removed, as Knative does); read a reply event if one comes."""
        assert self._session is not None, "start() the dispatcher first"
        outgoing = CloudEvent({k: v for k, v in event.attributes.items() if k != TTL}, event.data)
        headers, body = to_binary(outgoing)
        if reply_expected:
            headers["Prefer"] = "reply"
        try:
            async with self._session.post(url, data=body, headers=headers,
                                          timeout=aiohttp.ClientTimeout(total=timeout_s)) as resp:
                payload = await resp.content.read(MAX_REPLY_BYTES + 1)
                status, resp_headers = resp.status, resp.headers
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            return Attempt(None, error=f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__)
        if not 200 <= status < 300:
            return Attempt(status, payload[:MAX_REPLY_BYTES], error=f"HTTP {status}")
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


def _describe(attempt: Attempt) -> str:
    if attempt.error and attempt.status is not None and attempt.error != f"HTTP {attempt.status}":
        return f"HTTP {attempt.status}: {attempt.error}"
    return attempt.error or f"HTTP {attempt.status}"
