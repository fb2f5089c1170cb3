"""Prometheus metrics, named and labelled as Knative's: `GET /metrics` on the broker, the function host, the node
shim and the API (the text format, `prometheus_client`'s).

| component   | metrics                                                                                             |
|-------------|-----------------------------------------------------------------------------------------------------|
| broker      | `mt_broker_ingress_event_count{broker_name, event_type, response_code, response_code_class}`,       |
|             | `mt_broker_filter_event_count{trigger_name, response_code, response_code_class}`,                  |
|             | `mt_broker_filter_event_dispatch_latencies{trigger_name, response_code}` (ms, histogram)            |
| host        | `revision_request_count{namespace_name, service_name, response_code, response_code_class}`,         |
|             | `revision_request_latencies{namespace_name, service_name, response_code}` (ms, histogram),          |
|             | `autoscaler_actual_pods{namespace_name, service_name}` (function processes)                         |
| node shim   | `mapemesh_knob_apply_count{node, knob, result}` (applied, noop, failed), the telemetry as gauges    |
| API         | `mapemesh_plans{status}` (from the state store), `mapemesh_api_request_count{route, code}`           |

Counters are plain dict increments on the hot path, turned into Prometheus families when scraped.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

LATENCY_BUCKETS_MS = (1, 2.5, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000)
CONTENT_TYPE = CONTENT_TYPE_LATEST


def code_class(status: int | None) -> str:
    """Knative's `response_code_class`: `2xx`, `4xx`, `5xx` (`5xx` for no answer at all)."""
    return f"{status // 100}xx" if status else "5xx"


class Counts(Collector):
    """Counters kept in a dict (cheap to add to) and exposed as one Prometheus counter family."""

    def __init__(self, name: str, documentation: str, labels: tuple[str, ...]):
        self.name, self.documentation, self.labels = name, documentation, labels
        self.values: dict[tuple[str, ...], float] = {}

    def add(self, *label_values: str, n: float = 1) -> None:
        self.values[label_values] = self.values.get(label_values, 0) + n

    def collect(self) -> Iterable[CounterMetricFamily]:
        family = CounterMetricFamily(self.name, self.documentation, labels=list(self.labels))
        for values, value in list(self.values.items()):
            family.add_metric(list(values), value)
        yield family


class Gauges(Collector):
    """A gauge family read when scraped (`read` gives {label values: value})."""

    def __init__(self, name: str, documentation: str, labels: tuple[str, ...],
                 read: Callable[[], dict[tuple[str, ...], float]]):
        self.name, self.documentation, self.labels, self.read = name, documentation, labels, read

    def collect(self) -> Iterable[GaugeMetricFamily]:
        family = GaugeMetricFamily(self.name, self.documentation, labels=list(self.labels))
        for values, value in self.read().items():
            family.add_metric(list(values), value)
        yield family


def histogram(registry: CollectorRegistry, name: str, documentation: str, labels: tuple[str, ...]) -> Histogram:
    """A latency histogram in milliseconds, with Knative's kind of buckets."""
    return Histogram(name, documentation, list(labels), registry=registry, buckets=LATENCY_BUCKETS_MS)


def text(registry: CollectorRegistry) -> bytes:
    """The registry in the Prometheus text format."""
    return generate_latest(registry)


def registry(*collectors: Any) -> CollectorRegistry:
    """A registry of its own for one component (several run in one process under `mapemesh up`)."""
    out = CollectorRegistry(auto_describe=False)
    for collector in collectors:
        out.register(collector)
    return out
