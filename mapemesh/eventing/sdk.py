"""The CloudEvents SDK's event at the boundary: what a user's function receives, and what it may return.

functions-framework hands a `cloudevent` function the `cloudevents.http.CloudEvent` that the SDK's `from_http`
makes of the request (Knative delivers in binary mode), and sends a returned event with the SDK's `to_binary`.
mapemesh keeps its own event inside (attributes and the data's bytes, as received: no decoding on the hot
path) and converts at the edge, giving the function exactly what functions-framework would:

| mapemesh `CloudEvent`              | SDK `CloudEvent` (`to_sdk`)                                                  |
|------------------------------------|------------------------------------------------------------------------------|
| attribute values (str, int, bool)  | strings, as binary mode carries them (`true`/`false` for a Boolean)          |
| data bytes                         | decoded JSON when they are JSON, else the bytes; None when empty (the SDK's  |
|                                    | own `_json_or_string`, whatever the content type; an empty JSON string is    |
|                                    | None too, as `from_http` makes it)                                           |
| no `time`                          | the SDK's default (now), as `from_http` gives                                |

| SDK `CloudEvent` (`from_sdk`)      | mapemesh `CloudEvent`                                                        |
|------------------------------------|------------------------------------------------------------------------------|
| attributes                         | as they are, validated (a reply that is no CloudEvent is an error)           |
| data                               | as the SDK's binary mode marshals it: bytes as they are, anything else as    |
|                                    | JSON (`json.dumps`, a str too; NaN and infinities refused, as JSON has none)  |
|                                    | with `datacontenttype` application/json unless the event names its own (the   |
|                                    | SDK sends no Content-Type then; a receiver should not have to guess)           |
| a datetime `time`                  | RFC 3339 text (`isoformat`)                                                  |

`to_sdk` gives what binary mode gives (Knative delivers in binary mode): a structured request posted straight to a
function would give functions-framework a `time` and extensions as JSON typed them; mapemesh's ingress takes it
as the same event and delivers it in binary mode.

`tests/test_sdk_binding.py` holds both directions against the SDK itself (property-based).
"""

from __future__ import annotations

import datetime
import json
from typing import Any

from cloudevents.abstract import CloudEvent as AnySdkEvent
from cloudevents.http import CloudEvent as SdkEvent

from mapemesh.eventing.cloudevent import Attr, CloudEvent, MalformedEvent, validate

__all__ = ["AnySdkEvent", "SdkEvent", "from_sdk", "to_sdk"]


def _text(value: Attr) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return value if isinstance(value, str) else str(value)


def _json_or_bytes(data: bytes | None) -> Any:
    if not data:
        return None
    try:
        value = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        return data
    return None if value == "" else value  # from_http turns an empty string into no data


def to_sdk(event: CloudEvent) -> SdkEvent:
    """The SDK event functions-framework would hand a function for `event` delivered in binary mode."""
    return SdkEvent.create({name: _text(value) for name, value in event.attributes.items()},
                           _json_or_bytes(event.data))


def from_sdk(event: AnySdkEvent) -> CloudEvent:
    """mapemesh's event for an SDK event a function returned; MalformedEvent when it is not a valid CloudEvent."""
    attributes: dict[str, Attr] = {}
    for name, value in event.get_attributes().items():
        if value is None:
            continue
        if isinstance(value, datetime.datetime):
            value = value.isoformat()
        elif not isinstance(value, str | int | bool):
            value = str(value)
        attributes[str(name)] = value
    validate(attributes)
    data = event.get_data()
    if data is None or isinstance(data, bytes | bytearray):
        body = None if data is None else bytes(data)
    else:
        try:
            body = json.dumps(data, allow_nan=False).encode("utf-8")
        except (TypeError, ValueError) as exc:
            raise MalformedEvent("data", f"the reply's data is neither bytes nor JSON: {exc}") from None
        attributes.setdefault("datacontenttype", "application/json")
    return CloudEvent(attributes, body or None)
