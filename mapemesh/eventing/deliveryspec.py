"""Knative's DeliverySpec: retries, backoff, timeout and dead-letter sink, as pure data."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from mapemesh.durations import InvalidDuration, parse_iso

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

    @classmethod
    def parse(cls, doc: dict[str, Any] | None, field: str = "delivery") -> DeliverySpec:
        """Read a Knative `delivery` block; InvalidDelivery names the bad field."""
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
        timeout = parse_duration(doc["timeout"], f"{field}.timeout") if "timeout" in doc else DEFAULT_TIMEOUT_S
        if timeout <= 0:
            raise InvalidDelivery(f"{field}.timeout must be positive")
        dls = doc.get("deadLetterSink")
        sink = Destination.parse(dls, f"{field}.deadLetterSink") if dls is not None else None
        return cls(retry, policy, delay, timeout, sink)  # type: ignore[arg-type]

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


def is_retryable(status: int | None) -> bool:
    """Transport errors (None), 404, 408, 409, 429 and 5xx are retried; other answers are final."""
    return status is None or status in (404, 408, 409, 429) or 500 <= status <= 599
