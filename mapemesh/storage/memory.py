"""`MemoryStore`: an `ObjectStore` that keeps buckets, objects and multipart uploads in memory, as S3 does them.

The reference implementation of `mapemesh.storage.objects` (tests, and a gateway that needs no durability): the
errors are those of the protocol's table, ETags are S3's, and listings are in UTF-8 binary order (Python orders
`str` by code point, which is the same order).

| behaviour            | as S3                                                                           |
|----------------------|---------------------------------------------------------------------------------|
| bucket names         | 3 to 63 of `a-z 0-9 . -`, starting and ending with a letter or digit, not an IP |
| ETag                 | `"md5"`; multipart: `"md5(md5(part 1) + ... + md5(part N))-N"` (binary MD5s)     |
| parts                | numbers 1 to 10000; every part but the last at least 5 MiB (`MIN_PART_BYTES`)    |
| deleting a bucket    | BucketNotEmpty while it holds objects; its unfinished uploads are dropped       |

Every method runs without awaiting, so each is atomic on the event loop that calls it; the store is not meant to
be shared between threads.
"""

from __future__ import annotations

import bisect
import hashlib
import re
import time
import uuid
from dataclasses import dataclass, field

from mapemesh.storage.objects import MIN_PART_BYTES, BucketInfo, ObjectInfo, StorageError

MAX_PART_NUMBER = 10_000
_BUCKET_NAME = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_IP_ADDRESS = re.compile(r"\d+\.\d+\.\d+\.\d+")


@dataclass(slots=True)
class _Bucket:
    created: float
    keys: list[str] = field(default_factory=list)
    """Sorted, for listings."""
    objects: dict[str, tuple[ObjectInfo, bytes]] = field(default_factory=dict)


@dataclass(slots=True)
class _Upload:
    bucket: str
    key: str
    content_type: str | None
    metadata: dict[str, str]
    parts: dict[int, tuple[str, bytes]] = field(default_factory=dict)
    """Part number: (quoted ETag, bytes)."""


def _etag(data: bytes) -> str:
    return f'"{hashlib.md5(data).hexdigest()}"'


class MemoryStore:
    """An in-memory `ObjectStore`."""

    def __init__(self) -> None:
        self._buckets: dict[str, _Bucket] = {}
        self._uploads: dict[str, _Upload] = {}

    def _bucket(self, name: str) -> _Bucket:
        try:
            return self._buckets[name]
        except KeyError:
            raise StorageError("NoSuchBucket", f"the bucket {name!r} does not exist") from None

    def _upload(self, bucket: str, key: str, upload_id: str) -> _Upload:
        self._bucket(bucket)
        upload = self._uploads.get(upload_id)
        if upload is None or (upload.bucket, upload.key) != (bucket, key):
            raise StorageError("NoSuchUpload", f"no upload {upload_id!r} of {key!r} in {bucket!r}")
        return upload

    async def create_bucket(self, name: str) -> None:
        """Create the bucket `name`."""
        if not _BUCKET_NAME.fullmatch(name) or _IP_ADDRESS.fullmatch(name) or ".." in name:
            raise StorageError("InvalidBucketName", f"{name!r} is not a valid bucket name (3 to 63 of a-z 0-9 . -)")
        if name in self._buckets:
            raise StorageError("BucketAlreadyOwnedByYou", f"the bucket {name!r} exists")
        self._buckets[name] = _Bucket(created=time.time())

    async def delete_bucket(self, name: str) -> None:
        """Delete the empty bucket `name`, and its unfinished uploads."""
        if self._bucket(name).objects:
            raise StorageError("BucketNotEmpty", f"the bucket {name!r} holds objects")
        del self._buckets[name]
        for upload_id in [u for u, upload in self._uploads.items() if upload.bucket == name]:
            del self._uploads[upload_id]

    async def list_buckets(self) -> list[BucketInfo]:
        """Every bucket, by name."""
        return [BucketInfo(name, b.created) for name, b in sorted(self._buckets.items())]

    def _store(self, bucket: _Bucket, info: ObjectInfo, data: bytes) -> ObjectInfo:
        if info.key not in bucket.objects:
            bisect.insort(bucket.keys, info.key)
        bucket.objects[info.key] = (info, data)
        return info

    async def put_object(self, bucket: str, key: str, data: bytes, *, content_type: str | None = None,
                         metadata: dict[str, str] | None = None) -> ObjectInfo:
        """Store `data` as `key`, replacing what was there."""
        b = self._bucket(bucket)
        info = ObjectInfo(key, len(data), _etag(data), time.time(), content_type or "binary/octet-stream",
                          dict(metadata or {}))
        return self._store(b, info, bytes(data))

    async def get_object(self, bucket: str, key: str, byte_range: tuple[int, int | None] | None = None
                         ) -> tuple[ObjectInfo, bytes]:
        """The object's info and its bytes (the range's, when given; InvalidRange when it starts past the end)."""
        info, data = self._object(bucket, key)
        if byte_range is None:
            return info, data
        first, last = byte_range
        if first < 0 or first >= info.size or (last is not None and last < first):
            raise StorageError("InvalidRange", f"the range {first}-{'' if last is None else last} is not "
                                               f"satisfiable for an object of {info.size} bytes")
        end = info.size if last is None else min(last + 1, info.size)
        return info, data[first:end]

    def _object(self, bucket: str, key: str) -> tuple[ObjectInfo, bytes]:
        try:
            return self._bucket(bucket).objects[key]
        except KeyError:
            raise StorageError("NoSuchKey", f"no object {key!r} in {bucket!r}") from None

    async def head_object(self, bucket: str, key: str) -> ObjectInfo:
        """The object's info."""
        return self._object(bucket, key)[0]

    async def delete_object(self, bucket: str, key: str) -> None:
        """Delete `key` if it exists."""
        b = self._bucket(bucket)
        if b.objects.pop(key, None) is not None:
            del b.keys[bisect.bisect_left(b.keys, key)]

    async def list_objects(self, bucket: str, prefix: str = "", after: str = "", limit: int = 1000
                           ) -> tuple[list[ObjectInfo], bool]:
        """Objects whose keys start with `prefix` and sort after `after`, at most `limit`; and whether more are."""
        b = self._bucket(bucket)
        start = max(bisect.bisect_right(b.keys, after), bisect.bisect_left(b.keys, prefix))
        found: list[ObjectInfo] = []
        for key in b.keys[start:]:
            if not key.startswith(prefix):
                break
            if len(found) == limit:
                return found, True
            found.append(b.objects[key][0])
        return found, False

    async def create_upload(self, bucket: str, key: str, *, content_type: str | None = None,
                            metadata: dict[str, str] | None = None) -> str:
        """Start a multipart upload of `key`; its id."""
        self._bucket(bucket)
        upload_id = uuid.uuid4().hex
        self._uploads[upload_id] = _Upload(bucket, key, content_type, dict(metadata or {}))
        return upload_id

    async def upload_part(self, bucket: str, key: str, upload_id: str, number: int, data: bytes) -> str:
        """The part's quoted ETag."""
        upload = self._upload(bucket, key, upload_id)
        if not 1 <= number <= MAX_PART_NUMBER:
            raise StorageError("InvalidArgument", f"part number {number} is not between 1 and {MAX_PART_NUMBER}")
        etag = _etag(data)
        upload.parts[number] = (etag, bytes(data))
        return etag

    async def complete_upload(self, bucket: str, key: str, upload_id: str, parts: list[tuple[int, str]]
                              ) -> ObjectInfo:
        """Join the listed parts, in order, into the object `key`, and end the upload."""
        upload = self._upload(bucket, key, upload_id)
        if not parts:
            raise StorageError("InvalidArgument", "a multipart upload is completed with at least one part")
        chosen: list[bytes] = []
        for i, (number, etag) in enumerate(parts):
            if i and number <= parts[i - 1][0]:
                raise StorageError("InvalidPartOrder", "the parts are not listed in ascending order of number")
            stored = upload.parts.get(number)
            if stored is None or stored[0].strip('"') != etag.strip('"'):
                raise StorageError("InvalidPart", f"part {number} with ETag {etag} was not uploaded")
            if i < len(parts) - 1 and len(stored[1]) < MIN_PART_BYTES:
                raise StorageError("EntityTooSmall", f"part {number} has {len(stored[1])} bytes, under the "
                                                     f"{MIN_PART_BYTES} every part but the last needs")
            chosen.append(stored[1])
        digests = b"".join(hashlib.md5(data).digest() for data in chosen)
        data = b"".join(chosen)
        etag = f'"{hashlib.md5(digests).hexdigest()}-{len(chosen)}"'
        info = ObjectInfo(key, len(data), etag, time.time(), upload.content_type or "binary/octet-stream",
                          upload.metadata)
        del self._uploads[upload_id]
        return self._store(self._bucket(bucket), info, data)

    async def abort_upload(self, bucket: str, key: str, upload_id: str) -> None:
        """End the upload, dropping its parts."""
        self._upload(bucket, key, upload_id)
        del self._uploads[upload_id]

    async def list_parts(self, bucket: str, key: str, upload_id: str) -> list[tuple[int, str, int]]:
        """(number, quoted ETag, size) of each part uploaded so far."""
        upload = self._upload(bucket, key, upload_id)
        return [(number, etag, len(data)) for number, (etag, data) in sorted(upload.parts.items())]
