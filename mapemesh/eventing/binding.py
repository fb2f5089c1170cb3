"""The CloudEvents HTTP protocol binding: requests to CloudEvents and CloudEvents to requests.

Binary mode (`ce-` headers, body is the data), structured mode (`application/cloudevents+json`) and the
batch extension (`application/cloudevents-batch+json`, a JSON array of structured events).
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Iterable, Mapping
from urllib.parse import quote

import orjson

from mapemesh.eventing.cloudevent import (
    Attr,
    CloudEvent,
    MalformedEvent,
    check_name,
    is_json_media_type,
    validate,
)

STRUCTURED = "application/cloudevents+json"
BATCH = "application/cloudevents-batch+json"
_HEX = frozenset(b"0123456789abcdefABCDEF")


def content_mode(content_type: str | None) -> str:
    """'structured', 'batch' or 'binary', from the request's Content-Type."""
    essence = (content_type or "").split(";", 1)[0].strip().lower()
    if essence == STRUCTURED:
        return "structured"
    if essence == BATCH:
        return "batch"
    return "binary"


def from_http(headers: Mapping[str, str] | Iterable[tuple[str, str]], body: bytes) -> list[CloudEvent]:
    """Decode one request into its events (one, or several for a batch); raise MalformedEvent."""
    if isinstance(headers, Mapping):
        items = headers.items()
        content_type = headers.get("content-type", headers.get("Content-Type"))
    else:
        items = list(headers)
        content_type = next((v for k, v in items if k.lower() == "content-type"), None)
    mode = content_mode(content_type) if content_type else "binary"
    if mode == "structured":
        return [from_structured(_json_body(body))]
    if mode == "batch":
        doc = _json_body(body)
        if not isinstance(doc, list):
            raise MalformedEvent(None, "a batch must be a JSON array of events")
        events = []
        for i, item in enumerate(doc):
            try:
                events.append(from_structured(item))
            except MalformedEvent as exc:
                raise exc.at(i) from None
        return events
    return [from_binary(items, content_type, body)]


def from_binary(items: Iterable[tuple[str, str]], content_type: str | None, body: bytes) -> CloudEvent:
    """Decode a binary-mode request: each `ce-NAME` header is an attribute, percent-decoded as UTF-8."""
    attributes: dict[str, Attr] = {}
    for key, raw in items:
        if len(key) < 4 or key[:3].lower() != "ce-":
            continue
        name = key[3:].lower()
        check_name(name)
        if name in attributes:
            raise MalformedEvent(name, "the attribute's header appears more than once")
        attributes[name] = percent_decode(name, raw)
    if not attributes:
        raise MalformedEvent("specversion", "not a CloudEvent: no ce- headers and not a structured "
                                            "or batch content type")
    if content_type:
        attributes["datacontenttype"] = content_type
    validate(attributes, names_checked=True)
    return CloudEvent(attributes, body if body else None)


def percent_decode(name: str, value: str) -> str:
    """Decode a binary-mode header value (HTTP binding 3.1.3.2); a bad escape or non-UTF-8 result is an error."""
    if value.isascii() and "%" not in value:
        return value
    try:
        raw = value.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        raise MalformedEvent(name, "header value is not valid UTF-8") from None
    if b"%" not in raw:
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise MalformedEvent(name, "header value is not valid UTF-8") from None
    out = bytearray()
    i = 0
    while i < len(raw):
        c = raw[i]
        if c == 0x25:  # '%'
            pair = raw[i + 1:i + 3]
            if len(pair) != 2 or pair[0] not in _HEX or pair[1] not in _HEX:
                raise MalformedEvent(name, f"invalid percent-encoding at offset {i} of the header value")
            out.append(int(pair, 16))
            i += 3
        else:
            out.append(c)
            i += 1
    try:
        return out.decode("utf-8")
    except UnicodeDecodeError:
        raise MalformedEvent(name, "percent-decoded header value is not valid UTF-8") from None


def percent_encode(value: str) -> str:
    """Encode an attribute value for a binary-mode header (space, '"', '%' and non-ASCII escaped)."""
    return quote(value, safe="!#$&'()*+,/:;<=>?@[\\]^`{|}~")


def from_structured(doc: object) -> CloudEvent:
    """Decode one event in the CloudEvents JSON format."""
    if not isinstance(doc, dict):
        raise MalformedEvent(None, "a structured event must be a JSON object")
    attributes: dict[str, Attr] = {}
    has_data = "data" in doc
    has_b64 = "data_base64" in doc
    if has_data and has_b64:
        raise MalformedEvent("data_base64", "an event must not carry both data and data_base64")
    for name, value in doc.items():
        if name in ("data", "data_base64"):
            continue
        if value is None:  # JSON format: a null attribute is treated as absent
            continue
        check_name(name)
        if isinstance(value, float):
            raise MalformedEvent(name, "attribute values must be strings, integers or booleans, not a "
                                       "fractional number")
        attributes[name] = value
    validate(attributes, names_checked=True)
    data: bytes | None = None
    if has_b64 and doc["data_base64"] is not None:
        data = _b64("data_base64", doc["data_base64"])
    elif has_data and doc["data"] is not None:
        value = doc["data"]
        if attributes["specversion"] == "0.3" and attributes.get("datacontentencoding") == "base64":
            data = _b64("data", value)
        elif isinstance(value, str) and not is_json_media_type(_str(attributes.get("datacontenttype"))):
            data = value.encode("utf-8")
        else:
            data = orjson.dumps(value)
    return CloudEvent(attributes, data)


def to_binary(event: CloudEvent) -> tuple[dict[str, str], bytes]:
    """Headers and body of a binary-mode request or response carrying `event`."""
    headers: dict[str, str] = {}
    for name, value in event.attributes.items():
        if name == "datacontenttype":
            headers["Content-Type"] = str(value)
            continue
        text = ("true" if value else "false") if isinstance(value, bool) else str(value)
        headers["ce-" + name] = percent_encode(text)
    return headers, event.data or b""


def to_structured(event: CloudEvent) -> tuple[dict[str, str], bytes]:
    """Headers and body of a structured-mode request or response carrying `event`."""
    body = json.dumps(event.to_structured(), separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    return {"Content-Type": STRUCTURED + "; charset=utf-8"}, body


def _json_body(body: bytes) -> object:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise MalformedEvent(None, f"body is not valid JSON: {exc}") from None


def _b64(name: str, value: object) -> bytes:
    if not isinstance(value, str):
        raise MalformedEvent(name, "must be a base64 string")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise MalformedEvent(name, "is not valid base64") from None


def _str(value: Attr | None) -> str | None:
    return None if value is None else str(value)
