"""The state store's contract, shared behaviour, and how to open one from a URL."""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

Document = dict[str, Any]
Sample = tuple[str, float, float]
"""(metric, value, unix time)."""

KINDS = ("applications", "infrastructure", "plans", "policies", "policy_contexts", "cycles", "mechanisms", "settings",
         "ml_models", "deployments", "buckets", "objects", "uploads", "departed", "trust")
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
    stale one only costs a Conflict and a retry on fresh data)."""
    for attempt in range(attempts):
        current = read.pop() if read else store.get(kind, key)
        new = change(None if current is None else dict(current.value))
        expected = 0 if current is None else current.version
        try:
            if new is None:
                if current is not None:
                    store.delete(kind, key, expected_version=expected)
                return None
            version = store.put(kind, key, new, expected_version=expected)
            return Versioned(new, version)
        except Conflict:
            time.sleep(random.uniform(0, 0.002 * (attempt + 1)))  # back off a little; others are writing
    raise Conflict(kind, key, -1, -1)


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
