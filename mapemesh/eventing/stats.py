"""The broker's metrics: per trigger through the OpenTelemetry SDK (`GET /stats`), and Knative's broker metrics
for Prometheus (`GET /metrics`, `mapemesh.metrics`).

OpenTelemetry: counters `mapemesh.broker.events` (attribute `outcome`: accepted, delivered, retried,
dead_lettered, dropped) and the histogram `mapemesh.broker.delivery.latency` (seconds from arrival at the broker
to the subscriber's 2xx), each with the attribute `trigger`. An in-memory reader serves `GET /stats`; any other
OpenTelemetry reader or exporter can be attached to the same meter provider.

Prometheus: `mt_broker_ingress_event_count` (each request by event type and answer), `mt_broker_filter_event_count`
and `mt_broker_filter_event_dispatch_latencies` (each delivery attempt by trigger and the subscriber's answer).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Literal

from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import HistogramDataPoint, InMemoryMetricReader, MetricReader
from opentelemetry.sdk.metrics.view import ExplicitBucketHistogramAggregation, View

from mapemesh import metrics as prometheus

Outcome = Literal["accepted", "delivered", "retried", "dead_lettered", "dropped"]
OUTCOMES: tuple[Outcome, ...] = ("accepted", "delivered", "retried", "dead_lettered", "dropped")
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)


class BrokerMetrics:
    """The broker's meters and the reader `snapshot()` reads them back from."""

    def __init__(self, extra_readers: Sequence[MetricReader] = ()):
        self._reader = InMemoryMetricReader()
        self.provider = MeterProvider(
            metric_readers=[self._reader, *extra_readers],
            views=[View(instrument_name="mapemesh.broker.delivery.latency",
                        aggregation=ExplicitBucketHistogramAggregation(LATENCY_BUCKETS))])
        meter = self.provider.get_meter("mapemesh.broker")
        # Counted in a plain dict and observed when a reader collects: an SDK counter's add() costs more
        # than routing the event does.
        self._counts: dict[tuple[str, str], int] = {}
        meter.create_observable_counter("mapemesh.broker.events", [self._observe], unit="{event}",
                                        description="Events per trigger by outcome")
        self._latency = meter.create_histogram("mapemesh.broker.delivery.latency", unit="s",
                                               description="Arrival at the broker to the subscriber's 2xx")
        self.ingress_events = prometheus.Counts("mt_broker_ingress_event_count", "Events received by the broker "
                                                "ingress", ("broker_name", "event_type", "response_code",
                                                            "response_code_class"))
        self.filter_events = prometheus.Counts("mt_broker_filter_event_count", "Events dispatched to triggers' "
                                               "subscribers", ("trigger_name", "response_code", "response_code_class"))
        self.registry = prometheus.registry(self.ingress_events, self.filter_events)
        self._dispatch = prometheus.Latencies(self.registry, "mt_broker_filter_event_dispatch_latencies",
                                              "Time to dispatch an event to a trigger's subscriber (ms)",
                                              ("trigger_name", "response_code"))

    def count(self, trigger: str, outcome: Outcome, n: int = 1) -> None:
        """Add `n` events with `outcome` to the trigger's counter."""
        key = (trigger, outcome)
        self._counts[key] = self._counts.get(key, 0) + n

    def _observe(self, options: CallbackOptions) -> Iterable[Observation]:
        for (trigger, outcome), value in list(self._counts.items()):
            yield Observation(value, {"trigger": trigger, "outcome": outcome})

    def received(self, broker: str, event_type: str, status: int) -> None:
        """One event the ingress answered with `status`."""
        self.ingress_events.add(broker, event_type, str(status), prometheus.code_class(status))

    def answered(self, trigger: str, status: int | None, seconds: float) -> None:
        """One delivery attempt to the trigger's subscriber: its answer (None: none came) and how long it took."""
        code = str(status or 0)
        self.filter_events.add(trigger, code, prometheus.code_class(status))
        self._dispatch.observe(seconds * 1000, trigger, code)

    def latency(self, trigger: str, seconds: float) -> None:
        """Record one successful delivery's latency."""
        self._latency.record(max(seconds, 0.0), {"trigger": trigger})

    def snapshot(self) -> dict[str, dict[str, Any]]:
        """Per trigger: the counters and the latency histogram (count, sum, p50, p99 from the buckets)."""
        out: dict[str, dict[str, Any]] = {}
        data = self._reader.get_metrics_data()
        for rm in data.resource_metrics if data else ():
            for sm in rm.scope_metrics:
                for metric in sm.metrics:
                    for point in metric.data.data_points:
                        trigger = str(point.attributes.get("trigger"))
                        row = out.setdefault(trigger, {o: 0 for o in OUTCOMES})
                        if metric.name == "mapemesh.broker.events":
                            row[str(point.attributes.get("outcome"))] = int(point.value)
                        elif isinstance(point, HistogramDataPoint):
                            row["latency"] = _histogram(point)
        return out

    def shutdown(self) -> None:
        """Flush and stop the readers."""
        self.provider.shutdown()


def _histogram(point: HistogramDataPoint) -> dict[str, float | int | None]:
    return {"count": point.count, "sum_s": point.sum,
            "p50_s": _quantile(point, 0.5), "p99_s": _quantile(point, 0.99)}


def _quantile(point: HistogramDataPoint, q: float) -> float | None:
    """The upper bound of the bucket holding the q-quantile (the max for the open last bucket)."""
    if not point.count:
        return None
    rank = q * point.count
    seen = 0
    for bound, count in zip(point.explicit_bounds, point.bucket_counts, strict=False):
        seen += count
        if seen >= rank:
            return min(bound, point.max)
    return point.max
