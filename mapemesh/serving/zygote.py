"""The fork server: a process that has imported mapemesh (and each function's source) once, and forks
function processes from itself, so scaling from zero costs a fork, not a new interpreter.

The host talks to it over a Unix socket: a JSON line `{"source", "target", "base", "concurrency", "env"}`
with the function process's end of a socket pair attached (SCM_RIGHTS); the answer is a JSON line
`{"pid": N}` or `{"error": "..."}`. `{"prepare": true, "source", "target", "base"}` (no descriptor) only
imports the source, answering `{"ok": true}` or `{"error": ...}`. The child serves frames (`wire`) on its
socket until it is closed or it gets SIGTERM. The zygote reaps its children and kills them when it is told
to stop. A source is imported once per zygote: after editing a function, restart `mapemesh up`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import logging
import os
import signal
import socket
import sys
import traceback
from pathlib import Path

# What every function process needs, imported once here so that forks start warm.
import aiohttp  # noqa: F401
import orjson  # noqa: F401
import pydantic  # noqa: F401

import mapemesh.eventing.binding
import mapemesh.events  # noqa: F401
from mapemesh.eventing.cloudevent import CloudEvent
from mapemesh.serving import wire
from mapemesh.serving.function import Function, FunctionError, load

log = logging.getLogger(__name__)


def main(control_fd: int) -> None:
    """Serve spawn requests on `control_fd` until it closes or SIGTERM arrives."""
    control = socket.socket(fileno=control_fd)
    children: set[int] = set()

    def reap(*_: object) -> None:
        while True:
            try:
                pid, _status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            children.discard(pid)

    def stop(*_: object) -> None:
        for pid in list(children):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        os._exit(0)

    signal.signal(signal.SIGCHLD, reap)
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the host stops us; Ctrl-C in a terminal reaches it first
    buffer = b""
    while True:
        try:
            data, fds, _flags, _addr = socket.recv_fds(control, 65536, 4)
        except InterruptedError:
            continue
        if not data:
            stop()
        buffer += data
        for fd in fds:
            pending_fds.append(fd)
        while b"\n" in buffer:
            line, buffer = buffer.split(b"\n", 1)
            request = json.loads(line)
            if request.get("prepare"):  # import the source now, so that the first fork is warm too
                answer = prepare(request)
            else:
                fd = pending_fds.pop(0)
                answer = spawn(request, fd, control, children)
                os.close(fd)
            control.sendall(json.dumps(answer).encode() + b"\n")


pending_fds: list[int] = []


def prepare(request: dict[str, object]) -> dict[str, object]:
    """Import a function's source in the zygote (its forks inherit it); report an import error."""
    try:
        load(str(request["source"]), str(request["target"]), Path(str(request.get("base") or ".")))
    except FunctionError as exc:
        return {"error": str(exc)}
    return {"ok": True}


def spawn(request: dict[str, object], fd: int, control: socket.socket, children: set[int]) -> dict[str, object]:
    """Fork one function process serving on `fd`."""
    try:
        fn = load(str(request["source"]), str(request["target"]), Path(str(request.get("base") or ".")))
    except FunctionError as exc:
        return {"error": str(exc)}
    pid = os.fork()
    if pid:
        children.add(pid)
        return {"pid": pid}
    # The child: forget the zygote's duties, serve the function, never return into the zygote's loop.
    code = 0
    try:
        control.close()
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        for key, value in dict(request.get("env") or {}).items():  # type: ignore[union-attr]
            os.environ[str(key)] = str(value)
        asyncio.run(serve(fn, socket.socket(fileno=os.dup(fd)), int(request.get("concurrency") or 1)))
    except BaseException:
        traceback.print_exc()
        code = 1
    finally:
        os._exit(code)


async def serve(fn: Function, sock: socket.socket, concurrency: int) -> None:
    """A function process: answer each request frame with the function's reply."""
    reader, writer = await asyncio.open_connection(sock=sock)
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=max(1, concurrency))
    loop = asyncio.get_running_loop()
    tasks: set[asyncio.Task[None]] = set()

    async def handle(header: dict[str, object], data: bytes) -> None:
        event = CloudEvent(dict(header["attrs"]), data or None)  # type: ignore[arg-type]
        try:
            if fn.is_async:
                reply = await fn.fn(event)  # type: ignore[misc]
            else:
                reply = await loop.run_in_executor(pool, fn.fn, event)
            if reply is not None and not isinstance(reply, CloudEvent):
                raise TypeError(f"the function returned {type(reply).__name__}; return a CloudEvent or None")
            frame = wire.encode({"id": header["id"], "ok": True,
                                 "attrs": None if reply is None else reply.attributes},
                                None if reply is None else reply.data)
        except Exception as exc:
            log.exception("function %s failed", fn.name)
            frame = wire.encode({"id": header["id"], "ok": False, "error": f"{type(exc).__name__}: {exc}"}, None)
        writer.write(frame)

    while True:
        frame = await wire.read(reader)
        if frame is None:
            return
        task = asyncio.create_task(handle(*frame))
        tasks.add(task)
        task.add_done_callback(tasks.discard)


if __name__ == "__main__":
    logging.basicConfig(level=os.environ.get("MAPEMESH_LOG_LEVEL", "info").upper(),
                        format="%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s")
    main(int(sys.argv[1]))
