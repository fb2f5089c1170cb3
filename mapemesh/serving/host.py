"""The local host: Knative Serving on one machine.

`POST /{namespace}/{name}` invokes the Service's function through its activator (`activator.Revision`: the
queue, the processes forked by the zygote through `forkserver.Zygote`, scale to zero). The host keeps one
revision per Service in the manifests, replaces a revision when its Service changes, restarts a Service's
processes when the env its `EnvHook` gives changes (`envhook`), drains Services on request (`drain`, `release`: the
node shim's FPGABitstream knob, before it reconfigures the accelerator they use), and counts requests as Knative's
queue-proxy does.

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

`GET /status` (every function, `activator.status_row`'s keys), `GET /metrics` (Prometheus text) and
`GET /healthz` answer too; `deliver` gives the broker in the same process the same answers without HTTP.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from pathlib import Path
from typing import Any

from aiohttp import web

from mapemesh import metrics
from mapemesh.eventing.binding import from_http, to_binary
from mapemesh.eventing.brokers import BrokerRegistry
from mapemesh.eventing.cloudevent import CloudEvent, MalformedEvent
from mapemesh.eventing.delivery import LocalAnswer
from mapemesh.serving.activator import QUEUE_LIMIT, Revision, status_row
from mapemesh.serving.admission import WINDOW_MIN_S
from mapemesh.serving.envhook import EnvHook
from mapemesh.serving.failures import FunctionFailed, ImportFailed
from mapemesh.serving.forkserver import Zygote
from mapemesh.serving.spec import ServiceSpec, knative_config, services_from

# What moved out of this module stays importable from it.
__all__ = ["QUEUE_LIMIT", "SCALE_EVERY_S", "EnvHook", "FunctionFailed", "ImportFailed", "LocalHost", "Revision",
           "Zygote"]
log = logging.getLogger(__name__)
SCALE_EVERY_S = 0.1


class LocalHost:
    """Every Service in the manifests, kept in step with them, served over HTTP."""

    def __init__(self, registry: BrokerRegistry, queue_limit: int = QUEUE_LIMIT,
                 platform_env: dict[str, str] | None = None, env_hook: EnvHook | None = None,
                 min_window_s: float = WINDOW_MIN_S):
        self.registry = registry
        self.min_window_s = min_window_s
        """The shortest autoscaling window admitted (below Knative's 6s only through MAPEMESH_LOCAL_MIN_WINDOW)."""
        if min_window_s < WINDOW_MIN_S:
            log.warning("MAPEMESH_LOCAL_MIN_WINDOW: admitting autoscaling windows down to %gs, which a Knative "
                        "cluster refuses (it takes 6s..1h)", min_window_s)
        self._config_errors: tuple[str, ...] = ()
        self.queue_limit = queue_limit
        self.platform_env = dict(platform_env or {})
        """Given to every function process (the data directory, the state store), under the Service's env."""
        self.env_hook = env_hook
        """Extra env per Service from outside its manifest (the vAccelPlugin knob's choices, say); None: none."""
        self._env_retry = False
        self.base = Path(registry.root).resolve().parent
        self.zygote = Zygote()
        self.revisions: dict[str, Revision] = {}
        self.invalid: dict[str, str] = {}
        """Services that cannot run, with Knative's reason (never admitted)."""
        self.refused_updates: dict[str, str] = {}
        """Running Services whose manifest is now refused: the last admitted revision serves on."""
        self._scaler: asyncio.Task[None] | None = None
        self._services: dict[str, ServiceSpec] = {}
        self.requests = metrics.Counts("revision_request_count", "Requests a Service's function answered",
                                       ("namespace_name", "service_name", "response_code", "response_code_class"))
        self.metrics = metrics.registry(self.requests, metrics.Gauges(
            "autoscaler_actual_pods", "Function processes running per Service", ("namespace_name", "service_name"),
            lambda: {tuple(key.split("/", 1)): len(rev.instances) for key, rev in list(self.revisions.items())}))
        self.latencies = metrics.Latencies(self.metrics, "revision_request_latencies",
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
            self.latencies.observe((time.perf_counter() - started) * 1000, namespace, name, str(status))

    def reload(self) -> None:
        """Start, replace or stop revisions to match the Service manifests."""
        config = knative_config(self.registry.found)
        if config.errors != self._config_errors:
            self._config_errors = config.errors
            for error in config.errors:  # Knative keeps its stock value for such a key, and so does the host
                log.error("Knative config: %s (the stock value is used)", error)
        specs, invalid = services_from(self.registry.found, self.min_window_s, config)
        # As on a cluster, where the webhook refuses the update and the last admitted revision serves on: a
        # running Service whose manifest (or config) is now refused keeps its revision, saying why.
        self.refused_updates = {key: reason for key, reason in invalid.items() if key in self.revisions}
        self.invalid = {key: reason for key, reason in invalid.items() if key not in self.refused_updates}
        for key, reason in self.invalid.items():
            log.error("Service %s cannot run: %s", key, reason)
        for key, reason in self.refused_updates.items():
            log.error("Service %s: its manifest is refused (%s); the last admitted one serves on", key, reason)
        held: set[str] = set()
        for key in list(self.revisions):
            if key in self.refused_updates:
                continue
            if key not in specs or specs[key] != self.revisions[key].spec:
                old = self.revisions.pop(key)
                old.stop()
                if old.held:
                    held.add(key)
        for key, spec in specs.items():
            if key not in self.revisions:
                rev = self.revisions[key] = Revision(spec, self.zygote, self.base, self.queue_limit,
                                                     self.platform_env)
                if key in held:  # replaced during a drain: the accelerator is still being reconfigured
                    rev.hold()
                try:
                    rev.set_overrides(self._env_for(spec))
                except Exception:  # run it with its own env rather than not at all
                    log.exception("%s: the env hook's environment could not be applied", key)
                rev._background(rev.prepare())  # cancelled with the revision if it is replaced first
        self._services = {key: rev.spec for key, rev in self.revisions.items()}

    def _env_for(self, spec: ServiceSpec) -> dict[str, str]:
        return self.env_hook.env_for(spec) if self.env_hook is not None else {}

    def services(self) -> dict[str, ServiceSpec]:
        """The Services this host runs, namespace/name -> spec (safe from any thread: a copy made when the
        manifests were last read)."""
        return dict(self._services)

    def apply_env(self, force: bool = False) -> list[str]:
        """Restart the Services whose env from the env hook changed (when its `changed()` says so, or `force`);
        the Services restarted. Runs on the host's event loop (from another thread: `loop.call_soon_threadsafe`)."""
        if self.env_hook is None:
            return []
        changed = self.env_hook.changed()  # called every time, so that it keeps its own mark current
        if not (changed or force or self._env_retry):
            return []
        restarted, failed = [], False
        for key, rev in list(self.revisions.items()):
            try:
                if rev.set_overrides(self._env_for(rev.spec)):
                    restarted.append(key)
            except Exception:  # one Service's bad env must not keep the others from theirs
                failed = True
                log.exception("%s: the env hook's environment could not be applied", key)
        self._env_retry = failed  # the next poll tries again
        return restarted

    async def drain(self, keys: list[str], timeout_s: float) -> None:
        """Hold the Services `keys` (`Revision.hold`: their requests wait, none fails) until none of their processes
        runs; TimeoutError when that takes longer than `timeout_s`. A drain that does not end (timed out, cancelled,
        failed) releases them. A revision replaced meanwhile is replaced by a held one (`reload`), waited for too."""
        for rev in _revisions(self.revisions, keys):
            rev.hold()
        deadline = time.monotonic() + timeout_s
        try:
            while not all(rev.idle for rev in _revisions(self.revisions, keys)):
                if time.monotonic() >= deadline:
                    busy = [rev.spec.key for rev in _revisions(self.revisions, keys) if not rev.idle]
                    raise TimeoutError(f"{', '.join(busy)} still ran requests after {timeout_s:g}s")
                await asyncio.sleep(SCALE_EVERY_S)
        except BaseException:
            _release(self.revisions, keys)
            raise

    async def release(self, keys: list[str]) -> None:
        """Let held Services serve again (what waited is handed to new processes)."""
        _release(self.revisions, keys)

    async def start(self) -> None:
        """Create the revisions and begin scaling."""
        self.reload()
        self._scaler = asyncio.create_task(self._scale_forever())

    async def _scale_forever(self) -> None:
        while True:
            await asyncio.sleep(SCALE_EVERY_S)
            try:
                self.apply_env()
            except Exception:
                log.exception("applying the env hook's environment failed")
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
        for key, reason in self.refused_updates.items():
            if key in rows:
                rows[key]["reason"] = f"the latest manifest is refused, the last admitted one serves: {reason}"
        rows.update((key, status_row(None, ready=False, reason=reason)) for key, reason in self.invalid.items())
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


def _revisions(revisions: dict[str, Revision], keys: list[str]) -> list[Revision]:
    """The running revisions of the Services `keys` (those the host has)."""
    return [rev for key in keys if (rev := revisions.get(key)) is not None]


def _release(revisions: dict[str, Revision], keys: list[str]) -> None:
    for rev in _revisions(revisions, keys):
        rev.release()


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(status=status, body=json.dumps({"error": message}).encode(),
                        content_type="application/json", headers=headers)
