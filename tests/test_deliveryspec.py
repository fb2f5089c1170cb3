"""DeliverySpec: durations, backoff formulas, which answers are retried, Trigger-over-Broker precedence."""

from __future__ import annotations

import pytest

from mapemesh.eventing.deliveryspec import (
    DeliverySpec,
    InvalidDelivery,
    effective,
    is_retryable,
    parse_duration,
)


@pytest.mark.parametrize(("text", "seconds"), [
    ("PT0.2S", 0.2), ("PT1S", 1), ("PT1M", 60), ("PT1H30M", 5400), ("P1D", 86400), ("P1DT1S", 86401),
    ("P2W", 1209600), ("PT0S", 0)])
def test_iso_durations(text, seconds):
    assert parse_duration(text, "x") == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["1s", "PT", "P", "PT1", "P1DT", "PT-1S", 5, "PT1.S"])
def test_bad_durations(text):
    with pytest.raises(InvalidDelivery):
        parse_duration(text, "x")


def test_exponential_backoff_is_delay_times_two_to_the_n_minus_one():
    spec = DeliverySpec.parse({"retry": 4, "backoffPolicy": "exponential", "backoffDelay": "PT0.5S"})
    assert [spec.backoff(n) for n in range(1, 5)] == [0.5, 1.0, 2.0, 4.0]


def test_linear_backoff_is_delay_times_n_minus_one():
    spec = DeliverySpec.parse({"retry": 3, "backoffPolicy": "linear", "backoffDelay": "PT2S"})
    assert [spec.backoff(n) for n in range(1, 4)] == [0.0, 2.0, 4.0]


def test_defaults_and_dead_letter_sink():
    spec = DeliverySpec.parse({})
    assert (spec.retry, spec.backoff_policy, spec.backoff_delay, spec.dead_letter_sink) == (0, "exponential", 0, None)
    spec = DeliverySpec.parse({"deadLetterSink": {"uri": "http://127.0.0.1:1/dls"}, "timeout": "PT3S"})
    assert spec.dead_letter_sink.uri == "http://127.0.0.1:1/dls" and spec.timeout == 3


@pytest.mark.parametrize(("doc", "field"), [
    ({"retry": -1}, "retry"), ({"retry": "3"}, "retry"), ({"backoffPolicy": "random"}, "backoffPolicy"),
    ({"backoffDelay": "soon"}, "backoffDelay"), ({"deadLetterSink": {}}, "deadLetterSink"),
    ({"timeout": "PT0S"}, "timeout"), ({"retries": 3}, "unknown")])
def test_invalid_delivery_names_the_field(doc, field):
    with pytest.raises(InvalidDelivery, match=field):
        DeliverySpec.parse(doc)


def test_trigger_delivery_replaces_the_brokers_wholesale():
    broker = {"retry": 5, "backoffDelay": "PT1S", "deadLetterSink": {"uri": "http://x/dls"}}
    assert effective({"retry": 1}, broker) == {"retry": 1}  # no inherited DLS or delay
    assert effective({}, broker) == broker
    assert effective(None, broker) == broker


@pytest.mark.parametrize(("status", "retry"), [
    (None, True), (404, True), (408, True), (409, True), (429, True), (500, True), (503, True), (599, True),
    (400, False), (401, False), (403, False), (410, False), (413, False), (301, False), (200, False)])
def test_which_answers_are_retried(status, retry):
    assert is_retryable(status) is retry
