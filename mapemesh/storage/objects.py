"""The object store the S3 endpoint serves (`mapemesh.storage.s3api`): what a bucket and an object are, and the
operations, independent of how objects are kept (the erasure-coded gateway, or memory in tests).

| operation                                    | errors (`StorageError.code`, as S3 names them)            |
|----------------------------------------------|-----------------------------------------------------------|
| `create_bucket(name)`                        | BucketAlreadyOwnedByYou, InvalidBucketName                |
| `delete_bucket(name)`                        | NoSuchBucket, BucketNotEmpty                              |
| `list_buckets()`                             |                                                           |
| `put_object(bucket, key, data, ...)`         | NoSuchBucket; returns the stored `ObjectInfo`             |
| `get_object(bucket, key, range)`             | NoSuchBucket, NoSuchKey, InvalidRange                     |
| `head_object(bucket, key)`                   | NoSuchBucket, NoSuchKey                                   |
| `delete_object(bucket, key)`                 | NoSuchBucket (a missing key is not an error, as in S3)     |
| `list_objects(bucket, prefix, after, limit)` | NoSuchBucket; keys in UTF-8 binary order, after `after`    |
| multipart: `create_upload`, `upload_part`,   | NoSuchUpload, InvalidPart, InvalidPartOrder,              |
| `complete_upload`, `abort_upload`,           | EntityTooSmall (a part but the last under 5 MiB)           |
| `list_parts`                                 |                                                           |

Ranges are inclusive byte offsets `(first, last)` as HTTP has them (`last` None: to the end); an ETag is the
quoted MD5 of the object (of a multipart object: the MD5 of the parts' MD5s, `-N`), as S3 makes it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

MIN_PART_BYTES = 5 * 1024 * 1024


class StorageError(Exception):
    """An S3 error: `code` as S3 names it, `status` its HTTP status."""

    STATUS = {"NoSuchBucket": 404, "NoSuchKey": 404, "NoSuchUpload": 404, "BucketAlreadyOwnedByYou": 409,
              "BucketAlreadyExists": 409, "BucketNotEmpty": 409, "InvalidBucketName": 400, "InvalidRange": 416,
              "InvalidPart": 400, "InvalidPartOrder": 400, "EntityTooSmall": 400, "InvalidArgument": 400,
              "ServiceUnavailable": 503, "InternalError": 500, "SlowDown": 503}

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code, self.message = code, message

    @property
    def status(self) -> int:
        return self.STATUS.get(self.code, 400)


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    key: str
    size: int
    etag: str
    """Quoted, as S3 sends it: `"hex"` or `"hex-N"` for a multipart object."""
    modified: float
    content_type: str = "binary/octet-stream"
    metadata: dict[str, str] = field(default_factory=dict)
    """User metadata (`x-amz-meta-*`, names without the prefix, lower case)."""


@dataclass(frozen=True, slots=True)
class BucketInfo:
    name: str
    created: float


@runtime_checkable
class ObjectStore(Protocol):
    async def create_bucket(self, name: str) -> None: ...
    async def delete_bucket(self, name: str) -> None: ...
    async def list_buckets(self) -> list[BucketInfo]: ...
    async def put_object(self, bucket: str, key: str, data: bytes, *, content_type: str | None = None,
                         metadata: dict[str, str] | None = None) -> ObjectInfo: ...
    async def get_object(self, bucket: str, key: str, byte_range: tuple[int, int | None] | None = None
                         ) -> tuple[ObjectInfo, bytes]:
        """The object's info and its bytes (the range's, when given; InvalidRange when it starts past the end)."""
        ...
    async def head_object(self, bucket: str, key: str) -> ObjectInfo: ...
    async def delete_object(self, bucket: str, key: str) -> None: ...
    async def list_objects(self, bucket: str, prefix: str = "", after: str = "", limit: int = 1000
                           ) -> tuple[list[ObjectInfo], bool]:
        """Objects whose keys start with `prefix` and sort after `after`, at most `limit`; and whether more are."""
        ...
    async def create_upload(self, bucket: str, key: str, *, content_type: str | None = None,
                            metadata: dict[str, str] | None = None) -> str: ...
    async def upload_part(self, bucket: str, key: str, upload_id: str, number: int, data: bytes) -> str:
        """The part's quoted ETag."""
        ...
    async def complete_upload(self, bucket: str, key: str, upload_id: str, parts: list[tuple[int, str]]
                              ) -> ObjectInfo: ...
    async def abort_upload(self, bucket: str, key: str, upload_id: str) -> None: ...
    async def list_parts(self, bucket: str, key: str, upload_id: str) -> list[tuple[int, str, int]]:
        """(number, quoted ETag, size) of each part uploaded so far."""
        ...
