"""The northbound API: the MLSysOps routes (`/apps`, `/ml`, `/infra`, `/manage`) over the mesh.

Every action becomes a CloudEvent posted to the broker (`app.submitted`, `app.removed`, `infra.registered`,
`infra.unregistered`, `mode.changed`); the monitor function records it and the loop takes it from there. Every
read comes from the state store. The dashboard's reads are in `mapemesh.api.dashboard`, its page in
`mapemesh.api.page`. Each route but `/healthz`, the OpenAPI document and the page's static files needs
`Authorization: Bearer <token>`, the token in `DATA_DIR/api.token` (`401` without it). Bad input gets `422`
with the field path (FastAPI's `{"detail": [{"loc": [...], "msg": ..., "type": ...}]}`), unknown ids `404`,
an id taken by something else `409`, a broker that does not take the event `503`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import re
import time
import typing
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import httpx
import orjson
import yaml
from fastapi import APIRouter, Depends, FastAPI, HTTPException, Query, Request
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field

from mapemesh import __version__, descriptions, metrics, tokens, yamlload
from mapemesh import events as catalogue
from mapemesh.api import dashboard, page, views
from mapemesh.state import StateStore
from mapemesh.tls import client_context

log = logging.getLogger(__name__)
TOKEN_FILE = "api.token"
SOURCE = "/mapemesh/api"
MAX_FETCH_BYTES = 1 << 20
"""The largest description the API fetches from a `uri`."""
INFRA_KINDS = {"MLSysOpsNode": ("node", "name"), "MLSysOpsCluster": ("cluster", "cluster_id"),
               "MLSysOpsContinuum": ("continuum", "continuum_id")}
PENDING_S = 120.0
"""How long a submission the monitor has not recorded yet is reported as `submitted` (then it is forgotten)."""
_ID = r"^[A-Za-z0-9]([-A-Za-z0-9_.]{0,251}[A-Za-z0-9])?$"
"""Infrastructure ids: letters, digits, '-', '_', '.' (they appear in URLs and in the state store's keys)."""
MODES = {"0": "heuristic", "1": "ml", "heuristic": "heuristic", "ml": "ml"}
"""`PUT /manage/mode/{mode}`: MLSysOps sends 0 (heuristic) or 1 (ML)."""
OVERRIDES = {"on": True, "off": False}
"""`PUT /manage/override/{state}`."""


@dataclass(slots=True)
class ApiContext:
    """What the routes use: the state store, the token, where events go, the event log for `/events/stream`."""

    store: StateStore
    token: str
    broker: str
    """The broker ingress URL events are posted to (BROKER/default/default)."""
    event_log: Path
    ping: Callable[[], Awaitable[dict[str, Any]]] | None = None
    """The mesh's components and whether they answer (for `/manage/ping`)."""
    data: Path | None = None
    """The data directory, whose endpoints.json says where the embedded mesh's components are (for
    `/dashboard/now`); None: none beside this API."""
    submit_wait_s: float = 5.0
    """How long a submission waits for the monitor to record it before answering (accepted either way)."""
    pending: dict[str, tuple[str, float]] = field(default_factory=dict)
    """Submissions the broker took and the monitor has not recorded yet: id -> (kind, when)."""
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    closing: asyncio.Event = field(default_factory=asyncio.Event)
    """Set when the API stops: open event streams end."""


# -- request bodies ---------------------------------------------------------------------------------------------

class DescriptionBody(BaseModel):
    """An MLSysOps description, inline (`yaml`: the document, or its YAML text) or fetched from `uri`."""

    model_config = ConfigDict(extra="forbid")
    yaml: dict[str, Any] | str | None = Field(None, description="The description: a JSON object, or YAML text.")
    uri: str | None = Field(None, description="An http(s) URL the API fetches the description (YAML or JSON) from.")


class ModelBody(DescriptionBody):
    """An ML model's serving application (an MLSysOpsApp description), with the model's id."""

    model_uid: str | None = Field(None, min_length=1, max_length=63,
                                  description="The model's id (default: the description's name).")


class Accepted(BaseModel):
    """An action the broker took: the event it became."""

    status: Literal["success"] = "success"
    message: str
    event_id: str


class AppAccepted(Accepted):
    app_id: str
    state: str = Field(description="`queued` once the mesh has recorded it; `submitted` when it had not yet.")


class ModelAccepted(Accepted):
    model_uid: str
    state: str


class InfraAccepted(Accepted):
    infra_id: str
    kind: str


class ModeAccepted(Accepted):
    mode: str


# -- helpers ----------------------------------------------------------------------------------------------------

def _invalid(loc: list[int | str], msg: str, kind: str = "value_error") -> RequestValidationError:
    return RequestValidationError([{"loc": tuple(loc), "msg": msg, "type": kind}])


def _not_found(what: str, ident: str) -> HTTPException:
    return HTTPException(404, f"{what} {ident!r} is not known to the mesh")


def _ctx(request: Request) -> ApiContext:
    ctx: ApiContext = request.app.state.ctx
    return ctx


async def _document(body: DescriptionBody) -> tuple[Any, str]:
    """The description the body carries (parsed), and the body field it came from."""
    if (body.yaml is None) == (body.uri is None):
        raise _invalid(["body"], "give exactly one of `yaml` (the description) and `uri` (where to fetch it)")
    if body.uri is not None:
        if not body.uri.startswith(("http://", "https://")):
            raise _invalid(["body", "uri"], "only http:// and https:// URLs are fetched")
        try:
            async with httpx.AsyncClient(timeout=5, follow_redirects=True, verify=client_context()) as http, \
                    http.stream("GET", body.uri) as response:
                if response.status_code != 200:
                    raise _invalid(["body", "uri"], f"fetching {body.uri} answered {response.status_code}")
                chunks, size = [], 0
                async for chunk in response.aiter_bytes():
                    size += len(chunk)
                    if size > MAX_FETCH_BYTES:
                        raise _invalid(["body", "uri"], f"{body.uri} is larger than {MAX_FETCH_BYTES} bytes")
                    chunks.append(chunk)
        except httpx.HTTPError as exc:
            raise _invalid(["body", "uri"], f"fetching {body.uri} failed: {exc}") from None
        text: Any = b"".join(chunks).decode("utf-8", "replace")
        where = "uri"
    else:
        text, where = body.yaml, "yaml"
    if isinstance(text, str):
        try:
            text = yamlload.load(text)  # libyaml: a nesting-depth limit, and ~1000x faster on deep input
        except yaml.YAMLError as exc:
            raise _invalid(["body", where], f"not YAML: {exc}") from None
        except RecursionError:
            raise _invalid(["body", where], "the document is nested too deeply") from None
    return text, where


def _validated(doc: Any, field: str, kind: str | None) -> Any:
    """The description as its model; 422 with each problem's field path otherwise."""
    try:
        return descriptions.load(doc, kind)
    except descriptions.DescriptionError as exc:
        raise RequestValidationError([{"loc": ("body", field, *loc), "msg": msg, "type": kind_}
                                      for loc, msg, kind_ in exc.errors]) from None


async def _publish(ctx: ApiContext, data: catalogue.EventData, subject: str) -> str:
    from mapemesh.serving import sink

    event = catalogue.make_event(data, SOURCE, subject=subject)
    try:
        await sink.publish([event], url=ctx.broker, identity="api")
    except sink.SinkError as exc:
        raise HTTPException(503, f"the broker did not take the event: {exc}") from None
    return event.id


async def _recorded(ctx: ApiContext, kind: str, key: str, present: bool) -> bool:
    """Wait (up to ctx.submit_wait_s) until the monitor has recorded (or removed) `key`; whether it has."""
    deadline = time.monotonic() + ctx.submit_wait_s
    while True:
        found = await asyncio.to_thread(ctx.store.get, kind, key)
        if (found is not None) == present:
            return True
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(0.05)


def _expire(ctx: ApiContext) -> None:
    """Forget submissions older than PENDING_S that the monitor never recorded."""
    now = time.time()
    for ident in [k for k, (_kind, at) in ctx.pending.items() if now - at > PENDING_S]:
        del ctx.pending[ident]


_NAME = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$"


def _app_name(model: Any, field: str, override: tuple[str, str | None] | None = None) -> str:
    """The application id: a DNS-1123 label (it names Kubernetes objects and labels)."""
    loc: list[int | str] = ["body", field, "MLSysOpsApp", "name"]
    name = model.MLSysOpsApp.name
    if override is not None and override[1] is not None:
        loc, name = ["body", override[0]], override[1]
    if not re.fullmatch(_NAME, name):
        raise _invalid(loc, f"{name!r} is not a DNS-1123 label (lowercase letters, digits and '-', at most 63)")
    return name


# -- the app ----------------------------------------------------------------------------------------------------

_bearer = HTTPBearer(auto_error=False, scheme_name="token",
                     description="The token in DATA_DIR/api.token (made by `mapemesh up`).")


def _authorized(request: Request,
                credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]) -> None:
    header = f"Bearer {credentials.credentials}" if credentials is not None else None
    if not tokens.matches(header, _ctx(request).token):
        raise HTTPException(401, "a bearer token is required: `Authorization: Bearer <DATA_DIR/api.token>`",
                            headers={"WWW-Authenticate": "Bearer"})


AppId = Annotated[str, PathParam(min_length=1, max_length=253, description="The application's name.")]
ModelUid = Annotated[str, PathParam(min_length=1, max_length=253, description="The model's id.")]
InfraId = Annotated[str, PathParam(min_length=1, max_length=253, description="A node, cluster or continuum id.")]


def create_app(ctx: ApiContext) -> FastAPI:
    """The FastAPI application over `ctx`."""
    app = FastAPI(title="mapemesh northbound API", version=__version__,
                  description="MLSysOps-compatible routes for operators and external tools. Actions become "
                              "CloudEvents into the broker; reads come from the state store.")
    app.state.ctx = ctx

    @app.exception_handler(RecursionError)
    async def too_deep(request: Request, exc: RecursionError) -> JSONResponse:
        return JSONResponse({"detail": [{"loc": ["body"], "msg": "the document is nested too deeply",
                                         "type": "value_error"}]}, status_code=422)

    secured = [Depends(_authorized)]
    apps = APIRouter(prefix="/apps", tags=["Apps"], dependencies=secured)
    ml = APIRouter(prefix="/ml", tags=["ML-models"], dependencies=secured)
    infra = APIRouter(prefix="/infra", tags=["Infra"], dependencies=secured)
    manage = APIRouter(prefix="/manage", tags=["Management"], dependencies=secured)
    stream = APIRouter(tags=["Events"], dependencies=secured)
    telemetry = APIRouter(prefix="/telemetry", tags=["Telemetry"], dependencies=secured)

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    # -- Prometheus: requests by route and answer, plans by status (no token: counts only) --

    requests = metrics.Counts("mapemesh_api_request_count", "Requests the API answered", ("route", "code"))

    def plans_by_status() -> dict[tuple[str, ...], float]:
        counts: dict[tuple[str, ...], float] = {(status,): 0 for status in typing.get_args(catalogue.PlanStatus)}
        for plan in ctx.store.list("plans").values():
            key = (str(plan.value.get("status")),)
            counts[key] = counts.get(key, 0) + 1
        return counts

    scraped = metrics.registry(requests, metrics.Gauges("mapemesh_plans", "Plans in the state store by status",
                                                        ("status",), plans_by_status))

    @app.middleware("http")
    async def count(request: Request, call_next: Callable[[Request], Awaitable[Any]]) -> Any:
        response = await call_next(request)
        route = request.scope.get("route")
        requests.add(getattr(route, "path", "unmatched"), str(response.status_code))
        return response

    @app.get("/metrics", include_in_schema=False)
    async def prometheus() -> Response:
        body = await asyncio.to_thread(metrics.text, scraped)
        return Response(body, headers={"Content-Type": metrics.CONTENT_TYPE})

    # -- applications and ML models (both are applications in the store; `kind` tells them apart) --

    async def submit(body: DescriptionBody, kind: str, override: tuple[str, str | None] | None) -> tuple[str, str,
                                                                                                         str]:
        doc, where = await _document(body)
        model = _validated(doc, where, "MLSysOpsApp")
        ident = _app_name(model, where, override)
        description = model.model_dump(mode="json", exclude_none=True)
        async with ctx.lock:  # one submission of a name at a time: the second one sees the first
            _expire(ctx)
            existing = await asyncio.to_thread(ctx.store.get, "applications", ident)
            taken = existing.value.get("kind", "application") if existing is not None else \
                ctx.pending.get(ident, (None, 0.0))[0]
            if taken is not None:
                what = "an ML model" if taken == "ml_model" else "an application"
                raise HTTPException(409, f"{ident!r} is {what} in the mesh already: remove it first")
            event_id = await _publish(ctx, catalogue.AppSubmitted(app_id=ident, description=description, kind=kind),
                                      ident)
            ctx.pending[ident] = (kind, time.time())
        recorded = await _recorded(ctx, "applications", ident, True)
        if recorded:
            ctx.pending.pop(ident, None)
        return ident, event_id, "queued" if recorded else "submitted"

    async def entry(ident: str, kind: str) -> dict[str, Any]:
        found = await asyncio.to_thread(ctx.store.get, "applications", ident)
        if found is None or found.value.get("kind", "application") != kind:
            raise _not_found("application" if kind == "application" else "ML model", ident)
        return found.value

    async def status_of(ident: str, kind: str) -> dict[str, Any]:
        """The state of an application or model; `submitted` while the monitor has not recorded it yet."""
        _expire(ctx)
        found = await asyncio.to_thread(ctx.store.get, "applications", ident)
        if found is None and ctx.pending.get(ident, (None, 0.0))[0] == kind:
            return {"app_id": ident, "kind": kind, "submitted": ctx.pending[ident][1], "status": "submitted",
                    "message": "the broker took it; the monitor has not recorded it yet"}
        if found is not None:
            ctx.pending.pop(ident, None)
        return await asyncio.to_thread(views.status, ctx.store, ident, await entry(ident, kind))

    async def remove(ident: str, kind: str) -> str:
        await entry(ident, kind)
        return await _publish(ctx, catalogue.AppRemoved(app_id=ident), ident)

    @apps.post("/deploy", status_code=202, response_model=AppAccepted)
    async def deploy_app(body: DescriptionBody) -> AppAccepted:
        """Submit an MLSysOps application description (`yaml`, or a `uri` to fetch it from)."""
        ident, event_id, state = await submit(body, "application", None)
        return AppAccepted(app_id=ident, state=state, event_id=event_id, message=f"application {ident} submitted")

    @apps.get("/list_all/")
    async def list_apps() -> dict[str, Any]:
        """Every application and its state (`System_status`, as MLSysOps answers), and a row per application."""
        found = await asyncio.to_thread(views.entries, ctx.store, "application")
        rows = await asyncio.to_thread(views.statuses, ctx.store, found)
        return {"System_status": {r["app_id"]: r["status"] for r in rows}, "apps": rows}

    @apps.get("/status/{app_id}")
    async def app_status(app_id: AppId) -> dict[str, Any]:
        """submitted, queued, planned, deploying, deployed or failed, with why."""
        return await status_of(app_id, "application")

    async def app_details(app_id: AppId) -> dict[str, Any]:
        return await asyncio.to_thread(views.details, ctx.store, app_id, await entry(app_id, "application"))

    apps.add_api_route("/details/{app_id}", app_details, methods=["GET"], summary="Application details",
                       description="The state, the description, where each component runs, and the newest plans.")
    apps.add_api_route("/apps/details/{app_id}", app_details, methods=["GET"], summary="Application details (MLSysOps "
                       "path)", description="The same as `/apps/details/{app_id}`, at the path MLSysOps uses.")

    @apps.get("/performance/{app_id}")
    async def app_performance(app_id: AppId) -> dict[str, Any]:
        """The application's QoS metrics from telemetry (latest, mean, min, max) against their targets."""
        return await asyncio.to_thread(views.performance, ctx.store, app_id, await entry(app_id, "application"))

    @apps.delete("/remove/{app_id}", status_code=202, response_model=Accepted)
    async def remove_app(app_id: AppId) -> Accepted:
        """Remove the application: the deploy function deletes what it deployed."""
        event_id = await remove(app_id, "application")
        return Accepted(event_id=event_id, message=f"removal of application {app_id} requested")

    @ml.post("/deploy_ml", status_code=202, response_model=ModelAccepted)
    async def deploy_ml(body: ModelBody) -> ModelAccepted:
        """Deploy an ML model's serving application (an MLSysOpsApp description), placed like any application."""
        ident, event_id, state = await submit(body, "ml_model", ("model_uid", body.model_uid))
        return ModelAccepted(model_uid=ident, state=state, event_id=event_id, message=f"ML model {ident} submitted")

    @ml.get("/list_all/")
    async def list_models() -> dict[str, Any]:
        """Every ML model and its state."""
        found = await asyncio.to_thread(views.entries, ctx.store, "ml_model")
        rows = await asyncio.to_thread(views.statuses, ctx.store, found)
        return {"System_status": {r["app_id"]: r["status"] for r in rows},
                "models": [{"model_uid": r.pop("app_id"), **r} for r in rows]}

    @ml.get("/status/{model_uid}")
    async def ml_status(model_uid: ModelUid) -> dict[str, Any]:
        """The model's deployment state."""
        row = await status_of(model_uid, "ml_model")
        return {"model_uid": row.pop("app_id"), **row}

    @ml.delete("/remove/{model_uid}", status_code=202, response_model=Accepted)
    async def remove_ml(model_uid: ModelUid) -> Accepted:
        """Remove the ML model's deployment."""
        event_id = await remove(model_uid, "ml_model")
        return Accepted(event_id=event_id, message=f"removal of ML model {model_uid} requested")

    # -- infrastructure --

    @infra.post("/register", status_code=202, response_model=InfraAccepted)
    async def register_infra(body: DescriptionBody) -> InfraAccepted:
        """Register (or update) an MLSysOps node, cluster or continuum description."""
        doc, where = await _document(body)
        top = next((k for k in INFRA_KINDS if isinstance(doc, dict) and k in doc), None)
        if top is None:
            raise _invalid(["body", where], f"an infrastructure description needs one of {', '.join(INFRA_KINDS)} "
                                            "at the top")
        model = _validated(doc, where, top)
        kind, id_field = INFRA_KINDS[top]
        ident = str(getattr(getattr(model, top), id_field))
        if not re.fullmatch(_ID, ident):
            raise _invalid(["body", where, top, id_field], f"{ident!r} cannot be an id: letters, digits, '-', '_' "
                                                           "and '.', starting and ending with a letter or digit")
        description = model.model_dump(mode="json", exclude_none=True)
        event_id = await _publish(ctx, catalogue.InfraRegistered(infra_id=ident, kind=kind,  # type: ignore[arg-type]
                                                                 description=description), ident)
        return InfraAccepted(infra_id=ident, kind=kind, event_id=event_id, message=f"{kind} {ident} registered")

    @infra.get("/list/")
    async def list_infra(kind: Annotated[Literal["node", "cluster", "continuum"] | None,
                                         Query(description="Only this kind.")] = None) -> dict[str, Any]:
        """The registered nodes, clusters and continuum (each with its description)."""
        found = await asyncio.to_thread(ctx.store.list, "infrastructure")
        rows = [{"infra_id": k, "kind": v.value.get("kind"), "description": v.value.get("description")}
                for k, v in sorted(found.items()) if kind is None or v.value.get("kind") == kind]
        return {"infrastructure": rows}

    @infra.get("/trust/")
    async def list_trust() -> dict[str, Any]:
        """mapemesh: each node's and cluster's reputation credit (seed 7.1) and the trust indices it is made of,
        as the trust function last computed them."""
        found = await asyncio.to_thread(ctx.store.list, "trust")
        rows = [{"infra_id": k, "kind": v.value.get("asset_kind"), "credit": v.value.get("credit"),
                 "indices": v.value.get("values") or {}, "updated": v.value.get("updated")}
                for k, v in sorted(found.items())]
        return {"trust": rows}

    @infra.delete("/unregister/{infra_id}", status_code=202, response_model=Accepted)
    async def unregister_infra(infra_id: InfraId) -> Accepted:
        """Unregister a node, cluster or continuum."""
        if await asyncio.to_thread(ctx.store.get, "infrastructure", infra_id) is None:
            raise _not_found("infrastructure", infra_id)
        event_id = await _publish(ctx, catalogue.InfraUnregistered(infra_id=infra_id), infra_id)
        return Accepted(event_id=event_id, message=f"{infra_id} unregistered")

    # -- management --

    @manage.get("/ping")
    async def ping() -> dict[str, Any]:
        """Whether the mesh answers: the broker, the state store and the function host."""
        response: dict[str, Any] = {"store": "ok"}
        try:
            await asyncio.to_thread(ctx.store.get, "settings", "mode")
        except Exception as exc:
            raise HTTPException(503, {"status": "error", "message": f"the state store does not answer: {exc}"}) \
                from None
        if ctx.ping is not None:
            response.update(await ctx.ping())
        failed = sorted(k for k, v in response.items() if v != "ok")
        if failed:
            raise HTTPException(503, {"status": "error", "message": f"not answering: {', '.join(failed)}",
                                      "response": response})
        return {"status": "success", "message": "mapemesh alive", "response": response}

    @manage.get("/mode")
    async def get_mode() -> dict[str, Any]:
        """The management mode (heuristic or ml) and the manual override."""
        found = await asyncio.to_thread(ctx.store.get, "settings", "mode")
        doc = found.value if found else {}
        return {"mode": doc.get("mode", "heuristic"), "manual_override": bool(doc.get("manual_override", False))}

    async def change_mode(mode: str | None, override: bool | None) -> tuple[str, str]:
        """Publish `mode.changed` with the given mode or override (None: as it is now); the mode and the event id."""
        found = await asyncio.to_thread(ctx.store.get, "settings", "mode")
        doc = found.value if found else {}
        previous = doc.get("mode", "heuristic")
        chosen = previous if mode is None else mode
        manual = bool(doc.get("manual_override", False)) if override is None else override
        event_id = await _publish(ctx, catalogue.ModeChanged(mode=chosen, manual_override=manual,  # type: ignore[arg-type]
                                                             previous=previous), "continuum")
        return chosen, event_id

    @manage.put("/mode/{mode}", response_model=ModeAccepted)
    async def set_mode(mode: Annotated[Literal["0", "1", "heuristic", "ml"],
                                       PathParam(description="0 or heuristic; 1 or ml.")]) -> ModeAccepted:
        """Switch the management mode: heuristic (0) or ML (1) policies."""
        chosen, event_id = await change_mode(MODES[mode], None)
        return ModeAccepted(mode=chosen, event_id=event_id, message=f"mode {chosen} sent to the mesh")

    @manage.put("/override/{state}", response_model=ModeAccepted)
    async def set_override(state: Annotated[Literal["on", "off"],
                                            PathParam(description="on: the loop makes no plans; off: it does.")]
                           ) -> ModeAccepted:
        """mapemesh: switch the manual override on (the policies make no plans; operators act by hand) or off; the
        mode stays as it is."""
        mode, event_id = await change_mode(None, OVERRIDES[state])
        return ModeAccepted(mode=mode, event_id=event_id, message=f"manual override {state} sent to the mesh")

    # -- the mesh's events, live --

    @stream.get("/events/stream", response_class=StreamingResponse,
                responses={200: {"content": {"text/event-stream": {}},
                                 "description": "Server-sent events: `id` the log position, `event` the "
                                                "CloudEvent type, `data` the structured CloudEvent (JSON)."}})
    async def events_stream(
            request: Request,
            after: Annotated[int | None, Query(ge=0, le=2**62, description="Start after this log position "
                                                                          "(default: now; a `Last-Event-ID` header "
                                                                          "wins).")] = None,
            type_prefix: Annotated[str | None, Query(alias="type", max_length=200,
                                                     description="Only event types starting with this.")] = None,
            limit: Annotated[int | None, Query(ge=1, le=100_000, description="Stop after this many events.")] = None,
            timeout_s: Annotated[float | None, Query(gt=0, le=86_400, description="Stop after this long.")] = None,
            tail: Annotated[int | None, Query(ge=1, le=100_000, description="Start this many log positions before "
                                                                           "the end (when neither `after` nor "
                                                                           "`Last-Event-ID` is given).")] = None,
    ) -> StreamingResponse:
        """The mesh's events as they are logged (server-sent events, for live views)."""
        # A reconnecting EventSource sends Last-Event-ID: it wins over the URL's `after`, so it resumes.
        last = (request.headers.get("last-event-id") or "").strip()
        start = int(last) if last.isascii() and last.isdigit() and len(last) <= 18 else after
        return StreamingResponse(_sse(ctx, request, start, type_prefix, limit, timeout_s, tail),
                                 media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

    # -- telemetry: what `mapemesh.telemetry.get` reads --

    @telemetry.get("/{asset:path}")
    async def telemetry_window(
            asset: Annotated[str, PathParam(min_length=1, max_length=253,
                                            description="A node, application (APP) or component (APP/COMPONENT).")],
            metric: Annotated[list[str] | None, Query(description="Only these metrics (repeat it; default: all).")
                              ] = None,
            window: Annotated[float, Query(gt=0, le=31 * 86_400, description="The last this many seconds.")] = 300.0,
    ) -> dict[str, Any]:
        """An asset's telemetry samples within the window: metric -> [[time, value], ...], oldest first."""
        samples = await asyncio.to_thread(ctx.store.telemetry, asset, metric, time.time() - window)
        return {"asset": asset, "window_s": window, "metrics": samples}

    for router in (apps, ml, infra, manage, stream, telemetry):
        app.include_router(router)
    app.include_router(dashboard.router(ctx), dependencies=secured)
    app.include_router(page.router())
    return app


async def _sse(ctx: ApiContext, request: Request, after: int | None, type_prefix: str | None, limit: int | None,
               timeout_s: float | None, tail: int | None = None) -> AsyncIterator[bytes]:
    """Tail the durable event log (read-only) from `after` (None: its end, or `tail` positions before it) as
    server-sent events, until the client goes, `limit` or `timeout_s` is reached, or the API stops."""
    path = ctx.event_log
    from mapemesh.eventing.log import last_seq, open_readonly, read_after

    opened: list[Any] = []  # written on the reader thread only: a connect the client's departure cut off is closed

    def connect() -> Any:
        if path.exists():
            opened.append(open_readonly(path))
        return opened[-1] if opened else None

    def close() -> None:
        for connection in opened:
            connection.close()

    # The connection lives on one thread of its own: a client that goes interrupts the await, not the read the
    # thread is running, so closing it anywhere else could close it under a running query (SQLite then reads freed
    # memory: the API's process crashed with a segfault in libsqlite3 when a page closed its stream).
    reader = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="api-events-stream")
    loop = asyncio.get_running_loop()

    def on_reader(fn: Callable[..., Any], *args: Any) -> Awaitable[Any]:
        return loop.run_in_executor(reader, fn, *args)

    db = None
    try:
        db = await on_reader(connect)
        deadline = loop.time() + timeout_s if timeout_s else None
        sent, last_beat = 0, loop.time()
        yield b": mapemesh events\n\n"
        if after is None:
            after = max(0, (await on_reader(last_seq, db) if db else 0) - (tail or 0))
        while (deadline is None or loop.time() < deadline) and (limit is None or sent < limit) \
                and not ctx.closing.is_set():
            if db is None:
                db = await on_reader(connect)
            rows = await on_reader(read_after, db, after, 500) if db else []
            for logged in rows:
                after = logged.seq
                if type_prefix and not logged.event.type.startswith(type_prefix):
                    continue
                payload = orjson.dumps(logged.event.to_structured())  # JSON: no raw line breaks in it
                kind = logged.event.type.replace("\r", " ").replace("\n", " ")  # the ingress refuses them anyway
                yield b"id: %d\nevent: %s\ndata: %s\n\n" % (logged.seq, kind.encode(), payload)
                sent += 1
                if limit is not None and sent >= limit:
                    return
            if not rows:
                if await request.is_disconnected():
                    return
                if loop.time() - last_beat > 15:
                    last_beat = loop.time()
                    yield b": keep-alive\n\n"
                await asyncio.sleep(0.1)
    finally:  # after whatever read is running, on the same thread
        reader.submit(close)
        reader.shutdown(wait=False)
