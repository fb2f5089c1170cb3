"""The image entry: functions-framework serving any mapemesh function, with its reply as the HTTP answer.

functions-framework's `cloudevent` signature answers `200 OK` with a text body and drops the function's return
value, which a Knative broker takes for a failed reply. This adapter is an `http` function instead: it reads the
request as one CloudEvent, runs the function through the same path as the local host (`Invocable.call`), and
answers as a Knative subscriber should. It is what the function image runs:

    mapemesh-function [--source FILE --target NAME] [functions-framework's options]

(or `python -P -m mapemesh.serving.entry`), which serves FILE's NAME (default: the Knative Service's
FUNCTION_SOURCE and FUNCTION_TARGET) with functions-framework itself (its server, `PORT`, `--host`, `--debug`);
functions-framework takes FUNCTION_SOURCE and FUNCTION_TARGET for its own target, so the function's are passed on
as MAPEMESH_FUNCTION_SOURCE and _TARGET. The function is imported when functions-framework imports this adapter,
before the first request (a policy registers then, and an import error stops the server at once, as
functions-framework's own would); each worker process has its own event loop and store.

| the function                          | the answer                                                        |
|---------------------------------------|-------------------------------------------------------------------|
| returned an event                     | 200 with it in binary mode                                        |
| returned None                         | 202, no body                                                      |
| raised PermanentError                 | 422 (not retried)                                                 |
| raised TemporaryError(delay)          | 503 with Retry-After                                              |
| raised anything else                  | 500                                                               |
| the request is not one CloudEvent     | 400                                                               |
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from pathlib import Path
from typing import Any

from mapemesh import settings
from mapemesh.eventing.binding import content_mode, from_http, to_binary
from mapemesh.eventing.cloudevent import MalformedEvent
from mapemesh.serving.errors import PermanentError, TemporaryError
from mapemesh.serving.function import Invocable, load

log = logging.getLogger(__name__)


SOURCE, TARGET = "MAPEMESH_FUNCTION_SOURCE", "MAPEMESH_FUNCTION_TARGET"


_target: Invocable | None = None
_target_lock = threading.Lock()


def target() -> Invocable:
    """The function to serve (imported once per process, whichever thread asks first)."""
    global _target
    with _target_lock:
        if _target is None:
            s = settings.current()
            source, name = s.function_source, s.function_target
            if not source or not name:
                raise RuntimeError(f"set {SOURCE} and {TARGET} (`mapemesh-function` sets them from FUNCTION_SOURCE "
                                   "and FUNCTION_TARGET or --source and --target)")
            _target = load(source, name, Path.cwd())
            if hasattr(_target, "stop_at_exit"):
                _target.stop_at_exit()  # a worker told to stop runs the function's stop hook on its way out
        return _target


def serve(request: Any) -> Any:
    """functions-framework's `http` signature: a Flask request in, a Flask response out."""
    import flask

    if content_mode(request.headers.get("Content-Type")) == "batch":
        return flask.Response("one event per request", status=400, mimetype="text/plain")
    try:
        [event] = from_http(list(request.headers.items()), request.get_data())
    except MalformedEvent as exc:
        return flask.Response(str(exc), status=400, mimetype="text/plain")
    fn = target()
    try:
        reply = fn.invoke(event)  # type: ignore[attr-defined]
    except PermanentError as exc:
        return flask.Response(str(exc), status=422, mimetype="text/plain")
    except TemporaryError as exc:
        return flask.Response(str(exc), status=503, mimetype="text/plain", headers={"Retry-After": exc.retry_after})
    except Exception as exc:
        log.exception("function %s failed", fn.name)
        return flask.Response(f"{type(exc).__name__}: {exc}", status=500, mimetype="text/plain")
    if reply is None:
        return flask.Response(status=202)  # never a bare "OK": a broker would take that as a bad reply
    headers, body = to_binary(reply)
    answer = flask.Response(body, status=200, headers=headers)
    if "content-type" not in {k.lower() for k in headers}:
        del answer.headers["Content-Type"]  # Flask's text/html default would name a type the event does not have
    return answer


def main(argv: list[str] | None = None) -> None:
    """Serve a function with functions-framework through this adapter (see the module's docstring)."""
    from functions_framework._cli import _cli  # the `functions-framework` command itself

    args = list(sys.argv[1:] if argv is None else argv)
    chosen = {"--source": os.environ.get("FUNCTION_SOURCE", ""), "--target": os.environ.get("FUNCTION_TARGET", "")}
    for flag in chosen:
        for i, arg in enumerate(args):
            if arg == flag:
                chosen[flag] = args[i + 1] if i + 1 < len(args) else ""
                del args[i:i + 2]
                break
            if arg.startswith(flag + "="):
                chosen[flag] = arg.split("=", 1)[1]
                del args[i]
                break
    if not chosen["--source"] or not chosen["--target"]:
        sys.exit("python -m mapemesh.serving.entry: give --source FILE --target NAME (or FUNCTION_SOURCE and "
                 "FUNCTION_TARGET)")
    os.environ[SOURCE], os.environ[TARGET] = chosen["--source"], chosen["--target"]  # for the import below
    settings.reset()
    _cli.main(args=["--source", __file__, "--target", "serve", "--signature-type", "http", *args],
              prog_name="functions-framework")


if __name__ == "__main__":
    main()
elif settings.current().function_source and settings.current().function_target \
        and __name__ != "mapemesh.serving.entry":
    target()  # functions-framework imports this file as its source: the function is imported with it
