"""CloudEvents over MQTT: the CloudEvents MQTT protocol binding (v1.0.2), both directions.

| mode                  | MQTT 5                                                  | MQTT 3.1.1          |
|-----------------------|---------------------------------------------------------|---------------------|
| binary (MQTT 5 only)  | every attribute is a User Property (name: the           | -                   |
|                       | attribute's name, value: its canonical string form);    |                     |
|                       | `datacontenttype` is also the Content Type property (as |                     |
|                       | the binding's own example sends it); the payload is the |                     |
|                       | data                                                    |                     |
| structured            | the payload is the JSON event format; Content Type      | the payload is the  |
|                       | `application/cloudevents+json`                          | JSON event format   |

Reading (`from_mqtt`, binding section 3): a Content Type starting with `application/cloudevents` (or MQTT 3.1.1,
no properties at all) is structured; User Properties with `specversion` are binary (`datacontenttype` from the Content
Type property first, else its User Property); User Properties whose names are no attribute names (`[a-z0-9]+`) are
not attributes and are left out; anything else is not a CloudEvent (`MalformedEvent`). Attribute values are checked
as the HTTP binding checks them (`mapemesh.eventing.cloudevent.validate`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable

import orjson

from mapemesh.eventing.binding import from_structured, to_structured
from mapemesh.eventing.cloudevent import Attr, CloudEvent, MalformedEvent, validate

STRUCTURED = "application/cloudevents+json"
_ATTRIBUTE = re.compile(r"[a-z0-9]+")


def _text(value: Attr) -> str:
    return ("true" if value else "false") if isinstance(value, bool) else str(value)


def to_mqtt(event: CloudEvent, *, binary: bool = True) -> tuple[bytes, str | None, list[tuple[str, str]]]:
    """(payload, Content Type, User Properties) for `event`: binary mode (MQTT 5) or structured."""
    if not binary:
        _, body = to_structured(event)
        return body, STRUCTURED, []
    properties = [(name, _text(value)) for name, value in event.attributes.items()]
    content_type = event.attributes.get("datacontenttype")
    return event.data or b"", None if content_type is None else str(content_type), properties


def from_mqtt(payload: bytes, content_type: str | None = None,
              user_properties: Iterable[tuple[str, str]] = ()) -> CloudEvent:
    """The CloudEvent a message carries; MalformedEvent when it carries none (or a broken one)."""
    properties = list(user_properties)
    if (content_type or "").lower().startswith("application/cloudevents") or (
            content_type is None and not properties):
        if (content_type or "").lower().startswith("application/cloudevents-batch"):
            raise MalformedEvent(None, "a batch is not a single CloudEvent (the MQTT binding carries one event)")
        try:
            doc = orjson.loads(payload)
        except orjson.JSONDecodeError as exc:
            raise MalformedEvent(None, f"a structured message must be a JSON CloudEvent: {exc}") from None
        return from_structured(doc)
    attributes: dict[str, Attr] = {}
    for name, value in properties:
        if not _ATTRIBUTE.fullmatch(name):
            continue  # an application's own User Property, not a CloudEvents attribute
        if name in attributes:
            raise MalformedEvent(name, "the attribute's User Property appears more than once")
        attributes[name] = value
    if "specversion" not in attributes:
        raise MalformedEvent("specversion", "not a CloudEvent: no specversion User Property and not structured")
    if content_type:
        attributes["datacontenttype"] = content_type
    validate(attributes, names_checked=True)
    return CloudEvent(attributes, payload or None)
