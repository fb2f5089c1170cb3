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
| `422` | the function raised `mapemesh.PermanentError` (input it can never handle: not retried) |
| `503` + `Retry-After` | the function raised `mapemesh.TemporaryError(delay)` (try again, no sooner than `delay`) |
| `500` | the function raised anything else (the broker retries) |
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

from mapemesh import metrics
from mapemesh.eventing.binding import from_http, to_binary
from mapemesh.eventing.brokers import BrokerRegistry
from mapemesh.eventing.cloudevent import CloudEvent, MalformedEvent
from mapemesh.eventing.delivery import LocalAnswer
from mapemesh.serving import wire
from mapemesh.serving.spec import ServiceSpec, services_from

log = logging.getLogger(__name__)
QUEUE_LIMIT = 1000
SCALE_EVERY_S = 0.1
ASK_TIMEOUT_S = 30.0
KILL_AFTER_S = 2.0


class FunctionFailed(Exception):
    """The function raised; `status` is the HTTP answer, `retry_after` its Retry-After (429, or a TemporaryError's
    503)."""

    def __init__(self, status: int, message: str, retry_after: str | None = None):
        super().__init__(message)
        self.status = status
        self.retry_after = retry_after if retry_after is not None else ("1" if status == 429 else None)


class ImportFailed(FunctionFailed):
    """The function's source does not import (or has no such target): the Service cannot run."""

    def __init__(self, message: str):
        super().__init__(503, message)


class Zygote:
    """The fork server process and the control socket to it; restarted when it dies or hangs."""

    def __init__(self) -> None:
        self._lock = asyncio.Lock()
        self._start()

    def _start(self) -> None:
        host_end, zygote_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        self.proc = _start_zygote(zygote_end)
        zygote_end.close()
        host_end.settimeout(ASK_TIMEOUT_S)  # an import that never returns must not block every Service
        self.control = host_end

    async def spawn(self, spec: ServiceSpec, base: Path, env: dict[str, str]) -> tuple[int, socket.socket]:
        """Fork a function process with `env`; return its pid and the host's end of its socket."""
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        request = {"source": spec.source, "target": spec.target, "base": str(base), "env": env,
                   "concurrency": spec.capacity}
        try:
            answer = await self._request(request, theirs.fileno())
        except BaseException:
            mine.close()
            raise
        finally:
            theirs.close()
        if "error" in answer:
            mine.close()
            if answer.get("kind") == "import":
                raise ImportFailed(answer["error"])
            raise FunctionFailed(503, f"cannot start a process: {answer['error']}")
        return int(answer["pid"]), mine

    async def prepare(self, spec: ServiceSpec, base: Path, env: dict[str, str]) -> None:
        """Have the zygote import the function's source now; ImportFailed if it does not import."""
        answer = await self._request({"prepare": True, "source": spec.source, "target": spec.target,
                                      "base": str(base), "env": env}, None)
        if "error" in answer:
            if answer.get("kind") == "import":
                raise ImportFailed(answer["error"])
            raise FunctionFailed(503, answer["error"])

    async def _request(self, request: dict[str, Any], fd: int | None) -> dict[str, Any]:
        async with self._lock:  # one request at a time on the control socket
            if self.proc.poll() is not None:
                log.warning("the fork server exited (%s); starting a new one", self.proc.returncode)
                self._replace()
            try:
                return await asyncio.to_thread(self._ask, request, fd)
            except (OSError, ValueError) as exc:  # died or hung (socket timeout): start afresh
                log.error("the fork server failed (%s); starting a new one", exc)
                self._replace()
                if isinstance(exc, TimeoutError) and request.get("prepare"):
                    raise ImportFailed(f"importing {request['source']} took longer than {ASK_TIMEOUT_S:g}s") \
                        from None
                raise FunctionFailed(503, f"the fork server failed: {exc}") from None

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
                raise ConnectionError("the fork server exited")
            line += chunk
        return json.loads(line)

    def _replace(self) -> None:
        self.stop()
        self._start()

    def stop(self) -> None:
        """Stop the fork server and every function process it started."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=5)
            except Exception:
                self.proc.kill()
                self.proc.wait()
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
    draining: bool = False
    """Takes no new requests; stopped once the ones it has are answered (after a timeout)."""

    def kill(self, reason: str) -> None:
        """Stop the process (SIGTERM, SIGKILL if it lingers) and fail what it was doing with 502."""
        if not self.alive:
            return
        self.alive = False
        _terminate(self.pid)
        self.writer.close()
        for fut in self.in_flight.values():
            if not fut.done():
                fut.set_exception(FunctionFailed(502, f"function process {self.pid} {reason}"))
        self.in_flight.clear()


def _terminate(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)

    def insist() -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)

    with contextlib.suppress(RuntimeError):
        asyncio.get_running_loop().call_later(KILL_AFTER_S, insist)


@dataclass(eq=False)
class Waiting:
    """A request the activator holds until a process has room."""

    header: dict[str, Any]
    data: bytes | None
    future: asyncio.Future[tuple[dict[str, Any], bytes]]


class Revision:
    """One Service's processes, queue and scaling."""

    def __init__(self, spec: ServiceSpec, zygote: Zygote, base: Path, queue_limit: int = QUEUE_LIMIT,
                 platform_env: dict[str, str] | None = None):
        self.spec = spec
        # What Knative gives every container (K_SERVICE, ...) over the platform's settings and the
        # Service's own env, as a cluster would.
        self.base_env = {**(platform_env or {}), **spec.env, "K_SERVICE": spec.name,
                         "K_CONFIGURATION": spec.name, "K_REVISION": f"{spec.name}-local"}
        self.env = dict(self.base_env)
        self.overrides: dict[str, str] = {}
        """Env set from outside the manifest (the vAccelPlugin knob's plugin choice), over the Service's."""
        self.queue_limit = queue_limit
        self.zygote = zygote
        self.base = base
        self.instances: list[Instance] = []
        self.starting = 0
        self.queue: deque[Waiting] = deque()
        self.error: str | None = None
        self.prepared = False
        self.stopped = False
        self.cold_starts = 0
        self._ids = itertools.count()
        self._tasks: set[asyncio.Task[None]] = set()

    def _background(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def prepare(self) -> None:
        """Import the source in the zygote (an error makes the Service not ready), then initial-scale."""
        try:
            await self.zygote.prepare(self.spec, self.base, self.env)
        except ImportFailed as exc:
            self.error = str(exc)
            log.error("%s cannot run: %s", self.spec.key, exc)
            self._fail_queue(503, str(exc))
            return
        except FunctionFailed as exc:  # the fork server had trouble; the first request will try again
            log.warning("%s: could not import ahead of time: %s", self.spec.key, exc)
        if self.stopped:
            return
        self.prepared = True
        wanted = min(self.spec.initial_scale, self.spec.max_scale)
        for _ in range(wanted - len(self.instances) - self.starting):
            self._start_instance()

    # -- requests ------------------------------------------------------------------------------

    async def invoke(self, event: CloudEvent) -> CloudEvent | None:
        """Run the function on `event` in some process; FunctionFailed says what went wrong."""
        if self.stopped:
            raise FunctionFailed(503, f"{self.spec.key} is being replaced; retry")
        if self.error is not None:
            raise FunctionFailed(503, self.error)
        if len(self.queue) >= self.queue_limit:
            raise FunctionFailed(429, f"{self.queue_limit} requests already wait for {self.spec.key}")
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
            if header.get("retry_after") is not None:
                raise FunctionFailed(503, str(header.get("error")), str(header["retry_after"]))
            raise FunctionFailed(422 if header.get("permanent") else 500, str(header.get("error")))
        attrs = header.get("attrs")
        return None if attrs is None else CloudEvent(attrs, data or None)

    def set_overrides(self, overrides: dict[str, str]) -> bool:
        """Run the function with `overrides` over its env from now on: the processes it has take no new requests
        and stop once their requests are answered; new ones start with the new env. No request fails for it.
        Whether anything changed."""
        if overrides == self.overrides:
            return False
        self.overrides = dict(overrides)
        self.env = {**self.base_env, **self.overrides}
        for inst in list(self.instances):
            inst.draining = True
            self._retire_if_drained(inst, "was replaced for a new environment")
        log.info("%s: processes restart with %s", self.spec.key, ", ".join(f"{k}={v}" for k, v in overrides.items())
                 or "the Service's own environment")
        self.dispatch()
        if not self.queue and self.spec.min_scale:
            self.scale()
        return True

    def _timed_out(self, waiting: Waiting) -> None:
        if waiting in self.queue:
            self.queue.remove(waiting)
            return
        for inst in self.instances:
            if inst.in_flight.pop(waiting.header["id"], None) is not None:
                # The process may be stuck: it takes no more work, and stops once its other requests end.
                log.warning("%s: a request to process %d timed out; replacing the process", self.spec.key,
                            inst.pid)
                inst.draining = True
                self._retire_if_drained(inst)
                self.dispatch()
                return

    def _retire_if_drained(self, inst: Instance, reason: str = "was replaced after a timeout") -> None:
        if inst.draining and not inst.in_flight:
            self._remove(inst)
            inst.kill(reason)

    def dispatch(self) -> None:
        """Hand queued requests to processes with room; start processes when all are full."""
        if self.stopped:
            return
        while self.queue:
            inst = min((i for i in self.instances if i.alive and not i.draining
                        and len(i.in_flight) < self.spec.capacity),
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
            demand = len(self.queue) + sum(len(i.in_flight) for i in self.instances if not i.draining)
            active = sum(1 for i in self.instances if not i.draining)
            wanted = min(self.spec.max_scale, -(-demand // self.spec.capacity))
            while active + self.starting < wanted:
                self._start_instance(cold=not active and not self.starting)

    def _start_instance(self, cold: bool = False) -> None:
        self.starting += 1
        if cold:
            self.cold_starts += 1
        try:
            self._background(self._spawn())
        except BaseException:  # no event loop here: nothing will start, so count nothing
            self.starting -= 1
            raise

    async def _spawn(self) -> None:
        env = self.env
        try:
            pid, sock = await self.zygote.spawn(self.spec, self.base, env)
        except FunctionFailed as exc:
            self.starting -= 1
            if isinstance(exc, ImportFailed):
                self.error = str(exc)
                log.error("%s cannot run: %s", self.spec.key, exc)
            self._fail_queue(exc.status, str(exc))
            return
        except BaseException:
            self.starting -= 1
            raise
        try:
            reader, writer = await asyncio.open_connection(sock=sock)
        except BaseException:
            self.starting -= 1
            sock.close()
            _terminate(pid)
            raise
        self.starting -= 1
        inst = Instance(pid, writer)
        if self.stopped:  # replaced while this process was starting
            inst.kill("belongs to a replaced revision")
            return
        inst.reader_task = asyncio.get_running_loop().create_task(self._read(inst, reader))
        self.instances.append(inst)
        if env is not self.env:  # the environment changed while it started: it serves nothing, and goes
            inst.draining = True
            self._retire_if_drained(inst, "was started with an environment since replaced")
        log.info("%s: process %d started (%d running)", self.spec.key, pid, len(self.instances))
        self.dispatch()

    def _fail_queue(self, status: int, message: str) -> None:
        while self.queue:
            w = self.queue.popleft()
            if not w.future.done():
                w.future.set_exception(FunctionFailed(status, message))

    async def _read(self, inst: Instance, reader: asyncio.StreamReader) -> None:
        try:
            while True:
                frame = await wire.read(reader)
                if frame is None:
                    break
                header, data = frame
                fut = inst.in_flight.pop(header.get("id"), None)  # type: ignore[arg-type]
                if fut is not None and not fut.done():
                    fut.set_result((header, data))
                inst.last_used = time.monotonic()
                self._retire_if_drained(inst)
                self.dispatch()
        finally:  # whatever ended the stream, the process is gone for us
            if inst.alive:
                log.warning("%s: process %d exited with %d request(s) in flight", self.spec.key, inst.pid,
                            len(inst.in_flight))
                self._remove(inst)
                inst.kill("exited")
            self.dispatch()

    def _remove(self, inst: Instance) -> None:
        with contextlib.suppress(ValueError):
            self.instances.remove(inst)

    # -- scaling -------------------------------------------------------------------------------

    def scale(self) -> None:
        """Keep min-scale processes; stop those idle longer than the window (the last one: retention)."""
        if self.stopped or self.error is not None:
            return
        now = time.monotonic()
        if self.prepared:
            for _ in range(self.spec.min_scale - len(self.instances) - self.starting):
                self._start_instance()
        for inst in sorted(self.instances, key=lambda i: i.last_used):
            if len(self.instances) <= self.spec.min_scale or self.queue:
                break
            if inst.in_flight or inst.draining:
                continue
            needed = self.spec.window_s
            if len(self.instances) == 1:
                needed = max(needed, self.spec.retention_s)
            idle = now - inst.last_used
            if idle < needed:
                break
            log.info("%s: process %d idle for %.1fs; stopping it", self.spec.key, inst.pid, idle)
            self._remove(inst)
            inst.kill("was stopped for being idle")

    def stop(self) -> None:
        """Stop every process of this revision, the work in progress, and fail what waits."""
        self.stopped = True
        for task in self._tasks:
            task.cancel()
        for inst in list(self.instances):
            inst.kill("was stopped")
        self.instances.clear()
        self._fail_queue(503, f"{self.spec.key} was stopped or replaced; retry")

    def status(self) -> dict[str, Any]:
        """What `mapemesh status` shows for this function."""
        return _status_row(self.spec, ready=self.error is None, reason=self.error,
                           pids=[i.pid for i in self.instances], starting=self.starting,
                           in_flight=sum(len(i.in_flight) for i in self.instances), queued=len(self.queue),
                           cold_starts=self.cold_starts)


def _status_row(spec: ServiceSpec | None, *, ready: bool, reason: str | None, pids: list[int] | None = None,
                starting: int = 0, in_flight: int = 0, queued: int = 0, cold_starts: int = 0) -> dict[str, Any]:
    """One function's status; every function has every key, so scripts can rely on them."""
    pids = pids or []
    return {
        "ready": ready, "reason": reason, "processes": len(pids), "pids": pids,
        "scaled_to_zero": not pids and not starting, "in_flight": in_flight, "queued": queued,
        "cold_starts": cold_starts,
        "runtime_class": (spec.runtime_class if spec else None) or "default",
        "runs_as": "a local process (forked); the runtime class applies on a cluster",
        "min_scale": spec.min_scale if spec else None, "max_scale": spec.max_scale if spec else None,
        "container_concurrency": spec.container_concurrency if spec else None,
        "window_s": spec.window_s if spec else None,
        "source": spec.source if spec else None,
    }


class LocalHost:
    """Every Service in the manifests, kept in step with them, served over HTTP."""

    def __init__(self, registry: BrokerRegistry, queue_limit: int = QUEUE_LIMIT,
                 platform_env: dict[str, str] | None = None):
        self.registry = registry
        self.queue_limit = queue_limit
        self.platform_env = dict(platform_env or {})
        """Given to every function process (the data directory, the state store), under the Service's env."""
        self.base = Path(registry.root).resolve().parent
        self.zygote = Zygote()
        self.revisions: dict[str, Revision] = {}
        self.invalid: dict[str, str] = {}
        self._scaler: asyncio.Task[None] | None = None
        self.vaccel_file: Path | None = None
        """DATA_DIR/vaccel-plugins.json: each accelerated function's vAccel plugin (the vAccelPlugin knob's)."""
        self._vaccel_seen: tuple[int, int, int] | None = None
        self._accel: dict[str, dict[str, Any]] = {}
        self.requests = metrics.Counts("revision_request_count", "Requests a Service's function answered",
                                       ("namespace_name", "service_name", "response_code", "response_code_class"))
        self.metrics = metrics.registry(self.requests, metrics.Gauges(
            "autoscaler_actual_pods", "Function processes running per Service", ("namespace_name", "service_name"),
            lambda: {tuple(key.split("/", 1)): len(rev.instances) for key, rev in list(self.revisions.items())}))
        self.latencies = metrics.histogram(self.metrics, "revision_request_latencies",
                                           "Time to a Service's answer in milliseconds",
                                           ("namespace_name", "service_name", "response_code"))
        registry.on_change(lambda _: self.reload())

    async def _invoke(self, rev: Revision, event: CloudEvent) -> CloudEvent | None:
        """`rev.invoke`, counted and timed as Knative's queue-proxy counts a revision's requests."""
        started, status = time.perf_counter(), 500
        try:
            reply = await rev.invoke(event)
            status = 202 if reply is None else 200
            return reply
        except FunctionFailed as exc:
            status = exc.status
            raise
        finally:
            namespace, _, name = rev.spec.key.partition("/")
            self.requests.add(namespace, name, str(status), metrics.code_class(status))
            self.latencies.labels(namespace, name, str(status)).observe((time.perf_counter() - started) * 1000)

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
                rev = self.revisions[key] = Revision(spec, self.zygote, self.base, self.queue_limit,
                                                     self.platform_env)
                try:
                    rev.set_overrides(self._vaccel_env(spec))
                except Exception:  # run it with its own env rather than not at all
                    log.exception("%s: its vAccel plugin choice could not be applied", key)
                rev._background(rev.prepare())  # cancelled with the revision if it is replaced first
        self._index_accel()

    def _vaccel_env(self, spec: ServiceSpec) -> dict[str, str]:
        """The env an accelerated function gets for its vAccel plugin choice (none until the knob sets one)."""
        from mapemesh.runtimes import vaccel

        name = spec.labels.get(vaccel.ACCEL_LABEL)
        if name is None or self.vaccel_file is None:
            return {}
        choice = vaccel.read_choices(self.vaccel_file).get(name)
        return vaccel.plugin_env(choice["plugin"], choice.get("rpc_address")) if choice else {}

    def accel_functions(self) -> dict[str, dict[str, Any]]:
        """The accelerated functions this host runs: name -> {service, priority} (safe from any thread: a copy
        made when the manifests were last read)."""
        return dict(self._accel)

    def _index_accel(self) -> None:
        from mapemesh.runtimes import vaccel

        self._accel = {name: {"service": key, "priority": rev.spec.priority}
                       for key, rev in self.revisions.items()
                       if (name := rev.spec.labels.get(vaccel.ACCEL_LABEL))}

    def apply_vaccel(self, force: bool = False) -> list[str]:
        """Restart the accelerated functions whose vAccel plugin changed (DATA_DIR/vaccel-plugins.json); the
        Services restarted. Runs on the host's event loop (from another thread: `loop.call_soon_threadsafe`)."""
        if self.vaccel_file is None:
            return []
        try:
            stat = self.vaccel_file.stat()
            seen: tuple[int, int, int] | None = (stat.st_ino, stat.st_mtime_ns, stat.st_size)
        except FileNotFoundError:
            seen = None
        if seen == self._vaccel_seen and not force:
            return []
        restarted, failed = [], False
        for key, rev in list(self.revisions.items()):
            try:
                if rev.set_overrides(self._vaccel_env(rev.spec)):
                    restarted.append(key)
            except Exception:  # one function's bad choice must not keep the others from theirs
                failed = True
                log.exception("%s: its vAccel plugin choice could not be applied", key)
        if not failed:
            self._vaccel_seen = seen  # else the next poll tries again
        return restarted

    async def start(self) -> None:
        """Create the revisions and begin scaling."""
        self.reload()
        self._scaler = asyncio.create_task(self._scale_forever())

    async def _scale_forever(self) -> None:
        while True:
            await asyncio.sleep(SCALE_EVERY_S)
            try:
                self.apply_vaccel()
            except Exception:
                log.exception("applying the vAccel plugin choices failed")
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
        rows = {key: rev.status() for key, rev in self.revisions.items()}
        rows.update((key, _status_row(None, ready=False, reason=reason)) for key, reason in self.invalid.items())
        return {"functions": dict(sorted(rows.items()))}

    def app(self) -> web.Application:
        """The HTTP face: POST /{namespace}/{name}, GET /status, GET /metrics (Prometheus), GET /healthz."""
        app = web.Application(client_max_size=8 * 1024 * 1024)
        app.router.add_get("/healthz", lambda r: web.json_response({"status": "ok"}))
        app.router.add_get("/status", lambda r: web.json_response(self.status()))
        app.router.add_get("/metrics", lambda r: web.Response(body=metrics.text(self.metrics),
                                                              headers={"Content-Type": metrics.CONTENT_TYPE}))
        app.router.add_post("/{namespace}/{name}", self.handle)
        return app

    async def handle(self, request: web.Request) -> web.Response:
        """Invoke a function with the request's CloudEvent."""
        key = f"{request.match_info['namespace']}/{request.match_info['name']}"
        missing = self._missing(key)
        if missing is not None:
            return missing
        try:
            (event,) = from_http(request.headers, await request.read())
        except (MalformedEvent, ValueError) as exc:
            return _error(400, str(exc))
        rev = self.revisions.get(key)  # again: a reload may have replaced it while the body arrived
        if rev is None:
            return self._missing(key) or _error(404, f"no Service {key}")
        try:
            reply = await self._invoke(rev, event)
        except FunctionFailed as exc:
            return _error(exc.status, str(exc), {"Retry-After": exc.retry_after} if exc.retry_after else None)
        if reply is None:
            return web.Response(status=202)
        headers, body = to_binary(reply)
        return web.Response(status=200, headers=headers, body=body)


    async def deliver(self, path: str, event: CloudEvent) -> LocalAnswer:
        """`handle` for the broker in this process (no HTTP): what it would answer."""
        parts = path.strip("/").split("/")
        key = "/".join(parts) if len(parts) == 2 else ""
        rev = self.revisions.get(key)
        if rev is None:
            missing = self._missing(key) if key else None
            return LocalAnswer(missing.status if missing is not None else 404, error=f"no Service at {path}")
        try:
            reply = await self._invoke(rev, event)
        except FunctionFailed as exc:
            return LocalAnswer(exc.status, error=str(exc), retry_after=exc.retry_after)
        return LocalAnswer(202) if reply is None else LocalAnswer(200, reply)

    def _missing(self, key: str) -> web.Response | None:
        if key in self.revisions:
            return None
        reason = self.invalid.get(key)
        if reason is not None:
            return _error(503, f"Service {key} cannot run: {reason}")
        return _error(404, f"no Service {key}")


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(status=status, body=json.dumps({"error": message}).encode(),
                        content_type="application/json", headers=headers)
