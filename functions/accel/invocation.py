"""What every accelerated function shares: the request/reply events, and per-invocation telemetry.

A request is `io.mapemesh.accel.requested.v1` (extension `function` names the function); the reply is
`io.mapemesh.accel.replied.v1` with the result, the backend, plugin and device that served it and the latency,
or the error. Bad input and failed accelerated calls are answered with the error (not retried: the same input
fails again). Each process sums its invocations and reports them every `MAPEMESH_ACCEL_REPORT_S` seconds as
telemetry of the function (asset kind `function`): invocations, errors and latency (mean, max) per plugin and
device, like the node shim's telemetry; and as OpenTelemetry instruments.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from opentelemetry import metrics

from mapemesh import events as catalogue
from mapemesh.eventing.cloudevent import CloudEvent
from mapemesh.serving.handlers import Stage
from mapemesh.settings import current

log = logging.getLogger(__name__)
SOURCE = "/mapemesh/accel/"
REPORT_S = current().accel_report_s
_meter = metrics.get_meter("mapemesh.accel")
_latency = _meter.create_histogram("accel_invocation_latency", unit="ms",
                                   description="Latency of accelerated function invocations")
_errors = _meter.create_counter("accel_invocation_errors", description="Failed accelerated function invocations")


class Stats:
    """Invocations since the last report, per (plugin, device)."""

    def __init__(self) -> None:
        self.rows: dict[tuple[str, str], dict[str, float]] = {}

    def add(self, plugin: str, device: str, latency_ms: float, failed: bool) -> None:
        row = self.rows.setdefault((plugin, device), {"n": 0, "errors": 0, "sum": 0.0, "max": 0.0})
        row["n"] += 1
        row["errors"] += int(failed)
        row["sum"] += latency_ms
        row["max"] = max(row["max"], latency_ms)

    def take(self) -> list[catalogue.Metric]:
        out = []
        for (plugin, device), row in self.rows.items():
            labels = {"plugin": plugin, "device": device}
            out += [catalogue.Metric(name="accel_invocations", value=row["n"], labels=labels),
                    catalogue.Metric(name="accel_errors", value=row["errors"], labels=labels),
                    catalogue.Metric(name="accel_latency_ms_mean", value=round(row["sum"] / row["n"], 3), unit="ms",
                                     labels=labels),
                    catalogue.Metric(name="accel_latency_ms_max", value=round(row["max"], 3), unit="ms",
                                     labels=labels)]
        self.rows = {}
        return out


STATS: dict[str, Stats] = {}


def function(name: str, fn: Callable[[dict[str, Any]], dict[str, Any]]) -> Stage:
    """The accelerated function `name`: each request's data through `fn` (a dict in, the result dict out), its
    invocations reported while a process runs."""
    stats = STATS.setdefault(name, Stats())

    def handle(request: catalogue.AccelRequested, *, event: CloudEvent) -> CloudEvent:
        started = time.perf_counter()
        result: dict[str, Any] = {}
        error = None
        try:
            result = fn({"input": request.input})
        except Exception as exc:  # the caller gets the error in the reply
            error = f"{type(exc).__name__}: {exc}"
        latency = round((time.perf_counter() - started) * 1000, 3)
        plugin = str(result.pop("plugin", current().vaccel_plugin))
        device = str(result.pop("device", "none"))
        backend = str(result.pop("backend", "none"))
        for key in ("op", "latency_ms"):
            result.pop(key, None)
        stats.add(plugin, device, latency, error is not None)
        _latency.record(latency, {"function": name, "plugin": plugin, "device": device})
        if error is not None:
            _errors.add(1, {"function": name, "plugin": plugin})
        reply = catalogue.AccelReplied(function=name, request=event.id, result=result, backend=backend,
                                       plugin=plugin, device=device, latency_ms=latency, error=error)
        return catalogue.make_event(reply, SOURCE + name, subject=name, extensions={"function": name})

    return Stage(f"accel:{name}", SOURCE + name, {catalogue.AccelRequested.event_type: handle},
                 on_start=reporter(name))


def reporter(name: str) -> Callable[[], Any]:
    """The `on_start` of function `name`: report its invocations every REPORT_S seconds while it runs."""

    async def start() -> None:
        asyncio.get_running_loop().create_task(_report_forever(name))

    return start


async def _report_forever(name: str) -> None:
    from mapemesh.serving import sink

    stats = STATS.setdefault(name, Stats())
    while True:
        await asyncio.sleep(REPORT_S)
        samples = stats.take()
        if not samples:
            continue
        event = catalogue.make_event(catalogue.TelemetryReported(asset=name, asset_kind="function", metrics=samples),
                                     SOURCE + name, subject=name)
        try:
            await sink.publish([event])
        except sink.SinkError as exc:
            log.warning("function %s: invocation telemetry not reported: %s", name, exc)
