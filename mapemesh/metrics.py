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
| node shim   | `mapemesh_knob_apply_count{node, knob, result}` (applied, noop, failed),                            |
|             | `mapemesh_telemetry_reports_count{node, outcome}` (sent, dropped),                                  |
|             | `mapemesh_telemetry_interval_seconds{node}`, each metric it reports as `mapemesh_node_{metric}`     |
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
    """A gauge family read when scraped (`read` gives {label values: value}); `counter=True` for a count kept
    elsewhere that only grows (exposed as a counter, `_total`)."""

    def __init__(self, name: str, documentation: str, labels: tuple[str, ...],
                 read: Callable[[], dict[tuple[str, ...], float]], counter: bool = False):
        self.name, self.documentation, self.labels, self.read = name, documentation, labels, read
        self.kind = CounterMetricFamily if counter else GaugeMetricFamily

    def collect(self) -> Iterable[GaugeMetricFamily | CounterMetricFamily]:
        family = self.kind(self.name, self.documentation, labels=list(self.labels))
        for values, value in self.read().items():
            family.add_metric(list(values), value)
        yield family


class Readings(Collector):
    """Gauges from readings {(name, ((label, value), ...)): value}, one family `{prefix}{name}` per name (Prometheus
    names: other characters become `_`), each with `fixed` labels and the union of the readings' own."""

    def __init__(self, prefix: str, documentation: str, fixed: dict[str, str],
                 read: Callable[[], dict[tuple[str, tuple[tuple[str, str], ...]], float]]):
        self.prefix, self.documentation, self.fixed, self.read = prefix, documentation, fixed, read

    def collect(self) -> Iterable[GaugeMetricFamily]:
        by_name: dict[str, list[tuple[dict[str, str], float]]] = {}
        for (name, labels), value in list(self.read().items()):
            by_name.setdefault(prometheus_name(self.prefix + name), []).append(
                ({prometheus_name(k): str(v) for k, v in labels}, value))
        for name, rows in sorted(by_name.items()):
            keys = sorted({k for labels, _ in rows for k in labels} - set(self.fixed))
            family = GaugeMetricFamily(name, self.documentation, labels=[*self.fixed, *keys])
            for labels, value in rows:
                family.add_metric([*self.fixed.values(), *(labels.get(k, "") for k in keys)], value)
            yield family


def prometheus_name(name: str) -> str:
    """`name` as a Prometheus metric or label name (`[a-zA-Z_][a-zA-Z0-9_]*`)."""
    out = "".join(c if c.isascii() and (c.isalnum() or c == "_") else "_" for c in name)
    return out if out and not out[0].isdigit() else "_" + out


class Latencies:
    """A latency histogram in milliseconds, with Knative's kind of buckets; `observe(ms, *label_values)` keeps each
    label set's child, so the hot path pays one dict lookup, not `labels()`'s validation and locking."""

    def __init__(self, registry: CollectorRegistry, name: str, documentation: str, labels: tuple[str, ...]):
        self.histogram = Histogram(name, documentation, list(labels), registry=registry, buckets=LATENCY_BUCKETS_MS)
        self._children: dict[tuple[str, ...], Any] = {}

    def observe(self, ms: float, *label_values: str) -> None:
        child = self._children.get(label_values)
        if child is None:
            child = self._children[label_values] = self.histogram.labels(*label_values)
        child.observe(ms)


def text(registry: CollectorRegistry) -> bytes:
    """The registry in the Prometheus text format."""
    return generate_latest(registry)


def registry(*collectors: Any) -> CollectorRegistry:
    """A registry of its own for one component (several run in one process under `mapemesh up`)."""
    out = CollectorRegistry(auto_describe=False)
    for collector in collectors:
        out.register(collector)
    return out
