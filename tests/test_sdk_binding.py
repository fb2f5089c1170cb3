"""mapemesh's HTTP binding against the CloudEvents SDK as the oracle, both directions, property-based.

Every event hypothesis makes is sent by one side and read by the other, in binary and in structured mode, and
must come out the same. Where mapemesh is stricter than the SDK (cloudevents 1.12), the strategies stay inside
what both take and a test below names the rule mapemesh follows:
- CloudEvents 1.0 "Attribute Naming": names are [a-z0-9]; the SDK takes any header name.
- CloudEvents 1.0 "Type System", String: no control characters (U+0000-U+001F, U+007F-U+009F), no surrogates
  and no noncharacters; the SDK takes them.
- HTTP binding 3.1.3.2: a binary-mode header value is percent-encoded (space, '"', '%' and non-ASCII, as UTF-8)
  and decoded on receipt; the SDK writes values raw and reads them raw, so in binary mode the strategies use
  text that needs no encoding, and the round trip through mapemesh alone covers the rest.
- `time` is an RFC 3339 timestamp, `dataschema` an absolute URI, `source` a URI-reference (no whitespace); the
  SDK does not check them.
"""

from __future__ import annotations

import base64
import datetime
import json
import string

import pytest
from cloudevents.conversion import to_binary as sdk_to_binary
from cloudevents.conversion import to_structured as sdk_to_structured
from cloudevents.http import CloudEvent as SdkEvent
from cloudevents.http import from_http as sdk_from_http
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from mapemesh.eventing.binding import from_http, to_binary, to_structured
from mapemesh.eventing.cloudevent import CloudEvent, MalformedEvent
from mapemesh.eventing.sdk import from_sdk, to_sdk

EXAMPLES = settings(max_examples=500, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
RESERVED = {"specversion", "id", "source", "type", "datacontenttype", "dataschema", "subject", "time", "data",
            "data_base64"}
NAMES = st.text(string.ascii_lowercase + string.digits, min_size=1, max_size=20).filter(lambda n: n not in RESERVED)
# Text the spec allows in a String: no controls, surrogates or noncharacters.
ALLOWED = st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters="\ufffe\uffff\ufdd0")
TEXT = st.text(ALLOWED, min_size=1, max_size=30)
# What a binary-mode header carries without percent-encoding (HTTP binding 3.1.3.2), for the SDK's raw headers.
PLAIN = st.text(st.sampled_from(sorted(set(string.printable) - set(string.whitespace) - set('"%'))), min_size=1,
                max_size=30)
TIMES = st.datetimes(timezones=st.just(__import__("datetime").UTC)).map(
    lambda t: t.isoformat(timespec="microseconds").replace("+00:00", "Z"))
JSON_VALUES = st.recursive(st.none() | st.booleans() | st.integers(-2**53, 2**53) | st.text(ALLOWED, max_size=10),
                           lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(ALLOWED, max_size=5), inner, max_size=4), max_leaves=10)


def _uri_reference(text: str) -> bool:
    """`source` is a URI-reference (RFC 3986): no whitespace in it; the SDK does not check."""
    return not any(c.isspace() for c in text)


@st.composite
def mapemesh_events(draw, text=TEXT) -> CloudEvent:
    attrs: dict = {"specversion": "1.0", "id": draw(text), "source": draw(text.filter(_uri_reference)),
                   "type": draw(text)}
    if draw(st.booleans()):
        attrs["subject"] = draw(text)
    if draw(st.booleans()):
        attrs["time"] = draw(TIMES)
    for name in draw(st.lists(NAMES, max_size=4, unique=True)):
        attrs[name] = draw(text | st.integers(-2**31, 2**31 - 1) | st.booleans())
    kind = draw(st.sampled_from(["json", "text", "binary", "none"]))
    if kind == "json":
        attrs["datacontenttype"] = "application/json"
        data = json.dumps(draw(JSON_VALUES.filter(lambda v: v is not None))).encode()
    elif kind == "text":
        attrs["datacontenttype"] = "text/plain"
        data = draw(st.text(ALLOWED, min_size=1, max_size=40)).encode()
    elif kind == "binary":
        attrs["datacontenttype"] = "application/octet-stream"
        data = draw(st.binary(min_size=1, max_size=40))
    else:
        data = None
    return CloudEvent(attrs, data)


@st.composite
def sdk_events(draw, text=TEXT) -> SdkEvent:
    attrs = {"id": draw(text), "source": draw(text.filter(_uri_reference)), "type": draw(text)}
    if draw(st.booleans()):
        attrs["subject"] = draw(text)
    if draw(st.booleans()):
        attrs["time"] = draw(TIMES)
    for name in draw(st.lists(NAMES, max_size=4, unique=True)):
        attrs[name] = draw(text)
    data = draw(st.none() | st.binary(min_size=1, max_size=40) | JSON_VALUES)
    return SdkEvent(attrs, data)


def _as_text(value) -> str:
    return ("true" if value else "false") if isinstance(value, bool) else str(value)


def _sdk_data_of(body: bytes | None):
    """What the SDK's from_http makes of a body (its `_json_or_string`)."""
    if not body:
        return None
    try:
        value = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return body
    return None if value == "" else value  # from_http's own rule for an empty string


# -- mapemesh -> SDK --------------------------------------------------------------------------------------------

@EXAMPLES
@given(mapemesh_events(text=PLAIN))
def test_mapemesh_binary_mode_reads_the_same_in_the_sdk(event):
    headers, body = to_binary(event)
    got = sdk_from_http(headers, body)
    for name, value in event.attributes.items():
        assert got[name] == _as_text(value), name
    assert got.data == _sdk_data_of(event.data)
    assert to_sdk(event).get_attributes() | {"time": got["time"]} == got.get_attributes() | {"time": got["time"]}


@EXAMPLES
@given(mapemesh_events())
@example(CloudEvent({"specversion": "1.0", "id": "1", "source": "/s", "type": "t",
                     "datacontenttype": "application/octet-stream"}, b"null"))
def test_mapemesh_structured_mode_reads_the_same_in_the_sdk(event):
    headers, body = to_structured(event)
    got = sdk_from_http(headers, body)
    for name, value in event.attributes.items():
        assert got[name] == value, name  # JSON keeps integers and Booleans
    if event.data is None:
        assert got.data is None
    elif event.datacontenttype == "application/json":
        assert got.data == _sdk_data_of(event.data)
    elif event.datacontenttype == "text/plain":
        assert got.data == event.data.decode()
    else:  # data_base64, decoded, then read as the SDK reads any body (b"null" is None, b"1" is 1)
        assert got.data == _sdk_data_of(event.data)


# -- SDK -> mapemesh --------------------------------------------------------------------------------------------

@EXAMPLES
@given(sdk_events(text=PLAIN))
def test_sdk_binary_mode_reads_the_same_in_mapemesh(event):
    headers, body = sdk_to_binary(event)
    [got] = from_http({k: str(v) for k, v in headers.items()}, body)
    assert {k: str(v) for k, v in got.attributes.items()} == {k: str(v) for k, v in event.get_attributes().items()}
    assert got.data == (body or None)
    # The conversion a function's returned event takes is the SDK's own, naming JSON data's content type besides.
    json_data = event.data is not None and not isinstance(event.data, bytes) and "datacontenttype" not in event
    expected = {**got.attributes, "datacontenttype": "application/json"} if json_data else got.attributes
    assert from_sdk(event) == CloudEvent(expected, got.data)


@EXAMPLES
@given(sdk_events())
def test_sdk_structured_mode_reads_the_same_in_mapemesh(event):
    headers, body = sdk_to_structured(event)
    [got] = from_http(headers, body)
    assert got.attributes == event.get_attributes()
    if event.data is None:
        assert got.data is None
    elif isinstance(event.data, bytes):
        assert got.data == event.data
    else:
        assert json.loads(got.data) == event.data


@EXAMPLES
@given(mapemesh_events())
def test_to_sdk_then_back_keeps_the_event(event):
    back = from_sdk(to_sdk(event))
    assert {k: v for k, v in back.attributes.items() if k != "time" or "time" in event.attributes} == {
        k: _as_text(v) for k, v in event.attributes.items()}
    seen = _sdk_data_of(event.data)
    if seen is None:
        assert back.data is None
    elif isinstance(seen, bytes):
        assert back.data == event.data
    else:
        assert json.loads(back.data) == seen  # JSON, re-encoded


# -- where mapemesh is stricter, by rule ---------------------------------------------------------------------------

@pytest.mark.parametrize(("headers", "rule"), [
    ({"ce-Weird_Name": "x"}, "lower-case letters and digits"),        # CloudEvents 1.0, Attribute Naming
    ({"ce-subject": "a%0Ab"}, "control characters"),                  # Type System, String
    ({"ce-time": "yesterday"}, "RFC 3339"),                           # Type System, Timestamp
    ({"ce-dataschema": "relative/path"}, "absolute URI"),             # dataschema is a URI
    ({"ce-source": "has%20space"}, "URI-reference"),                  # source is a URI-reference (RFC 3986)
    ({"ce-subject": "100%"}, "percent-encoding"),                     # HTTP binding 3.1.3.2
])
def test_what_the_sdk_takes_and_mapemesh_refuses_names_the_rule(headers, rule):
    base = {"ce-specversion": "1.0", "ce-id": "1", "ce-source": "/s", "ce-type": "t"}
    assert sdk_from_http({**base, **headers}, b"")  # the SDK reads it
    with pytest.raises(MalformedEvent, match=rule):
        from_http({**base, **headers}, b"")


def test_binary_mode_percent_encodes_what_the_sdk_would_send_raw():
    event = CloudEvent({"specversion": "1.0", "id": "1", "source": "/s", "type": "t", "subject": "héllo wörld"})
    headers, _ = to_binary(event)
    assert headers["ce-subject"] == "h%C3%A9llo%20w%C3%B6rld"  # HTTP binding 3.1.3.2; a header is ASCII
    [back] = from_http(headers, b"")
    assert back.get("subject") == "héllo wörld"


def test_a_reply_whose_data_json_cannot_hold_is_refused():
    with pytest.raises(MalformedEvent, match="neither bytes nor JSON"):
        from_sdk(SdkEvent({"type": "t", "source": "/s"}, {1, 2}))
    with pytest.raises(MalformedEvent, match="neither bytes nor JSON"):
        from_sdk(SdkEvent({"type": "t", "source": "/s"}, {"x": float("nan")}))  # JSON has no NaN


def test_a_datetime_time_is_rfc3339_text():
    when = datetime.datetime(2026, 12, 6, 21, 30, tzinfo=datetime.UTC)
    event = from_sdk(SdkEvent({"type": "t", "source": "/s", "time": when}, None))
    assert event.attributes["time"] == "2026-12-06T21:30:00+00:00"
    assert base64  # data_base64 decoding is covered by the structured-mode property above
