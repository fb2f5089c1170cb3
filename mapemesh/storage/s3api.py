"""The S3 REST API over an `ObjectStore`: what boto3, the AWS CLI and other S3 clients need to keep objects.

Path-style addressing only (`/{bucket}` and `/{bucket}/{key}`, the key percent-decoded; clients are configured with
`addressing_style="path"`): virtual-host style would need the gateway to know its own domain name.

| request                                         | operation               | answer                              |
|-------------------------------------------------|-------------------------|-------------------------------------|
| `GET /`                                         | ListBuckets             | 200 ListAllMyBucketsResult          |
| `PUT /b` (optional CreateBucketConfiguration)   | CreateBucket            | 200                                 |
| `HEAD /b`, `DELETE /b`                          | HeadBucket, DeleteBucket| 200, 204                            |
| `GET /b?location`                               | GetBucketLocation       | 200 LocationConstraint              |
| `GET /b?list-type=2`, `GET /b`                  | ListObjectsV2, v1       | 200 ListBucketResult                |
| `POST /b?delete`                                | DeleteObjects           | 200 DeleteResult                    |
| `PUT /b/k`                                      | PutObject               | 200, ETag                           |
| `GET /b/k` (`Range: bytes=a-b`, `a-`, `-n`)     | GetObject               | 200, or 206 with Content-Range      |
| `HEAD /b/k`, `DELETE /b/k`                      | HeadObject, DeleteObject| 200, 204                            |
| `POST /b/k?uploads`                             | CreateMultipartUpload   | 200 InitiateMultipartUploadResult   |
| `PUT /b/k?partNumber=N&uploadId=U`              | UploadPart              | 200, ETag                           |
| `POST /b/k?uploadId=U`                          | CompleteMultipartUpload | 200 CompleteMultipartUploadResult   |
| `DELETE /b/k?uploadId=U`, `GET /b/k?uploadId=U` | Abort, ListParts        | 204, 200 ListPartsResult            |
| `If-Match`, `If-None-Match`, `If-(Un)Modified-Since` on GET and HEAD | conditions | 412 PreconditionFailed, 304 |
| any other method                                | -                       | 405 MethodNotAllowed                |
| any other operation (CopyObject, `?acl`, ...)   | -                       | 501 NotImplemented                  |
| a body over `max_object_bytes` (object or part) | -                       | 400 EntityTooLarge                  |
| a checksum (`Content-MD5`, `x-amz-checksum-crc32`, `-sha1`, `-sha256`) that does not match | - | 400 BadDigest |
| a `StorageError` of the store                   | -                       | its status, S3's XML Error body     |
| any other exception                             | -                       | 500 InternalError (logged)          |

Bodies may come in `aws-chunked` framing (`Content-Encoding: aws-chunked`, `x-amz-content-sha256: STREAMING-...`),
which boto3 uses over HTTPS with its checksum as a trailer; the framing is removed and the trailer checked as a
header would be. CRC32C and CRC64NVME checksums are taken without being checked.

Limitation: signatures (SigV4 headers or presigned URLs) are not verified and unsigned requests are served: the
gateway trusts its network, as anyone who reaches it can read and write every bucket.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import logging
import re
import time
import uuid
import zlib
from collections.abc import Awaitable, Callable
from email.utils import formatdate, parsedate_to_datetime
from urllib.parse import quote, unquote

from aiohttp import web

from mapemesh.storage import s3xml
from mapemesh.storage.objects import ObjectInfo, ObjectStore, StorageError

log = logging.getLogger(__name__)

MAX_PART_BYTES = 5 * 1024**3
MAX_XML_BYTES = 4 * 1024 * 1024
_STATUS = {"NotImplemented": 501, "MethodNotAllowed": 405, "PreconditionFailed": 412}
"""Statuses of the errors the gateway raises itself that `StorageError.STATUS` does not know."""
_SUBRESOURCES = ("uploadId", "uploads", "delete", "location", "list-type")
"""Query parameters that name the operation, in order of precedence."""
_PARAMETERS = frozenset({"prefix", "delimiter", "max-keys", "marker", "continuation-token", "start-after",
                         "fetch-owner", "encoding-type", "partNumber", "max-parts", "part-number-marker", "x-id",
                         "AWSAccessKeyId", "Signature", "Expires"})
_OVERRIDES = {f"response-{h.lower()}": h for h in ("Content-Type", "Content-Disposition", "Cache-Control",
                                                   "Content-Encoding", "Content-Language", "Expires")}
_CHECKSUMS: dict[str, Callable[[bytes], bytes]] = {
    "content-md5": lambda data: hashlib.md5(data).digest(),
    "x-amz-checksum-crc32": lambda data: zlib.crc32(data).to_bytes(4, "big"),
    "x-amz-checksum-sha1": lambda data: hashlib.sha1(data).digest(),
    "x-amz-checksum-sha256": lambda data: hashlib.sha256(data).digest(),
}
_RANGE = re.compile(r"bytes=(\d*)-(\d*)")
_LAST_CHAR = "\U0010ffff"
"""Sorts after every character: `prefix + _LAST_CHAR` skips (nearly) every key under a common prefix at once."""
SEND_CHUNK_BYTES = 1 << 20
_OFFLOAD_BYTES = 1024 * 1024
"""Bodies from this size are hashed in a thread, not on the event loop."""

Operation = Callable[[web.Request, str, str], Awaitable[web.StreamResponse]]


def s3_app(store: ObjectStore, *, region: str = "us-east-1", max_object_bytes: int = 5 * 1024**3) -> web.Application:
    """An aiohttp application serving the S3 REST API over `store` (see the module's table)."""
    gateway = _Gateway(store, region, max_object_bytes)
    # A body with Content-Encoding gzip is an object's bytes as they are to be kept, not for aiohttp to inflate.
    app = web.Application(middlewares=[_errors], handler_args={"auto_decompress": False})
    app.router.add_route("*", "/{path:.*}", gateway.handle)
    return app


@web.middleware
async def _errors(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                  ) -> web.StreamResponse:
    """Every answer gets a request id; errors become S3's XML Error body with their status."""
    request_id = uuid.uuid4().hex[:16].upper()
    try:
        response = await handler(request)
    except web.HTTPException:
        raise
    except StorageError as err:
        response = _error_response(request, err, request_id)
    except Exception:
        log.exception("%s %s failed (request %s)", request.method, request.raw_path, request_id)
        response = _error_response(request, StorageError("InternalError", "the gateway failed unexpectedly"),
                                   request_id)
    response.headers["x-amz-request-id"] = request_id
    return response


def _error_response(request: web.Request, err: StorageError, request_id: str) -> web.Response:
    body = s3xml.error(err.code, err.message, request.path, request_id)
    return web.Response(status=_STATUS.get(err.code, err.status), body=body, content_type="application/xml")


class _Gateway:
    """The handlers of the S3 operations; `handle` picks one by method, path and query."""

    ROOT = {("GET", None): "list_buckets"}
    BUCKET = {("GET", None): "list_objects_v1", ("GET", "list-type"): "list_objects_v2",
              ("GET", "location"): "bucket_location", ("PUT", None): "create_bucket",
              ("HEAD", None): "head_bucket", ("DELETE", None): "delete_bucket", ("POST", "delete"): "delete_objects"}
    OBJECT = {("PUT", None): "put_object", ("GET", None): "get_object", ("HEAD", None): "head_object",
              ("DELETE", None): "delete_object", ("POST", "uploads"): "create_upload",
              ("PUT", "uploadId"): "upload_part", ("POST", "uploadId"): "complete_upload",
              ("DELETE", "uploadId"): "abort_upload", ("GET", "uploadId"): "list_parts"}

    def __init__(self, store: ObjectStore, region: str, max_object_bytes: int):
        self.store, self.region, self.max_object_bytes = store, region, max_object_bytes

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """Serve one request."""
        if request.method not in ("GET", "HEAD", "PUT", "POST", "DELETE"):
            raise StorageError("MethodNotAllowed", f"{request.method} is not an S3 method")
        path = unquote(request.raw_path.partition("?")[0])
        bucket, _, key = path[1:].partition("/")
        for name in request.query:
            if name not in _SUBRESOURCES and name not in _PARAMETERS and name not in _OVERRIDES \
                    and not name.lower().startswith("x-amz-"):
                raise StorageError("NotImplemented", f"the gateway does not implement the ?{name} operations")
        if "x-amz-copy-source" in request.headers:
            raise StorageError("NotImplemented", "the gateway does not implement CopyObject or UploadPartCopy")
        subresource = next((name for name in _SUBRESOURCES if name in request.query), None)
        table = self.OBJECT if key else self.BUCKET if bucket else self.ROOT
        name = table.get((request.method, subresource))
        if name is None:
            what = f" with ?{subresource}" if subresource else ""
            raise StorageError("NotImplemented", f"the gateway does not implement {request.method} {path}{what}")
        operation: Operation = getattr(self, name)
        return await operation(request, bucket, key)

    # Buckets.

    async def list_buckets(self, request: web.Request, bucket: str, key: str) -> web.Response:
        return _xml(s3xml.list_buckets(await self.store.list_buckets()))

    async def create_bucket(self, request: web.Request, bucket: str, key: str) -> web.Response:
        constraint = s3xml.parse_create_bucket(await _read_body(request, MAX_XML_BYTES))
        if constraint not in (None, self.region):
            raise StorageError("IllegalLocationConstraintException",
                               f"this gateway's region is {self.region}, not {constraint}")
        await self.store.create_bucket(bucket)
        return web.Response(headers={"Location": f"/{bucket}"})

    async def _check_bucket(self, bucket: str) -> None:
        if bucket not in {b.name for b in await self.store.list_buckets()}:
            raise StorageError("NoSuchBucket", f"the bucket {bucket!r} does not exist")

    async def head_bucket(self, request: web.Request, bucket: str, key: str) -> web.Response:
        await self._check_bucket(bucket)
        return web.Response(headers={"x-amz-bucket-region": self.region})

    async def bucket_location(self, request: web.Request, bucket: str, key: str) -> web.Response:
        await self._check_bucket(bucket)
        return _xml(s3xml.location(self.region))

    async def delete_bucket(self, request: web.Request, bucket: str, key: str) -> web.Response:
        await self.store.delete_bucket(bucket)
        return web.Response(status=204)

    async def list_objects_v2(self, request: web.Request, bucket: str, key: str) -> web.Response:
        query = request.query
        if query["list-type"] != "2":
            raise StorageError("InvalidArgument", "list-type is 2 (ListObjectsV2) or absent (ListObjects)")
        token, start_after = query.get("continuation-token"), query.get("start-after")
        after = start_after or ""
        if token is not None:
            try:
                after = base64.urlsafe_b64decode(token.encode()).decode()
            except (binascii.Error, UnicodeDecodeError):
                raise StorageError("InvalidArgument", "the continuation token is not one this gateway gave") from None
        listing = await self._list(request, bucket, after)
        next_token = base64.urlsafe_b64encode(listing.last.encode()).decode() if listing.truncated else None
        return _xml(s3xml.list_objects_v2(listing, continuation_token=token, next_token=next_token,
                                          start_after=start_after))

    async def list_objects_v1(self, request: web.Request, bucket: str, key: str) -> web.Response:
        marker = request.query.get("marker", "")
        return _xml(s3xml.list_objects_v1(await self._list(request, bucket, marker), marker=marker))

    async def _list(self, request: web.Request, bucket: str, after: str) -> s3xml.Listing:
        """The page of keys after `after`, with keys that share a prefix up to the delimiter rolled up into it.

        An entry (key or common prefix) is listed only if it sorts after the previous one, so a page that ends on
        a common prefix resumes after all of its keys."""
        prefix, delimiter = request.query.get("prefix", ""), request.query.get("delimiter", "")
        max_keys = min(_int(request.query.get("max-keys", "1000"), "max-keys"), 1000)
        contents: list[ObjectInfo] = []
        prefixes: list[str] = []
        last, truncated = after, False
        while max_keys and not truncated:
            page, more = await self.store.list_objects(bucket, prefix, after, max_keys - len(contents)
                                                       - len(prefixes) + 1)
            for info in page:
                after = info.key
                cut = info.key.find(delimiter, len(prefix)) if delimiter else -1
                entry = info.key if cut < 0 else info.key[:cut + len(delimiter)]
                if cut >= 0:
                    after = max(info.key, entry + _LAST_CHAR)
                if entry > last:
                    if len(contents) + len(prefixes) == max_keys:
                        truncated = True
                        break
                    if cut >= 0:
                        prefixes.append(entry)
                    else:
                        contents.append(info)
                    last = entry
                if cut >= 0:
                    break
            else:
                if not (more and page):
                    break
        return s3xml.Listing(bucket, prefix, delimiter, max_keys, request.query.get("encoding-type") == "url",
                             contents, prefixes, truncated, last)

    async def delete_objects(self, request: web.Request, bucket: str, key: str) -> web.Response:
        body = await _read_body(request, MAX_XML_BYTES)
        keys, quiet = s3xml.parse_delete(body)
        await self._check_bucket(bucket)
        deleted: list[str] = []
        errors: list[tuple[str, StorageError]] = []
        for name in keys:
            try:
                await self.store.delete_object(bucket, name)
            except StorageError as err:
                errors.append((name, err))
            else:
                deleted.append(name)
        return _xml(s3xml.delete_result([] if quiet else deleted, errors))

    # Objects.

    async def put_object(self, request: web.Request, bucket: str, key: str) -> web.Response:
        data, checksums = await _read_checked_body(request, self.max_object_bytes)
        info = await self.store.put_object(bucket, key, data, content_type=request.headers.get("Content-Type"),
                                           metadata=_metadata(request))
        return web.Response(headers={"ETag": info.etag, **checksums})

    async def get_object(self, request: web.Request, bucket: str, key: str) -> web.Response:
        if "partNumber" in request.query:
            raise StorageError("NotImplemented", "the gateway does not implement GetObject by partNumber")
        byte_range: tuple[int, int | None] | None = None
        match _parse_range(request.headers.get("Range", "")):
            case (None, int(suffix)):  # the last `suffix` bytes
                size = (await self.store.head_object(bucket, key)).size
                if suffix == 0 or size == 0:
                    raise StorageError("InvalidRange", f"the range bytes=-{suffix} is not satisfiable for an object "
                                                       f"of {size} bytes")
                byte_range = (max(size - suffix, 0), None)
            case (int(first), last):
                byte_range = (first, last)
        info, data = await self.store.get_object(bucket, key, byte_range)
        not_modified = _check_conditions(request, info)
        headers = _object_headers(info)
        if not_modified:
            return web.Response(status=304, headers={k: headers[k] for k in ("ETag", "Last-Modified")})
        headers.update({header: request.query[name] for name, header in _OVERRIDES.items() if name in request.query})
        if byte_range is None:
            return await _send(request, 200, headers, data)
        if not data:  # a satisfiable range has a byte; a store may not say so for an empty object
            raise StorageError("InvalidRange", f"the range is not satisfiable for an object of {info.size} bytes")
        first = byte_range[0]
        headers["Content-Range"] = f"bytes {first}-{first + len(data) - 1}/{info.size}"
        return await _send(request, 206, headers, data)

    async def head_object(self, request: web.Request, bucket: str, key: str) -> web.Response:
        info = await self.store.head_object(bucket, key)
        headers = _object_headers(info)
        if _check_conditions(request, info):
            return web.Response(status=304, headers={k: headers[k] for k in ("ETag", "Last-Modified")})
        return web.Response(headers={**headers, "Content-Length": str(info.size)})

    async def delete_object(self, request: web.Request, bucket: str, key: str) -> web.Response:
        await self.store.delete_object(bucket, key)
        return web.Response(status=204)

    # Multipart uploads.

    async def create_upload(self, request: web.Request, bucket: str, key: str) -> web.Response:
        upload_id = await self.store.create_upload(bucket, key, content_type=request.headers.get("Content-Type"),
                                                   metadata=_metadata(request))
        return _xml(s3xml.initiate_upload(bucket, key, upload_id))

    async def upload_part(self, request: web.Request, bucket: str, key: str) -> web.Response:
        number = _int(request.query.get("partNumber", ""), "partNumber")
        data, checksums = await _read_checked_body(request, min(self.max_object_bytes, MAX_PART_BYTES))
        etag = await self.store.upload_part(bucket, key, request.query["uploadId"], number, data)
        return web.Response(headers={"ETag": etag, **checksums})

    async def complete_upload(self, request: web.Request, bucket: str, key: str) -> web.Response:
        upload_id = request.query["uploadId"]
        parts = s3xml.parse_complete(await _read_body(request, MAX_XML_BYTES))
        sizes = {number: size for number, _, size in await self.store.list_parts(bucket, key, upload_id)}
        if sum(sizes.get(number, 0) for number, _ in parts) > self.max_object_bytes:
            raise StorageError("EntityTooLarge", f"the parts add up to more than {self.max_object_bytes} bytes")
        info = await self.store.complete_upload(bucket, key, upload_id, parts)
        url = f"{request.scheme}://{request.host}/{quote(bucket)}/{quote(key)}"
        return _xml(s3xml.complete_upload(url, bucket, key, info.etag))

    async def abort_upload(self, request: web.Request, bucket: str, key: str) -> web.Response:
        await self.store.abort_upload(bucket, key, request.query["uploadId"])
        return web.Response(status=204)

    async def list_parts(self, request: web.Request, bucket: str, key: str) -> web.Response:
        upload_id = request.query["uploadId"]
        marker = _int(request.query.get("part-number-marker", "0"), "part-number-marker")
        max_parts = min(_int(request.query.get("max-parts", "1000"), "max-parts"), 1000)
        parts = [p for p in await self.store.list_parts(bucket, key, upload_id) if p[0] > marker]
        truncated = len(parts) > max_parts
        return _xml(s3xml.list_parts(bucket, key, upload_id, parts[:max_parts], marker=marker, max_parts=max_parts,
                                     truncated=truncated, modified=time.time()))


def _xml(body: bytes) -> web.Response:
    return web.Response(body=body, content_type="application/xml")


def _int(value: str, name: str) -> int:
    if not value.isdigit():
        raise StorageError("InvalidArgument", f"{name} is a non-negative integer, not {value!r}")
    return int(value)


def _metadata(request: web.Request) -> dict[str, str]:
    """User metadata: the `x-amz-meta-*` headers, names lower case without the prefix."""
    return {name[11:].lower(): value for name, value in request.headers.items()
            if name.lower().startswith("x-amz-meta-")}


def _object_headers(info: ObjectInfo) -> dict[str, str]:
    headers = {"ETag": info.etag, "Last-Modified": formatdate(info.modified, usegmt=True),
               "Content-Type": info.content_type, "Accept-Ranges": "bytes"}
    headers.update({f"x-amz-meta-{name}": value for name, value in info.metadata.items()})
    return headers


def _parse_range(value: str) -> tuple[int | None, int | None] | None:
    """`(first, last)`, `(first, None)` or `(None, n)` for the last n bytes; None for no range or one HTTP says to
    ignore (malformed, several ranges, last before first)."""
    match = _RANGE.fullmatch(value.strip())
    if match is None or not (match[1] or match[2]):
        return None
    first, last = (int(match[1]) if match[1] else None), (int(match[2]) if match[2] else None)
    if first is not None and last is not None and last < first:
        return None
    return first, last


def _check_conditions(request: web.Request, info: ObjectInfo) -> bool:
    """Raise PreconditionFailed for a failed If-Match or If-Unmodified-Since; whether the answer is 304 Not
    Modified (If-None-Match, If-Modified-Since), as RFC 7232 orders them."""
    headers = request.headers

    def matches(value: str) -> bool:
        return value.strip() == "*" or info.etag.strip('"') in {tag.strip().strip('"') for tag in value.split(",")}

    if "If-Match" in headers:
        if not matches(headers["If-Match"]):
            raise StorageError("PreconditionFailed", f"the object's ETag is {info.etag}, not {headers['If-Match']}")
    elif (since := _http_date(headers.get("If-Unmodified-Since"))) is not None and int(info.modified) > since:
        raise StorageError("PreconditionFailed", "the object was modified since If-Unmodified-Since")
    if "If-None-Match" in headers:
        return matches(headers["If-None-Match"])
    since = _http_date(headers.get("If-Modified-Since"))
    return since is not None and int(info.modified) <= since


def _http_date(value: str | None) -> float | None:
    try:
        return parsedate_to_datetime(value).timestamp() if value else None
    except (TypeError, ValueError):
        return None


async def _send(request: web.Request, status: int, headers: dict[str, str], data: bytes) -> web.StreamResponse:
    """A body sent as it is, in SEND_CHUNK_BYTES writes when large (one write of a large body makes the HTTP layer
    copy it whole, with the event loop blocked meanwhile)."""
    if len(data) <= SEND_CHUNK_BYTES:
        return web.Response(status=status, body=data, headers=headers)
    response = web.StreamResponse(status=status, headers=headers)
    response.content_length = len(data)
    await response.prepare(request)
    view = memoryview(data)
    for start in range(0, len(data), SEND_CHUNK_BYTES):
        await response.write(view[start:start + SEND_CHUNK_BYTES])
    await response.write_eof()
    return response


async def _read_checked_body(request: web.Request, limit: int) -> tuple[bytes, dict[str, str]]:
    """An object's or part's bytes, unframed and checked against the checksums sent with them (headers or
    trailers); and the `x-amz-checksum-*` headers checked, to echo back as S3 does."""
    headers = request.headers
    sums = {name.lower(): value for name, value in headers.items() if name.lower() in _CHECKSUMS}
    if headers.get("x-amz-content-sha256", "").startswith("STREAMING-") \
            or "aws-chunked" in headers.get("Content-Encoding", ""):
        declared = headers.get("x-amz-decoded-content-length")
        if declared is not None and _int(declared, "x-amz-decoded-content-length") > limit:
            raise _too_large(limit)
        data, trailers = await _read_aws_chunked(request, limit)
        if declared is not None and len(data) != int(declared):
            raise StorageError("IncompleteBody", f"{len(data)} bytes came, x-amz-decoded-content-length is {declared}")
        sums.update((name, value) for name, value in trailers.items() if name in _CHECKSUMS)
    else:
        data = await _read_body(request, limit)
    if len(data) >= _OFFLOAD_BYTES:
        await asyncio.to_thread(_verify, data, sums)
    else:
        _verify(data, sums)
    return data, {name: value for name, value in sums.items() if name.startswith("x-amz-checksum-")}


def _verify(data: bytes, sums: dict[str, str]) -> None:
    for name, value in sums.items():
        try:
            expected = base64.b64decode(value, validate=True)
        except binascii.Error:
            raise StorageError("InvalidDigest", f"{name} is not base64: {value!r}") from None
        if _CHECKSUMS[name](data) != expected:
            raise StorageError("BadDigest", f"the body does not match its {name} {value}")


def _too_large(limit: int) -> StorageError:
    return StorageError("EntityTooLarge", f"the body is larger than this gateway's {limit} bytes")


async def _read_body(request: web.Request, limit: int) -> bytes:
    """The request's body, as sent; EntityTooLarge past `limit` bytes."""
    if request.content_length is not None and request.content_length > limit:
        raise _too_large(limit)
    chunks, size = [], 0
    async for chunk in request.content.iter_any():
        size += len(chunk)
        if size > limit:
            raise _too_large(limit)
        chunks.append(chunk)
    return b"".join(chunks)


async def _read_aws_chunked(request: web.Request, limit: int) -> tuple[bytes, dict[str, str]]:
    """The bytes in `aws-chunked` framing (`<hex size>[;chunk-signature=...]\\r\\n<data>\\r\\n`, ending with a chunk
    of size 0 and optional trailer lines), and the trailers by lower-case name. Chunk signatures are not checked."""
    stream, data = request.content, bytearray()
    try:
        while True:
            header = (await stream.readline()).strip()
            size = int(header.partition(b";")[0], 16)
            if size == 0:
                break
            if len(data) + size > limit:
                raise _too_large(limit)
            data += await stream.readexactly(size)
            if await stream.readexactly(2) != b"\r\n":
                raise ValueError("a chunk does not end with CRLF")
        trailers = {}
        while line := (await stream.readline()).strip():
            name, _, value = line.decode().partition(":")
            trailers[name.strip().lower()] = value.strip()
    except (ValueError, asyncio.IncompleteReadError) as exc:
        raise StorageError("IncompleteBody", f"the aws-chunked body is malformed or cut short: {exc}") from None
    return bytes(data), trailers
