"""The XML documents of the S3 REST API that `mapemesh.storage.s3api` reads and writes.

| document                           | direction | operation                                  |
|------------------------------------|-----------|--------------------------------------------|
| `Error`                            | answer    | every failed request                       |
| `ListAllMyBucketsResult`           | answer    | ListBuckets                                |
| `CreateBucketConfiguration`        | request   | CreateBucket (optional; region is checked) |
| `LocationConstraint`               | answer    | GetBucketLocation                          |
| `ListBucketResult`                 | answer    | ListObjects (v1) and ListObjectsV2         |
| `Delete` / `DeleteResult`          | both      | DeleteObjects                              |
| `InitiateMultipartUploadResult`    | answer    | CreateMultipartUpload                      |
| `CompleteMultipartUpload` / result | both      | CompleteMultipartUpload                    |
| `ListPartsResult`                  | answer    | ListParts                                  |

A request document that is not well formed, or lacks what it must have, raises `StorageError("MalformedXML")`.
Names in listings are URL-encoded when the client asked for `encoding-type=url` (boto3 always does).
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import quote

from mapemesh.storage.objects import BucketInfo, ObjectInfo, StorageError

NS = "http://s3.amazonaws.com/doc/2006-03-01/"
MAX_DELETE_KEYS = 1000


@dataclass(frozen=True, slots=True)
class Listing:
    """One page of a bucket's listing, with what the request asked for."""

    bucket: str
    prefix: str
    delimiter: str
    max_keys: int
    url_encoded: bool
    contents: list[ObjectInfo]
    prefixes: list[str]
    """Common prefixes, when a delimiter rolled keys up."""
    truncated: bool
    last: str
    """The last key or common prefix of the page: where the next page starts after."""


def iso8601(timestamp: float) -> str:
    """A time as S3's XML writes it: `2009-10-12T17:50:30.000Z`."""
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _add(parent: ET.Element, tag: str, text: object = None) -> ET.Element:
    child = ET.SubElement(parent, tag)
    if text is not None:
        child.text = ("true" if text else "false") if isinstance(text, bool) else str(text)
    return child


def _root(tag: str) -> ET.Element:
    return ET.Element(tag, xmlns=NS)


def _bytes(root: ET.Element) -> bytes:
    return ET.tostring(root, encoding="utf-8", xml_declaration=True)


def error(code: str, message: str, resource: str, request_id: str) -> bytes:
    """The body of an error answer."""
    root = ET.Element("Error")
    for tag, text in (("Code", code), ("Message", message), ("Resource", resource), ("RequestId", request_id)):
        _add(root, tag, text)
    return _bytes(root)


def list_buckets(buckets: Iterable[BucketInfo]) -> bytes:
    """ListBuckets' answer."""
    root = _root("ListAllMyBucketsResult")
    owner = _add(root, "Owner")
    _add(owner, "ID", "mapemesh")
    _add(owner, "DisplayName", "mapemesh")
    container = _add(root, "Buckets")
    for bucket in buckets:
        entry = _add(container, "Bucket")
        _add(entry, "Name", bucket.name)
        _add(entry, "CreationDate", iso8601(bucket.created))
    return _bytes(root)


def location(region: str) -> bytes:
    """GetBucketLocation's answer (empty for us-east-1, as S3 has it)."""
    root = _root("LocationConstraint")
    if region != "us-east-1":
        root.text = region
    return _bytes(root)


def _name(listing: Listing, name: str) -> str:
    """A key or prefix as the listing's encoding type has it."""
    return quote(name, safe="/") if listing.url_encoded else name


def _list_common(listing: Listing, root: ET.Element) -> None:
    for info in listing.contents:
        entry = _add(root, "Contents")
        _add(entry, "Key", _name(listing, info.key))
        _add(entry, "LastModified", iso8601(info.modified))
        _add(entry, "ETag", info.etag)
        _add(entry, "Size", info.size)
        _add(entry, "StorageClass", "STANDARD")
    for prefix in listing.prefixes:
        _add(_add(root, "CommonPrefixes"), "Prefix", _name(listing, prefix))
    if listing.url_encoded:
        _add(root, "EncodingType", "url")


def _list_head(listing: Listing) -> ET.Element:
    root = _root("ListBucketResult")
    _add(root, "Name", listing.bucket)
    _add(root, "Prefix", _name(listing, listing.prefix))
    if listing.delimiter:
        _add(root, "Delimiter", _name(listing, listing.delimiter))
    _add(root, "MaxKeys", listing.max_keys)
    _add(root, "IsTruncated", listing.truncated)
    return root


def list_objects_v2(listing: Listing, *, continuation_token: str | None, next_token: str | None,
                    start_after: str | None) -> bytes:
    """ListObjectsV2's answer."""
    root = _list_head(listing)
    _add(root, "KeyCount", len(listing.contents) + len(listing.prefixes))
    if continuation_token is not None:
        _add(root, "ContinuationToken", continuation_token)
    if next_token is not None:
        _add(root, "NextContinuationToken", next_token)
    if start_after is not None:
        _add(root, "StartAfter", _name(listing, start_after))
    _list_common(listing, root)
    return _bytes(root)


def list_objects_v1(listing: Listing, *, marker: str) -> bytes:
    """ListObjects' (v1) answer; NextMarker is always given on a truncated page, which clients accept."""
    root = _list_head(listing)
    _add(root, "Marker", _name(listing, marker))
    if listing.truncated:
        _add(root, "NextMarker", _name(listing, listing.last))
    _list_common(listing, root)
    return _bytes(root)


def delete_result(deleted: Iterable[str], errors: Iterable[tuple[str, StorageError]]) -> bytes:
    """DeleteObjects' answer: the keys deleted (none when quiet) and those that failed."""
    root = _root("DeleteResult")
    for key in deleted:
        _add(_add(root, "Deleted"), "Key", key)
    for key, err in errors:
        entry = _add(root, "Error")
        _add(entry, "Key", key)
        _add(entry, "Code", err.code)
        _add(entry, "Message", err.message)
    return _bytes(root)


def initiate_upload(bucket: str, key: str, upload_id: str) -> bytes:
    """CreateMultipartUpload's answer."""
    root = _root("InitiateMultipartUploadResult")
    for tag, text in (("Bucket", bucket), ("Key", key), ("UploadId", upload_id)):
        _add(root, tag, text)
    return _bytes(root)


def complete_upload(location_url: str, bucket: str, key: str, etag: str) -> bytes:
    """CompleteMultipartUpload's answer."""
    root = _root("CompleteMultipartUploadResult")
    for tag, text in (("Location", location_url), ("Bucket", bucket), ("Key", key), ("ETag", etag)):
        _add(root, tag, text)
    return _bytes(root)


def list_parts(bucket: str, key: str, upload_id: str, parts: list[tuple[int, str, int]], *, marker: int,
               max_parts: int, truncated: bool, modified: float) -> bytes:
    """ListParts' answer (`modified` stands for every part's LastModified, which the store does not keep)."""
    root = _root("ListPartsResult")
    for tag, text in (("Bucket", bucket), ("Key", key), ("UploadId", upload_id), ("PartNumberMarker", marker)):
        _add(root, tag, text)
    if truncated:
        _add(root, "NextPartNumberMarker", parts[-1][0])
    _add(root, "MaxParts", max_parts)
    _add(root, "IsTruncated", truncated)
    _add(root, "StorageClass", "STANDARD")
    for number, etag, size in parts:
        entry = _add(root, "Part")
        _add(entry, "PartNumber", number)
        _add(entry, "LastModified", iso8601(modified))
        _add(entry, "ETag", etag)
        _add(entry, "Size", size)
    return _bytes(root)


def _parse(body: bytes, document: str) -> ET.Element:
    try:
        root = ET.fromstring(body)
    except ET.ParseError as exc:
        raise StorageError("MalformedXML", f"the {document} document is not well-formed XML: {exc}") from None
    for element in root.iter():
        element.tag = element.tag.rpartition("}")[2]
    if root.tag != document:
        raise StorageError("MalformedXML", f"expected a {document} document, not {root.tag}")
    return root


def parse_create_bucket(body: bytes) -> str | None:
    """The LocationConstraint of a CreateBucketConfiguration (None without a body or a constraint)."""
    if not body.strip():
        return None
    return _parse(body, "CreateBucketConfiguration").findtext("LocationConstraint") or None


def parse_delete(body: bytes) -> tuple[list[str], bool]:
    """The keys of a Delete document, and whether the answer is to be quiet."""
    root = _parse(body, "Delete")
    keys = [obj.findtext("Key") for obj in root.findall("Object")]
    if not keys or len(keys) > MAX_DELETE_KEYS or None in keys:
        raise StorageError("MalformedXML", f"a Delete document names 1 to {MAX_DELETE_KEYS} objects, each with a Key")
    return [k for k in keys if k is not None], (root.findtext("Quiet") or "").strip().lower() == "true"


def parse_complete(body: bytes) -> list[tuple[int, str]]:
    """The (part number, ETag) pairs of a CompleteMultipartUpload document, in its order."""
    root = _parse(body, "CompleteMultipartUpload")
    parts = []
    for part in root.findall("Part"):
        number, etag = part.findtext("PartNumber"), part.findtext("ETag")
        if number is None or etag is None or not number.strip().isdigit():
            raise StorageError("MalformedXML", "every Part has a PartNumber (an integer) and an ETag")
        parts.append((int(number), etag.strip()))
    if not parts:
        raise StorageError("MalformedXML", "a CompleteMultipartUpload document lists at least one Part")
    return parts
