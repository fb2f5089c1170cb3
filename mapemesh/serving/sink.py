"""Publishing events from inside a function, beyond its one reply: the Knative `K_SINK` convention.

A function answers one event with at most one reply. A stage that has several events to send (the analyze
stage asking three policies, say) returns the first as its reply and publishes the others to its sink: the
address in `K_SINK` (what a Knative SinkBinding or ContainerSource injects; the local host sets it to its
broker), else the broker named by `MAPEMESH_BROKER_URL`.

| what                        | how                                                                        |
|-----------------------------|----------------------------------------------------------------------------|
| one event                   | one POST in binary mode: Knative's broker ingress reads one event per      |
|                             | request and answers 400 to a batch                                         |
| several events              | one POST each, concurrently, over the kept-alive connections of one client |
| 2xx                         | accepted                                                                   |
| 429, 503, 5xx, no answer    | tried again (ATTEMPTS in all, honouring Retry-After up to RETRY_AFTER_MAX) |
| anything else, or no luck   | SinkError: the function fails and the broker delivers its event again      |

A command (`mapemesh.identity.guard`: knob.apply, deploy.requested, ...) is signed on its way out by the process's
identity (MAPEMESH_IDENTITY), so the component that applies it can check who sent it.

So delivery is at least once: after a partial failure the events that were accepted are posted again with the
triggering event's redelivery, and the stages that receive them are idempotent.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncGenerator, Sequence

import aiohttp

from mapemesh import settings, tracing
from mapemesh.eventing.binding import to_binary
from mapemesh.eventing.cloudevent import CloudEvent
from mapemesh.eventing.poster import NO_CONTENT_TYPE
from mapemesh.identity.guard import sign_commands
from mapemesh.identity.tokens import auth_headers

ATTEMPTS = 3
BACKOFF_S = 0.05
RETRY_AFTER_MAX_S = 2.0


class SinkError(RuntimeError):
    """The sink is not configured or did not accept the events."""


_sessions: dict[asyncio.AbstractEventLoop, tuple[aiohttp.ClientSession, AsyncGenerator[None, None]]] = {}
"""One session per event loop (its connections belong to the loop that opened them), with what closes it."""


def sink_url() -> str:
    """Where extra events go: `K_SINK`, else the broker the host named (`MAPEMESH_BROKER_URL`) at default/default."""
    url = settings.current().sink
    if url:
        return url
    raise SinkError("no sink: set K_SINK (or MAPEMESH_BROKER_URL) to the broker's URL")


async def _session() -> aiohttp.ClientSession:
    """The running loop's session (aiohttp: about a fifth of httpx's CPU per request, `bench/mape.py`'s stages post
    on every reaction). It is closed when the loop shuts down (`asyncio.run`'s `shutdown_asyncgens`). No proxy:
    the sink is the broker beside the function (`HTTP_PROXY` and the like are not read; with aiohttp's `trust_env`
    reading them took about as much CPU per request as the whole request with httpx, here)."""
    loop = asyncio.get_running_loop()
    with _sessions_lock:  # loops in several threads (a process's own loop beside the adapter's, say)
        found = _sessions.get(loop)
        if found is not None and not found[0].closed:
            return found[0]
        for other in [other for other in _sessions if other.is_closed()]:  # loops that ended
            _sessions.pop(other, None)
        session = aiohttp.ClientSession()
        closer = _close_at_shutdown(session)
        _sessions[loop] = (session, closer)
    await closer.__anext__()  # the loop now tracks it: its shutdown closes the session
    return session


_sessions_lock = threading.Lock()


async def _close_at_shutdown(session: aiohttp.ClientSession) -> AsyncGenerator[None, None]:
    try:
        yield
    finally:
        await session.close()


async def publish(events: Sequence[CloudEvent], timeout_s: float = 10.0, url: str | None = None,
                  identity: str | None = None) -> None:
    """Post each of `events` to the sink (or to the broker ingress `url`) in a request of its own, all at once,
    with the token of `identity` (default: this process's, MAPEMESH_IDENTITY); SinkError unless every one was
    accepted."""
    if not events:
        return
    events = sign_commands(list(events))  # a command goes signed by this process's identity, if it has one
    url = url or sink_url()
    session, limit = await _session(), aiohttp.ClientTimeout(total=timeout_s)
    auth = auth_headers(url, identity)
    if len(events) == 1:
        await _post(session, url, events[0], auth, limit)
        return
    results = await asyncio.gather(*(_post(session, url, e, auth, limit) for e in events), return_exceptions=True)
    failed = [r for r in results if isinstance(r, BaseException)]
    if failed:
        raise SinkError(f"{len(failed)} of {len(events)} event(s) not accepted: {failed[0]}")


async def _post(session: aiohttp.ClientSession, url: str, event: CloudEvent, auth: dict[str, str],
                limit: aiohttp.ClientTimeout) -> None:
    tracing.stamp(event.attributes)  # an event a function posts itself is in its trace too
    headers, body = to_binary(event)
    headers.update(auth)
    problem = ""
    for attempt in range(1, ATTEMPTS + 1):
        wait = BACKOFF_S * 2 ** (attempt - 1)
        try:
            # No redirect: a 3xx is not the broker taking the event (aiohttp would follow it as a GET).
            async with session.post(url, data=body, headers=headers, timeout=limit, allow_redirects=False,
                                    skip_auto_headers=NO_CONTENT_TYPE) as response:
                status = response.status
                text = "" if status < 300 else await response.text(errors="replace")
                retry_after = response.headers.get("Retry-After")
        except (aiohttp.ClientError, TimeoutError) as exc:
            problem = f"{type(exc).__name__}: {exc}"
        else:
            if 200 <= status < 300:
                return
            problem = f"{status} {text[:200]}"
            if status not in (429,) and status < 500:
                break  # the event itself was refused: sending it again changes nothing
            wait = max(wait, min(_retry_after(retry_after), RETRY_AFTER_MAX_S))
        if attempt < ATTEMPTS:
            await asyncio.sleep(wait)
    raise SinkError(f"publishing event {event.id} ({event.type}) to {url}: {problem}")


def _retry_after(value: str | None) -> float:
    """Seconds from a Retry-After header given in seconds (0 when absent or a date: the backoff applies)."""
    try:
        return max(0.0, float(value)) if value else 0.0
    except ValueError:
        return 0.0


async def reply_and_publish(events: Sequence[CloudEvent]) -> CloudEvent | None:
    """The first event as the function's reply; the others published to the sink first."""
    if len(events) > 1:
        await publish(events[1:])
    return sign_commands([events[0]])[0] if events else None
