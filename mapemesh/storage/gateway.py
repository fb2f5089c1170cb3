"""The gateway's object store: every object erasure coded (`codec`) into k+m fragments, one per location, its
metadata in the state store (`objects`, key BUCKET/KEY), each bucket's Storage Policy in `buckets`.

| operation        | how                                                                                        |
|------------------|--------------------------------------------------------------------------------------------|
| put              | encoded with the bucket's policy now; every fragment written to its location, then the    |
|                  | metadata swapped in (one write), then the previous version's fragments deleted; a put      |
|                  | whose fragments cannot all be written fails (503) and leaves nothing behind                |
| get              | k fragments from the quickest locations (hedged: the others are asked when one fails or is |
|                  | slow, the first k answers win), decoded; up to m locations may be down;                    |
|                  | with m+1 down, 503 naming them. Metadata and fragments that changed meanwhile (a          |
|                  | migration's swap) are read again once                                                      |
| list, delete     | from the metadata; a delete removes the fragments after the metadata                      |
| multipart        | parts kept under DATA_DIR/storage/uploads until completed, then stored as one object      |

With a `sealer` (the locations file's `encryption`), an object is sealed before it is coded (`sealing`): the
fragments hold ciphertext, the envelope is in its metadata (`sealed`), and a migration moves it without the key.

A bucket's policy is `{k, m, locations}`: fragment i lives on `locations[i]` (so each location holds at most one
fragment of an object); a new bucket gets the default code on the cheapest locations it may use.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import re
import shutil
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mapemesh.state import Conflict, StateStore, update
from mapemesh.storage import codec
from mapemesh.storage.locations import Layout, LocationError, Stores
from mapemesh.storage.objects import MIN_PART_BYTES, BucketInfo, ObjectInfo, StorageError
from mapemesh.storage.sealing import Sealer, SealError

_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
Access = Callable[[str, str, str, int], None]
"""(bucket, key, operation, bytes): called for each object access (telemetry)."""
HEDGE_FACTOR, HEDGE_MIN_MS = 3.0, 50.0
"""A read asks the remaining locations when the first ones take HEDGE_FACTOR x their usual time (>= HEDGE_MIN_MS)."""
EWMA, SHUNNED_S = 0.2, 30.0
"""Weight of a new read time in a location's average; how long a location that failed a read is asked last."""
Changed = Callable[[], None]
"""Called when a bucket is created or deleted (its policy comes or goes)."""


def fragment_key(bucket: str, key: str, version: str, index: int) -> str:
    return f"{bucket}/{hashlib.sha256(key.encode()).hexdigest()[:40]}/{version}/{index}"


def _info(doc: dict[str, Any]) -> ObjectInfo:
    return ObjectInfo(key=doc["key"], size=doc["size"], etag=doc["etag"], modified=doc["modified"],
                      content_type=doc.get("content_type") or "binary/octet-stream", metadata=doc.get("metadata") or {})


class ECStore:
    """An `ObjectStore` over erasure-coded fragments in several S3 locations."""

    def __init__(self, store: StateStore, layout: Layout, stores: Stores, data: Path,
                 on_access: Access | None = None, on_buckets: Changed | None = None, sealer: Sealer | None = None):
        self.store, self.layout, self.stores, self.sealer = store, layout, stores, sealer
        self.uploads_dir = data / "storage" / "uploads"
        self.on_access = on_access or (lambda *_: None)
        self.on_buckets = on_buckets or (lambda: None)
        self.latency: dict[tuple[str, int], float] = {}
        self.shunned: dict[str, float] = {}

    # -- buckets and policies ----------------------------------------------------------------------------------------

    def default_policy(self, bucket: str) -> dict[str, Any]:
        allowed = sorted(self.layout.allowed(bucket), key=lambda n: (self.layout.locations[n].cost_per_gb, n))
        k, m = self.layout.default_k, self.layout.default_m
        if len(allowed) < k + m:
            raise StorageError("InvalidArgument", f"bucket {bucket} may use {len(allowed)} location(s), fewer than "
                                                  f"the default code's {k}+{m}")
        return {"k": k, "m": m, "locations": allowed[:k + m]}

    def check_policy(self, bucket: str, policy: dict[str, Any]) -> dict[str, Any]:
        """`policy` as {k, m, locations}, checked against the layout and the bucket's restriction (ValueError)."""
        try:
            k, m, locations = int(policy["k"]), int(policy["m"]), [str(x) for x in policy["locations"]]
        except (KeyError, TypeError, ValueError):
            raise ValueError("a Storage Policy is {k, m, locations}") from None
        if k < 1 or m < 0 or len(locations) != k + m or len(set(locations)) != k + m:
            raise ValueError(f"k={k}, m={m} needs k+m = {k + m} different locations, got {locations}")
        unknown = [x for x in locations if x not in self.layout.locations]
        if unknown:
            raise ValueError(f"unknown location(s) {', '.join(unknown)}")
        outside = [x for x in locations if x not in self.layout.allowed(bucket)]
        if outside:
            raise ValueError(f"bucket {bucket} may not use {', '.join(outside)} (its restriction: "
                             f"{', '.join(self.layout.restrictions.get(bucket, []))})")
        return {"k": k, "m": m, "locations": locations}

    def bucket(self, name: str) -> dict[str, Any]:
        doc = self.store.get("buckets", name)
        if doc is None:
            raise StorageError("NoSuchBucket", f"the bucket {name} does not exist")
        return doc.value

    async def create_bucket(self, name: str) -> None:
        if not _BUCKET.match(name) or ".." in name:
            raise StorageError("InvalidBucketName", f"{name!r}: 3-63 lowercase letters, digits, '-' and '.'")
        try:
            self.store.put("buckets", name, {"name": name, "created": time.time(),
                                             "policy": self.default_policy(name)}, expected_version=0)
        except Conflict:
            raise StorageError("BucketAlreadyOwnedByYou", f"the bucket {name} exists already") from None
        self.on_buckets()

    async def delete_bucket(self, name: str) -> None:
        self.bucket(name)
        if self._docs(name, limit=1):
            raise StorageError("BucketNotEmpty", f"the bucket {name} is not empty")
        self.store.delete("buckets", name)
        self.on_buckets()

    async def list_buckets(self) -> list[BucketInfo]:
        listed = sorted(self.store.list("buckets").items())
        return [BucketInfo(n, float(v.value.get("created") or 0)) for n, v in listed]

    def _docs(self, bucket: str, prefix: str = "", limit: int | None = None) -> list[tuple[str, Any]]:
        head = f"{bucket}/{prefix}"
        found = sorted(((k, v) for k, v in self.store.list("objects").items() if k.startswith(head)),
                       key=lambda kv: kv[0].encode())
        return found[:limit] if limit is not None else found

    # -- objects ---------------------------------------------------------------------------------------------------

    async def put_object(self, bucket: str, key: str, data: bytes, *, content_type: str | None = None,
                         metadata: dict[str, str] | None = None, etag: str | None = None) -> ObjectInfo:
        stored, sealed = data, None
        if self.sealer is not None:
            stored, sealed = await asyncio.to_thread(self.sealer.seal, data, f"{bucket}/{key}".encode())
        for _ in range(3):  # written again when the policy changed meanwhile, so no put lands on an old one
            policy = self.bucket(bucket)["policy"]
            k, m, locations = int(policy["k"]), int(policy["m"]), list(policy["locations"])
            version = uuid.uuid4().hex
            (fragments, padlen), digest = await asyncio.gather(
                asyncio.to_thread(codec.encode, stored, k, m),
                asyncio.to_thread(lambda: hashlib.md5(data).hexdigest() if etag is None else ""))
            placed = [{"i": i, "location": locations[i], "key": fragment_key(bucket, key, version, i)}
                      for i in range(k + m)]
            await self.write(placed, fragments)
            if self.bucket(bucket)["policy"] == policy:
                break
            await self.forget(placed)
        doc = {"bucket": bucket, "key": key, "size": len(data), "etag": etag or f'"{digest}"',
               "content_type": content_type or "binary/octet-stream", "metadata": metadata or {},
               "modified": time.time(), "version": version, "k": k, "padlen": padlen, "fragments": placed,
               **({"sealed": sealed} if sealed else {})}
        before: list[dict[str, Any] | None] = [None]

        def swap(current: dict[str, Any] | None) -> dict[str, Any]:
            before[0] = current
            return doc

        update(self.store, "objects", f"{bucket}/{key}", swap)
        if before[0] is not None:
            await self.forget(before[0]["fragments"])
        self.on_access(bucket, key, "put", len(data))
        return _info(doc)

    async def write(self, placed: list[dict[str, Any]], fragments: dict[int, bytes]) -> None:
        """Write fragments to their locations, all or none (what was written is deleted when one fails)."""
        results = await asyncio.gather(*(self.stores.put(p["location"], p["key"], fragments[p["i"]]) for p in placed),
                                       return_exceptions=True)
        failed = [str(r) for r in results if isinstance(r, BaseException)]
        if failed:
            await self.forget(placed)
            raise StorageError("ServiceUnavailable", f"{len(failed)} fragment(s) could not be written: {failed[0]}")

    async def forget(self, placed: list[dict[str, Any]]) -> None:
        """Delete fragments (best effort: a location that is down keeps an orphan, logged by the caller)."""
        by_location: dict[str, list[str]] = {}
        for p in placed:
            by_location.setdefault(p["location"], []).append(p["key"])
        await asyncio.gather(*(self.stores.delete(loc, keys) for loc, keys in by_location.items()),
                             return_exceptions=True)

    def observe(self, location: str, ms: float, size: int) -> None:
        """A location's latest read of `size` bytes (a fragment, a probe): reads ask the quickest locations first.
        Averaged per size class (a power of 4 bytes), so a large object's reads are not judged by small ones'."""
        slot = (location, size.bit_length() // 2)
        seen = self.latency.get(slot)
        self.latency[slot] = ms if seen is None else seen + EWMA * (ms - seen)

    def usual_ms(self, location: str, size: int) -> float:
        """A location's usual time to read `size` bytes (0 when unknown: an unknown location is tried early)."""
        return self.latency.get((location, size.bit_length() // 2), 0.0)

    def failed(self, location: str) -> None:
        """A read or probe of `location` failed: it is asked last for SHUNNED_S."""
        self.shunned[location] = time.monotonic() + SHUNNED_S

    def _rank(self, place: dict[str, Any], size: int) -> tuple[bool, float, int]:
        return (self.shunned.get(place["location"], 0.0) > time.monotonic(), self.usual_ms(place["location"], size),
                int(place["i"]))

    async def read(self, doc: dict[str, Any], want: int | None = None) -> dict[int, bytes]:
        """At least `want` (default k) of an object's fragments, from the quickest locations; LocationError when
        too few can be read.

        The `want` locations that have been quickest are asked first; the others are asked too as soon as one of
        those fails, or when one is slower than HEDGE_FACTOR times the slowest one's usual time (a hedged request:
        a degraded location costs one extra fragment read, not a stalled get). Unasked locations cost nothing,
        so a healthy get reads k fragments, not k+m."""
        want = want or int(doc["k"])
        size = -(-int(doc["size"]) // int(doc["k"]))  # one fragment's bytes
        ranked = sorted(doc["fragments"], key=lambda p: self._rank(p, size))
        waiting = list(ranked[want:])
        got: dict[int, bytes] = {}
        problems: list[str] = []
        pending: dict[asyncio.Future[bytes], dict[str, Any]] = {}

        def ask(place: dict[str, Any]) -> None:
            started = time.perf_counter()

            async def one() -> bytes:
                data = await self.stores.get(place["location"], place["key"])
                self.observe(place["location"], (time.perf_counter() - started) * 1000, len(data))
                return data

            pending[asyncio.ensure_future(one())] = place

        for place in ranked[:want]:
            ask(place)
        usual = max((self.usual_ms(p["location"], size) for p in ranked[:want]), default=0.0)
        hedge_s = max(HEDGE_MIN_MS, HEDGE_FACTOR * usual) / 1000
        try:
            while pending and len(got) < want:
                done, _ = await asyncio.wait(pending, timeout=hedge_s if waiting else None,
                                             return_when=asyncio.FIRST_COMPLETED)
                if not done:  # slower than usual: ask the rest too, the first k answers win
                    while waiting:
                        ask(waiting.pop(0))
                    continue
                for task in done:
                    place = pending.pop(task)
                    if task.exception() is None:
                        got[int(place["i"])] = task.result()
                    else:
                        problems.append(f"{place['location']}: {task.exception()}")
                        self.failed(place["location"])
                        if waiting:
                            ask(waiting.pop(0))
        finally:
            for task in pending:
                task.cancel()
        if len(got) < want:
            raise LocationError(f"{len(got)} of the {want} fragments needed could be read ({'; '.join(problems)})")
        return got

    async def _doc(self, bucket: str, key: str) -> dict[str, Any]:
        self.bucket(bucket)
        found = self.store.get("objects", f"{bucket}/{key}")
        if found is None:
            raise StorageError("NoSuchKey", f"the key {key} does not exist in {bucket}")
        return found.value

    async def get_object(self, bucket: str, key: str, byte_range: tuple[int, int | None] | None = None
                         ) -> tuple[ObjectInfo, bytes]:
        for attempt in range(2):
            doc = await self._doc(bucket, key)
            if byte_range is not None and doc["size"] and byte_range[0] >= doc["size"]:
                raise StorageError("InvalidRange", f"the range starts at {byte_range[0]}, past {doc['size']} bytes")
            try:
                fragments = await self.read(doc)
            except LocationError as exc:
                current = self.store.get("objects", f"{bucket}/{key}")
                if attempt == 0 and current is not None and current.value["fragments"] != doc["fragments"]:
                    continue  # rewritten or migrated while it was read: its new fragments are there
                raise StorageError("ServiceUnavailable", f"{bucket}/{key}: {exc}") from None
            data = await asyncio.to_thread(self._plain, doc, fragments)
            self.on_access(bucket, key, "get", len(data))
            if byte_range is not None:
                first, last = byte_range
                data = data[first:(last + 1) if last is not None else None]
            return _info(doc), data
        raise AssertionError("unreachable")

    def _plain(self, doc: dict[str, Any], fragments: dict[int, bytes]) -> bytes:
        """An object's bytes from k of its fragments: decoded, and opened when it was sealed."""
        data = codec.decode(fragments, int(doc["k"]), int(doc["padlen"]))
        if not doc.get("sealed"):
            return data
        if self.sealer is None:
            raise StorageError("InternalError", f"{doc['bucket']}/{doc['key']} is encrypted and this gateway has no "
                                                "key (encryption.key_file in its locations file)")
        try:
            return self.sealer.open(data, doc["sealed"], f"{doc['bucket']}/{doc['key']}".encode())
        except SealError as exc:
            raise StorageError("InternalError", f"{doc['bucket']}/{doc['key']} cannot be decrypted: {exc}") from None

    async def head_object(self, bucket: str, key: str) -> ObjectInfo:
        return _info(await self._doc(bucket, key))

    async def delete_object(self, bucket: str, key: str) -> None:
        self.bucket(bucket)
        gone: list[dict[str, Any] | None] = [None]

        def drop(current: dict[str, Any] | None) -> None:
            gone[0] = current
            return None

        update(self.store, "objects", f"{bucket}/{key}", drop)
        if gone[0] is not None:
            await self.forget(gone[0]["fragments"])
            self.on_access(bucket, key, "delete", 0)

    async def list_objects(self, bucket: str, prefix: str = "", after: str = "", limit: int = 1000
                           ) -> tuple[list[ObjectInfo], bool]:
        self.bucket(bucket)
        docs = [v.value for k, v in self._docs(bucket, prefix) if k[len(bucket) + 1:].encode() > after.encode()]
        return [_info(d) for d in docs[:limit]], len(docs) > limit

    # -- multipart uploads -----------------------------------------------------------------------------------------

    def _upload(self, bucket: str, key: str, upload_id: str) -> dict[str, Any]:
        doc = self.store.get("uploads", upload_id)
        if doc is None or doc.value.get("bucket") != bucket or doc.value.get("key") != key:
            raise StorageError("NoSuchUpload", f"no upload {upload_id} for {bucket}/{key}")
        return doc.value

    async def create_upload(self, bucket: str, key: str, *, content_type: str | None = None,
                            metadata: dict[str, str] | None = None) -> str:
        self.bucket(bucket)
        upload_id = uuid.uuid4().hex
        self.store.put("uploads", upload_id, {"bucket": bucket, "key": key, "content_type": content_type,
                                              "metadata": metadata or {}, "parts": {}, "created": time.time()})
        return upload_id

    async def upload_part(self, bucket: str, key: str, upload_id: str, number: int, data: bytes) -> str:
        self._upload(bucket, key, upload_id)
        if not 1 <= number <= 10000:
            raise StorageError("InvalidArgument", f"part numbers are 1..10000, not {number}")
        folder = self.uploads_dir / upload_id
        await asyncio.to_thread(folder.mkdir, parents=True, exist_ok=True)
        await asyncio.to_thread((folder / str(number)).write_bytes, data)
        etag = f'"{hashlib.md5(data).hexdigest()}"'
        update(self.store, "uploads", upload_id, lambda d: None if d is None else {
            **d, "parts": {**d["parts"], str(number): {"etag": etag, "size": len(data)}}})
        return etag

    async def list_parts(self, bucket: str, key: str, upload_id: str) -> list[tuple[int, str, int]]:
        parts = self._upload(bucket, key, upload_id)["parts"]
        return sorted((int(n), p["etag"], int(p["size"])) for n, p in parts.items())

    async def complete_upload(self, bucket: str, key: str, upload_id: str, parts: list[tuple[int, str]]
                              ) -> ObjectInfo:
        upload = self._upload(bucket, key, upload_id)
        have = upload["parts"]
        if [n for n, _ in parts] != sorted({n for n, _ in parts}):
            raise StorageError("InvalidPartOrder", "parts must be listed in ascending order, each once")
        chunks, digests = [], []
        for position, (number, etag) in enumerate(parts):
            part = have.get(str(number))
            if part is None or part["etag"].strip('"') != etag.strip('"'):
                raise StorageError("InvalidPart", f"part {number} was not uploaded with ETag {etag}")
            if part["size"] < MIN_PART_BYTES and position < len(parts) - 1:
                raise StorageError("EntityTooSmall", f"part {number} is {part['size']} bytes, under 5 MiB")
            chunks.append(await asyncio.to_thread((self.uploads_dir / upload_id / str(number)).read_bytes))
            digests.append(bytes.fromhex(part["etag"].strip('"')))
        etag = f'"{hashlib.md5(b"".join(digests)).hexdigest()}-{len(parts)}"'
        info = await self.put_object(bucket, key, b"".join(chunks), content_type=upload.get("content_type"),
                                     metadata=upload.get("metadata"), etag=etag)
        await self.abort_upload(bucket, key, upload_id)
        return info

    async def abort_upload(self, bucket: str, key: str, upload_id: str) -> None:
        self._upload(bucket, key, upload_id)
        with contextlib.suppress(FileNotFoundError):
            await asyncio.to_thread(shutil.rmtree, self.uploads_dir / upload_id)
        self.store.delete("uploads", upload_id)
