"""Knative's DeliverySpec: retries, backoff, timeout, Retry-After and dead-letter sink, as pure data.

Validated as Knative's webhook validates it (knative/eventing `pkg/apis/duck/v1/delivery_types.go`): `retry`
>= 0, `backoffPolicy` linear or exponential, ISO-8601 durations, `timeout` only with the `delivery-timeout`
feature and `retryAfterMax` only with `delivery-retryafter` (`mapemesh.eventing.features`). Retry-After is
honoured as Knative's dispatcher does (`pkg/kncloudevents/retries.go`): only when `retryAfterMax` is set, only
on 429 and 503, in seconds or as an HTTP date, capped at `retryAfterMax`, and never shorter than the backoff.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any, Literal

from mapemesh.durations import InvalidDuration, parse_iso
from mapemesh.eventing.features import EventingFeatures

BackoffPolicy = Literal["exponential", "linear"]
DEFAULT_TIMEOUT_S = 30.0
_FIELDS = ("retry", "backoffPolicy", "backoffDelay", "timeout", "deadLetterSink", "retryAfterMax")


class InvalidDelivery(ValueError):
    """A DeliverySpec that Knative would reject."""


def parse_duration(text: object, field: str) -> float:
    """Seconds in an ISO-8601 duration; InvalidDelivery names the field when it is not one."""
    try:
        return parse_iso(text, field)
    except InvalidDuration as exc:
        raise InvalidDelivery(str(exc)) from None


@dataclass(frozen=True, slots=True)
class Destination:
    """Where to send: a URI, or a reference to an addressable object (plus an optional relative URI)."""

    uri: str | None = None
    ref: dict[str, str] | None = None

    @classmethod
    def parse(cls, doc: object, field: str) -> Destination:
        """A Knative Destination (`uri` and/or `ref`)."""
        if not isinstance(doc, dict) or not (doc.get("uri") or doc.get("ref")):
            raise InvalidDelivery(f"{field}: needs a uri or a ref")
        uri, ref = doc.get("uri"), doc.get("ref")
        if uri is not None and not isinstance(uri, str):
            raise InvalidDelivery(f"{field}.uri must be a string")
        if ref is not None:
            if not isinstance(ref, dict) or not ref.get("name") or not ref.get("kind"):
                raise InvalidDelivery(f"{field}.ref needs kind and name")
            ref = {k: str(v) for k, v in ref.items()}
        return cls(uri, ref)


@dataclass(frozen=True, slots=True)
class DeliverySpec:
    """How a subscription's events are delivered; the defaults are Knative's (no retry)."""

    retry: int = 0
    backoff_policy: BackoffPolicy = "exponential"
    backoff_delay: float = 0.0
    timeout: float = DEFAULT_TIMEOUT_S
    dead_letter_sink: Destination | None = None
    retry_after_max: float | None = None
    """Seconds: a 429 or 503's Retry-After is honoured up to this; None: Retry-After is not looked at."""

    @classmethod
    def parse(cls, doc: dict[str, Any] | None, field: str = "delivery",
              features: EventingFeatures | None = None) -> DeliverySpec:
        """Read a Knative `delivery` block under the cluster's eventing `features` (stock when None);
        InvalidDelivery names the bad field, in Knative's words."""
        features = features or EventingFeatures()
        doc = doc or {}
        if not isinstance(doc, dict):
            raise InvalidDelivery(f"{field} must be a mapping")
        unknown = set(doc) - set(_FIELDS)
        if unknown:
            raise InvalidDelivery(f"{field}: unknown field(s) {', '.join(sorted(unknown))}")
        retry = doc.get("retry", 0)
        if isinstance(retry, bool) or not isinstance(retry, int) or retry < 0:
            raise InvalidDelivery(f"{field}.retry must be a non-negative integer")
        policy = doc.get("backoffPolicy", "exponential")
        if policy not in ("exponential", "linear"):
            raise InvalidDelivery(f"{field}.backoffPolicy must be exponential or linear, not {policy!r}")
        delay = parse_duration(doc["backoffDelay"], f"{field}.backoffDelay") if "backoffDelay" in doc else 0.0
        if "timeout" in doc and not features.enabled("delivery-timeout"):
            raise InvalidDelivery(f"must not set the field(s): {field}.timeout (the delivery-timeout feature is off "
                                  "in config-features of knative-eventing)")
        timeout = parse_duration(doc["timeout"], f"{field}.timeout") if "timeout" in doc else DEFAULT_TIMEOUT_S
        if timeout <= 0:
            raise InvalidDelivery(f"{field}.timeout must be positive")
        retry_after_max = None
        if doc.get("retryAfterMax") is not None:
            if not features.enabled("delivery-retryafter"):
                raise InvalidDelivery(f"must not set the field(s): {field}.retryAfterMax (the delivery-retryafter "
                                      "feature is off in config-features of knative-eventing)")
            raw = doc["retryAfterMax"]
            negative = isinstance(raw, str) and raw.startswith("-")
            retry_after_max = parse_duration(raw[1:] if negative else raw, f"{field}.retryAfterMax")
            if negative and retry_after_max > 0:
                raise InvalidDelivery(f"invalid value: {raw}: {field}.retryAfterMax")
        dls = doc.get("deadLetterSink")
        sink = Destination.parse(dls, f"{field}.deadLetterSink") if dls is not None else None
        return cls(retry, policy, delay, timeout, sink, retry_after_max)  # type: ignore[arg-type]

    def wait(self, retry_number: int, status: int | None, retry_after: str | None, now: float | None = None) -> float:
        """Seconds before retry n after an answer `status` with a `Retry-After` header: the backoff, or the
        Retry-After (capped at retryAfterMax) when that is longer and honoured."""
        backoff = self.backoff(retry_number)
        if self.retry_after_max is None or status not in (429, 503):
            return backoff
        return max(backoff, min(retry_after_seconds(retry_after, now), self.retry_after_max))

    def backoff(self, retry_number: int) -> float:
        """Seconds to wait before retry n (1-based): exponential delay*2^(n-1), linear delay*(n-1)."""
        if retry_number < 1:
            raise ValueError("retries are numbered from 1")
        if self.backoff_policy == "linear":
            return self.backoff_delay * (retry_number - 1)
        return self.backoff_delay * 2 ** (retry_number - 1)


def effective(trigger: dict[str, Any] | None, broker: dict[str, Any] | None) -> dict[str, Any]:
    """A Trigger's delivery replaces the Broker's wholesale when it sets any field (Knative semantics)."""
    for doc, where in ((trigger, "spec.delivery"), (broker, "the broker's spec.delivery")):
        if doc is not None and not isinstance(doc, dict):
            raise InvalidDelivery(f"{where} must be a mapping")
    if trigger and any(trigger.get(k) is not None for k in _FIELDS):
        return trigger
    return broker or {}


def retry_after_seconds(value: str | None, now: float | None = None) -> float:
    """Seconds a `Retry-After` header asks for: delay-seconds or an HTTP date (RFC 9110 10.2.3); 0 when absent,
    unreadable or in the past."""
    if not value:
        return 0.0
    text = value.strip()
    if text.isascii() and text.isdigit():  # str.isdigit also takes '²' and other digits int() refuses
        return float(text)
    try:
        when = parsedate_to_datetime(text).timestamp()
    except (TypeError, ValueError, IndexError, OverflowError):
        return 0.0
    return max(0.0, when - (time.time() if now is None else now))


def is_retryable(status: int | None) -> bool:
    """Transport errors (None), 404, 408, 409, 429 and 5xx are retried; other answers are final."""
    return status is None or status in (404, 408, 409, 429) or 500 <= status <= 599
