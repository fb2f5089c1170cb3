"""The Redis state store, for clusters: the same contract as SQLite, atomic through Lua scripts.

It needs one Redis (a primary, with replicas if wanted), not Redis Cluster: a write touches a document and
its kind's index in one script, which Cluster refuses across hash slots.

Layout (prefix `mm:` by default): a document is a hash `doc:{kind}:{key}` with fields `v` (version) and
`d` (JSON), listed in the set `kind:{kind}`; telemetry is a sorted set `tm:{asset}:{metric}` scored by time,
with the asset's metrics in the set `tmm:{asset}`.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterable, Sequence
from typing import Any

import orjson

from mapemesh.state.base import (
    Change,
    Conflict,
    Document,
    Ref,
    Sample,
    Versioned,
    Write,
    check_kind,
    check_writes,
    optimistic,
)

# A commit: KEYS are each write's doc and kind set, in turn; ARGV each write's expected version ("" for any), op
# ("p" put, "d" delete), value and key, in turn. Every expectation is checked before anything is written (a script
# runs alone: all or none). A deleted document keeps its hash without `d` (a tombstone), so version numbers never
# repeat. Returns the new versions (a delete of what is absent: 0), or {-1, the failing write's index (1-based),
# its current version (0: absent)}. `put` and `delete` are commits of one write.
_COMMIT = """
local n = #KEYS / 2
local lasts, currents = {}, {}
for i = 1, n do
  local doc = KEYS[2 * i - 1]
  local last = tonumber(redis.call('HGET', doc, 'v') or '0')
  local current = last
  if redis.call('HEXISTS', doc, 'd') == 0 then current = 0 end
  local expected = ARGV[4 * i - 3]
  if expected ~= '' and tonumber(expected) ~= current then return {-1, i, current} end
  lasts[i], currents[i] = last, current
end
local out = {}
for i = 1, n do
  local doc, kind, key = KEYS[2 * i - 1], KEYS[2 * i], ARGV[4 * i]
  if ARGV[4 * i - 2] == 'p' then
    redis.call('HSET', doc, 'v', lasts[i] + 1, 'd', ARGV[4 * i - 1])
    redis.call('SADD', kind, key)
    out[i] = lasts[i] + 1
  else
    if currents[i] > 0 then
      redis.call('HDEL', doc, 'd')
      redis.call('HSET', doc, 'v', lasts[i] + 1)
      out[i] = lasts[i] + 1
    else
      out[i] = 0
    end
    redis.call('SREM', kind, key)
  end
end
return out
"""


def _documents(found: Sequence[Sequence[bytes | None]]) -> list[Versioned | None]:
    """Documents from their hashes' (version, data) as HMGET gives them (None: absent)."""
    return [None if data is None else Versioned(orjson.loads(data), int(version)) for version, data in found]


class RedisStore:
    """State in Redis (`redis://host:port/db`)."""

    def __init__(self, url: str, retention_s: float = 3600.0, prefix: str = "mm:"):
        import redis

        self.retention_s = retention_s
        self.prefix = prefix
        self._redis = redis.Redis.from_url(url)
        self._redis.ping()  # fail now, clearly, if the server cannot be reached
        self._commit = self._redis.register_script(_COMMIT)
        self._seq = itertools.count()

    def _doc(self, kind: str, key: str) -> str:
        return f"{self.prefix}doc:{kind}:{key}"

    def get(self, kind: str, key: str) -> Versioned | None:
        """The document, or None."""
        check_kind(kind)
        version, data = self._redis.hmget(self._doc(kind, key), "v", "d")
        return None if data is None else Versioned(orjson.loads(data), int(version))

    def get_many(self, refs: Sequence[Ref]) -> list[Versioned | None]:
        """Several documents in one round trip (MULTI/EXEC: one snapshot): each ref's document, or None."""
        for kind, _ in refs:
            check_kind(kind)
        if not refs:
            return []
        pipe = self._redis.pipeline(transaction=True)
        for kind, key in refs:
            pipe.hmget(self._doc(kind, key), "v", "d")
        return _documents(pipe.execute())

    def commit(self, writes: Sequence[Write]) -> list[int]:
        """Several writes in one script: all or none (Conflict: none). Each document's new version."""
        check_writes(writes)
        if not writes:
            return []
        keys: list[str] = []
        args: list[str | bytes] = []
        for w in writes:
            keys += [self._doc(w.kind, w.key), f"{self.prefix}kind:{w.kind}"]
            args += ["" if w.expected_version is None else str(w.expected_version),
                     "d" if w.value is None else "p", b"" if w.value is None else orjson.dumps(w.value), w.key]
        result = [int(x) for x in self._commit(keys=keys, args=args)]
        if result and result[0] < 0:
            failed = writes[result[1] - 1]
            raise Conflict(failed.kind, failed.key, int(failed.expected_version or 0), result[2])
        return result

    def transact(self, refs: Sequence[Ref], change: Change, *, attempts: int = 50,
                 read: list[Versioned | None] | None = None) -> dict[Ref, Versioned | None]:
        """Read, change, write back: `get_many`, then `commit` with the versions read (the change runs here, not
        in the server), retried on Conflict (`optimistic`): two round trips."""
        return optimistic(self, refs, change, attempts, read=read)

    def snapshot(self, refs: Sequence[Ref], asset: str, metrics: Iterable[str] | None = None,
                 limit: int | None = None) -> tuple[list[Versioned | None], dict[str, list[tuple[float, float]]]]:
        """`get_many(refs)` and `telemetry(asset, metrics, limit=limit)` in one MULTI/EXEC (one more round trip
        first for the asset's metric names when `metrics` is None)."""
        for kind, _ in refs:
            check_kind(kind)
        names = list(metrics) if metrics is not None else self._metrics(asset)
        pipe = self._redis.pipeline(transaction=True)
        for kind, key in refs:
            pipe.hmget(self._doc(kind, key), "v", "d")
        self._ranges(pipe, asset, names, time.time() - self.retention_s, limit)
        found = pipe.execute()
        return _documents(found[:len(refs)]), self._points(names, found[len(refs):], limit)

    def _ranges(self, pipe: Any, asset: str, names: Sequence[str], floor: float, limit: int | None) -> None:
        """Queue each metric's samples since `floor` (the latest `limit` only, newest first, when given)."""
        for metric in names:
            if limit is None:
                pipe.zrangebyscore(self._series(asset, metric), floor, "+inf")
            else:
                pipe.zrevrangebyscore(self._series(asset, metric), "+inf", floor, start=0, num=max(int(limit), 0))

    def put(self, kind: str, key: str, value: Document, *, expected_version: int | None = None) -> int:
        """Write; with `expected_version` (0: must not exist) raise Conflict unless it matches. New version."""
        return self.commit([Write(kind, key, value, expected_version)])[0]

    def delete(self, kind: str, key: str, *, expected_version: int | None = None) -> bool:
        """Remove; False when it was not there. Conflict as for put."""
        return self.commit([Write(kind, key, None, expected_version)])[0] > 0

    def list(self, kind: str) -> dict[str, Versioned]:
        """Every document of a kind."""
        check_kind(kind)
        keys = sorted(k.decode() for k in self._redis.smembers(f"{self.prefix}kind:{kind}"))
        pipe = self._redis.pipeline(transaction=False)
        for key in keys:
            pipe.hmget(self._doc(kind, key), "v", "d")
        out = {}
        for key, (version, data) in zip(keys, pipe.execute(), strict=True):
            if data is not None:
                out[key] = Versioned(orjson.loads(data), int(version))
        return out

    def append_telemetry(self, asset: str, samples: Iterable[Sample]) -> None:
        """Add samples to an asset's window and drop what is older than the retention time."""
        by_metric: dict[str, dict[bytes, float]] = {}
        for metric, value, t in samples:
            member = orjson.dumps([float(t), float(value), next(self._seq), time.monotonic_ns()])
            by_metric.setdefault(metric, {})[member] = float(t)
        floor = time.time() - self.retention_s
        pipe = self._redis.pipeline(transaction=True)
        for metric, members in by_metric.items():
            key = self._series(asset, metric)
            pipe.zadd(key, members)
            pipe.zremrangebyscore(key, "-inf", f"({floor}")
            pipe.expire(key, int(self.retention_s) + 60)
        if by_metric:
            pipe.sadd(f"{self.prefix}tmm:{asset}", *by_metric)
            pipe.expire(f"{self.prefix}tmm:{asset}", int(self.retention_s) + 60)
        pipe.execute()

    def _series(self, asset: str, metric: str) -> str:
        return f"{self.prefix}tm:{len(asset)}:{asset}:{metric}"  # the length keeps `a:b`+`c` apart from `a`+`b:c`

    def _metrics(self, asset: str) -> list[str]:
        return sorted(m.decode() for m in self._redis.smembers(f"{self.prefix}tmm:{asset}"))

    def telemetry(self, asset: str, metrics: Iterable[str] | None = None, since: float | None = None,
                  limit: int | None = None) -> dict[str, list[tuple[float, float]]]:
        """The window: metric -> [(time, value)] oldest first, within the retention time; `limit`: the latest so
        many of each metric."""
        floor = max(since or 0.0, time.time() - self.retention_s)
        names = list(metrics) if metrics is not None else self._metrics(asset)
        pipe = self._redis.pipeline(transaction=False)
        self._ranges(pipe, asset, names, floor, limit)
        return self._points(names, pipe.execute(), limit)

    @staticmethod
    def _points(names: Sequence[str], found: Sequence[Sequence[bytes]], limit: int | None
                ) -> dict[str, list[tuple[float, float]]]:
        out: dict[str, list[tuple[float, float]]] = {}
        for metric, members in zip(names, found, strict=True):
            points = [tuple(orjson.loads(m)[:2]) for m in (members if limit is None else reversed(members))]
            if points:
                out[metric] = points  # type: ignore[assignment]
        return out

    def latest(self, asset: str) -> dict[str, float]:
        """The newest value of each metric of an asset."""
        floor = time.time() - self.retention_s
        names = self._metrics(asset)
        pipe = self._redis.pipeline(transaction=False)
        for metric in names:
            pipe.zrevrangebyscore(self._series(asset, metric), "+inf", floor, start=0, num=1)
        out = {}
        for metric, members in zip(names, pipe.execute(), strict=True):
            if members:
                out[metric] = float(orjson.loads(members[0])[1])
        return out

    def close(self) -> None:
        """Close the connection pool."""
        self._redis.close()
