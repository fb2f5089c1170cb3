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
import select
import signal
import socket
import sys
import time
import traceback
from pathlib import Path

# What every function process needs, imported once here so that forks start warm.
import aiohttp  # noqa: F401
import orjson  # noqa: F401
import pydantic  # noqa: F401
import uvloop  # noqa: F401

import mapemesh.eventing.binding
import mapemesh.events  # noqa: F401
from mapemesh import aio, settings, tracing
from mapemesh.eventing.cloudevent import CloudEvent
from mapemesh.serving import wire
from mapemesh.serving.errors import FunctionError, PermanentError, TemporaryError
from mapemesh.serving.function import Function, Invocable, load

log = logging.getLogger(__name__)
IMPORTING = "MAPEMESH_ZYGOTE_IMPORT"
"""Set while the fork server imports a function's source; never in a function process."""


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
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        for pid in list(children):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 2.0
        while children and time.monotonic() < deadline:  # give them a moment, then insist
            for pid in list(children):
                with contextlib.suppress(ChildProcessError):
                    if os.waitpid(pid, os.WNOHANG)[0] == pid:
                        children.discard(pid)
            time.sleep(0.01)
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
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
            try:
                request = json.loads(line)
                if request.get("prepare"):  # import the source now, so that the first fork is warm too
                    answer = prepare(request)
                else:
                    fd = pending_fds.pop(0)
                    try:
                        answer = spawn(request, fd, control, children)
                    finally:
                        os.close(fd)
            except Exception as exc:  # one bad request (or a failed fork) must not take the zygote down
                log.exception("fork server request failed")
                answer = {"error": f"{type(exc).__name__}: {exc}", "kind": "transient"}
            control.sendall(json.dumps(answer).encode() + b"\n")


pending_fds: list[int] = []


def prepare(request: dict[str, object]) -> dict[str, object]:
    """Import a function's source in the zygote (its forks inherit it); report an import error."""
    try:
        _load(request)
    except FunctionError as exc:
        return {"error": str(exc), "kind": "import"}
    return {"ok": True}


def _load(request: dict[str, object]) -> Invocable:
    # The Service's env is in place while its source is imported (module-level reads see it); a source
    # named by several Services is imported once, with the env of the first.
    env = {str(k): str(v) for k, v in dict(request.get("env") or {}).items()}  # type: ignore[call-overload]
    env[IMPORTING] = "1"  # import-time code can tell it runs in the fork server, not in a function process
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    settings.reset()
    try:
        return load(str(request["source"]), str(request["target"]), Path(str(request.get("base") or ".")))
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        settings.reset()


def spawn(request: dict[str, object], fd: int, control: socket.socket, children: set[int]) -> dict[str, object]:
    """Fork one function process serving on `fd`."""
    try:
        fn = _load(request)
    except FunctionError as exc:
        return {"error": str(exc), "kind": "import"}
    # Block SIGCHLD around the fork, so that a child that dies at once is reaped after it is recorded.
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGCHLD})
    try:
        pid = os.fork()
    except OSError:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGCHLD})
        raise
    if pid:
        children.add(pid)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGCHLD})
        return {"pid": pid}
    # The child: forget the zygote's duties, serve the function, never return into the zygote's loop.
    code = 0
    try:
        control.close()
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGCHLD})
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        for key, value in dict(request.get("env") or {}).items():  # type: ignore[union-attr]
            os.environ[str(key)] = str(value)
        settings.reset()  # the process's settings are its Service's
        served = socket.socket(fileno=os.dup(fd))
        concurrency = int(request.get("concurrency") or 1)  # type: ignore[call-overload]
        if isinstance(fn, Function) and not fn.is_async and concurrency == 1:
            serve_blocking(fn, served)
        else:
            aio.run(serve(fn, served, concurrency))  # on uvloop, as the broker and host are
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 0
    except BaseException:
        traceback.print_exc()
        code = 1
    finally:
        tracing.flush()  # the spans this process still holds, before it leaves without Python's cleanup
        os._exit(code)


async def serve(fn: Invocable, sock: socket.socket, concurrency: int) -> None:
    """A function process: answer each request frame with the function's reply, until the host closes the
    connection or stops the process (SIGTERM: the function's `stop` runs first, and the spans it holds go out)."""
    reader, writer = await asyncio.open_connection(sock=sock)
    # SIGTERM ends the stream as the host closing it would: the loop below stops reading (no task per frame to
    # race a stop signal against), what runs finishes (the host's SIGKILL bounds it), then the function's `stop`.
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, reader.feed_eof)
    await fn.start()
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=max(1, concurrency))  # for sync functions
    tasks: set[asyncio.Task[None]] = set()

    async def handle(header: dict[str, object], data: bytes) -> None:
        event = CloudEvent(dict(header["attrs"]), data or None)  # type: ignore[arg-type]
        try:
            frame = _answer(header["id"], await fn.call(event, pool))
        except Exception as exc:
            frame = _failure(fn.name, header["id"], exc)
        writer.write(frame)

    try:
        while (frame := await wire.read(reader)) is not None:
            task = asyncio.create_task(handle(*frame))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        if tasks:
            await asyncio.wait(set(tasks))
    finally:
        await fn.stop()
        # The process leaves now; a second SIGTERM (the host and the fork server both send one when the mesh stops)
        # must not land in the window where asyncio.run has closed the loop's wakeup pipe but not yet removed its
        # handler ("Exception ignored when trying to write to the signal wakeup fd", on the mesh's stderr).
        asyncio.get_running_loop().remove_signal_handler(signal.SIGTERM)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)


def serve_blocking(fn: Function, sock: socket.socket) -> None:
    """A sync function taking one request at a time (the host's capacity 1: `containerConcurrency: 1`): frames are
    read and answered on the process's main thread, and the function runs in it as functions-framework's worker
    thread runs it (no event loop running there; async hooks and awaitables on the process's loop,
    `Function.invoke`). No thread handoff per request and no event loop to set up after the fork: the warm path's
    largest cost in a function process on a small machine (two thread wake-ups, ~0.1 ms here: `bench/coldstart.py`).

    As in `serve`: the start hook runs before the first frame is read; SIGTERM ends the stream (a call under way
    finishes and is answered: SIGTERM is blocked while the function runs, so its own system calls are not
    interrupted, and only wakes the wait for the next frame); then the function's `stop`. Other signals the
    function handles itself do not stop the process."""
    fn.start_blocking()
    wakeup_r, wakeup_w = os.pipe()
    os.set_blocking(wakeup_r, False)
    os.set_blocking(wakeup_w, False)
    stopping: list[bool] = []
    signal.set_wakeup_fd(wakeup_w)
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(True))
    sock.setblocking(True)
    waiting = select.poll()
    waiting.register(sock, select.POLLIN)
    waiting.register(wakeup_r, select.POLLIN)
    term = {signal.SIGTERM}
    try:
        while not stopping:
            ready = {fd for fd, _ in waiting.poll()}
            if wakeup_r in ready:
                with contextlib.suppress(BlockingIOError):
                    os.read(wakeup_r, 512)  # a signal's byte: a SIGTERM set `stopping`; any other is the function's
                continue
            frame = wire.read_blocking(sock)
            if frame is None:
                return
            header, data = frame
            signal.pthread_sigmask(signal.SIG_BLOCK, term)
            try:
                answer = _answer(header["id"], fn.invoke(CloudEvent(dict(header["attrs"]), data or None)))
            except Exception as exc:
                answer = _failure(fn.name, header["id"], exc)
            finally:
                signal.pthread_sigmask(signal.SIG_UNBLOCK, term)  # a SIGTERM that came meanwhile is handled here
            try:
                sock.sendall(answer)
            except OSError:  # the host has gone (it stopped this process): nobody to answer
                return
    finally:
        fn.stop_blocking()
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second SIGTERM at shutdown (see `serve`) finds no pipe


def _answer(request_id: object, reply: CloudEvent | None) -> bytes:
    return wire.encode({"id": request_id, "ok": True, "attrs": None if reply is None else reply.attributes},
                       None if reply is None else reply.data)


def _failure(name: str, request_id: object, exc: Exception) -> bytes:
    """The answer for a call that raised: `PermanentError` not retried, `TemporaryError` with its delay, anything
    else a failure the broker retries (logged with its traceback)."""
    answer: dict[str, object] = {"id": request_id, "ok": False, "error": f"{type(exc).__name__}: {exc}"}
    if isinstance(exc, PermanentError):
        log.warning("function %s refused an event: %s", name, exc)
        answer["permanent"] = True
    elif isinstance(exc, TemporaryError):
        log.info("function %s asks for a retry in %gs: %s", name, exc.delay, exc)
        answer["retry_after"] = exc.retry_after
    else:
        log.exception("function %s failed", name)
    return wire.encode(answer, None)


if __name__ == "__main__":
    logging.basicConfig(level=settings.current().log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # a line per request to the broker is noise
    main(int(sys.argv[1]))
