"""The telemetry SDK for application components (the seed's section 2.7): two calls.

    from mapemesh import telemetry

    telemetry.push("latency_ms", 12.5, labels={"route": "/buy"}, asset="shop")    # a sample, as a CloudEvent
    telemetry.get("latency_ms", asset="shop", window=60)                          # [(time, value), ...]

| call                | goes                                                                                      |
|---------------------|-------------------------------------------------------------------------------------------|
| `push` / `apush`    | an `io.mapemesh.telemetry.reported.v1` event to the broker: `K_SINK` (inside a function,  |
|                     | or a SinkBinding's), else `MAPEMESH_BROKER_URL`, else the broker a running `mapemesh up`  |
|                     | recorded in MAPEMESH_DATA; the monitor stores it and the loop reacts as to a node's own   |
| `get` / `aget`      | the samples of the last `window` seconds, oldest first: from the state store inside a     |
|                     | function (MAPEMESH_STATE), else the API (`GET /telemetry/{asset}`) at MAPEMESH_API_URL     |
|                     | with MAPEMESH_API_TOKEN, else the API recorded in MAPEMESH_DATA with its token             |

`asset` defaults to MAPEMESH_TELEMETRY_ASSET, else the Knative Service (`K_SERVICE`); `asset_kind` to
`component`. Bad input (an empty name, a value that is not a finite number) is a ValueError and sends nothing; a
broker or API that does not answer is a `TelemetryError` (the sample was not accepted). `push` blocks for one
request: inside an async handler, `await apush(...)`.
"""

from __future__ import annotations

import math
from typing import Any

import httpx

from mapemesh import endpoints, settings, tokens
from mapemesh import events as catalogue
from mapemesh.eventing.binding import to_binary
from mapemesh.eventing.cloudevent import CloudEvent
from mapemesh.identity.tokens import auth_headers

SOURCE = "/mapemesh/telemetry-sdk"
TIMEOUT_S = 5.0
DEFAULT_WINDOW_S = 300.0


class TelemetryError(RuntimeError):
    """The broker or the API did not take or give the telemetry."""


def _asset(asset: str | None) -> str:
    s = settings.current()
    found = asset or s.telemetry_asset or s.k_service
    if not found:
        raise ValueError("name the asset the sample is about (asset=...), or set MAPEMESH_TELEMETRY_ASSET")
    return found


def sample(name: str, value: float, *, labels: dict[str, str] | None = None, asset: str | None = None,
           asset_kind: str = "component", unit: str | None = None) -> CloudEvent:
    """The event `push` sends (validated: a ValueError for bad input)."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"telemetry value of {name!r} must be a finite number, got {value!r}")
    data = catalogue.TelemetryReported(asset=_asset(asset), asset_kind=asset_kind,  # type: ignore[arg-type]
                                       metrics=[catalogue.Metric(name=name, value=float(value), unit=unit,
                                                                 labels=dict(labels or {}))])
    event = catalogue.make_event(data, SOURCE, subject=data.asset)
    from mapemesh import tracing

    tracing.stamp(event.attributes)  # pushed while handling an event: in its trace
    return event


def broker_url() -> str:
    """Where `push` posts: K_SINK, MAPEMESH_BROKER_URL's default broker, or the running mesh's."""
    s = settings.current()
    if s.sink:
        return s.sink
    found = endpoints.read(s.data).get("broker")
    if not found:
        raise TelemetryError("no broker: set K_SINK or MAPEMESH_BROKER_URL, or MAPEMESH_DATA to a running mesh's "
                             "data directory")
    return found.rstrip("/") + "/default/default"


def push(name: str, value: float, *, labels: dict[str, str] | None = None, asset: str | None = None,
         asset_kind: str = "component", unit: str | None = None) -> str:
    """Send one sample to the mesh; its event id. Blocks for the request (see `apush`)."""
    event = sample(name, value, labels=labels, asset=asset, asset_kind=asset_kind, unit=unit)
    headers, body = to_binary(event)
    url = broker_url()
    headers.update(auth_headers(url))  # this process's identity (MAPEMESH_IDENTITY), if it has one
    try:
        response = httpx.post(url, headers=headers, content=body, timeout=TIMEOUT_S)
    except httpx.HTTPError as exc:
        raise TelemetryError(f"the broker at {url} does not answer: {exc}") from None
    if not 200 <= response.status_code < 300:
        raise TelemetryError(f"the broker at {url} refused the sample: {response.status_code} {response.text[:200]}")
    return event.id


async def apush(name: str, value: float, *, labels: dict[str, str] | None = None, asset: str | None = None,
                asset_kind: str = "component", unit: str | None = None) -> str:
    """`push` for async code (the sink's client and retries, one request)."""
    from mapemesh.serving.sink import SinkError, publish

    event = sample(name, value, labels=labels, asset=asset, asset_kind=asset_kind, unit=unit)
    try:
        await publish([event], timeout_s=TIMEOUT_S, url=broker_url())
    except SinkError as exc:
        raise TelemetryError(str(exc)) from None
    return event.id


def _window(window: float) -> float:
    if isinstance(window, bool) or not isinstance(window, int | float) or not 0 < window <= 86_400 * 31:
        raise ValueError(f"window must be a number of seconds in (0, 31 days], got {window!r}")
    return float(window)


def get(name: str, *, asset: str | None = None, window: float = DEFAULT_WINDOW_S) -> list[tuple[float, float]]:
    """The asset's samples of `name` in the last `window` seconds, oldest first ([] when there are none)."""
    asset, window = _asset(asset), _window(window)
    s = settings.current()
    if "state" in s.given and not s.api_url:  # inside a function
        import time

        from mapemesh.serving.handlers import environment_store

        samples = environment_store().telemetry(asset, [name], since=time.time() - window)
        return [(float(t), float(v)) for t, v in samples.get(name, [])]
    url, headers = _api()
    try:
        response = httpx.get(f"{url}/telemetry/{asset}", params={"metric": name, "window": window}, headers=headers,
                             timeout=TIMEOUT_S)
    except httpx.HTTPError as exc:
        raise TelemetryError(f"the API at {url} does not answer: {exc}") from None
    if response.status_code == 404:
        return []
    if response.status_code != 200:
        raise TelemetryError(f"the API at {url} answered {response.status_code}: {response.text[:200]}")
    doc: dict[str, Any] = response.json()
    return [(float(t), float(v)) for t, v in doc["metrics"].get(name, [])]


async def aget(name: str, *, asset: str | None = None, window: float = DEFAULT_WINDOW_S
               ) -> list[tuple[float, float]]:
    """`get` for async code (in a worker thread)."""
    import asyncio

    return await asyncio.to_thread(get, name, asset=asset, window=window)


def _api() -> tuple[str, dict[str, str]]:
    s = settings.current()
    url, token = s.api_url, s.api_token
    if url:
        if not token:
            raise TelemetryError("MAPEMESH_API_URL is set but MAPEMESH_API_TOKEN is not")
        return url.rstrip("/"), {"Authorization": f"Bearer {token}"}
    data = s.data
    found = endpoints.read(data).get("api")
    token = tokens.read(data, "api.token") or ""
    if not found or not token:
        raise TelemetryError(f"no API: set MAPEMESH_API_URL and MAPEMESH_API_TOKEN, or MAPEMESH_DATA to a running "
                             f"mesh's data directory (not {data})")
    return found.rstrip("/"), {"Authorization": f"Bearer {token}"}


__all__ = ["TelemetryError", "aget", "apush", "broker_url", "get", "push", "sample"]
