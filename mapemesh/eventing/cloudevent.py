"""The CloudEvent as the broker holds it, and the CloudEvents 1.0 (and 0.3) attribute rules."""

from __future__ import annotations

import base64
import json
import re
from dataclasses import dataclass
from datetime import datetime

SPEC_VERSIONS = ("1.0", "0.3")
REQUIRED = ("id", "source", "specversion", "type")
_NAME = re.compile(r"[a-z0-9]+")  # used with fullmatch: `$` would let a trailing newline through
# RFC 2046 type/subtype, then parameters without control characters (they would split HTTP headers).
_MEDIA_TYPE = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+/[!#$%&'*+.^_`|~0-9A-Za-z-]+([ \t]*;[^\x00-\x1f\x7f]*)?")
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")
_RFC3339 = re.compile(r"\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})")
_INT32 = (-(2**31), 2**31 - 1)
_NOT_IN_URI = re.compile(r"[\s\x00-\x1f\x7f]")
_GOOD_NAMES: set[str] = set()

Attr = str | int | bool
"""An attribute value: CloudEvents String, URI, URI-reference and Timestamp travel as str."""


class MalformedEvent(ValueError):
    """A CloudEvent that breaks the spec; `attribute` names the offending attribute (None: the envelope)."""

    def __init__(self, attribute: str | None, reason: str, index: int | None = None):
        super().__init__(f"{attribute}: {reason}" if attribute else reason)
        self.attribute = attribute
        self.reason = reason
        self.index = index

    def at(self, index: int) -> MalformedEvent:
        """The same error, located at position `index` of a batch."""
        return MalformedEvent(self.attribute, self.reason, index)

    def as_dict(self) -> dict[str, object]:
        """The JSON body a client gets with the 400."""
        body: dict[str, object] = {"error": "malformed CloudEvent", "attribute": self.attribute,
                                   "reason": self.reason}
        if self.index is not None:
            body["index"] = self.index
        return body


@dataclass(slots=True)
class CloudEvent:
    """Context attributes (extensions included) plus the data as bytes, exactly as received."""

    attributes: dict[str, Attr]
    data: bytes | None = None

    @property
    def id(self) -> str:
        return str(self.attributes["id"])

    @property
    def type(self) -> str:
        return str(self.attributes["type"])

    @property
    def source(self) -> str:
        return str(self.attributes["source"])

    @property
    def specversion(self) -> str:
        return str(self.attributes["specversion"])

    @property
    def datacontenttype(self) -> str | None:
        value = self.attributes.get("datacontenttype")
        return None if value is None else str(value)

    def get(self, name: str) -> Attr | None:
        """An attribute's value, or None when the event does not carry it."""
        return self.attributes.get(name)

    def json_data(self) -> object:
        """The data decoded as JSON (None without data)."""
        return None if self.data is None else json.loads(self.data)

    def to_structured(self) -> dict[str, object]:
        """The event in the CloudEvents JSON format (a dict ready for json.dumps)."""
        out: dict[str, object] = dict(self.attributes)
        if self.data is None:
            return out
        if is_json_media_type(self.datacontenttype):
            try:
                out["data"] = json.loads(self.data)
                return out
            except ValueError:
                pass
        elif is_text_media_type(self.datacontenttype):
            try:
                out["data"] = self.data.decode("utf-8")
                return out
            except UnicodeDecodeError:
                pass
        if self.specversion == "0.3":
            out["datacontentencoding"] = "base64"
            out["data"] = base64.b64encode(self.data).decode("ascii")
        else:
            out["data_base64"] = base64.b64encode(self.data).decode("ascii")
        return out


def is_json_media_type(media_type: str | None) -> bool:
    """True for an absent content type (JSON by default) and for `*/json`, `*/*+json`."""
    if not media_type:
        return True
    essence = media_type.split(";", 1)[0].strip().lower()
    return essence.endswith("/json") or essence.endswith("+json")


def is_text_media_type(media_type: str | None) -> bool:
    """True for `text/*` and the usual textual application types."""
    if not media_type:
        return False
    essence = media_type.split(";", 1)[0].strip().lower()
    return essence.startswith("text/") or essence.endswith("+xml") or essence in (
        "application/xml", "application/javascript")


def check_name(name: str) -> None:
    """Attribute names are lower-case ASCII letters and digits (CloudEvents 1.0, 'Attribute Naming')."""
    if name in _GOOD_NAMES:
        return
    if not _NAME.fullmatch(name):
        raise MalformedEvent(name, "attribute names must consist of lower-case letters and digits only")
    if len(_GOOD_NAMES) < 4096:  # names repeat from event to event; remember a bounded number
        _GOOD_NAMES.add(name)


_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")


def validate(attributes: dict[str, Attr], *, names_checked: bool = False) -> None:
    """Check context attributes against the CloudEvents spec; raise MalformedEvent naming the first bad one.

    `names_checked` skips the attribute-name check when the caller has already made it.
    """
    version = attributes.get("specversion")
    if version is None:
        raise MalformedEvent("specversion", "required attribute is missing")
    if version not in SPEC_VERSIONS:
        raise MalformedEvent("specversion", f"unsupported specversion {version!r} (supported: 1.0, 0.3)")
    for name in REQUIRED:
        value = attributes.get(name)
        if value is None:
            raise MalformedEvent(name, "required attribute is missing")
        if type(value) is not str or not value:
            raise MalformedEvent(name, "must be a non-empty string")
    for name, value in attributes.items():
        if not names_checked:
            check_name(name)
        kind = type(value)
        if kind is str:
            if _CONTROL.search(value):  # type: ignore[arg-type]
                raise MalformedEvent(name, "string attributes must not contain control characters "
                                           "(U+0000-U+001F, U+007F-U+009F; CloudEvents type system)")
            rule = _STRING_RULES.get(name)
            if rule is not None:
                rule(name, value, version)  # type: ignore[arg-type]
        elif name in _STRING_RULES:
            raise MalformedEvent(name, "must be a non-empty string")
        elif kind is int:
            if not _INT32[0] <= value <= _INT32[1]:  # type: ignore[operator]
                raise MalformedEvent(name, "integer attribute is outside the signed 32-bit range")
        elif kind is not bool:
            raise MalformedEvent(name, f"attribute values must be strings, integers or booleans, "
                                       f"not {kind.__name__}")


def _non_empty(name: str, value: str, version: str) -> None:
    if not value:
        raise MalformedEvent(name, "must be a non-empty string")


def _media_type(name: str, value: str, version: str) -> None:
    if not _MEDIA_TYPE.fullmatch(value):
        raise MalformedEvent(name, f"{value!r} is not an RFC 2046 media type")


def _dataschema(name: str, value: str, version: str) -> None:
    if version == "1.0" and not _SCHEME.match(value):
        raise MalformedEvent(name, "must be an absolute URI")
    _check_uri_reference(name, value)


def _uri_reference(name: str, value: str, version: str) -> None:
    _check_uri_reference(name, value)


def _timestamp(name: str, value: str, version: str) -> None:
    _check_timestamp(name, value)


_STRING_RULES = {
    "id": _non_empty, "type": _non_empty, "specversion": _non_empty, "source": _uri_reference,
    "subject": _non_empty, "datacontenttype": _media_type, "time": _timestamp, "dataschema": _dataschema,
    "schemaurl": _uri_reference, "datacontentencoding": _non_empty,
}


def _check_uri_reference(name: str, value: str) -> None:
    if not value:
        raise MalformedEvent(name, "must be a non-empty string")
    if _NOT_IN_URI.search(value):
        raise MalformedEvent(name, "must be a URI-reference (no whitespace or control characters)")


def _check_timestamp(name: str, value: str) -> None:
    if not _RFC3339.fullmatch(value):
        raise MalformedEvent(name, f"{value!r} is not an RFC 3339 timestamp")
    # RFC 3339 allows a leap second (:60), which datetime cannot hold: check the rest of the value.
    checkable = value[:17] + "59" + value[19:] if value[17:19] == "60" else value
    try:
        datetime.fromisoformat(checkable.replace("z", "Z").replace("t", "T"))
    except ValueError as exc:
        raise MalformedEvent(name, f"{value!r} is not a valid timestamp: {exc}") from None


def timestamp(value: object) -> datetime | None:
    """An RFC 3339 `time` as an aware datetime (lower-case `t`/`z` taken, a leap second `:60` read as `:59`, as the
    ingress admits them); None for a value that is not one."""
    if not isinstance(value, str) or not _RFC3339.fullmatch(value):
        return None
    text = value[:17] + "59" + value[19:] if value[17:19] == "60" else value
    try:
        return datetime.fromisoformat(text.replace("z", "Z").replace("t", "T").replace("Z", "+00:00"))
    except ValueError:
        return None
