"""The state store's contract, shared behaviour, and how to open one from a URL.

| call                                   | round trips | does                                                         |
|----------------------------------------|-------------|--------------------------------------------------------------|
| `get`, `put`, `delete`, `list`         | 1           | one document (or one kind), versioned                        |
| `get_many(refs)`                       | 1           | several documents, read together (one snapshot)              |
| `commit(writes)`                       | 1           | several versioned writes in one transaction: all or none     |
| `update(store, kind, key, change)`     | 2 (+ 2 per  | read, change, write back with the version read; retried on   |
|                                        | Conflict)   | `Conflict`                                                   |
| `update_many(store, refs, change)`     | 2 (+ 2 per  | the same for several documents: one `get_many`, one `commit` |
|                                        | Conflict)   |                                                              |
| `append_telemetry`, `telemetry`,       | 1           | an asset's telemetry window                                  |
| `latest`                               |             |                                                              |
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

    def append_telemetry(self, asset: str, samples: Iterable[Sample]) -> None:
        """Add samples to an asset's telemetry window."""
        ...

    def telemetry(self, asset: str, metrics: Iterable[str] | None = None,
                  since: float | None = None) -> dict[str, list[tuple[float, float]]]:
        """The window: metric -> [(time, value)] oldest first, within the retention time."""
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
    """Read, change, write back with the version read; retry on Conflict. `change` returning None deletes.

    `read`: `[the document as the caller just read it]`, used for the first attempt instead of reading again (a
    stale one only costs a Conflict and a retry on fresh data). `update_many` for one document."""
    ref = (kind, key)
    return update_many(store, [ref], lambda docs: {ref: change(docs[ref])}, attempts, read=read)[ref]


def update_many(store: StateStore, refs: Sequence[Ref],
                change: Callable[[dict[Ref, Document | None]], Mapping[Ref, Document | None]],
                attempts: int = 50, *, read: list[Versioned | None] | None = None) -> dict[Ref, Versioned | None]:
    """`update` for several documents: read them in one round trip, change them together, write back what `change`
    returns in one transaction, each with the version read (a ref it leaves out is not written; None deletes);
    retry all of it on Conflict. Two round trips for any number of documents.

    `change` gets a fresh copy of each document (None: absent) and may be called again after a Conflict; it
    returns the documents to write, among `refs`. `read`: the documents as the caller just read them (in `refs`'
    order), used for the first attempt. The documents written, as written (None: deleted)."""
    refs = list(refs)
    for attempt in range(attempts):
        current = read if read is not None and attempt == 0 else store.get_many(refs)
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
        try:
            written = store.commit(writes) if writes else []
        except Conflict:
            time.sleep(random.uniform(0, 0.002 * (attempt + 1)))  # back off a little; others are writing
            continue
        done = dict(zip(((w.kind, w.key) for w in writes), written, strict=True))
        return {ref: (None if value is None else Versioned(value, done.get(ref, versions[ref])))
                for ref, value in new.items()}
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
