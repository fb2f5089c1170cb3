"""Delivery options as Knative has them: retryAfterMax behind the delivery-retryafter feature, Retry-After honoured as
Knative's dispatcher honours it, and ordered delivery under the Kafka broker's annotation and mapemesh's own."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest
import yaml
from aiohttp import web

from mapemesh import manifests
from mapemesh.eventing.brokers import BrokerRegistry
from mapemesh.eventing.delivery import Dispatcher
from mapemesh.eventing.deliveryspec import DeliverySpec, InvalidDelivery, retry_after_seconds
from mapemesh.eventing.features import EventingFeatures
from mapemesh.eventing.ingress import Ingress
from mapemesh.eventing.log import EventLog
from mapemesh.eventing.stats import BrokerMetrics
from mapemesh.eventing.triggers import Resolver, load_triggers

from .subscriber import Subscriber
from .test_dispatcher import FakeClock, ev, post, wait_until

FEATURES_ON = {"apiVersion": "v1", "kind": "ConfigMap",
               "metadata": {"name": "config-features", "namespace": "knative-eventing"},
               "data": {"delivery-retryafter": "enabled"}}
BROKER = {"apiVersion": "eventing.knative.dev/v1", "kind": "Broker",
          "metadata": {"name": "default", "namespace": "default"}, "spec": {}}


def trigger(name: str, uri: str = "http://127.0.0.1:9/x", delivery: dict | None = None,
            annotations: dict | None = None) -> dict:
    spec = {"broker": "default", "subscriber": {"uri": uri}, "filters": [{"exact": {"type": "t"}}]}
    if delivery:
        spec["delivery"] = delivery
    return {"apiVersion": "eventing.knative.dev/v1", "kind": "Trigger",
            "metadata": {"name": name, "namespace": "default", "annotations": annotations or {}}, "spec": spec}


def triggers_of(tmp_path, *docs: dict) -> dict:
    (tmp_path / "m.yaml").write_text(yaml.safe_dump_all(docs))
    found = manifests.load(tmp_path / "m.yaml")
    return {t.name: t for t in load_triggers(found)[0]}


# -- retryAfterMax and the feature flag --------------------------------------------------------------------------

def test_retry_after_max_is_refused_while_the_feature_is_off(tmp_path):
    # knative/eventing pkg/apis/duck/v1/delivery_types.go: ErrDisallowedFields("retryAfterMax") unless enabled.
    delivery = {"retry": 2, "retryAfterMax": "PT5S"}
    off = triggers_of(tmp_path, BROKER, trigger("t", delivery=delivery))["t"]
    assert not off.ready and "must not set the field(s): spec.delivery.retryAfterMax" in off.reason
    on = triggers_of(tmp_path, BROKER, FEATURES_ON, trigger("t", delivery=delivery))["t"]
    assert on.ready and on.delivery.retry_after_max == 5.0


def test_a_broker_whose_delivery_needs_a_missing_feature_is_not_served(tmp_path):
    broker = {**BROKER, "spec": {"delivery": {"retry": 1, "retryAfterMax": "PT1S"}}}
    (tmp_path / "b.yaml").write_text(yaml.safe_dump(broker))
    registry = BrokerRegistry(tmp_path)
    assert registry.brokers == {} and any("retryAfterMax" in e for e in registry.errors)
    (tmp_path / "f.yaml").write_text(yaml.safe_dump(FEATURES_ON))
    registry.reload()
    assert set(registry.brokers) == {"default/default"}


@pytest.mark.parametrize(("raw", "message"), [("PT-1S", "retryAfterMax"), ("-PT1S", "invalid value: -PT1S"),
                                              ("5s", "ISO-8601")])
def test_retry_after_max_must_be_a_non_negative_iso_duration(raw, message):
    on = EventingFeatures({"delivery-retryafter": "enabled"})
    with pytest.raises(InvalidDelivery, match=message):
        DeliverySpec.parse({"retryAfterMax": raw}, "spec.delivery", on)


def test_a_bad_flag_value_is_reported_and_the_stock_value_kept():
    features = EventingFeatures.from_objects([{**FEATURES_ON, "data": {"delivery-retryafter": "maybe"}}])
    assert not features.enabled("delivery-retryafter") and "cannot parse the feature flag" in features.errors[0]


def test_retry_after_in_seconds_or_as_an_http_date():
    now = 1_000_000.0
    later = format_datetime(datetime.fromtimestamp(now, UTC) + timedelta(seconds=7), usegmt=True)
    assert retry_after_seconds("3", now) == 3.0
    assert retry_after_seconds(later, now) == pytest.approx(7.0)
    assert retry_after_seconds("Thu, 01 Jan 1970 00:00:00 GMT", now) == 0.0  # in the past: the backoff applies
    assert retry_after_seconds("soon", now) == 0.0 and retry_after_seconds(None, now) == 0.0


@pytest.mark.parametrize(("delivery", "expected"), [
    # Honoured on 429 and 503, capped at retryAfterMax, never below the backoff (0.1 s, then 0.2 s).
    ({"retry": 3, "backoffDelay": "PT0.1S", "retryAfterMax": "PT2S"}, [1.0, 2.0, 0.4]),
    # Without retryAfterMax, Retry-After is not looked at (Knative's opt-in).
    ({"retry": 3, "backoffDelay": "PT0.1S"}, [0.1, 0.2, 0.4]),
])
def test_the_dispatcher_waits_as_knative_does(tmp_path, delivery, expected):
    answers = [(503, "1"), (429, "60"), (500, "30"), (202, None)]

    def handler(rec):
        status, after = answers.pop(0)
        return web.Response(status=status, headers={"Retry-After": after} if after else None)

    sub = Subscriber(handlers={"/r": handler})
    (tmp_path / "m.yaml").write_text(yaml.safe_dump_all([BROKER, FEATURES_ON, trigger("t", sub.url + "/r",
                                                                                       delivery)]))

    async def main() -> list[float]:
        log = EventLog(tmp_path / "log.db")
        registry = BrokerRegistry(tmp_path / "m.yaml")
        metrics, clock = BrokerMetrics(), FakeClock()
        dispatcher = Dispatcher(log, Ingress(registry, log), registry, Resolver(tmp_path, ""), metrics, clock)
        await dispatcher.start()
        await post(dispatcher, log, [ev(1)])
        await wait_until(lambda: metrics.snapshot().get("default/t", {}).get("delivered") == 1)
        await dispatcher.stop()
        await log.close()
        return clock.sleeps

    try:
        sleeps = asyncio.run(main())
    finally:
        sub.close()
    assert sleeps == expected  # the 500's Retry-After is never honoured: Knative reads it on 429 and 503 only


# -- ordered delivery -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("key", ["kafka.eventing.knative.dev/delivery.order", "mapemesh.dev/delivery-order",
                                 "mapemesh.io/delivery-order"])
def test_ordered_delivery_under_the_kafka_key_mapemeshs_and_the_old_alias(tmp_path, key):
    got = triggers_of(tmp_path, BROKER, trigger("o", annotations={key: "Ordered"}),
                      trigger("u", annotations={key: "unordered"}), trigger("d"))
    assert (got["o"].ordered, got["u"].ordered, got["d"].ordered) == (True, False, False)
    assert all(t.ready for t in got.values())


def test_a_bad_or_contradicting_order_makes_the_trigger_not_ready(tmp_path):
    got = triggers_of(tmp_path, BROKER,
                      trigger("bad", annotations={"kafka.eventing.knative.dev/delivery.order": "fifo"}),
                      trigger("both", annotations={"kafka.eventing.knative.dev/delivery.order": "ordered",
                                                   "mapemesh.dev/delivery-order": "unordered"}))
    assert got["bad"].reason == ('invalid annotation kafka.eventing.knative.dev/delivery.order value: fifo. '
                                 'Allowed values [ "ordered" | "unordered" ]')
    assert "disagree" in got["both"].reason


def test_an_odd_retry_after_is_no_retry_after():
    assert retry_after_seconds("²") == 0.0 and retry_after_seconds("  12 ") == 12.0 and retry_after_seconds("") == 0


def test_without_new_trigger_filters_only_filter_decides(tmp_path):
    off = {**FEATURES_ON, "data": {"new-trigger-filters": "disabled", "default-authorization-mode":
                                   "allow-same-namespace"}}
    doc = trigger("t")
    doc["spec"]["filter"] = {"attributes": {"type": "legacy"}}
    got = triggers_of(tmp_path, BROKER, off, doc)["t"]
    assert got.ready and got.filter.matches({"type": "legacy"}) and not got.filter.matches({"type": "t"})
    assert EventingFeatures.from_objects([off]).errors == ()  # a value that is not a flag is not an error
