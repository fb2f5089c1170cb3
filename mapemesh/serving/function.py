"""The function contract: a callable that takes a CloudEvent and returns a reply CloudEvent or None.

`@mapemesh.function` registers it. The decorated function is still a plain function: called with a
CloudEvent it runs the user's code (mapemesh's local host), and called with a Flask request it is a
functions-framework `http` function that answers with the reply event in binary mode, or `202` without a
body when there is none. So one Service manifest (container env `FUNCTION_SOURCE`, `FUNCTION_TARGET`)
serves both places: `functions-framework --source $FUNCTION_SOURCE --target $FUNCTION_TARGET --signature-type http`.
"""

from __future__ import annotations

import asyncio
import functools
import importlib
import importlib.util
import inspect
import logging
import sys
import threading
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

from mapemesh.eventing.binding import from_http, to_binary
from mapemesh.eventing.cloudevent import CloudEvent, MalformedEvent

log = logging.getLogger(__name__)

Handler = Callable[[CloudEvent], "CloudEvent | Awaitable[CloudEvent | None] | None"]
Startup = Callable[[], "Awaitable[None] | None"]
T = TypeVar("T")
REGISTRY: dict[str, Function] = {}


class FunctionError(Exception):
    """The function's source or target cannot be loaded."""


class PermanentError(Exception):
    """Raised by a function for input it can never handle: the event is not retried (HTTP 422)."""


class Function:
    """A registered function and how to run it."""

    def __init__(self, fn: Handler, name: str, on_start: Startup | None = None):
        self.fn = fn
        self.name = name
        self.is_async = inspect.iscoroutinefunction(fn)
        self.on_start = on_start
        """Run once in each new process before its first event (a policy registers itself, say)."""
        self._started = False

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

    def start_soon(self) -> None:
        """Run `on_start` now on the process's event loop, without waiting for it."""
        asyncio.run_coroutine_threadsafe(self.start(), _process_loop())

    def invoke(self, event: CloudEvent) -> CloudEvent | None:
        """Run the function to completion (from a thread that has no event loop, as functions-framework's).

        Async code runs on one event loop that lives as long as the process (in a thread of its own), so
        clients cached by a function and tasks it leaves running survive from one request to the next, as
        they do in the local host's function processes.
        """
        if not self._started:
            _on_process_loop(self.start())
        result = self.fn(event)
        if inspect.isawaitable(result):
            result = _on_process_loop(_await(result))
        if result is not None and not isinstance(result, CloudEvent):
            raise TypeError(f"function {self.name} returned {type(result).__name__}; return a CloudEvent or None")
        return result


async def _await(result: Awaitable[CloudEvent | None]) -> CloudEvent | None:
    return await result


_loop: asyncio.AbstractEventLoop | None = None
_loop_lock = threading.Lock()


def _process_loop() -> asyncio.AbstractEventLoop:
    """The process's background event loop (started on first use)."""
    global _loop
    with _loop_lock:
        if _loop is None or _loop.is_closed():
            _loop = asyncio.new_event_loop()
            threading.Thread(target=_loop.run_forever, name="mapemesh-function-loop", daemon=True).start()
        return _loop


def _on_process_loop(coro: Coroutine[Any, Any, T]) -> T:
    """Run `coro` on the process's background event loop and wait for its result."""
    return asyncio.run_coroutine_threadsafe(coro, _process_loop()).result()


def function(fn: Handler | None = None, *, name: str | None = None, on_start: Startup | None = None) -> Any:
    """Register `fn` as a mapemesh function (usable as `@function` or `@function(name=..., on_start=...)`).

    The result is a plain Python function (functions-framework insists on one): called with a CloudEvent
    it runs `fn`; called with a Flask request it answers as a functions-framework http function.
    """

    def register(f: Handler) -> Callable[[Any], Any]:
        registered = Function(f, name or f.__name__, on_start)
        REGISTRY[registered.name] = registered

        @functools.wraps(f)
        def entry(arg: Any) -> Any:
            if isinstance(arg, CloudEvent):
                return f(arg)
            return _serve_flask_request(registered, arg)

        entry.__mapemesh_function__ = registered  # type: ignore[attr-defined]
        return entry

    return register(fn) if fn is not None else register


def load(source: str, target: str, base: Path | None = None) -> Function:
    """Import FUNCTION_SOURCE (a .py file, relative to `base`, or a module name) and return FUNCTION_TARGET."""
    path = Path(source)
    if not path.is_absolute() and base is not None and (base / path).exists():
        path = base / path
    try:
        if path.suffix == ".py":
            if not path.exists():
                raise FunctionError(f"FUNCTION_SOURCE {source} does not exist")
            module_name = f"mapemesh_fn_{abs(hash(str(path.resolve())))}"
            module = sys.modules.get(module_name)
            if module is None:
                spec = importlib.util.spec_from_file_location(module_name, path)
                assert spec is not None and spec.loader is not None
                module = importlib.util.module_from_spec(spec)
                sys.modules[module_name] = module
                spec.loader.exec_module(module)
        else:
            module = importlib.import_module(source)
    except FunctionError:
        raise
    except Exception as exc:
        sys.modules.pop(f"mapemesh_fn_{abs(hash(str(path.resolve())))}", None)
        raise FunctionError(f"cannot import FUNCTION_SOURCE {source}: {type(exc).__name__}: {exc}") from exc
    obj = getattr(module, target, None)
    if obj is None:
        raise FunctionError(f"FUNCTION_SOURCE {source} has no FUNCTION_TARGET {target!r}")
    registered = getattr(obj, "__mapemesh_function__", None)
    if isinstance(registered, Function):
        return registered
    if not callable(obj):
        raise FunctionError(f"FUNCTION_TARGET {target!r} in {source} is not callable")
    return Function(obj, target)


def _serve_flask_request(fn: Function, request: Any) -> Any:
    """functions-framework's http signature: a Flask request in, a Flask response out."""
    import flask

    try:
        (event,) = from_http(list(request.headers.items()), request.get_data())
    except (MalformedEvent, ValueError) as exc:
        return flask.Response(str(exc), status=400, mimetype="text/plain")
    try:
        reply = fn.invoke(event)
    except PermanentError as exc:
        return flask.Response(str(exc), status=422, mimetype="text/plain")
    if reply is None:
        return flask.Response(status=202)  # never a bare "OK": a broker would take that as a bad reply
    headers, body = to_binary(reply)
    return flask.Response(body, status=200, headers=headers)
