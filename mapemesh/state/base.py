"""The state store's contract, shared behaviour, and how to open one from a URL.

| call                                   | round trips | does                                                         |
|----------------------------------------|-------------|--------------------------------------------------------------|
| `get`, `put`, `delete`, `list`         | 1           | one document (or one kind), versioned                        |
| `get_many(refs)`                       | 1           | several documents, read together (one snapshot)              |
| `commit(writes)`                       | 1           | several versioned writes in one transaction: all or none     |
| `transact(refs, change)`               | SQLite: 1;  | read, change, write back, atomically: SQLite runs it in one  |
|                                        | Redis: 2    | write transaction (no other writer can come in between);     |
|                                        | (+2 per     | Redis reads, then commits with the versions read, and        |
|                                        | Conflict)   | retries on `Conflict` (`optimistic`)                         |
| `update(store, kind, key, change)`,    | as          | `transact` for one document, and for several                 |
| `update_many(store, refs, change)`     | `transact`  |                                                              |
| `snapshot(refs, asset, metrics)`       | 1 (Redis: 2 | documents and an asset's telemetry window, read together     |
|                                        | unnamed     |                                                              |
|                                        | metrics)    |                                                              |
| `append_telemetry`, `telemetry`,       | 1           | an asset's telemetry window                                  |
| `latest`                               |             |                                                              |

A change function (`transact`, `update`, `update_many`) must not call the store itself: on SQLite it runs inside
the write transaction.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

Document = dict[str, Any]
Ref = tuple[str, str]
"""(kind, key): a document's address."""
Sample = tuple[str, float, float]
"""(metric, value, unix time)."""
Change = Callable[[dict[Ref, Document | None]], Mapping[Ref, Document | None]]
"""What `transact` and `update_many` apply: fresh copies of the documents read (None: absent) -> the documents to
write, among those read (None deletes; a ref left out is not written)."""

KINDS = ("applications", "infrastructure", "plans", "policies", "policy_contexts", "cycles", "mechanisms", "settings",
         "ml_models", "deployments", "buckets", "objects", "uploads", "departed", "trust", "plan_index")
"""The kinds of documents the loop keeps; others are refused so that typos do not create silent stores."""


class Conflict(Exception):
    """A versioned write lost: the document is at `current` (0: absent), not at the version expected."""

    def __init__(self, kind: str, key: str, expected: int, current: int):
        super().__init__(f"{kind}/{key}: expected version {expected}, found {current}")
        self.kind, self.key, self.expected, self.current = kind, key, expected, current


@dataclass(frozen=True, slots=True)
class Versioned:
    """A document and its version (1 for the first write, +1 for each write after)."""

    value: Document
    version: int


@dataclass(frozen=True, slots=True)
class Write:
    """One write of a `commit`: `value` None deletes; `expected_version` as for `put` (None: whatever is there)."""

    kind: str
    key: str
    value: Document | None
    expected_version: int | None = None


def check_writes(writes: Sequence[Write]) -> None:
    """Refuse a commit that names a kind the loop does not keep, or one document twice (which write wins?)."""
    seen: set[Ref] = set()
    for w in writes:
        check_kind(w.kind)
        if (w.kind, w.key) in seen:
            raise ValueError(f"{w.kind}/{w.key} is written twice in one commit")
        seen.add((w.kind, w.key))


@runtime_checkable
class StateStore(Protocol):
    """What every store offers. Telemetry samples older than `retention_s` are dropped as new ones arrive."""

    retention_s: float

    def get(self, kind: str, key: str) -> Versioned | None:
        """The document, or None."""
        ...

    def put(self, kind: str, key: str, value: Document, *, expected_version: int | None = None) -> int:
        """Write; with `expected_version` (0: must not exist) raise Conflict unless it matches. New version."""
        ...

    def delete(self, kind: str, key: str, *, expected_version: int | None = None) -> bool:
        """Remove; False when it was not there. Conflict as for put."""
        ...

    def list(self, kind: str) -> dict[str, Versioned]:
        """Every document of a kind."""
        ...

    def get_many(self, refs: Sequence[Ref]) -> list[Versioned | None]:
        """Several documents in one round trip, as they were at one instant: each ref's document, or None."""
        ...

    def commit(self, writes: Sequence[Write]) -> list[int]:
        """Several writes in one round trip and one transaction: all happen or none does. A failed expectation
        raises Conflict (naming the first document that failed) and changes nothing. Each document's new version
        (a delete's: its tombstone's, 0 when it was not there)."""
        ...

    def transact(self, refs: Sequence[Ref], change: Change, *, attempts: int = 50,
                 read: list[Versioned | None] | None = None) -> dict[Ref, Versioned | None]:
        """Read `refs`, change them, write back what `change` returns, atomically (see `update_many`, which is
        this). Where the store can, one round trip in which no other writer comes in between (`change` runs once);
        elsewhere a read and a versioned commit, retried on Conflict (`optimistic`: `change` may run again; `read`,
        the documents as the caller just read them, saves the first read)."""
        ...

    def snapshot(self, refs: Sequence[Ref], asset: str, metrics: Iterable[str] | None = None,
                 limit: int | None = None) -> tuple[list[Versioned | None], dict[str, list[tuple[float, float]]]]:
        """`get_many(refs)` and `telemetry(asset, metrics, limit=limit)`, read together (one snapshot, one round
        trip)."""
        ...

    def append_telemetry(self, asset: str, samples: Iterable[Sample]) -> None:
        """Add samples to an asset's telemetry window."""
        ...

    def telemetry(self, asset: str, metrics: Iterable[str] | None = None, since: float | None = None,
                  limit: int | None = None) -> dict[str, list[tuple[float, float]]]:
        """The window: metric -> [(time, value)] oldest first, within the retention time (and since `since`);
        `limit`: only the latest so many samples of each metric (read without reading the others)."""
        ...

    def latest(self, asset: str) -> dict[str, float]:
        """The newest value of each metric of an asset."""
        ...

    def close(self) -> None:
        """Release connections."""
        ...


def check_kind(kind: str) -> None:
    """Refuse kinds the loop does not keep."""
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r} (known: {', '.join(KINDS)})")


def update(store: StateStore, kind: str, key: str, change: Callable[[Document | None], Document | None],
           attempts: int = 50, *, read: list[Versioned | None] | None = None) -> Versioned | None:
    """Read, change, write back, atomically (`update_many` for one document). `change` returning None deletes.

    `read`: `[the document as the caller just read it]`, used (where the store retries on Conflict) for the first
    attempt instead of reading again (a stale one only costs a Conflict and a retry on fresh data)."""
    ref = (kind, key)
    return update_many(store, [ref], lambda docs: {ref: change(docs[ref])}, attempts, read=read)[ref]


def update_many(store: StateStore, refs: Sequence[Ref], change: Change, attempts: int = 50, *,
                read: list[Versioned | None] | None = None) -> dict[Ref, Versioned | None]:
    """`update` for several documents: read them, change them together, write back what `change` returns in one
    transaction (a ref it leaves out is not written; None deletes), atomically: `store.transact`. On SQLite one
    round trip in which no other writer comes in between; on Redis one read and one commit with the versions
    read, all of it retried on Conflict (`change` may then run again). `read`: the documents as the caller just
    read them (in `refs`' order), for a first attempt that reads nothing. The documents written, as written (None:
    deleted)."""
    return store.transact(refs, change, attempts=attempts, read=read)


def changed_writes(refs: Sequence[Ref], current: Sequence[Versioned | None], change: Change
                   ) -> tuple[Mapping[Ref, Document | None], list[Write], dict[Ref, int]]:
    """What `change` makes of the documents read: (its result, the writes it needs, each ref's version read)."""
    if len(current) != len(refs):
        raise ValueError(f"read {len(current)} documents for {len(refs)} refs")
    versions = {ref: (0 if doc is None else doc.version) for ref, doc in zip(refs, current, strict=True)}
    new = change({ref: (None if doc is None else dict(doc.value)) for ref, doc in zip(refs, current, strict=True)})
    writes = []
    for (kind, key), value in new.items():
        if (kind, key) not in versions:
            raise ValueError(f"update_many: {kind}/{key} was not read")
        if value is not None or versions[(kind, key)]:  # deleting what is absent: nothing to write
            writes.append(Write(kind, key, value, versions[(kind, key)]))
    return new, writes, versions


def as_written(new: Mapping[Ref, Document | None], writes: Sequence[Write], written: Sequence[int],
               versions: Mapping[Ref, int]) -> dict[Ref, Versioned | None]:
    """`transact`'s answer: each document `change` returned, with its version now."""
    done = dict(zip(((w.kind, w.key) for w in writes), written, strict=True))
    return {ref: (None if value is None else Versioned(value, done.get(ref, versions[ref])))
            for ref, value in new.items()}


def optimistic(store: StateStore, refs: Sequence[Ref], change: Change, attempts: int = 50, *,
               read: list[Versioned | None] | None = None) -> dict[Ref, Versioned | None]:
    """`transact` for a store that cannot run `change` itself: `get_many`, `change`, `commit` with the versions
    read; all of it again on Conflict, after a short random pause (others are writing), up to `attempts` times."""
    refs = list(refs)
    for attempt in range(attempts):
        current = read if read is not None and attempt == 0 else store.get_many(refs)
        new, writes, versions = changed_writes(refs, current, change)
        try:
            written = store.commit(writes) if writes else []
        except Conflict:
            time.sleep(random.uniform(0, 0.002 * (attempt + 1)))
            continue
        return as_written(new, writes, written, versions)
    raise Conflict(refs[0][0] if refs else "?", refs[0][1] if refs else "?", -1, -1)


def open_store(url: str, data: Path | None = None, retention_s: float = 3600.0) -> StateStore:
    """A store from a URL: `sqlite:///path` (or `sqlite:` for DATA_DIR/state.db), `redis://host:port/db`."""
    if url.startswith("redis://") or url.startswith("rediss://"):
        from mapemesh.state.redis import RedisStore

        return RedisStore(url, retention_s=retention_s)
    if url.startswith("sqlite:"):
        from mapemesh.state.sqlite import SQLiteStore

        path = url.removeprefix("sqlite:").removeprefix("//")
        if not path or path == "/":
            if data is None:
                raise ValueError("sqlite: without a path needs the data directory")
            return SQLiteStore(data / "state.db", retention_s=retention_s)
        return SQLiteStore(Path(path), retention_s=retention_s)
    raise ValueError(f"unsupported state store URL {url!r} (use sqlite:///PATH or redis://HOST:PORT/DB)")
