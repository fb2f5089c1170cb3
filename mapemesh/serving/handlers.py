"""Typed handlers, as kopf has them: one function per event type; the framework owns the plumbing.

    import mapemesh
    from mapemesh import events as catalogue

    @mapemesh.on(catalogue.KnobApplied)
    def applied(data: catalogue.KnobApplied, *, event, store) -> catalogue.StateChanged | None: ...

    monitor = mapemesh.stage(__name__, source="/mapemesh/monitor")   # the Service's FUNCTION_TARGET

| the framework                    | how                                                                            |
|----------------------------------|--------------------------------------------------------------------------------|
| parses and validates the data    | as the catalogue model of the event's type: bad data is a `PermanentError`    |
|                                  | (422: not retried, dead-lettered)                                              |
| picks the handler                | by the event's type; a type the stage has no handler for is a                 |
|                                  | `PermanentError` (the Trigger sends what the stage takes, and a test checks   |
|                                  | the Trigger's types against the handlers)                                     |
| injects what the handler names   | `event` (mapemesh's CloudEvent, as received), `store` (the state store of     |
|                                  | MAPEMESH_STATE, one per process)                                               |
| builds the reply                 | the handler returns event data, a `Reply` (data plus subject and extensions), |
|                                  | a CloudEvent, a list of them, or None; events are made from the stage's        |
|                                  | `source`; the first is the reply, the others are posted to K_SINK, one per     |
|                                  | request (Knative's contract), before the reply goes                           |
| checks commands                  | a command type (`mapemesh.identity.guard`) must be signed by an identity the  |
|                                  | command policy allows: else an `auth.refused` event and a `PermanentError`    |
| maps errors                      | `PermanentError` 422; `TemporaryError(delay)` 503 with Retry-After; anything  |
|                                  | else 500 (`mapemesh.serving.errors`)                                           |

A handler may be sync or async; it runs on the function process's event loop, one event at a time in turn with
the others (the store is not shared across threads).
"""

from __future__ import annotations

import concurrent.futures
import inspect
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from mapemesh import events as catalogue
from mapemesh import settings, tracing
from mapemesh.eventing.cloudevent import CloudEvent
from mapemesh.identity.guard import Guard, enabled, identity_dir, refusal
from mapemesh.identity.guard import policy as guard_policy
from mapemesh.serving.errors import PermanentError
from mapemesh.serving.function import Startable, Startup

Handler = Callable[..., Any]
INJECTABLE = ("event", "store")
_pending: dict[str, dict[str, Handler]] = {}
"""Handlers declared with `on`, by module, until the module's `stage` takes them."""


@dataclass(frozen=True, slots=True)
class Reply:
    """Event data to send with a subject and extensions of its own (plain data gets neither)."""

    data: catalogue.EventData
    subject: str | None = None
    extensions: dict[str, str] = field(default_factory=dict)


def on(*types: type[catalogue.EventData]) -> Callable[[Handler], Handler]:
    """Declare `fn` the handler of events of `types` in its module's stage; `fn` is returned unchanged."""
    if not types or not all(isinstance(t, type) and issubclass(t, catalogue.EventData) for t in types):
        raise TypeError("mapemesh.on takes one or more catalogue event classes (mapemesh.events.X)")

    def register(fn: Handler) -> Handler:
        params = list(inspect.signature(fn).parameters.values())
        extra = [p.name for p in params[1:] if p.name not in INJECTABLE or p.kind is not p.KEYWORD_ONLY]
        if not params or extra:
            raise TypeError(f"handler {fn.__qualname__}: a handler takes the data, then any of "
                            f"{', '.join(INJECTABLE)} as keyword-only arguments (got {', '.join(extra) or 'nothing'})")
        handlers = _pending.setdefault(fn.__module__, {})
        for t in types:
            if t.event_type in handlers:
                raise TypeError(f"{t.event_type} has two handlers in {fn.__module__}: "
                                f"{handlers[t.event_type].__qualname__} and {fn.__qualname__}")
            handlers[t.event_type] = fn
        return fn

    return register


class Stage(Startable):
    """A function made of typed handlers: dispatches each event to the handler of its type."""

    def __init__(self, name: str, source: str, handlers: dict[str, Handler], *,
                 store: Callable[[], Any] | None = None, before: Callable[[Any], None] | None = None,
                 on_start: Startup | None = None, on_stop: Startup | None = None):
        super().__init__(name, on_start, on_stop)
        self.source = source
        self.handlers = dict(handlers)
        self._store = store
        self.before = before
        """Run with the store before every event (the monitor's sweep of timed-out plans, say)."""
        self._wants = {t: _wants(fn) for t, fn in self.handlers.items()}
        self._guard: tuple[tuple[bool, str], Guard] | None = None

    def guard(self) -> Guard:
        """The check of the commands this stage takes: the trust anchor of the process's environment (kept per
        identity directory: tests change the environment between calls)."""
        key = (enabled(), str(identity_dir()))
        if self._guard is None or self._guard[0] != key:
            self._guard = (key, Guard.from_environment())
        return self._guard[1]

    @property
    def types(self) -> frozenset[str]:
        """The event types this stage takes (what its Trigger must send it)."""
        return frozenset(self.handlers)

    def store(self) -> Any:
        """The state store (MAPEMESH_STATE's, opened once per process, unless the stage was given another)."""
        if self._store is not None:
            return self._store()
        return environment_store()

    async def __call__(self, event: CloudEvent) -> CloudEvent | None:
        """`call`: a stage is called like the function it serves as."""
        return await self.call(event)

    async def call(self, event: CloudEvent, executor: concurrent.futures.Executor | None = None) -> CloudEvent | None:
        """Run the handler of `event`'s type; post the extra events; return the reply (all in its trace)."""
        with tracing.handling(event.attributes, self.name, extra={"mapemesh.function": self.name}):
            return await self._call(event)

    async def _call(self, event: CloudEvent) -> CloudEvent | None:
        handler = self.handlers.get(event.type)
        if handler is None:
            raise PermanentError(f"{self.name} takes {', '.join(sorted(self.handlers))}, not {event.type}")
        try:
            data = catalogue.parse_data(event)
        except (ValidationError, ValueError) as exc:
            raise PermanentError(f"{event.type} {event.id}: invalid data: {exc}") from None
        if event.type in guard_policy():  # a command: checked here, where it is applied
            verdict = self.guard().check(event)
            if not verdict.allowed:
                from mapemesh.serving.sink import publish

                await publish([catalogue.make_event(refusal(self.name, event, verdict), self.source)])
                raise PermanentError(f"{event.type} {event.id} refused: {verdict.rule}: {verdict.reason}")
        wants = self._wants[event.type]
        store = self.store() if "store" in wants or self.before is not None else None
        if self.before is not None:
            self.before(store)
        kwargs = {"event": event, "store": store}
        result = handler(data, **{k: kwargs[k] for k in wants})
        if inspect.isawaitable(result):
            result = await result
        return await self.send(result)

    async def send(self, result: object) -> CloudEvent | None:
        """A handler's answer as events: the first returned, the others posted to the sink first."""
        from mapemesh.serving.sink import reply_and_publish

        events = [self.event(item) for item in _items(result)]
        return await reply_and_publish(events)

    def event(self, item: object) -> CloudEvent:
        """One answer item as a CloudEvent from this stage, in the trace of the event being handled."""
        if isinstance(item, CloudEvent):
            out = item
        elif isinstance(item, Reply):
            out = catalogue.make_event(item.data, self.source, subject=item.subject, extensions=item.extensions or None)
        elif isinstance(item, catalogue.EventData):
            out = catalogue.make_event(item, self.source)
        else:
            raise TypeError(f"a handler of {self.name} returned {type(item).__name__}; return event data, a Reply, "
                            "a CloudEvent, a list of them, or None")
        tracing.stamp(out.attributes)
        return out


_opened: tuple[tuple[object, ...], Any] | None = None


def environment_store() -> Any:
    """MAPEMESH_STATE's store, opened once per process and environment (again in a forked child: connections do
    not survive a fork)."""
    global _opened
    s = settings.current()
    key = (os.getpid(), s.state, s.data, s.telemetry_retention_s)
    if _opened is None or _opened[0] != key:
        from mapemesh.state import from_environment

        if _opened is not None and _opened[0][0] == key[0]:
            _opened[1].close()  # the environment changed (tests do that): the old store is not used again
        _opened = (key, from_environment())
    return _opened[1]


def _items(result: object) -> Iterable[object]:
    if result is None:
        return ()
    if isinstance(result, list | tuple):
        return [r for r in result if r is not None]
    return (result,)


def _wants(fn: Handler) -> tuple[str, ...]:
    return tuple(name for name in inspect.signature(fn).parameters if name in INJECTABLE)


def stage(module: str, *, source: str, name: str | None = None, store: Callable[[], Any] | None = None,
          before: Callable[[Any], None] | None = None, on_start: Startup | None = None,
          on_stop: Startup | None = None) -> Stage:
    """The stage made of the handlers `module` declared with `on` (call it after them, with `__name__`)."""
    handlers = _pending.pop(module, {})
    if not handlers:
        raise TypeError(f"module {module} declares no handlers (@mapemesh.on(...)) before its stage")
    # Named after its source (/mapemesh/monitor: monitor): the module's own name is a file path's hash when the
    # local host or functions-framework imports it from FUNCTION_SOURCE.
    return Stage(name or source.rstrip("/").rsplit("/", 1)[-1] or module, source, handlers, store=store,
                 before=before, on_start=on_start, on_stop=on_stop)


def forget(module: str) -> None:
    """Drop what `module` declared and no stage took (its import failed: a retry starts clean)."""
    _pending.pop(module, None)


__all__ = ["Reply", "Stage", "forget", "on", "stage"]
