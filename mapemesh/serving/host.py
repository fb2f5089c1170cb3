"""The local host: Knative Serving on one machine.

`POST /{namespace}/{name}` invokes the Service's function. The activator holds requests while a function
process starts (forked by the zygote), queues them up to a bound (`429` with `Retry-After` beyond it),
scales out up to `max-scale` when every process is at its capacity, and stops processes that have been idle
for the autoscaling window (the last one after the retention period too), down to `min-scale`: at zero
there is no process at all.

| answer | when |
|---|---|
| `200` + reply event (binary) | the function returned a CloudEvent |
| `202` | it returned None |
| `400` | the request is not a CloudEvent |
| `404` | no such Service |
| `429` + `Retry-After` | the activator's queue for the Service is full |
| `500` | the function raised |
| `502` | its process died while handling the request (the broker retries) |
| `503` | the Service cannot run (bad manifest, source that does not import) |
| `504` | `timeoutSeconds` passed (the process is replaced) |
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import os
import signal
import socket
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

from mapemesh.eventing.binding import from_http, to_binary
from mapemesh.eventing.brokers import BrokerRegistry
from mapemesh.eventing.cloudevent import CloudEvent, MalformedEvent
from mapemesh.serving import wire
from mapemesh.serving.spec import ServiceSpec, services_from

log = logging.getLogger(__name__)
QUEUE_LIMIT = 1000
SCALE_EVERY_S = 0.1


class FunctionFailed(Exception):
    """The function raised; `status` is the HTTP answer."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


class Zygote:
    """The fork server process and the control socket to it."""

    def __init__(self) -> None:
        host_end, zygote_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        self.proc = _start_zygote(zygote_end)
        zygote_end.close()
        self.control = host_end
        self._lock = asyncio.Lock()

    async def spawn(self, spec: ServiceSpec, base: Path) -> tuple[int, socket.socket]:
        """Fork a function process; return its pid and the host's end of its socket."""
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        request = {"source": spec.source, "target": spec.target, "base": str(base), "env": spec.env,
                   "concurrency": spec.capacity}
        try:
            async with self._lock:  # one spawn at a time on the control socket
                answer = await asyncio.to_thread(self._ask, request, theirs.fileno())
        finally:
            theirs.close()
        if "error" in answer:
            mine.close()
            raise FunctionFailed(503, answer["error"])
        return int(answer["pid"]), mine

    async def prepare(self, spec: ServiceSpec, base: Path) -> str | None:
        """Have the zygote import the function's source now; the import error, if any."""
        request = {"prepare": True, "source": spec.source, "target": spec.target, "base": str(base)}
        async with self._lock:
            answer = await asyncio.to_thread(self._ask, request, None)
        return answer.get("error")

    def _ask(self, request: dict[str, Any], fd: int | None) -> dict[str, Any]:
        message = json.dumps(request).encode() + b"\n"
        if fd is None:
            self.control.sendall(message)
        else:
            socket.send_fds(self.control, [message], [fd])
        line = b""
        while not line.endswith(b"\n"):
            chunk = self.control.recv(65536)
            if not chunk:
                raise FunctionFailed(503, "the fork server exited")
            line += chunk
        return json.loads(line)

    def stop(self) -> None:
        """Stop the fork server and every function process it started."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=5)
            except Exception:
                self.proc.kill()
        self.control.close()


def _start_zygote(end: socket.socket):  # type: ignore[no-untyped-def]
    import subprocess

    return subprocess.Popen([sys.executable, "-m", "mapemesh.serving.zygote", str(end.fileno())],
                            pass_fds=[end.fileno()], start_new_session=False)


@dataclass(eq=False)
class Instance:
    """One function process."""

    pid: int
    writer: asyncio.StreamWriter
    in_flight: dict[int, asyncio.Future[tuple[dict[str, Any], bytes]]] = field(default_factory=dict)
    last_used: float = field(default_factory=time.monotonic)
    reader_task: asyncio.Task[None] | None = None
    alive: bool = True

    def kill(self) -> None:
        """Stop the process and fail what it was doing."""
        self.alive = False
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGTERM)
        self.writer.close()
        for fut in self.in_flight.values():
            if not fut.done():
                fut.set_exception(FunctionFailed(502, f"function process {self.pid} stopped"))
        self.in_flight.clear()


@dataclass(eq=False)
class Waiting:
    """A request the activator holds until a process has room."""

    header: dict[str, Any]
    data: bytes | None
    future: asyncio.Future[tuple[dict[str, Any], bytes]]


class Revision:
    """One Service's processes, queue and scaling."""

    def __init__(self, spec: ServiceSpec, zygote: Zygote, base: Path, queue_limit: int = QUEUE_LIMIT):
        self.spec = spec
        self.queue_limit = queue_limit
        self.zygote = zygote
        self.base = base
        self.instances: list[Instance] = []
        self.starting = 0
        self.queue: deque[Waiting] = deque()
        self.error: str | None = None
        self.cold_starts = 0
        self.last_request = time.monotonic()
        self._ids = itertools.count()

    async def prepare(self) -> None:
        """Import the source in the zygote (an error makes the Service not ready), then initial-scale."""
        try:
            error = await self.zygote.prepare(self.spec, self.base)
        except Exception as exc:  # the zygote is gone: requests will say so
            error = f"the fork server failed: {exc}"
        if error is not None:
            self.error = error
            log.error("%s cannot run: %s", self.spec.key, error)
            return
        for _ in range(min(self.spec.initial_scale, self.spec.max_scale)):
            self._start_instance()

    # -- requests ------------------------------------------------------------------------------

    async def invoke(self, event: CloudEvent) -> CloudEvent | None:
        """Run the function on `event` in some process; FunctionFailed says what went wrong."""
        if self.error is not None:
            raise FunctionFailed(503, self.error)
        if len(self.queue) >= self.queue_limit:
            raise FunctionFailed(429, f"{self.queue_limit} requests already wait for {self.spec.key}")
        self.last_request = time.monotonic()
        future: asyncio.Future[tuple[dict[str, Any], bytes]] = asyncio.get_running_loop().create_future()
        waiting = Waiting({"id": next(self._ids), "attrs": event.attributes}, event.data, future)
        self.queue.append(waiting)
        self.dispatch()
        try:
            header, data = await asyncio.wait_for(asyncio.shield(future), self.spec.timeout_s)
        except TimeoutError:
            self._timed_out(waiting)
            raise FunctionFailed(504, f"{self.spec.key} did not answer within {self.spec.timeout_s:g}s") from None
        if not header.get("ok"):
            raise FunctionFailed(500, str(header.get("error")))
        attrs = header.get("attrs")
        return None if attrs is None else CloudEvent(attrs, data or None)

    def _timed_out(self, waiting: Waiting) -> None:
        if waiting in self.queue:
            self.queue.remove(waiting)
            return
        for inst in self.instances:  # a stuck process takes no more work: replace it
            if waiting.header["id"] in inst.in_flight:
                log.warning("%s: process %d timed out; replacing it", self.spec.key, inst.pid)
                self._remove(inst)
                inst.kill()
                return

    def dispatch(self) -> None:
        """Hand queued requests to processes with room; start processes when all are full."""
        while self.queue:
            inst = min((i for i in self.instances if i.alive and len(i.in_flight) < self.spec.capacity),
                       key=lambda i: len(i.in_flight), default=None)
            if inst is None:
                break
            waiting = self.queue.popleft()
            if waiting.future.done():
                continue
            inst.in_flight[waiting.header["id"]] = waiting.future
            inst.last_used = time.monotonic()
            inst.writer.write(wire.encode(waiting.header, waiting.data))
        if self.queue and self.error is None:
            # Knative's rule: enough processes for the concurrency at hand, within max-scale.
            demand = len(self.queue) + sum(len(i.in_flight) for i in self.instances)
            wanted = min(self.spec.max_scale, -(-demand // self.spec.capacity))
            while len(self.instances) + self.starting < wanted:
                self._start_instance(cold=not self.instances and not self.starting)

    def _start_instance(self, cold: bool = False) -> None:
        self.starting += 1
        if cold:
            self.cold_starts += 1
        task = asyncio.create_task(self._spawn())
        task.add_done_callback(lambda t: t.exception() if not t.cancelled() else None)

    async def _spawn(self) -> None:
        try:
            pid, sock = await self.zygote.spawn(self.spec, self.base)
            reader, writer = await asyncio.open_connection(sock=sock)
        except FunctionFailed as exc:
            self.error = str(exc)
            log.error("%s cannot start: %s", self.spec.key, exc)
            while self.queue:
                w = self.queue.popleft()
                if not w.future.done():
                    w.future.set_exception(FunctionFailed(503, str(exc)))
            return
        except Exception as exc:
            log.exception("%s: starting a process failed", self.spec.key)
            while self.queue:
                w = self.queue.popleft()
                if not w.future.done():
                    w.future.set_exception(FunctionFailed(503, f"cannot start the function: {exc}"))
            return
        finally:
            self.starting -= 1
        inst = Instance(pid, writer)
        inst.reader_task = asyncio.create_task(self._read(inst, reader))
        self.instances.append(inst)
        log.info("%s: process %d started (%d running)", self.spec.key, pid, len(self.instances))
        self.dispatch()

    async def _read(self, inst: Instance, reader: asyncio.StreamReader) -> None:
        while True:
            frame = await wire.read(reader)
            if frame is None:
                break
            header, data = frame
            fut = inst.in_flight.pop(header.get("id"), None)  # type: ignore[arg-type]
            if fut is not None and not fut.done():
                fut.set_result((header, data))
            inst.last_used = time.monotonic()
            self.dispatch()
        if inst.alive:
            log.warning("%s: process %d exited with %d request(s) in flight", self.spec.key, inst.pid,
                        len(inst.in_flight))
            self._remove(inst)
            inst.kill()
        self.dispatch()

    def _remove(self, inst: Instance) -> None:
        with contextlib.suppress(ValueError):
            self.instances.remove(inst)

    # -- scaling -------------------------------------------------------------------------------

    def scale(self) -> None:
        """Start processes up to min-scale; stop the ones idle longer than the window (last: retention)."""
        now = time.monotonic()
        while len(self.instances) + self.starting < self.spec.min_scale and self.error is None:
            self._start_instance()
        for inst in sorted(self.instances, key=lambda i: i.last_used):
            if len(self.instances) <= self.spec.min_scale or inst.in_flight or self.queue:
                break
            idle = now - inst.last_used
            needed = self.spec.window_s
            if len(self.instances) == 1:
                needed = max(needed, self.spec.retention_s)
            if idle < needed:
                break
            log.info("%s: process %d idle for %.1fs; stopping it", self.spec.key, inst.pid, idle)
            self._remove(inst)
            inst.kill()

    def stop(self) -> None:
        """Stop every process of this revision and fail what waits."""
        for inst in list(self.instances):
            inst.kill()
        self.instances.clear()
        while self.queue:
            w = self.queue.popleft()
            if not w.future.done():
                w.future.set_exception(FunctionFailed(503, f"{self.spec.key} was stopped"))

    def status(self) -> dict[str, Any]:
        """What `mapemesh status` shows for this function."""
        return {
            "ready": self.error is None, "reason": self.error,
            "processes": len(self.instances), "pids": [i.pid for i in self.instances],
            "scaled_to_zero": not self.instances and not self.starting,
            "in_flight": sum(len(i.in_flight) for i in self.instances), "queued": len(self.queue),
            "cold_starts": self.cold_starts,
            "runtime_class": self.spec.runtime_class or "default",
            "runs_as": "a local process (forked); the runtime class applies on a cluster",
            "min_scale": self.spec.min_scale, "max_scale": self.spec.max_scale,
            "container_concurrency": self.spec.container_concurrency, "window_s": self.spec.window_s,
        }


class LocalHost:
    """Every Service in the manifests, kept in step with them, served over HTTP."""

    def __init__(self, registry: BrokerRegistry, queue_limit: int = QUEUE_LIMIT):
        self.registry = registry
        self.queue_limit = queue_limit
        self.base = Path(registry.root).resolve().parent
        self.zygote = Zygote()
        self.revisions: dict[str, Revision] = {}
        self.invalid: dict[str, str] = {}
        self._scaler: asyncio.Task[None] | None = None
        self._preparing: set[asyncio.Task[None]] = set()
        registry.on_change(lambda _: self.reload())

    def reload(self) -> None:
        """Start, replace or stop revisions to match the Service manifests."""
        specs, self.invalid = services_from(self.registry.found)
        for key, reason in self.invalid.items():
            log.error("Service %s cannot run: %s", key, reason)
        for key in list(self.revisions):
            if key not in specs or specs[key] != self.revisions[key].spec:
                self.revisions.pop(key).stop()
        for key, spec in specs.items():
            if key not in self.revisions:
                rev = self.revisions[key] = Revision(spec, self.zygote, self.base, self.queue_limit)
                task = asyncio.get_running_loop().create_task(rev.prepare())
                self._preparing.add(task)
                task.add_done_callback(self._preparing.discard)

    async def start(self) -> None:
        """Create the revisions and begin scaling."""
        self.reload()
        self._scaler = asyncio.create_task(self._scale_forever())

    async def _scale_forever(self) -> None:
        while True:
            await asyncio.sleep(SCALE_EVERY_S)
            for rev in list(self.revisions.values()):
                try:
                    rev.scale()
                except Exception:
                    log.exception("scaling %s failed", rev.spec.key)

    async def stop(self) -> None:
        """Stop every function process and the fork server."""
        if self._scaler is not None:
            self._scaler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._scaler
        for rev in self.revisions.values():
            rev.stop()
        await asyncio.to_thread(self.zygote.stop)

    def status(self) -> dict[str, Any]:
        """Every function, runnable or not."""
        out: dict[str, Any] = {key: rev.status() for key, rev in sorted(self.revisions.items())}
        for key, reason in self.invalid.items():
            out[key] = {"ready": False, "reason": reason, "processes": 0, "scaled_to_zero": True}
        return {"functions": out}

    def app(self) -> web.Application:
        """The HTTP face: POST /{namespace}/{name}, GET /status, GET /healthz."""
        app = web.Application(client_max_size=8 * 1024 * 1024)
        app.router.add_get("/healthz", lambda r: web.json_response({"status": "ok"}))
        app.router.add_get("/status", lambda r: web.json_response(self.status()))
        app.router.add_post("/{namespace}/{name}", self.handle)
        return app

    async def handle(self, request: web.Request) -> web.Response:
        """Invoke a function with the request's CloudEvent."""
        key = f"{request.match_info['namespace']}/{request.match_info['name']}"
        rev = self.revisions.get(key)
        if rev is None:
            reason = self.invalid.get(key)
            if reason is not None:
                return _error(503, f"Service {key} cannot run: {reason}")
            return _error(404, f"no Service {key}")
        try:
            (event,) = from_http(request.headers, await request.read())
        except (MalformedEvent, ValueError) as exc:
            return _error(400, str(exc))
        try:
            reply = await rev.invoke(event)
        except FunctionFailed as exc:
            headers = {"Retry-After": "1"} if exc.status == 429 else None
            return _error(exc.status, str(exc), headers)
        if reply is None:
            return web.Response(status=202)
        headers, body = to_binary(reply)
        return web.Response(status=200, headers=headers, body=body)


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(status=status, body=json.dumps({"error": message}).encode(),
                        content_type="application/json", headers=headers)
