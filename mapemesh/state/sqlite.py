"""The SQLite state store: one file that every function process on the machine opens (WAL mode)."""

from __future__ import annotations

import random
import sqlite3
import threading
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

import orjson

from mapemesh.state.base import (
    Change,
    Conflict,
    Document,
    Ref,
    Sample,
    Versioned,
    Write,
    as_written,
    changed_writes,
    check_kind,
    check_writes,
)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS docs(
    kind TEXT NOT NULL, key TEXT NOT NULL, version INTEGER NOT NULL, value BLOB,
    updated REAL NOT NULL, PRIMARY KEY (kind, key)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS telemetry(asset TEXT NOT NULL, metric TEXT NOT NULL, t REAL NOT NULL, value REAL NOT NULL);
CREATE INDEX IF NOT EXISTS telemetry_window ON telemetry(asset, metric, t);
CREATE INDEX IF NOT EXISTS telemetry_age ON telemetry(t);
"""
_CHUNK = 200
"""Documents (two parameters each) or metrics (four) a query reads at most: well under SQLite's limit."""
_METRICS = ("WITH RECURSIVE m(metric) AS (SELECT MIN(metric) FROM telemetry WHERE asset = ? UNION ALL "
            "SELECT (SELECT MIN(metric) FROM telemetry WHERE asset = ? AND metric > m.metric) FROM m "
            "WHERE m.metric IS NOT NULL) SELECT metric FROM m WHERE metric IS NOT NULL")
"""An asset's metric names, one index seek each (not a scan of its samples)."""


def _blobs(writes: Sequence[Write]) -> list[bytes | None]:
    """Each write's document as stored (None: a delete)."""
    return [None if w.value is None else orjson.dumps(w.value) for w in writes]


LOCK_TIMEOUT_S = 30.0
"""How long a write waits for another's transaction to end before it fails."""


class SQLiteStore:
    """State in an SQLite file; safe across threads (connections of their own) and processes (WAL, the write lock
    waited for)."""

    def __init__(self, path: Path, retention_s: float = 3600.0):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.retention_s = retention_s
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        db = self._db()
        db.executescript("BEGIN IMMEDIATE;" + _SCHEMA + "COMMIT;")

    def _db(self) -> sqlite3.Connection:
        """This thread's connection for reads (SQLite's busy timeout: a WAL reader rarely waits at all)."""
        db = getattr(self._local, "db", None)
        if db is None:
            db = self._local.db = self._connect()
        return db

    def _writer(self) -> sqlite3.Connection:
        """This thread's connection for write transactions, which `_begin` opens (no busy timeout of SQLite's)."""
        db = getattr(self._local, "writer", None)
        if db is None:
            db = self._local.writer = self._connect()
            db.execute("PRAGMA busy_timeout = 0")
        return db

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, isolation_level=None, timeout=LOCK_TIMEOUT_S, check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        with self._lock:
            self._connections.append(db)
        return db

    def _begin(self) -> sqlite3.Connection:
        """The writer connection in a write transaction (BEGIN IMMEDIATE), the lock waited for in short steps.

        SQLite's own busy handler sleeps 1, 2, 5, 10 ms... between tries: a lock another process holds for 0.1 ms
        cost the waiter 1-3 ms (measured under `make bench` mape: 3.2 ms a wait, up to 5% of a function process's
        time), and a function process's event loop waits with it. Here the waits start at 50 us and double up to
        1 ms, with jitter, for LOCK_TIMEOUT_S in all."""
        db = self._writer()
        delay, deadline = 50e-6, time.monotonic() + LOCK_TIMEOUT_S
        while True:
            try:
                db.execute("BEGIN IMMEDIATE")
                return db
            except sqlite3.OperationalError as exc:
                if ("locked" not in str(exc) and "busy" not in str(exc)) or time.monotonic() > deadline:
                    raise
            time.sleep(delay * random.uniform(0.5, 1.5))
            delay = min(delay * 2, 1e-3)

    def get(self, kind: str, key: str) -> Versioned | None:
        """The document, or None."""
        check_kind(kind)
        row = self._db().execute("SELECT value, version FROM docs WHERE kind = ? AND key = ?", (kind, key)).fetchone()
        return None if row is None or row[0] is None else Versioned(orjson.loads(row[0]), row[1])

    def get_many(self, refs: Sequence[Ref]) -> list[Versioned | None]:
        """Several documents in one query (one snapshot): each ref's document, or None."""
        for kind, _ in refs:
            check_kind(kind)
        if not refs:
            return []
        db = self._db()
        if len(refs) <= _CHUNK:
            return self._read(db, refs)
        db.execute("BEGIN")  # one read transaction: the queries see one snapshot
        try:
            return self._read(db, refs)
        finally:
            db.execute("COMMIT")

    @staticmethod
    def _read(db: sqlite3.Connection, refs: Sequence[Ref]) -> list[Versioned | None]:
        found: dict[Ref, Versioned] = {}
        for start in range(0, len(refs), _CHUNK):
            chunk = refs[start:start + _CHUNK]
            where = " OR ".join(["(kind = ? AND key = ?)"] * len(chunk))
            rows = db.execute(f"SELECT kind, key, value, version FROM docs WHERE value IS NOT NULL AND ({where})",
                              [part for ref in chunk for part in ref])
            found.update({(kind, key): Versioned(orjson.loads(value), version) for kind, key, value, version in rows})
        return [found.get((kind, key)) for kind, key in refs]

    def snapshot(self, refs: Sequence[Ref], asset: str, metrics: Iterable[str] | None = None,
                 limit: int | None = None) -> tuple[list[Versioned | None], dict[str, list[tuple[float, float]]]]:
        """`get_many(refs)` and `telemetry(asset, metrics, limit=limit)` in one read transaction."""
        for kind, _ in refs:
            check_kind(kind)
        db = self._db()
        db.execute("BEGIN")
        try:
            return (self._read(db, refs) if refs else []), self._window(db, asset, metrics, None, limit)
        finally:
            db.execute("COMMIT")

    def put(self, kind: str, key: str, value: Document, *, expected_version: int | None = None) -> int:
        """Write; with `expected_version` (0: must not exist) raise Conflict unless it matches. New version."""
        return self.commit([Write(kind, key, value, expected_version)])[0]

    def commit(self, writes: Sequence[Write]) -> list[int]:
        """Several writes in one transaction: all or none (Conflict: none). Each document's new version."""
        check_writes(writes)
        if not writes:
            return []
        blobs = _blobs(writes)  # encoded before the lock is taken
        db = self._begin()
        try:
            versions = self._write(db, writes, blobs)
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return versions

    def transact(self, refs: Sequence[Ref], change: Change, *, attempts: int = 50,
                 read: list[Versioned | None] | None = None) -> dict[Ref, Versioned | None]:
        """Read, change, write back in one write transaction (BEGIN IMMEDIATE: no other writer comes in between,
        so no Conflict and `change` runs once; `attempts` and `read` are for stores that retry)."""
        refs = list(refs)
        for kind, _ in refs:
            check_kind(kind)
        db = self._begin()
        try:
            new, writes, versions = changed_writes(refs, self._read(db, refs) if refs else [], change)
            check_writes(writes)
            blobs = _blobs(writes)
            written = self._write(db, writes, blobs)
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return as_written(new, writes, written, versions)

    def _write(self, db: sqlite3.Connection, writes: Sequence[Write], blobs: Sequence[bytes | None]) -> list[int]:
        """The writes, inside the caller's write transaction; each document's new version."""
        now = time.time()
        versions: list[int] = []
        for w, blob in zip(writes, blobs, strict=True):
            last = self._check(db, w.kind, w.key, w.expected_version)
            if blob is not None:
                db.execute("INSERT INTO docs(kind, key, version, value, updated) VALUES (?, ?, ?, ?, ?) "
                           "ON CONFLICT (kind, key) DO UPDATE SET version = excluded.version, "
                           "value = excluded.value, updated = excluded.updated",
                           (w.kind, w.key, last + 1, blob, now))
                versions.append(last + 1)
            else:
                existed = db.execute("UPDATE docs SET value = NULL, version = version + 1, updated = ? "
                                     "WHERE kind = ? AND key = ? AND value IS NOT NULL",
                                     (now, w.kind, w.key)).rowcount > 0
                versions.append(last + 1 if existed else 0)
        return versions

    @staticmethod
    def _check(db: sqlite3.Connection, kind: str, key: str, expected: int | None) -> int:
        """The last version used for the key (a deleted one leaves a tombstone: numbers never repeat)."""
        row = db.execute("SELECT version, value IS NULL FROM docs WHERE kind = ? AND key = ?", (kind, key)).fetchone()
        last = 0 if row is None else row[0]
        current = 0 if row is None or row[1] else last  # 0: absent
        if expected is not None and expected != current:
            raise Conflict(kind, key, expected, current)
        return last

    def delete(self, kind: str, key: str, *, expected_version: int | None = None) -> bool:
        """Remove; False when it was not there. Conflict as for put."""
        return self.commit([Write(kind, key, None, expected_version)])[0] > 0

    def list(self, kind: str) -> dict[str, Versioned]:
        """Every document of a kind."""
        check_kind(kind)
        rows = self._db().execute(
            "SELECT key, value, version FROM docs WHERE kind = ? AND value IS NOT NULL ORDER BY key", (kind,))
        return {key: Versioned(orjson.loads(value), version) for key, value, version in rows}

    def append_telemetry(self, asset: str, samples: Iterable[Sample]) -> None:
        """Add samples to an asset's window and drop what is older than the retention time."""
        rows = [(asset, metric, float(t), float(value)) for metric, value, t in samples]
        db = self._begin()
        try:
            db.executemany("INSERT INTO telemetry(asset, metric, t, value) VALUES (?, ?, ?, ?)", rows)
            db.execute("DELETE FROM telemetry WHERE t < ?", (time.time() - self.retention_s,))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def telemetry(self, asset: str, metrics: Iterable[str] | None = None, since: float | None = None,
                  limit: int | None = None) -> dict[str, list[tuple[float, float]]]:
        """The window: metric -> [(time, value)] oldest first, within the retention time; `limit`: the latest so
        many of each metric."""
        db = self._db()
        if limit is None or metrics is not None:
            return self._window(db, asset, metrics, since, limit)
        db.execute("BEGIN")  # the metric names and their samples from one snapshot
        try:
            return self._window(db, asset, metrics, since, limit)
        finally:
            db.execute("COMMIT")

    def _window(self, db: sqlite3.Connection, asset: str, metrics: Iterable[str] | None, since: float | None,
                limit: int | None) -> dict[str, list[tuple[float, float]]]:
        floor = max(since or 0.0, time.time() - self.retention_s)
        wanted = list(dict.fromkeys(metrics)) if metrics is not None else None
        out: dict[str, list[tuple[float, float]]] = {}
        if limit is not None:  # each metric's latest, through the (asset, metric, t) index: no other sample read
            names = wanted if wanted is not None else [m for (m,) in db.execute(_METRICS, (asset, asset))]
            for start in range(0, len(names), _CHUNK):
                chunk = names[start:start + _CHUNK]
                latest = " UNION ALL ".join(["SELECT * FROM (SELECT metric, t, value FROM telemetry WHERE asset = ? "
                                             "AND metric = ? AND t >= ? ORDER BY t DESC LIMIT ?)"] * len(chunk))
                rows = db.execute(latest, [p for m in chunk for p in (asset, m, floor, max(int(limit), 0))])
                for metric, t, value in rows:
                    out.setdefault(metric, []).append((t, value))
            return {m: samples[::-1] for m, samples in out.items()}
        sql = "SELECT metric, t, value FROM telemetry WHERE asset = ? AND t >= ?"
        args: list[object] = [asset, floor]
        if wanted is not None:
            sql += f" AND metric IN ({','.join('?' * len(wanted))})"
            args += wanted
        for metric, t, value in db.execute(sql + " ORDER BY metric, t", args):
            out.setdefault(metric, []).append((t, value))
        return out

    def latest(self, asset: str) -> dict[str, float]:
        """The newest value of each metric of an asset."""
        rows = self._db().execute(
            "SELECT metric, value FROM telemetry AS a WHERE asset = ? AND t >= ? AND t = "
            "(SELECT MAX(t) FROM telemetry AS b WHERE b.asset = a.asset AND b.metric = a.metric)",
            (asset, time.time() - self.retention_s))
        return dict(rows.fetchall())

    def close(self) -> None:
        """Close every connection this store opened."""
        with self._lock:
            for db in self._connections:
                db.close()
            self._connections.clear()
        self._local = threading.local()
