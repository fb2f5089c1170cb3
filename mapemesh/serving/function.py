"""The function contract, and the one path every invocation takes.

A function is what Python users already write for functions-framework: a callable that takes the CloudEvents
SDK's event (`cloudevents.http.CloudEvent`: `event["type"]`, `event.data`, `event.get_attributes()`) and
returns `None`, an SDK event, or mapemesh's own `CloudEvent` (what `mapemesh.events.make_event` makes); sync or
async. It needs no decorator (`@functions_framework.cloud_event` is fine too); `@mapemesh.function` adds a name
and an `on_start` hook. mapemesh's stages use typed handlers instead (`mapemesh.serving.handlers`).

Both kinds are `Invocable`: `call(event)` runs one event, with mapemesh's event in and out (converted to and from
the SDK's at the edge, `mapemesh.eventing.sdk`), and raises `PermanentError` / `TemporaryError` as the function
did; `Function.invoke` is the same from a thread with no event loop. The local host's function processes
(`zygote.serve`, and `zygote.serve_blocking` through `invoke`), the functions-framework adapter (`entry.serve`,
through `invoke`) and the tests all go through them, so one file gives the same answers everywhere.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import importlib
import importlib.util
import inspect
import logging
import os
import sys
import threading
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any, Protocol, TypeVar, runtime_checkable

from mapemesh import tracing
from mapemesh.eventing.cloudevent import CloudEvent, MalformedEvent
from mapemesh.eventing.sdk import AnySdkEvent, from_sdk, to_sdk
from mapemesh.serving.errors import FunctionError, PermanentError, TemporaryError

log = logging.getLogger(__name__)

Startup = Callable[[], "Awaitable[None] | None"]
T = TypeVar("T")
__all__ = ["Function", "FunctionError", "Invocable", "PermanentError", "TemporaryError", "function", "load"]


@runtime_checkable
class Invocable(Protocol):
    """What the local host, the functions-framework adapter and the tests run."""

    name: str

    async def start(self) -> None:
        """Run the function's start hook once per process (errors are logged, not raised)."""
        ...

    async def stop(self) -> None:
        """Run the function's stop hook before the process exits (errors are logged, not raised)."""
        ...

    async def call(self, event: CloudEvent, executor: concurrent.futures.Executor | None = None) -> CloudEvent | None:
        """The reply to `event` (None: no reply); extra events are published before it returns."""
        ...


class Startable:
    """An `on_start` hook run once per process, and an `on_stop` hook run when the process is told to stop."""

    def __init__(self, name: str, on_start: Startup | None, on_stop: Startup | None = None):
        self.name = name
        self.on_start = on_start
        """Run once in each new process before its first event (a policy registers itself, say)."""
        self.on_stop = on_stop
        """Run when the process is stopped gracefully (SIGTERM: scale to zero), before it exits: what the
        process holds that must outlive it goes somewhere durable (the analyze stage hands its deferred
        analyses to the broker, say)."""
        self._started = False

    async def stop(self) -> None:
        """Run `on_stop` (once it started); a failure is logged, not raised."""
        if self.on_stop is None or not self._started:
            return
        try:
            result = self.on_stop()
            if inspect.isawaitable(result):
                await result
        except Exception:
            log.exception("function %s: on_stop failed", self.name)

    def stop_at_exit(self) -> None:
        """Run `stop` on the process's event loop when the interpreter exits (functions-framework's workers: a
        gunicorn worker told to stop exits through Python's cleanup)."""
        import atexit

        atexit.register(lambda: _on_process_loop(self.stop()) if _loop is not None and _loop_pid == os.getpid()
                        else None)

    async def start(self) -> None:
        """Run `on_start` once per process; a failure is logged, not raised (events still get answers)."""
        if self._started or self.on_start is None:
            self._started = True
            return
        self._started = True
        try:
            result = self.on_start()
            if inspect.isawaitable(result):
                await result
        except Exception:
            log.exception("function %s: on_start failed", self.name)

    def start_blocking(self) -> None:
        """`start` from a thread with no event loop (the hook runs on the process's loop; without a hook no loop is
        started)."""
        if self.on_start is None:
            self._started = True
        elif not self._started:
            _on_process_loop(self.start())

    def stop_blocking(self) -> None:
        """`stop` from a thread with no event loop."""
        if self.on_stop is not None and self._started:
            _on_process_loop(self.stop())

    def start_soon(self) -> None:
        """Run `on_start` now on the process's event loop, without waiting for it."""
        asyncio.run_coroutine_threadsafe(self.start(), _process_loop())

    def invoke(self, event: CloudEvent) -> CloudEvent | None:
        """`call` from a thread that has no event loop (functions-framework's).

        Async code runs on one event loop that lives as long as the process (in a thread of its own), so clients
        cached by a function and tasks it leaves running survive from one request to the next, as they do in the
        local host's function processes.
        """
        return _on_process_loop(self._start_and_call(event))

    async def _start_and_call(self, event: CloudEvent) -> CloudEvent | None:
        await self.start()
        return await self.call(event)  # type: ignore[attr-defined]


class Function(Startable):
    """A function written for the ecosystem: the SDK's CloudEvent in, an event or None out."""

    def __init__(self, fn: Callable[..., Any], name: str, on_start: Startup | None = None):
        super().__init__(name, on_start)
        self.fn = fn
        self.is_async = inspect.iscoroutinefunction(fn) or (
            not inspect.isfunction(fn) and inspect.iscoroutinefunction(type(fn).__call__))  # an async callable object

    async def call(self, event: CloudEvent, executor: concurrent.futures.Executor | None = None) -> CloudEvent | None:
        """Run the function on the SDK's form of `event`; its answer back in mapemesh's form (in its trace)."""
        with tracing.handling(event.attributes, self.name, extra={"mapemesh.function": self.name}):
            return await self._call(event, executor)

    async def _call(self, event: CloudEvent, executor: concurrent.futures.Executor | None) -> CloudEvent | None:
        sdk_event = to_sdk(event)
        if self.is_async:
            result = await self.fn(sdk_event)
        elif executor is not None:
            result = await asyncio.get_running_loop().run_in_executor(executor, self.fn, sdk_event)
        else:
            result = self.fn(sdk_event)
        if inspect.isawaitable(result):  # a sync wrapper around a coroutine function (a decorator's, say)
            result = await result
        return reply_of(self.name, result)

    def invoke(self, event: CloudEvent) -> CloudEvent | None:
        """`call` from functions-framework's thread: a sync function runs in that thread (so requests run side by
        side, as under functions-framework alone), an async one on the process's loop."""
        if not self._started:
            self.start_blocking()
        if self.is_async:
            return _on_process_loop(self.call(event))
        with tracing.handling(event.attributes, self.name, extra={"mapemesh.function": self.name}):
            result = self.fn(to_sdk(event))
            if inspect.isawaitable(result):
                result = _on_process_loop(_awaited(result))
            return reply_of(self.name, result)


async def _awaited(result: Awaitable[T]) -> T:
    return await result


def reply_of(name: str, result: object) -> CloudEvent | None:
    """A function's return value as the reply event (in the current trace); TypeError naming what came back
    otherwise."""
    if result is None:
        return None
    if isinstance(result, CloudEvent):
        reply = result
    elif isinstance(result, AnySdkEvent):
        try:
            reply = from_sdk(result)
        except MalformedEvent as exc:
            raise TypeError(f"function {name} returned an event that is not a valid CloudEvent: {exc}") from None
    else:
        raise TypeError(f"function {name} returned {type(result).__name__}; return a CloudEvent "
                        "(cloudevents.http.CloudEvent or mapemesh's) or None")
    tracing.stamp(reply.attributes)
    return reply


_loop: asyncio.AbstractEventLoop | None = None
_loop_pid = 0
_loop_lock = threading.Lock()


def _process_loop() -> asyncio.AbstractEventLoop:
    """The process's background event loop (started on first use, and again in a forked child: a fork keeps the
    loop object but not the thread that ran it, as under gunicorn's workers)."""
    global _loop, _loop_pid
    with _loop_lock:
        if _loop is None or _loop.is_closed() or _loop_pid != os.getpid():
            _loop, _loop_pid = asyncio.new_event_loop(), os.getpid()
            threading.Thread(target=_loop.run_forever, name="mapemesh-function-loop", daemon=True).start()
        return _loop


def _on_process_loop(coro: Coroutine[Any, Any, T]) -> T:
    """Run `coro` on the process's background event loop and wait for its result."""
    return asyncio.run_coroutine_threadsafe(coro, _process_loop()).result()


def function(fn: Callable[..., Any] | None = None, *, name: str | None = None,
             on_start: Startup | None = None) -> Any:
    """Mark `fn` as a mapemesh function with a name and an `on_start` hook (`@function` or
    `@function(name=..., on_start=...)`); `fn` itself is returned unchanged, still a plain function."""

    def mark(f: Callable[..., Any]) -> Callable[..., Any]:
        f.__mapemesh_function__ = Function(f, name or f.__name__, on_start)  # type: ignore[attr-defined]
        return f

    return mark(fn) if fn is not None else mark


_load_lock = threading.RLock()
"""One import at a time: a second thread must not see a module half executed."""


def load(source: str, target: str, base: Path | None = None) -> Invocable:
    """Import FUNCTION_SOURCE (a .py file, relative to `base`, or a module name) and return FUNCTION_TARGET.

    As functions-framework does, the file's folder goes on `sys.path` (a function may import its siblings); a
    module is imported once per process; a failed import leaves nothing behind (no module, no handlers).
    """
    path = Path(source)
    if not path.is_absolute() and base is not None and (base / path).exists():
        path = base / path
    module_name = f"mapemesh_fn_{abs(hash(str(path.resolve())))}"
    with _load_lock:
        try:
            if path.suffix == ".py":
                if not path.exists():
                    raise FunctionError(f"FUNCTION_SOURCE {source} does not exist")
                module = sys.modules.get(module_name)
                if module is None:
                    folder = str(path.resolve().parent)
                    if folder not in sys.path:
                        sys.path.append(folder)
                    spec = importlib.util.spec_from_file_location(module_name, path)
                    assert spec is not None and spec.loader is not None
                    module = importlib.util.module_from_spec(spec)
                    sys.modules[module_name] = module
                    spec.loader.exec_module(module)
            else:
                module = importlib.import_module(source)
        except FunctionError:
            raise
        except BaseException as exc:
            sys.modules.pop(module_name, None)
            _forget_handlers(module_name)
            if not isinstance(exc, Exception):
                raise
            raise FunctionError(f"cannot import FUNCTION_SOURCE {source}: {type(exc).__name__}: {exc}") from exc
    obj = getattr(module, target, None)
    if obj is None:
        raise FunctionError(f"FUNCTION_SOURCE {source} has no FUNCTION_TARGET {target!r}")
    if isinstance(obj, Invocable):
        return obj
    marked = getattr(obj, "__mapemesh_function__", None)
    if isinstance(marked, Invocable):
        return marked
    if not callable(obj):
        raise FunctionError(f"FUNCTION_TARGET {target!r} in {source} is not callable")
    return Function(obj, target)


def _forget_handlers(module: str) -> None:
    """Drop the typed handlers a failed import declared (`mapemesh.on` keeps them by module until `stage`)."""
    from mapemesh.serving.handlers import forget

    forget(module)
