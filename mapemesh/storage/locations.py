"""The places fragments are stored: S3 endpoints, each a location, written and read through boto3.

The locations file (YAML) a gateway is started with:

```yaml
locations:                       # at least one; each fragment of an object goes to a different one
  - name: eu-west                # [a-z0-9-]+
    endpoint: http://s3.eu-west.example.com
    country: IE                  # ISO 3166 alpha-2: where it is (placement follows demand by country)
    region: eu                   # a region a bucket may be restricted to
    cost_per_gb: 0.023           # per GB-month: the cheaper of two equal choices wins
    bucket: mapemesh-fragments   # the bucket fragments go to there (made when missing; default this one)
    s3_region: us-east-1         # the region requests are signed for (default us-east-1)
    access_key: ...              # default: boto3's own credentials chain
    secret_key: ...
default_policy: {k: 2, m: 1}     # a new bucket's code; its locations: the first k+m, cheapest first
countries:                       # IP networks -> country, for access events (the address itself is not kept)
  10.0.0.0/8: IE
restrictions:                    # optional: a bucket may only use locations of these regions
  invoices: [eu]
encryption:                      # optional: objects sealed (AES-256-GCM) before they are coded (`sealing`)
  key_file: storage.key          # 32 bytes (raw, hex or base64); relative to this file
```

| call                                   | does                                                                    |
|----------------------------------------|-------------------------------------------------------------------------|
| `load(path)` / `Layout.parse(doc)`     | the file, checked (a clear error naming the field otherwise)            |
| `await put(location, key, data)`       | one fragment written (a thread of the pool: boto3 blocks)               |
| `await get(location, key)`             | one fragment read; `LocationError` when the location fails              |
| `await delete(location, keys)`         | fragments deleted (missing ones are not an error)                       |
| `await probe(location)`                | (latency ms of a HEAD, bandwidth MB/s of a 256 KiB put and get)          |
| `country_of(ip)`                       | the country of an address from the table, or `ZZ` (unknown)             |
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import botocore.config
import botocore.exceptions
import yaml

_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
PROBE_BYTES = 256 * 1024


class LayoutError(ValueError):
    """A locations file that cannot be used."""


class LocationError(RuntimeError):
    """A location that did not answer, or refused."""


@dataclass(frozen=True, slots=True)
class Location:
    name: str
    endpoint: str
    country: str
    region: str = ""
    cost_per_gb: float = 0.0
    bucket: str = "mapemesh-fragments"
    s3_region: str = "us-east-1"
    access_key: str | None = None
    secret_key: str | None = None

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "country": self.country, "region": self.region, "cost_per_gb": self.cost_per_gb}


@dataclass
class Layout:
    locations: dict[str, Location]
    default_k: int = 2
    default_m: int = 1
    countries: list[tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, str]] = field(default_factory=list)
    restrictions: dict[str, list[str]] = field(default_factory=dict)
    key_file: str | None = None

    @classmethod
    def parse(cls, doc: Any) -> Layout:
        if not isinstance(doc, dict) or not isinstance(doc.get("locations"), list) or not doc["locations"]:
            raise LayoutError("locations: a list of at least one location (name, endpoint, country) is needed")
        found: dict[str, Location] = {}
        for i, raw in enumerate(doc["locations"]):
            where = f"locations[{i}]"
            if not isinstance(raw, dict):
                raise LayoutError(f"{where}: a mapping (name, endpoint, country, ...)")
            unknown = set(raw) - {f.name for f in Location.__dataclass_fields__.values()}
            if unknown:
                raise LayoutError(f"{where}: unknown field(s) {', '.join(sorted(unknown))}")
            for required in ("name", "endpoint", "country"):
                if not isinstance(raw.get(required), str) or not raw[required]:
                    raise LayoutError(f"{where}.{required}: required (a string)")
            if not _NAME.match(raw["name"]):
                raise LayoutError(f"{where}.name: {raw['name']!r} must be lowercase letters, digits and '-'")
            if raw["name"] in found:
                raise LayoutError(f"{where}.name: {raw['name']} appears twice")
            if not raw["endpoint"].startswith(("http://", "https://")):
                raise LayoutError(f"{where}.endpoint: an http(s) URL")
            try:
                cost = float(raw.get("cost_per_gb", 0.0))
            except (TypeError, ValueError):
                raise LayoutError(f"{where}.cost_per_gb: a number") from None
            found[raw["name"]] = Location(**{**raw, "country": raw["country"].upper(), "cost_per_gb": cost})
        policy = doc.get("default_policy") or {}
        k, m = int(policy.get("k", min(2, len(found)))), int(policy.get("m", 1 if len(found) > 2 else 0))
        if k < 1 or m < 0 or k + m > len(found):
            raise LayoutError(f"default_policy: k={k}, m={m} needs k >= 1, m >= 0 and k+m <= {len(found)} locations")
        countries = []
        for network, country in (doc.get("countries") or {}).items():
            try:
                countries.append((ipaddress.ip_network(str(network), strict=False), str(country).upper()))
            except ValueError:
                raise LayoutError(f"countries: {network!r} is not an IP network") from None
        restrictions = {str(b): [str(r) for r in (regions or [])]
                        for b, regions in (doc.get("restrictions") or {}).items()}
        encryption = doc.get("encryption") or {}
        if not isinstance(encryption, dict) or set(encryption) - {"key_file"} or (
                encryption and not isinstance(encryption.get("key_file"), str)):
            raise LayoutError("encryption: {key_file: PATH} (a file holding a 32-byte key)")
        unknown = set(doc) - {"locations", "default_policy", "countries", "restrictions", "encryption"}
        if unknown:
            raise LayoutError(f"unknown field(s) {', '.join(sorted(unknown))}")
        return cls(found, k, m, sorted(countries, key=lambda c: -c[0].prefixlen), restrictions,
                   encryption.get("key_file"))

    def country_of(self, ip: str | None) -> str:
        try:
            address = ipaddress.ip_address((ip or "").strip())
        except ValueError:
            return "ZZ"
        return next((country for network, country in self.countries if address in network), "ZZ")

    def allowed(self, bucket: str) -> list[str]:
        """The locations a bucket may use (its restriction's regions; every one when it has none)."""
        regions = self.restrictions.get(bucket)
        return [n for n, loc in self.locations.items() if not regions or loc.region in regions]


def load(path: Path) -> Layout:
    """The locations file at `path` (an `encryption.key_file` relative to it made absolute)."""
    try:
        layout = Layout.parse(yaml.safe_load(Path(path).read_text()))
        if layout.key_file is not None:
            layout.key_file = str(Path(path).parent / layout.key_file)
            from mapemesh.storage.sealing import KeyFileError, Sealer

            try:
                Sealer.from_file(Path(layout.key_file))  # readable and a key: said now, not at the first put
            except KeyFileError as exc:
                raise LayoutError(f"encryption.key_file: {exc}") from None
        return layout
    except OSError as exc:
        raise LayoutError(f"{path}: {exc}") from None
    except yaml.YAMLError as exc:
        raise LayoutError(f"{path}: not YAML: {exc}") from None


class Stores:
    """boto3 clients, one per location, and the threads they block in."""

    def __init__(self, layout: Layout, threads: int = 32, timeout_s: float = 10.0):
        self.layout = layout
        self.pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="mapemesh-storage")
        config = botocore.config.Config(s3={"addressing_style": "path"}, connect_timeout=timeout_s,
                                        read_timeout=timeout_s, retries={"max_attempts": 1, "mode": "standard"},
                                        max_pool_connections=threads, request_checksum_calculation="when_required",
                                        response_checksum_validation="when_required")
        self.clients = {
            name: boto3.client("s3", endpoint_url=loc.endpoint, region_name=loc.s3_region,
                               aws_access_key_id=loc.access_key or "mapemesh", config=config,
                               aws_secret_access_key=loc.secret_key or "mapemesh")
            for name, loc in layout.locations.items()}

    async def _run(self, location: str, what: str, call: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return await asyncio.get_running_loop().run_in_executor(self.pool, lambda: call(*args, **kwargs))
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
            raise LocationError(f"location {location}: {what}: {exc}") from None

    async def prepare(self) -> list[str]:
        """Make each location's fragment bucket when missing; the locations that did not answer."""
        failed = []
        for name, loc in self.layout.locations.items():
            try:
                await self._run(name, "head bucket", self.clients[name].head_bucket, Bucket=loc.bucket)
            except LocationError:
                try:
                    await self._create(name)
                except LocationError:
                    failed.append(name)
        return failed

    async def _create(self, location: str) -> None:
        loc = self.layout.locations[location]
        where = {} if loc.s3_region == "us-east-1" else {
            "CreateBucketConfiguration": {"LocationConstraint": loc.s3_region}}
        try:
            await self._run(location, "create bucket", self.clients[location].create_bucket, Bucket=loc.bucket,
                            **where)
        except LocationError as exc:
            if "BucketAlreadyOwnedByYou" not in str(exc):
                raise

    async def put(self, location: str, key: str, data: bytes) -> None:
        loc = self.layout.locations[location]
        try:
            await self._run(location, f"put {key}", self.clients[location].put_object, Bucket=loc.bucket, Key=key,
                            Body=data)
        except LocationError as exc:
            if "NoSuchBucket" not in str(exc):
                raise
            await self._create(location)  # a location that came back empty (or was replaced)
            await self._run(location, f"put {key}", self.clients[location].put_object, Bucket=loc.bucket, Key=key,
                            Body=data)

    async def get(self, location: str, key: str) -> bytes:
        loc = self.layout.locations[location]

        def read() -> bytes:
            return self.clients[location].get_object(Bucket=loc.bucket, Key=key)["Body"].read()

        return await self._run(location, f"get {key}", read)  # type: ignore[no-any-return]

    async def delete(self, location: str, keys: list[str]) -> None:
        loc = self.layout.locations[location]
        for start in range(0, len(keys), 1000):
            batch = [{"Key": k} for k in keys[start:start + 1000]]
            await self._run(location, "delete", self.clients[location].delete_objects, Bucket=loc.bucket,
                            Delete={"Objects": batch, "Quiet": True})

    async def keys(self, location: str, prefix: str = "") -> list[str]:
        """Every fragment key a location holds (under `prefix`)."""
        loc = self.layout.locations[location]

        def listing() -> list[str]:
            pages = self.clients[location].get_paginator("list_objects_v2").paginate(Bucket=loc.bucket, Prefix=prefix)
            return [o["Key"] for page in pages for o in page.get("Contents", [])]

        return await self._run(location, "list", listing)  # type: ignore[no-any-return]

    async def probe(self, location: str) -> tuple[float, float]:
        """(latency ms, bandwidth MB/s) of a location, now."""
        loc = self.layout.locations[location]
        started = time.perf_counter()
        await self._run(location, "head bucket", self.clients[location].head_bucket, Bucket=loc.bucket)
        latency = (time.perf_counter() - started) * 1000
        payload = b"\x00" * PROBE_BYTES
        started = time.perf_counter()
        await self.put(location, ".mapemesh-probe", payload)
        await self.get(location, ".mapemesh-probe")
        seconds = time.perf_counter() - started
        return latency, 2 * PROBE_BYTES / 1e6 / max(seconds, 1e-6)

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)
