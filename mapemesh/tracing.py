"""Distributed tracing through the mesh: the CloudEvents `traceparent` from every cause to its effects.

Every event carries a W3C `traceparent` (the CloudEvents distributed-tracing extension): the ingress gives one to
an event that comes without, starting a trace. Each hop then makes a span whose id is derived from its parent's,
so the causal chain is in the events themselves, whether or not spans are exported:

| hop                      | span (name)          | parent                    | carried on                      |
|--------------------------|----------------------|---------------------------|---------------------------------|
| an event enters          | `ingress {broker}`   | none: a new trace         | the stored event                |
| a Trigger delivers it    | `deliver {trigger}`  | the event's `traceparent` | the delivered copy              |
| a function handles it    | `function {name}`    | the delivery's            | every event the function sends  |
| the node shim applies it | `knob apply {knob}`  | the delivery's            | its `knob.applied` / `failed`   |

Span ids are `derive(parent span id, label)` (a delivery's label is its trigger and the event's id):
`mapemesh trace` rebuilds the chain from the log alone (no collector). With the standard OpenTelemetry
variables (`OTEL_EXPORTER_OTLP_ENDPOINT`, `OTEL_SERVICE_NAME`, `OTEL_TRACES_SAMPLER`, ...) the same spans are
exported over OTLP/HTTP, with those ids; with none set nothing is exported and a hop costs a hash and a string.
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import logging
import os
import re
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)
ATTRIBUTE = "traceparent"
_TRACEPARENT = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")


@dataclass(frozen=True, slots=True)
class Hop:
    """Where an event or an action sits in a trace."""

    trace_id: str
    span_id: str
    sampled: bool = True

    @property
    def traceparent(self) -> str:
        return f"00-{self.trace_id}-{self.span_id}-{'01' if self.sampled else '00'}"

    def child(self, label: str) -> Hop:
        """The hop this one causes, `label` naming it (a trigger, `function`, `shim`)."""
        return Hop(self.trace_id, derive(self.span_id, label), self.sampled)


def delivery(parent: Hop, trigger: str, event_id: str) -> Hop:
    """The hop of one event's delivery through a Trigger: two events one function sent (the same parent span)
    through the same Trigger are two deliveries, so the event's id is part of it."""
    return Hop(parent.trace_id, delivery_span(parent.span_id, trigger, event_id), parent.sampled)


def delivery_span(parent: str, trigger: str, event_id: str) -> str:
    return derive(parent, f"{trigger}\x00{event_id}")


def derive(parent: str, label: str) -> str:
    """A span id from its parent's and a label: the same hop always gets the same id."""
    span = hashlib.sha256(f"{parent}/{label}".encode()).hexdigest()[:16]
    return span if span != "0" * 16 else "0" * 15 + "1"


def parse(value: object) -> Hop | None:
    """The hop in a `traceparent` value (None when absent or not version 00 of W3C Trace Context)."""
    match = _TRACEPARENT.fullmatch(value) if isinstance(value, str) else None
    if match is None or match.group(1) == "0" * 32 or match.group(2) == "0" * 16:
        return None
    return Hop(match.group(1), match.group(2), bool(int(match.group(3), 16) & 1))


def root(source: object, event_id: object) -> Hop:
    """The start of a trace for an event that came without one (the same event always starts the same trace)."""
    digest = hashlib.sha256(f"{source}\x00{event_id}".encode()).hexdigest()
    return Hop(digest[:32], digest[32:48])


def of(attributes: Mapping[str, Any]) -> Hop | None:
    """The hop an event's attributes carry."""
    return parse(attributes.get(ATTRIBUTE))


# -- the hop a function is in, for the events it sends ------------------------------------------------------------

current: contextvars.ContextVar[Hop | None] = contextvars.ContextVar("mapemesh_hop", default=None)
"""The hop of the function handling an event (its events are its children)."""


def stamp(attributes: dict[str, Any]) -> None:
    """Give an event the current hop as its `traceparent` (one it has already is kept)."""
    hop = current.get()
    if hop is not None and ATTRIBUTE not in attributes:
        attributes[ATTRIBUTE] = hop.traceparent


# -- spans (exported only when OpenTelemetry is configured) -------------------------------------------------------

_preset: contextvars.ContextVar[tuple[str, str] | None] = contextvars.ContextVar("mapemesh_span_ids", default=None)
_state: dict[str, Any] = {"pid": None, "tracer": None, "provider": None, "meters": None}
_lock = threading.Lock()


def enabled() -> bool:
    """Whether spans are exported (the OpenTelemetry environment names an OTLP endpoint)."""
    return _tracer() is not None


def _tracer() -> Any:
    if _state["pid"] == os.getpid():  # a forked function process configures its own
        return _state["tracer"]
    with _lock:
        if _state["pid"] != os.getpid():
            _state["provider"] = _configure()
            _state["tracer"] = None if _state["provider"] is None else _state["provider"].get_tracer("mapemesh")
            _state["pid"] = os.getpid()
    return _state["tracer"]


def _configure() -> Any:
    endpoint = os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
    if not endpoint or os.environ.get("OTEL_SDK_DISABLED", "").lower() == "true" \
            or os.environ.get("OTEL_TRACES_EXPORTER", "otlp").lower() == "none":
        return None
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from opentelemetry.sdk.trace.id_generator import IdGenerator, RandomIdGenerator

    class PresetIds(IdGenerator):
        """The ids `derive` chose for the span being started (random ones otherwise)."""

        def __init__(self) -> None:
            self.random = RandomIdGenerator()

        def generate_span_id(self) -> int:
            preset = _preset.get()
            return int(preset[1], 16) if preset else self.random.generate_span_id()

        def generate_trace_id(self) -> int:
            preset = _preset.get()
            return int(preset[0], 16) if preset else self.random.generate_trace_id()

    service = os.environ.get("OTEL_SERVICE_NAME") or "mapemesh"
    resource = Resource.create({"service.name": service})
    provider = TracerProvider(resource=resource, id_generator=PresetIds())
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))  # endpoint, headers: OTEL_* variables
    _configure_metrics(resource)
    log.info("tracing: spans exported over OTLP/HTTP to %s as %s", endpoint, service)
    return provider


def _configure_metrics(resource: Any) -> None:
    """The process's OpenTelemetry instruments (an accelerated function's, say) pushed over OTLP/HTTP too: a
    function that scales to zero cannot be scraped. OTEL_METRICS_EXPORTER=none keeps them in."""
    if os.environ.get("OTEL_METRICS_EXPORTER", "otlp").lower() == "none":
        return
    from opentelemetry import metrics
    from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader

    reader = PeriodicExportingMetricReader(OTLPMetricExporter())  # OTEL_METRIC_EXPORT_INTERVAL (60 s) applies
    _state["meters"] = MeterProvider(resource=resource, metric_readers=[reader])
    metrics.set_meter_provider(_state["meters"])


@contextlib.contextmanager
def span(name: str, hop: Hop, parent: Hop | None, attributes: Mapping[str, Any] | None = None,
         start_ns: int | None = None) -> Iterator[Any]:
    """A span for `hop` (a child of `parent`, a root without), exported when tracing is on; yields it (or None)."""
    tracer = _tracer()
    if tracer is None or not hop.sampled:
        yield None
        return
    from opentelemetry import trace
    from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, TraceFlags

    context = None
    if parent is not None:
        context = trace.set_span_in_context(NonRecordingSpan(SpanContext(
            int(parent.trace_id, 16), int(parent.span_id, 16), is_remote=True,
            trace_flags=TraceFlags(TraceFlags.SAMPLED))))
    token = _preset.set((hop.trace_id, hop.span_id))
    try:
        started = tracer.start_span(name, context=context, kind=SpanKind.CONSUMER if parent else SpanKind.PRODUCER,
                                    attributes={k: v for k, v in (attributes or {}).items() if v is not None},
                                    start_time=start_ns or time.time_ns())
    finally:
        _preset.reset(token)
    try:
        yield started
    except BaseException as exc:
        started.record_exception(exc)
        raise
    finally:
        started.end()


@contextlib.contextmanager
def handling(attributes: Mapping[str, Any], name: str, label: str = "function",
             extra: Mapping[str, Any] | None = None) -> Iterator[Hop | None]:
    """The hop of a function (or the shim, `label`) handling an event with these attributes: current while it runs,
    so the events it sends are its children; a span `{label} {name}` when tracing is on."""
    parent = of(attributes)
    hop = parent.child(label) if parent is not None else None
    token = current.set(hop)
    try:
        if hop is None or not enabled():
            yield hop
            return
        with span(f"{label} {name}", hop, parent, {"cloudevents.event_id": attributes.get("id"),
                                                   "cloudevents.event_type": attributes.get("type"),
                                                   **(extra or {})}):
            yield hop
    finally:
        current.reset(token)


def flush(timeout_s: float = 5.0) -> None:
    """Export the spans (and metrics) still buffered (before a process ends)."""
    if _state["pid"] != os.getpid():
        return
    for provider in (_state["provider"], _state.get("meters")):
        if provider is not None:
            with contextlib.suppress(Exception):
                provider.force_flush(int(timeout_s * 1000))
