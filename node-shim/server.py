"""The node shim's HTTP side: the knob API (bearer token) and the CloudEvent endpoint the broker delivers to.

- `GET /knobs`: every knob, `{name: {"options", "state"}}`;
- `GET /knobs/{name}`: `{"options", "state"}`, `404` for an unknown knob;
- `POST /knobs/{name}` (body: the command, a JSON object): `200 {"before", "after", "noop"}`; `422 {"error",
  "options"}` for a command that does not fit (nothing written); `403` no permission; `501` not supported;
  `500` the hardware refused (a partial change is rolled back: `"rolled_back": true`);
- `GET /journal?limit=N`: the latest applies; `GET /metrics` (no token: read-only counts and readings): the
  Prometheus text (`mapemesh.metrics`: knob applies by result, telemetry reports, the interval, every metric it
  reports as a gauge); `GET /metrics.json`: the telemetry gauges as OpenTelemetry reads them;
- `POST /`: a `knob.apply` CloudEvent for this node (extension `node`), answered with `knob.applied` or
  `knob.failed`; a command not signed by an identity the command policy allows (`mapemesh.identity`) is refused
  with `403` before anything is touched, and audited (`auth.refused`, a log line);
- `GET /healthz`: `200`.

Every route but `/healthz` and the CloudEvent endpoint needs `Authorization: Bearer <token>`, the token in
`DATA_DIR/node-shim.token` (mode 0600, made on first start): `401` without it or with a wrong one. The
CloudEvent endpoint is what a Knative Trigger delivers to: the transport carries no sender identity (Knative's
broker re-sends with the Trigger's own), so the command itself does, signed (the CloudEvents verifiability
extension), and the shim checks it; the shim also listens on loopback by default (on a cluster a NetworkPolicy
admits the broker only).
"""

from __future__ import annotations

import json
import logging
import uuid
from pathlib import Path
from typing import Any

from aiohttp import web
from pydantic import ValidationError

from mapemesh import events as catalogue
from mapemesh import metrics as prometheus
from mapemesh import tokens, tracing
from mapemesh.eventing.binding import from_http, to_binary
from mapemesh.eventing.cloudevent import MalformedEvent
from mapemesh.identity.guard import Guard, refusal, sign_as
from mapemesh.names import dns_name
from mapemesh.node_shim.knobs.base import KnobError
from mapemesh.node_shim.shim import NodeShim
from mapemesh.node_shim.telemetry import Reporter

log = logging.getLogger(__name__)
TOKEN_FILE = "node-shim.token"
STATUS = {"invalid": 422, "unknown_knob": 404, "permission": 403, "unsupported": 501, "hardware": 500,
          "timeout": 504}


def token(data: Path) -> str:
    """The API token in DATA_DIR/node-shim.token, made (mode 0600) when there is none (`mapemesh.tokens`)."""
    return tokens.ensure(data, TOKEN_FILE)


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _json(status: int, doc: Any) -> web.Response:
    return web.Response(status=status, body=json.dumps(doc, default=str).encode(), content_type="application/json")


def _failure(exc: KnobError) -> web.Response:
    doc: dict[str, Any] = {"error": str(exc), "code": exc.code, "rolled_back": exc.rolled_back}
    if exc.options is not None:
        doc["options"] = exc.options
    return _json(STATUS.get(exc.code, 500), doc)


class ShimServer:
    """The aiohttp application around a NodeShim."""

    def __init__(self, shim: NodeShim, api_token: str, reporter: Reporter | None = None, guard: Guard | None = None):
        self.shim = shim
        self.api_token = api_token
        self.reporter = reporter
        self.guard = guard if guard is not None else Guard.from_environment()
        self.applies = prometheus.Counts("mapemesh_knob_apply_count", "Knob commands by result (applied, noop, "
                                         "failed)", ("node", "knob", "result"))
        collectors: list[Any] = [self.applies]
        if reporter is not None:
            node = {"node": shim.node}
            collectors += [
                prometheus.Gauges("mapemesh_telemetry_reports_count", "Telemetry reports sent or dropped",
                                  ("node", "outcome"), lambda: {(shim.node, "sent"): reporter.sent,
                                                                (shim.node, "dropped"): reporter.dropped},
                                  counter=True),
                prometheus.Gauges("mapemesh_telemetry_interval_seconds", "The TelemetryInterval knob's interval",
                                  ("node",), lambda: {(shim.node,): reporter.interval.seconds}),
                prometheus.Readings("mapemesh_node_", "A metric the node shim reports (its latest value)", node,
                                    lambda: dict(reporter.latest))]
        self.registry = prometheus.registry(*collectors)

    async def _apply(self, knob: str, command: dict[str, Any], **how: Any) -> Any:
        """`shim.apply`, counted by result."""
        try:
            applied = await self.shim.apply(knob, command, **how)
        except KnobError:
            self.applies.add(self.shim.node, knob, "failed")
            raise
        self.applies.add(self.shim.node, knob, "noop" if applied.noop else "applied")
        return applied

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._auth], client_max_size=1024 * 1024)
        app.router.add_get("/healthz", self.healthz)
        app.router.add_get("/knobs", self.list_knobs)
        app.router.add_get("/knobs/{name}", self.get_knob)
        app.router.add_post("/knobs/{name}", self.post_knob)
        app.router.add_get("/journal", self.journal)
        app.router.add_get("/metrics", self.prometheus)
        app.router.add_get("/metrics.json", self.metrics)
        app.router.add_post("/", self.cloudevent)
        return app

    @web.middleware
    async def _auth(self, request: web.Request, handler: Any) -> web.StreamResponse:
        if request.path in ("/healthz", "/", "/metrics"):
            return await handler(request)
        if not tokens.matches(request.headers.get("Authorization"), self.api_token):
            return web.Response(status=401, content_type="application/json", headers={"WWW-Authenticate": "Bearer"},
                                body=b'{"error": "a bearer token is required (DATA_DIR/node-shim.token)"}')
        return await handler(request)

    async def healthz(self, request: web.Request) -> web.Response:
        return _json(200, {"node": self.shim.node, "knobs": sorted(self.shim.knobs)})

    async def list_knobs(self, request: web.Request) -> web.Response:
        return _json(200, {name: await self.shim.describe(name) for name in sorted(self.shim.knobs)})

    async def get_knob(self, request: web.Request) -> web.Response:
        try:
            return _json(200, await self.shim.describe(request.match_info["name"]))
        except KnobError as exc:
            return _failure(exc)

    async def post_knob(self, request: web.Request) -> web.Response:
        try:
            command = json.loads(await request.read() or b"null", parse_constant=_no_constant)
        except ValueError as exc:
            return _json(400, {"error": f"the body is not JSON: {exc}"})
        if not isinstance(command, dict):
            return _json(422, {"error": "the body must be a JSON object: the knob's command"})
        who = request.headers.get("X-Requested-By") or f"api:{request.remote}"
        name = request.match_info["name"]
        try:
            applied = await self._apply(name, command, requested_by=who)
        except KnobError as exc:
            return _failure(exc)
        if self.reporter is not None and not applied.noop:
            # The loop learns of a change made beside it (its state of the mechanism stays true).
            await self.reporter.announce(catalogue.KnobApplied(
                node=self.shim.node, knob=name, request=f"api-{uuid.uuid4()}", before=applied.before,
                after=applied.after, noop=False))
        return _json(200, {"before": applied.before, "after": applied.after, "noop": applied.noop})

    async def journal(self, request: web.Request) -> web.Response:
        try:
            limit = int(request.query.get("limit", "100"))
        except ValueError:
            return _json(400, {"error": "limit must be an integer"})
        return _json(200, self.shim.journal.read(limit=max(1, limit)))

    async def prometheus(self, request: web.Request) -> web.Response:
        return web.Response(body=prometheus.text(self.registry), headers={"Content-Type": prometheus.CONTENT_TYPE})

    async def metrics(self, request: web.Request) -> web.Response:
        return _json(200, self.reporter.gauges() if self.reporter else {})

    async def cloudevent(self, request: web.Request) -> web.Response:
        """A knob.apply from the broker: apply it and answer with knob.applied or knob.failed."""
        try:
            (event,) = from_http(request.headers, await request.read())
        except (MalformedEvent, ValueError) as exc:
            return _json(400, {"error": str(exc)})
        if event.type != catalogue.KnobApply.event_type:
            return web.Response(status=202)  # not ours to act on
        try:
            data = catalogue.parse_data(event)
        except (ValidationError, ValueError) as exc:
            return _json(422, {"error": f"invalid {event.type}: {exc}"})  # permanent: not retried
        assert isinstance(data, catalogue.KnobApply)
        if data.node != self.shim.node:
            return _json(422, {"error": f"this is node {self.shim.node}, the command is for {data.node}"})
        verdict = self.guard.check(event)
        if not verdict.allowed:  # changes nothing; audited; 403: not retried, the broker dead-letters it
            self.applies.add(self.shim.node, data.knob, "refused")
            if self.reporter is not None:
                await self.reporter.announce(refusal(f"node-shim-{self.shim.node}", event, verdict))
            return _json(403, {"error": f"refused: {verdict.rule}: {verdict.reason}", "rule": verdict.rule})
        reply: catalogue.EventData
        with tracing.handling(event.attributes, data.knob, label="knob apply", extra={
                "mapemesh.node": data.node, "mapemesh.knob": data.knob, "mapemesh.plan_id": data.plan_id}):
            try:
                applied = await self._apply(data.knob, data.command, requested_by=data.requested_by,
                                                plan_id=data.plan_id)
            except KnobError as exc:
                reply = catalogue.KnobFailed(node=data.node, knob=data.knob, request=event.id, plan_id=data.plan_id,
                                             code=exc.code, error=str(exc) or type(exc).__name__,
                                             rolled_back=exc.rolled_back)
            else:
                reply = catalogue.KnobApplied(node=data.node, knob=data.knob, request=event.id, plan_id=data.plan_id,
                                              before=applied.before, after=applied.after, noop=applied.noop)
            out = catalogue.make_event(reply, f"/mapemesh/node-shim/{self.shim.node}", subject=data.node,
                                       extensions={"node": data.node})
            tracing.stamp(out.attributes)  # the knob's result is the apply's child
        # signed by this node's shim: the trust function counts only results their node's agent reported
        headers, body = to_binary(sign_as(out, dns_name("node-shim", self.shim.node), self.guard.root))
        return web.Response(status=200, headers=headers, body=body)
