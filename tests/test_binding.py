"""The CloudEvents HTTP binding as functions: decoding, encoding and round trips."""

from __future__ import annotations

import json

import pytest

from mapemesh.eventing.binding import (
    from_http,
    from_structured,
    percent_decode,
    percent_encode,
    to_binary,
    to_structured,
)
from mapemesh.eventing.cloudevent import CloudEvent, MalformedEvent, validate


def base(**extra):
    return {"specversion": "1.0", "id": "1", "source": "/s", "type": "t", **extra}


@pytest.mark.parametrize("value", ["plain", "with space", 'quote"d', "100%", "naïve ☃", "a,b;c=d"])
def test_percent_encoding_round_trips(value):
    encoded = percent_encode(value)
    assert encoded.isascii() and " " not in encoded and '"' not in encoded
    assert percent_decode("x", encoded) == value


def test_duplicate_binary_header_is_rejected():
    headers = [(f"ce-{k}", v) for k, v in base().items()] + [("ce-id", "2")]
    with pytest.raises(MalformedEvent) as err:
        from_http(headers, b"")
    assert err.value.attribute == "id"


def test_binary_round_trip_keeps_attributes_and_bytes():
    event = CloudEvent(base(subject="naïve subject", datacontenttype="application/octet-stream", n=5),
                       b"\x00\xffdata")
    headers, body = to_binary(event)
    (back,) = from_http(headers, body)
    assert back.data == event.data
    assert back.attributes["subject"] == "naïve subject"
    assert back.attributes["n"] == "5"  # binary mode carries every attribute as a string


@pytest.mark.parametrize(("ctype", "data"), [
    ("application/json", b'{"a":[1,2]}'),
    ("text/plain", "héllo".encode()),
    ("application/octet-stream", b"\x00\x01"),
])
def test_structured_round_trip(ctype, data):
    event = CloudEvent(base(datacontenttype=ctype), data)
    headers, body = to_structured(event)
    assert headers["Content-Type"].startswith("application/cloudevents+json")
    (back,) = from_http(headers, body)
    assert back.data == data and back.attributes == event.attributes


def test_structured_03_uses_datacontentencoding():
    event = CloudEvent(base(specversion="0.3", datacontenttype="application/octet-stream"), b"\x01")
    doc = json.loads(to_structured(event)[1])
    assert doc["datacontentencoding"] == "base64" and "data_base64" not in doc
    assert from_structured(doc).data == b"\x01"


@pytest.mark.parametrize(("attrs", "bad"), [
    (base(time="2026-02-30T00:00:00Z"), "time"),
    (base(datacontenttype="json"), "datacontenttype"),
    (base(source="has space"), "source"),
    (base(big=2**31), "big"),
    (base(subject=""), "subject"),
    (base(nested={"a": 1}), "nested"),
    ({**base(), "abc\n": "x"}, "abc\n"),
    (base(datacontenttype="application/json;\r\nX-Evil: 1"), "datacontenttype"),
])
def test_validate_names_the_bad_attribute(attrs, bad):
    with pytest.raises(MalformedEvent) as err:
        validate(attrs)
    assert err.value.attribute == bad


def test_leap_second_is_a_valid_time():
    validate(base(time="2016-12-31T23:59:60Z"))


def test_datacontentencoding_is_only_honoured_for_03():
    event = from_structured(base(datacontentencoding="base64", data="aGk="))
    assert event.data == b'"aGk="'  # a 1.0 event: an ordinary extension, data stays a JSON string


def test_validate_accepts_the_spec_examples():
    validate(base(time="2018-04-05T17:31:00Z", dataschema="https://example.com/s.json",
                  datacontenttype="application/json; charset=utf-8", subject="x", flag=False, n=-(2**31)))
    validate(base(specversion="0.3", schemaurl="/relative", datacontentencoding="base64"))


@pytest.mark.parametrize("value", ["com.x\n\ndata: forged", "a\rb", "tab\there", "nul\x00", "c1\x85"])
def test_string_attributes_with_control_characters_are_refused(value):
    """The CloudEvents type system forbids U+0000-U+001F and U+007F-U+009F in strings; a percent-encoded
    newline in a binary header would otherwise forge lines in server-sent event streams."""
    with pytest.raises(MalformedEvent) as caught:
        validate({"specversion": "1.0", "id": "1", "source": "/s", "type": "t", "ext": value})
    assert caught.value.attribute == "ext" and "control characters" in caught.value.reason
    headers = {"ce-specversion": "1.0", "ce-id": "1", "ce-source": "/s", "ce-type": "com.x%0A%0Adata: forged"}
    with pytest.raises(MalformedEvent):
        from_http(headers, b"")
