"""Triggers from Knative `Trigger` manifests, and routing an event to the triggers it matches.

A trigger that cannot be used (bad filter, bad delivery, unknown broker, unresolvable subscriber kind) is
kept as not ready with the reason, shown by `mapemesh broker stats`, and never delivered to; it never
takes the broker down. Triggers whose filter pins an exact `type` are indexed by (broker, type), so routing
an event costs the same however many triggers wait for other types.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from urllib.parse import urljoin, urlsplit

from mapemesh import endpoints, manifests
from mapemesh.eventing.brokers import BrokerSpec, brokers_from
from mapemesh.eventing.cloudevent import CloudEvent
from mapemesh.eventing.deliveryspec import DeliverySpec, Destination, InvalidDelivery, effective
from mapemesh.eventing.features import EventingFeatures
from mapemesh.eventing.filters import Filter, InvalidFilter, compile_trigger_filter

log = logging.getLogger(__name__)

ORDER_ANNOTATIONS = ("kafka.eventing.knative.dev/delivery.order", "mapemesh.dev/delivery-order",
                     "mapemesh.io/delivery-order")
"""Where a Trigger asks for ordered delivery: Knative's Kafka broker's key (so a Trigger written for it behaves the
same here), mapemesh's own, and mapemesh's former key (kept as an alias). Values `ordered` or `unordered`, in
any case, as the Kafka broker reads them (eventing-kafka-broker `control-plane/pkg/reconciler/trigger`)."""
SERVING_V1 = "serving.knative.dev/v1"


@dataclass(frozen=True, slots=True)
class Trigger:
    """One Trigger as the broker runs it; `reason` is None when it is ready."""

    namespace: str
    name: str
    broker: str
    """The broker key, "namespace/name"."""
    subscriber: Destination | None
    filter: Filter | None
    delivery: DeliverySpec
    ordered: bool
    origin: str
    reason: str | None = None

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def ready(self) -> bool:
        return self.reason is None


def delivery_order(annotations: object) -> str:
    """'ordered' or 'unordered' from a Trigger's annotations; ValueError when they say something else, or disagree."""
    found = {key: str(annotations[key]).strip().lower() for key in ORDER_ANNOTATIONS
             if isinstance(annotations, dict) and annotations.get(key) is not None}
    for key, value in found.items():
        if value not in ("ordered", "unordered"):
            raise ValueError(f'invalid annotation {key} value: {found[key]}. Allowed values [ "ordered" | '
                             '"unordered" ]')
    if len(set(found.values())) > 1:
        raise ValueError(f"annotations {' and '.join(found)} disagree on the delivery order")
    return next(iter(found.values()), "unordered")


def parse_trigger(m: manifests.Manifest, brokers: dict[str, BrokerSpec],
                  features: EventingFeatures | None = None) -> Trigger:
    """A Trigger from its manifest, under the cluster's eventing `features`; problems make it not ready instead of
    raising."""
    spec = m.body.get("spec")
    annotations = (m.body.get("metadata") or {}).get("annotations") or {}
    broker_key = f"{m.namespace}/{spec.get('broker')}" if isinstance(spec, dict) else f"{m.namespace}/?"
    partial = Trigger(m.namespace, m.name, broker_key, None, None, DeliverySpec(), False, m.origin)
    try:
        order = delivery_order(annotations)
        if not isinstance(spec, dict):
            raise ValueError("spec must be a mapping")
        if not isinstance(spec.get("broker"), str) or not spec["broker"]:
            raise ValueError("spec.broker is required")
        if "subscriber" not in spec:
            raise ValueError("spec.subscriber is required")
        subscriber = Destination.parse(spec["subscriber"], "spec.subscriber")
        _check_destination(subscriber, "spec.subscriber")
        # Without new-trigger-filters Knative neither checks nor applies `filters`: `filter` alone decides.
        filters = spec.get("filters") if (features or EventingFeatures()).enabled("new-trigger-filters") else None
        flt = compile_trigger_filter(spec.get("filter"), filters)
        broker = brokers.get(broker_key)
        if broker is None:
            raise ValueError(f"broker {broker_key} is not declared")
        delivery = DeliverySpec.parse(effective(spec.get("delivery"), broker.delivery), "spec.delivery", features)
        if delivery.dead_letter_sink is not None:
            _check_destination(delivery.dead_letter_sink, "spec.delivery.deadLetterSink")
    except (ValueError, InvalidFilter, InvalidDelivery) as exc:
        return replace(partial, reason=str(exc))
    return Trigger(m.namespace, m.name, broker_key, subscriber, flt, delivery, order == "ordered", m.origin)


def _check_destination(dest: Destination, where: str) -> None:
    if dest.ref is None:
        parts = urlsplit(dest.uri or "")
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"{where}.uri {dest.uri!r} must be an absolute http(s) URL (or give a ref)")
        return
    kind, api = dest.ref.get("kind"), dest.ref.get("apiVersion", "")
    if (kind, api.split("/")[0]) not in (("Service", "serving.knative.dev"), ("Broker", "eventing.knative.dev")):
        raise ValueError(f"{where}.ref: {api}/{kind} is not addressable here (use a Knative Service or Broker)")


class Resolver:
    """Turns a destination into a URL: a URI as is; a ref to a Knative Service or Broker through the mesh.

    A Service declared in the manifests is served by the local function host at
    `<serving URL>/<namespace>/<name>` (the `serving` entry of endpoints.json); a Broker at
    `<broker URL>/<namespace>/<name>`.
    """

    def __init__(self, data: Path, broker_url: str):
        self.data = data
        self.broker_url = broker_url
        self.services: set[str] = set()
        self.serving_url: str | None = None
        """Set when the function host runs in this process (`mapemesh up`); else endpoints.json is read."""
        self._read: tuple[float, str] = (0.0, "")

    def _serving(self) -> str:
        if self.serving_url:
            return self.serving_url
        now = time.monotonic()
        if now - self._read[0] > 1.0:  # a file read per delivery is too much; a host moves rarely
            self._read = (now, endpoints.read(self.data).get("serving", ""))
        return self._read[1]

    def resolve(self, dest: Destination, namespace: str) -> str:
        """The URL to post to; LookupError with the reason when it cannot be resolved (yet)."""
        if dest.ref is None:
            assert dest.uri is not None
            return dest.uri
        ns = dest.ref.get("namespace") or namespace
        name = dest.ref["name"]
        if dest.ref["kind"] == "Broker":
            base = self.broker_url
        else:
            if f"{ns}/{name}" not in self.services:
                raise LookupError(f"Service {ns}/{name} is not declared in the manifests")
            base = self._serving()
            if not base:
                raise LookupError(f"Service {ns}/{name} is declared but no function host is running "
                                  f"(no 'serving' in endpoints.json)")
        url = f"{base}/{ns}/{name}"
        return urljoin(url + "/", dest.uri.lstrip("/")) if dest.uri else url


@dataclass(slots=True)
class TriggerSet:
    """The triggers in force, indexed for routing."""

    triggers: dict[str, Trigger] = field(default_factory=dict)
    by_type: dict[tuple[str, str], list[Trigger]] = field(default_factory=dict)
    unindexed: dict[str, list[Trigger]] = field(default_factory=dict)
    brokers: set[str] = field(default_factory=set)

    @classmethod
    def build(cls, triggers: Iterable[Trigger]) -> TriggerSet:
        """Index the ready triggers by (broker, type) where their filters pin the type; the rest are checked one
        by one."""
        out = cls()
        for t in triggers:
            out.triggers[t.key] = t
            if not t.ready or t.filter is None:
                continue
            out.brokers.add(t.broker)
            if t.filter.types is not None:  # `exact` types, also under all/any: indexed by each
                for type_ in t.filter.types:
                    out.by_type.setdefault((t.broker, type_), []).append(t)
            else:
                out.unindexed.setdefault(t.broker, []).append(t)
        return out

    def serves(self, broker: str) -> bool:
        """Whether any ready trigger subscribes to `broker`."""
        return broker in self.brokers

    def match(self, broker: str, event: CloudEvent) -> list[Trigger]:
        """The ready triggers of `broker` whose filter passes `event` (each once)."""
        attrs = event.attributes
        candidates = self.by_type.get((broker, str(attrs.get("type"))), ())
        out = [t for t in candidates if t.filter.matches(attrs)]  # type: ignore[union-attr]
        out += [t for t in self.unindexed.get(broker, ()) if t.filter.matches(attrs)]  # type: ignore[union-attr]
        return out


def load_triggers(found: manifests.ManifestSet) -> tuple[list[Trigger], set[str]]:
    """The Triggers among the manifests, and the Knative Services declared there ("ns/name")."""
    brokers, _ = brokers_from(found)
    features = EventingFeatures.from_objects(m.body for m in found.objects)
    triggers: dict[str, Trigger] = {}
    services = {m.key for m in found.of(SERVING_V1, "Service")}
    for m in found.of(manifests.EVENTING_V1, "Trigger"):
        try:
            t = parse_trigger(m, brokers, features)
        except Exception as exc:  # a manifest shape nobody foresaw: the trigger is not ready, the broker runs
            log.exception("trigger %s in %s", m.key, m.origin)
            t = Trigger(m.namespace, m.name, "?", None, None, DeliverySpec(), False, m.origin,
                        reason=f"cannot be read: {type(exc).__name__}: {exc}")
        unknown = _unknown_service(t, services)
        if unknown:
            t = replace(t, reason=unknown)
        if t.key in triggers:
            log.error("trigger %s declared twice (%s and %s): the first one is used", t.key,
                      triggers[t.key].origin, t.origin)
            continue
        if not t.ready:
            log.error("trigger %s not ready: %s", t.key, t.reason)
        triggers[t.key] = t
    return list(triggers.values()), services


def _unknown_service(t: Trigger, services: set[str]) -> str | None:
    """Why a ready trigger's Service ref cannot be served here (the Service is not in the manifests)."""
    if not t.ready:
        return None
    for dest, where in ((t.subscriber, "spec.subscriber"), (t.delivery.dead_letter_sink, "deadLetterSink")):
        if dest is None or dest.ref is None or dest.ref.get("kind") != "Service":
            continue
        key = f"{dest.ref.get('namespace') or t.namespace}/{dest.ref['name']}"
        if key not in services:
            return f"{where}: Service {key} is not declared in the manifests"
    return None
