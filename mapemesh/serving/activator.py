"""The activator: one Service's function processes, the requests waiting for them, and their scaling.

A `Revision` holds requests while a process starts (forked by the zygote), queues them up to a bound, hands
each to the least busy process with room (`containerConcurrency`), starts processes up to `max-scale` when every
one is at its capacity, and stops those idle for the autoscaling window (the last one after the retention period
too), down to `min-scale`: at zero there is no process at all.

| `Revision` method | what it does |
|---|---|
| `prepare()` | imports the source in the zygote, then starts `initial-scale` processes; a source that does not |
| | import makes the Service not ready (every request then fails with `503`) |
| `invoke(event)` | runs the function on `event` in some process: the reply event or None, else `FunctionFailed` |
| `set_overrides(env)` | runs the function with `env` over its own from now on: the processes it has drain, new ones |
| | get the env, no request fails for it; whether anything changed |
| `scale()` | keeps `min-scale`, stops idle processes (the host calls it every `host.SCALE_EVERY_S`) |
| `stop()` | stops every process and fails what waits with `503` |
| `status()` | the Service's `status_row` (for `mapemesh status`) |

| `invoke` raises `FunctionFailed` | when |
|---|---|
| `429` + `Retry-After: 1` | `queue_limit` requests wait already |
| `422` | the function raised `PermanentError` |
| `503` + `Retry-After` | the function raised `TemporaryError(delay)` |
| `500` | the function raised anything else |
| `502` | its process died with the request |
| `503` | the Service cannot run (its source does not import), or is being replaced or stopped |
| `504` | `timeoutSeconds` passed (the process takes no more work and is replaced) |

A process is an `Instance`; it takes no new requests once `draining` (a timeout, a new environment) and is
stopped (SIGTERM, SIGKILL after `KILL_AFTER_S`) when its last request is answered.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import signal
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mapemesh.eventing.cloudevent import CloudEvent
from mapemesh.serving import wire
from mapemesh.serving.failures import FunctionFailed, ImportFailed
from mapemesh.serving.forkserver import Zygote
from mapemesh.serving.spec import ServiceSpec

log = logging.getLogger(__name__)
QUEUE_LIMIT = 1000
KILL_AFTER_S = 2.0


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
        """Env set from outside the manifest (the host's `EnvHook`: a vAccel plugin choice, say), over the Service's."""
        self.queue_limit = queue_limit
        self.zygote = zygote
        self.base = base
        self.instances: list[Instance] = []
        self.starting = 0
        self.queue: deque[Waiting] = deque()
        self.error: str | None = None
        self.prepared = False
        self.stopped = False
        self.held = False
        """Drained (`hold`): requests wait in the queue and no process runs until `release`."""
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
        if self.held:  # created during a drain: its processes start once it is released
            return
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

    def hold(self) -> None:
        """Drain: new requests wait in the queue (none fails for it), the processes finish what they took and stop,
        and none starts until `release` (the accelerator they use is being reconfigured, say)."""
        self.held = True
        for inst in list(self.instances):
            inst.draining = True
            self._retire_if_drained(inst, "was drained")
        log.info("%s: held (%d process(es) finishing)", self.spec.key, len(self.instances))

    @property
    def idle(self) -> bool:
        """Held, and no process of it runs or starts."""
        return self.held and not self.instances and not self.starting

    def release(self) -> None:
        """Serve again: the requests that waited are handed to new processes."""
        if not self.held:
            return
        self.held = False
        log.info("%s: released (%d request(s) waited)", self.spec.key, len(self.queue))
        self.dispatch()
        if not self.queue and self.spec.min_scale:
            self.scale()

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

    def _retire_if_drained(self, inst: Instance, reason: str | None = None) -> None:
        if inst.draining and not inst.in_flight:
            self._remove(inst)
            inst.kill(reason or ("was drained" if self.held else "was replaced after a timeout"))

    def dispatch(self) -> None:
        """Hand queued requests to processes with room; start processes when all are full."""
        if self.stopped or self.held:
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
        if env is not self.env or self.held:  # the environment changed (or a drain began) while it started: it
            inst.draining = True  # serves nothing, and goes
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
        if self.stopped or self.held or self.error is not None:
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
        return status_row(self.spec, ready=self.error is None, reason=self.error,
                           pids=[i.pid for i in self.instances], starting=self.starting,
                           in_flight=sum(len(i.in_flight) for i in self.instances), queued=len(self.queue),
                           cold_starts=self.cold_starts, held=self.held)


def status_row(spec: ServiceSpec | None, *, ready: bool, reason: str | None, pids: list[int] | None = None,
                starting: int = 0, in_flight: int = 0, queued: int = 0, cold_starts: int = 0,
                held: bool = False) -> dict[str, Any]:
    """One function's status; every function has every key, so scripts can rely on them."""
    pids = pids or []
    return {
        "ready": ready, "reason": reason, "processes": len(pids), "pids": pids,
        "scaled_to_zero": not pids and not starting, "in_flight": in_flight, "queued": queued,
        "cold_starts": cold_starts, "held": held,
        "runtime_class": (spec.runtime_class if spec else None) or "default",
        "runs_as": "a local process (forked); the runtime class applies on a cluster",
        "min_scale": spec.min_scale if spec else None, "max_scale": spec.max_scale if spec else None,
        "container_concurrency": spec.container_concurrency if spec else None,
        "window_s": spec.window_s if spec else None,
        "source": spec.source if spec else None,
    }
