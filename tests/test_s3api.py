"""The S3 endpoint (`mapemesh.storage.s3api`) over a `MemoryStore`, driven by real boto3 on loopback: what a user of
boto3, s3transfer or the AWS CLI would notice (byte-exact objects, listings, multipart, errors by S3 code)."""

from __future__ import annotations

import asyncio
import base64
import datetime
import gzip
import hashlib
import io
import ipaddress
import logging
import os
import ssl
import threading
import zlib
from collections.abc import Iterator
from pathlib import Path

import boto3
import botocore.config
import httpx
import pytest
from aiohttp import web
from boto3.s3.transfer import TransferConfig
from botocore.exceptions import ClientError

from mapemesh.storage.memory import MemoryStore
from mapemesh.storage.objects import MIN_PART_BYTES, ObjectStore
from mapemesh.storage.s3api import s3_app

MiB = 1024 * 1024


class Server:
    """aiohttp applications served on free loopback ports by one event loop in a thread."""

    def __init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self._runners: list[web.AppRunner] = []

    def serve(self, app: web.Application, ssl_context: ssl.SSLContext | None = None) -> str:
        """Serve `app`; its base URL."""
        async def start() -> str:
            runner = web.AppRunner(app, access_log=None)
            await runner.setup()
            await web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ssl_context).start()
            self._runners.append(runner)
            return f"{'https' if ssl_context else 'http'}://127.0.0.1:{runner.addresses[0][1]}"
        return asyncio.run_coroutine_threadsafe(start(), self._loop).result(10)

    def close(self) -> None:
        async def stop() -> None:
            for runner in self._runners:
                await runner.cleanup()
        asyncio.run_coroutine_threadsafe(stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)


def client(url: str, **config: object) -> object:
    """boto3's S3 client as the gateway's users configure it (path style)."""
    return boto3.client("s3", endpoint_url=url, aws_access_key_id="x", aws_secret_access_key="y",
                        region_name="us-east-1", verify=config.pop("verify", True),
                        config=botocore.config.Config(s3={"addressing_style": "path"}, **config))


def code(exc: pytest.ExceptionInfo[ClientError]) -> str:
    return exc.value.response["Error"]["Code"]


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    s = Server()
    yield s
    s.close()


@pytest.fixture(scope="module")
def url(server: Server) -> str:
    return server.serve(s3_app(MemoryStore()))


@pytest.fixture(scope="module")
def s3(url: str):
    return client(url)


@pytest.fixture(scope="module")
def blob() -> bytes:
    """64 MiB of random bytes."""
    return os.urandom(64 * MiB)


@pytest.fixture
def bucket(s3, request: pytest.FixtureRequest) -> str:
    name = request.node.name.lower().replace("_", "-").replace("[", "-").replace("]", "")[:50]
    s3.create_bucket(Bucket=name)
    return name


def test_memory_store_implements_the_protocol() -> None:
    assert isinstance(MemoryStore(), ObjectStore)


def test_buckets_are_created_listed_and_deleted(s3) -> None:
    s3.create_bucket(Bucket="alpha")
    s3.create_bucket(Bucket="beta", CreateBucketConfiguration={"LocationConstraint": "us-east-1"})
    assert {"alpha", "beta"} <= {b["Name"] for b in s3.list_buckets()["Buckets"]}
    s3.head_bucket(Bucket="alpha")
    assert s3.get_bucket_location(Bucket="alpha")["LocationConstraint"] is None
    with pytest.raises(ClientError) as exc:
        s3.create_bucket(Bucket="alpha")
    assert code(exc) == "BucketAlreadyOwnedByYou"
    with pytest.raises(ClientError) as exc:
        s3.create_bucket(Bucket="gamma", CreateBucketConfiguration={"LocationConstraint": "eu-west-1"})
    assert code(exc) == "IllegalLocationConstraintException"
    with pytest.raises(ClientError) as exc:
        s3.create_bucket(Bucket="Not_Valid")
    assert code(exc) == "InvalidBucketName"

    s3.put_object(Bucket="alpha", Key="k", Body=b"x")
    with pytest.raises(ClientError) as exc:
        s3.delete_bucket(Bucket="alpha")
    assert code(exc) == "BucketNotEmpty"
    s3.delete_object(Bucket="alpha", Key="k")
    s3.delete_bucket(Bucket="alpha")
    with pytest.raises(ClientError) as exc:
        s3.head_bucket(Bucket="alpha")
    assert code(exc) == "404"
    with pytest.raises(ClientError) as exc:
        s3.delete_bucket(Bucket="alpha")
    assert code(exc) == "NoSuchBucket"


@pytest.mark.parametrize("size", [0, 1, MiB, 64 * MiB])
def test_objects_round_trip_byte_exact(s3, bucket: str, blob: bytes, size: int) -> None:
    data = blob[:size]
    etag = f'"{hashlib.md5(data).hexdigest()}"'
    assert s3.put_object(Bucket=bucket, Key="obj", Body=data)["ETag"] == etag
    head = s3.head_object(Bucket=bucket, Key="obj")
    assert (head["ContentLength"], head["ETag"]) == (size, etag)
    got = s3.get_object(Bucket=bucket, Key="obj")
    assert got["Body"].read() == data
    assert (got["ContentLength"], got["ETag"]) == (size, etag)
    assert abs(got["LastModified"] - datetime.datetime.now(datetime.UTC)) < datetime.timedelta(minutes=1)
    s3.delete_object(Bucket=bucket, Key="obj")
    with pytest.raises(ClientError) as exc:
        s3.get_object(Bucket=bucket, Key="obj")
    assert code(exc) == "NoSuchKey"


def test_metadata_and_content_type_round_trip(s3, bucket: str) -> None:
    s3.put_object(Bucket=bucket, Key="doc.txt", Body=b"hello", ContentType="text/plain; charset=utf-8",
                  Metadata={"Owner": "ana", "stage": "analyze"})
    for answer in (s3.head_object(Bucket=bucket, Key="doc.txt"), s3.get_object(Bucket=bucket, Key="doc.txt")):
        assert answer["ContentType"] == "text/plain; charset=utf-8"
        assert answer["Metadata"] == {"owner": "ana", "stage": "analyze"}
    s3.put_object(Bucket=bucket, Key="plain", Body=b"x")
    assert s3.head_object(Bucket=bucket, Key="plain")["ContentType"] == "binary/octet-stream"
    packed = gzip.compress(b"kept as sent" * 100)
    s3.put_object(Bucket=bucket, Key="packed.gz", Body=packed, ContentEncoding="gzip")
    assert s3.get_object(Bucket=bucket, Key="packed.gz")["Body"].read() == packed


def test_ranged_gets(s3, bucket: str, blob: bytes) -> None:
    data = blob[:1000]
    s3.put_object(Bucket=bucket, Key="r", Body=data)
    for header, first, last in [("bytes=0-9", 0, 9), ("bytes=100-199", 100, 199), ("bytes=-10", 990, 999),
                                ("bytes=990-", 990, 999), ("bytes=995-5000", 995, 999), ("bytes=-5000", 0, 999)]:
        got = s3.get_object(Bucket=bucket, Key="r", Range=header)
        assert got["ResponseMetadata"]["HTTPStatusCode"] == 206, header
        assert got["ContentRange"] == f"bytes {first}-{last}/1000", header
        assert got["Body"].read() == data[first:last + 1], header
    s3.put_object(Bucket=bucket, Key="empty", Body=b"")
    for key, header in (("r", "bytes=1000-"), ("r", "bytes=5000-6000"), ("empty", "bytes=0-"), ("empty", "bytes=-1")):
        with pytest.raises(ClientError) as exc:
            s3.get_object(Bucket=bucket, Key=key, Range=header)
        assert (code(exc), exc.value.response["ResponseMetadata"]["HTTPStatusCode"]) == ("InvalidRange", 416)


def test_conditional_gets(s3, bucket: str) -> None:
    etag = s3.put_object(Bucket=bucket, Key="c", Body=b"v1")["ETag"]
    assert s3.get_object(Bucket=bucket, Key="c", IfMatch=etag)["Body"].read() == b"v1"
    with pytest.raises(ClientError) as exc:
        s3.get_object(Bucket=bucket, Key="c", IfMatch='"0123"')
    assert code(exc) == "PreconditionFailed"
    with pytest.raises(ClientError) as exc:
        s3.get_object(Bucket=bucket, Key="c", IfNoneMatch=etag)
    assert exc.value.response["ResponseMetadata"]["HTTPStatusCode"] == 304


KEYS = ["a/1", "a/2", "a/b/3", "b/4", "c", "dir with space/x y", "plus+sign", "ünïcode/ç", "ünïcode/日本", "z",
        "\uff5a wide", "\U0001f600 emoji"]
"""In UTF-8 binary order U+FF5A sorts before U+1F600 (in UTF-16 order it would not)."""


def test_list_objects_v2_prefix_delimiter_and_pages(s3, bucket: str) -> None:
    for key in KEYS:
        s3.put_object(Bucket=bucket, Key=key, Body=key.encode())
    expected = sorted(KEYS, key=lambda k: k.encode())
    listed = s3.list_objects_v2(Bucket=bucket)
    assert [o["Key"] for o in listed["Contents"]] == expected
    assert (listed["KeyCount"], listed["IsTruncated"]) == (len(KEYS), False)
    assert listed["Contents"][0]["Size"] == 3

    assert [o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix="a/")["Contents"]] == ["a/1", "a/2", "a/b/3"]
    top = s3.list_objects_v2(Bucket=bucket, Delimiter="/")
    assert [p["Prefix"] for p in top["CommonPrefixes"]] == ["a/", "b/", "dir with space/", "ünïcode/"]
    assert [o["Key"] for o in top["Contents"]] == ["c", "plus+sign", "z", "\uff5a wide", "\U0001f600 emoji"]
    under_a = s3.list_objects_v2(Bucket=bucket, Prefix="a/", Delimiter="/")
    assert [o["Key"] for o in under_a["Contents"]] == ["a/1", "a/2"]
    assert [p["Prefix"] for p in under_a["CommonPrefixes"]] == ["a/b/"]
    assert [o["Key"] for o in s3.list_objects_v2(Bucket=bucket, StartAfter="plus+sign")["Contents"]] == expected[-5:]

    keys, token, pages = [], None, 0
    while True:
        page = s3.list_objects_v2(Bucket=bucket, MaxKeys=3, **({"ContinuationToken": token} if token else {}))
        pages += 1
        assert page["KeyCount"] == len(page.get("Contents", []))
        keys += [o["Key"] for o in page.get("Contents", [])]
        if not page["IsTruncated"]:
            break
        token = page["NextContinuationToken"]
    assert (keys, pages) == (expected, 4)

    entries = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Delimiter="/", PaginationConfig={
            "PageSize": 2}):
        entries += [o["Key"] for o in page.get("Contents", [])] + [p["Prefix"] for p in page.get("CommonPrefixes", [])]
    assert sorted(entries) == sorted(["a/", "b/", "c", "dir with space/", "plus+sign", "ünïcode/", "z", "\uff5a wide",
                                      "\U0001f600 emoji"])


def test_list_objects_v1(s3, bucket: str) -> None:
    for key in KEYS:
        s3.put_object(Bucket=bucket, Key=key, Body=b"")
    keys = []
    for page in s3.get_paginator("list_objects").paginate(Bucket=bucket, PaginationConfig={"PageSize": 4}):
        keys += [o["Key"] for o in page["Contents"]]
    assert keys == sorted(KEYS, key=lambda k: k.encode())
    page = s3.list_objects(Bucket=bucket, Delimiter="/", Marker="b/4")
    assert [o["Key"] for o in page["Contents"]] == ["c", "plus+sign", "z", "\uff5a wide", "\U0001f600 emoji"]
    assert [p["Prefix"] for p in page["CommonPrefixes"]] == ["dir with space/", "ünïcode/"]


def test_delete_objects(s3, bucket: str) -> None:
    for key in ("d1", "d2", "dir/d 3"):
        s3.put_object(Bucket=bucket, Key=key, Body=b"x")
    answer = s3.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": k} for k in ("d1", "dir/d 3", "gone")]})
    assert sorted(d["Key"] for d in answer["Deleted"]) == ["d1", "dir/d 3", "gone"]
    assert "Errors" not in answer
    assert [o["Key"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"]] == ["d2"]
    quiet = s3.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": "d2"}], "Quiet": True})
    assert "Deleted" not in quiet
    assert s3.list_objects_v2(Bucket=bucket)["KeyCount"] == 0


def test_multipart_upload(s3, bucket: str, blob: bytes) -> None:
    parts_data = [blob[i * MIN_PART_BYTES:(i + 1) * MIN_PART_BYTES] for i in range(3)] + [b"the end"]
    upload = s3.create_multipart_upload(Bucket=bucket, Key="big/one", ContentType="video/mp4",
                                        Metadata={"camera": "3"})["UploadId"]
    etags = [s3.upload_part(Bucket=bucket, Key="big/one", UploadId=upload, PartNumber=n, Body=d)["ETag"]
             for n, d in enumerate(parts_data, 1)]
    assert etags == [f'"{hashlib.md5(d).hexdigest()}"' for d in parts_data]
    listed = s3.list_parts(Bucket=bucket, Key="big/one", UploadId=upload)["Parts"]
    assert [(p["PartNumber"], p["ETag"], p["Size"]) for p in listed] == \
        [(n, e, len(d)) for n, (e, d) in enumerate(zip(etags, parts_data, strict=True), 1)]
    answer = s3.complete_multipart_upload(Bucket=bucket, Key="big/one", UploadId=upload, MultipartUpload={
        "Parts": [{"PartNumber": n, "ETag": e} for n, e in enumerate(etags, 1)]})
    digests = b"".join(hashlib.md5(d).digest() for d in parts_data)
    assert answer["ETag"] == f'"{hashlib.md5(digests).hexdigest()}-4"'
    got = s3.get_object(Bucket=bucket, Key="big/one")
    assert got["Body"].read() == b"".join(parts_data)
    assert (got["ContentType"], got["Metadata"], got["ETag"]) == ("video/mp4", {"camera": "3"}, answer["ETag"])

    small = s3.create_multipart_upload(Bucket=bucket, Key="small")["UploadId"]
    tags = [s3.upload_part(Bucket=bucket, Key="small", UploadId=small, PartNumber=n, Body=b"tiny")["ETag"]
            for n in (1, 2)]
    with pytest.raises(ClientError) as exc:
        s3.complete_multipart_upload(Bucket=bucket, Key="small", UploadId=small, MultipartUpload={
            "Parts": [{"PartNumber": n, "ETag": e} for n, e in enumerate(tags, 1)]})
    assert code(exc) == "EntityTooSmall"
    with pytest.raises(ClientError) as exc:
        s3.complete_multipart_upload(Bucket=bucket, Key="small", UploadId=small, MultipartUpload={
            "Parts": [{"PartNumber": 1, "ETag": '"0000"'}]})
    assert code(exc) == "InvalidPart"
    s3.abort_multipart_upload(Bucket=bucket, Key="small", UploadId=small)
    with pytest.raises(ClientError) as exc:
        s3.list_parts(Bucket=bucket, Key="small", UploadId=small)
    assert code(exc) == "NoSuchUpload"
    with pytest.raises(ClientError) as exc:
        s3.head_object(Bucket=bucket, Key="small")
    assert code(exc) == "404"


def test_transfer_manager_multipart_and_ranged(s3, bucket: str, blob: bytes) -> None:
    config = TransferConfig(multipart_threshold=8 * MiB, multipart_chunksize=8 * MiB, max_concurrency=4)
    s3.upload_fileobj(io.BytesIO(blob), bucket, "transfer/blob.bin", Config=config)
    assert s3.head_object(Bucket=bucket, Key="transfer/blob.bin")["ETag"].endswith('-8"')
    out = io.BytesIO()
    s3.download_fileobj(bucket, "transfer/blob.bin", out, Config=config)
    assert out.getvalue() == blob


def test_errors_map_to_s3_codes(s3, bucket: str) -> None:
    with pytest.raises(ClientError) as exc:
        s3.get_object(Bucket="no-such-bucket", Key="k")
    assert code(exc) == "NoSuchBucket"
    with pytest.raises(ClientError) as exc:
        s3.put_object(Bucket="no-such-bucket", Key="k", Body=b"x")
    assert code(exc) == "NoSuchBucket"
    with pytest.raises(ClientError) as exc:
        s3.list_objects_v2(Bucket="no-such-bucket")
    assert code(exc) == "NoSuchBucket"
    with pytest.raises(ClientError) as exc:
        s3.get_object(Bucket=bucket, Key="missing")
    assert (code(exc), exc.value.response["ResponseMetadata"]["HTTPStatusCode"]) == ("NoSuchKey", 404)
    assert exc.value.response["ResponseMetadata"]["RequestId"]
    s3.put_object(Bucket=bucket, Key="src", Body=b"x")
    with pytest.raises(ClientError) as exc:
        s3.copy_object(Bucket=bucket, Key="dst", CopySource={"Bucket": bucket, "Key": "src"})
    assert (code(exc), exc.value.response["ResponseMetadata"]["HTTPStatusCode"]) == ("NotImplemented", 501)
    with pytest.raises(ClientError) as exc:
        s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    assert code(exc) == "NotImplemented"
    with pytest.raises(ClientError) as exc:
        s3.put_object(Bucket=bucket, Key="k", Body=b"abc", ContentMD5=base64.b64encode(b"0" * 16).decode())
    assert code(exc) == "BadDigest"


def test_object_size_limit(server: Server) -> None:
    s3 = client(server.serve(s3_app(MemoryStore(), max_object_bytes=MiB)))
    s3.create_bucket(Bucket="limited")
    s3.put_object(Bucket="limited", Key="fits", Body=b"x" * MiB)
    with pytest.raises(ClientError) as exc:
        s3.put_object(Bucket="limited", Key="big", Body=b"x" * (MiB + 1))
    assert code(exc) == "EntityTooLarge"


class FailingStore(MemoryStore):
    async def list_buckets(self):
        raise RuntimeError("disk on fire")


def test_unexpected_exception_is_internal_error(server: Server, caplog: pytest.LogCaptureFixture) -> None:
    store: ObjectStore = FailingStore()
    s3 = client(server.serve(s3_app(store)), retries={"max_attempts": 1})
    with caplog.at_level(logging.ERROR, logger="mapemesh.storage.s3api"), pytest.raises(ClientError) as exc:
        s3.list_buckets()
    assert (code(exc), exc.value.response["ResponseMetadata"]["HTTPStatusCode"]) == ("InternalError", 500)
    assert "disk on fire" in caplog.text


def _self_signed(directory: Path) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=1))
            .not_valid_after(now + datetime.timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
            .sign(key, hashes.SHA256()))
    cert_file, key_file = directory / "cert.pem", directory / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_file, key_file


def test_aws_chunked_bodies_from_boto3_over_https(server: Server, blob: bytes, tmp_path: Path) -> None:
    """Over HTTPS boto3 sends bodies in aws-chunked framing with a CRC32 trailer: the bytes stored are the object's."""
    cert, key = _self_signed(tmp_path)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    s3 = client(server.serve(s3_app(MemoryStore()), context), verify=str(cert))
    encodings: list[str] = []
    s3.meta.events.register("before-send.s3", lambda request, **_: encodings.append(
        str(request.headers.get("Content-Encoding"))))
    s3.create_bucket(Bucket="secure")
    for size in (0, 1, MiB + 7):
        s3.put_object(Bucket="secure", Key=f"o{size}", Body=blob[:size])
        assert s3.get_object(Bucket="secure", Key=f"o{size}")["Body"].read() == blob[:size]
    assert any("aws-chunked" in e for e in encodings)
    config = TransferConfig(multipart_threshold=5 * MiB, multipart_chunksize=5 * MiB)
    s3.upload_fileobj(io.BytesIO(blob[:12 * MiB]), "secure", "multi", Config=config)
    assert s3.get_object(Bucket="secure", Key="multi")["Body"].read() == blob[:12 * MiB]


def test_signed_aws_chunked_and_checksums(url: str, s3) -> None:
    """Other SDKs sign every chunk (STREAMING-AWS4-HMAC-SHA256-PAYLOAD); a wrong checksum or framing is a 400."""
    s3.create_bucket(Bucket="raw")
    signature = b";chunk-signature=" + b"0" * 64 + b"\r\n"
    body = b"5" + signature + b"hello\r\n" + b"6" + signature + b" world\r\n" + b"0" + signature + b"\r\n"
    headers = {"x-amz-content-sha256": "STREAMING-AWS4-HMAC-SHA256-PAYLOAD", "Content-Encoding": "aws-chunked",
               "x-amz-decoded-content-length": "11"}
    assert httpx.put(f"{url}/raw/signed%20key", content=body, headers=headers).status_code == 200
    assert s3.get_object(Bucket="raw", Key="signed key")["Body"].read() == b"hello world"

    cut = httpx.put(f"{url}/raw/cut", content=body[:30], headers=headers)
    assert (cut.status_code, b"<Code>IncompleteBody</Code>" in cut.content) == (400, True)
    crc = base64.b64encode(zlib.crc32(b"hello!").to_bytes(4, "big")).decode()
    trailer = b"b\r\nhello world\r\n0\r\nx-amz-checksum-crc32:" + crc.encode() + b"\r\n\r\n"
    bad = httpx.put(f"{url}/raw/bad", content=trailer, headers={
        "x-amz-content-sha256": "STREAMING-UNSIGNED-PAYLOAD-TRAILER", "Content-Encoding": "aws-chunked",
        "x-amz-trailer": "x-amz-checksum-crc32"})
    assert (bad.status_code, b"<Code>BadDigest</Code>" in bad.content) == (400, True)
    with pytest.raises(ClientError) as exc:
        s3.head_object(Bucket="raw", Key="bad")
    assert code(exc) == "404"
    unknown = httpx.request("PATCH", f"{url}/raw/x")
    assert unknown.status_code == 405
