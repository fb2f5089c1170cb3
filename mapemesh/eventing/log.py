"""The durable append-only event log: SQLite in WAL mode with group commit.

Every accepted event is appended here before the ingress answers 202. The log also holds the delivery
state of each (subscription, event) pair, so a restarted broker resumes where it stopped, and it compacts
events once every subscription that matched them has delivered or dead-lettered them.

All writes go through one writer thread. Appends that arrive while a commit is in flight are gathered into
the next transaction (group commit), so one fsync covers many events.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, TypeVar

from mapemesh.eventing.cloudevent import CloudEvent

log = logging.getLogger(__name__)
T = TypeVar("T")

Durability = Literal["fsync", "os"]
"""fsync: a 202 survives power loss (synchronous=FULL); os: it survives a crash of the process only."""

DeliveryState = Literal["pending", "delivered", "dead"]

SCHEMA_VERSION = 1
_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS events(
    seq INTEGER PRIMARY KEY,
    broker TEXT NOT NULL,
    attrs TEXT NOT NULL,
    data BLOB,
    received_ns INTEGER NOT NULL,
    routed INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS events_unrouted ON events(seq) WHERE routed = 0;
CREATE TABLE IF NOT EXISTS deliveries(
    subscription TEXT NOT NULL,
    seq INTEGER NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('pending', 'delivered', 'dead')),
    attempts INTEGER NOT NULL DEFAULT 0,
    not_before_ns INTEGER NOT NULL DEFAULT 0,
    last_status INTEGER,
    last_error TEXT,
    PRIMARY KEY (subscription, seq)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS deliveries_by_seq ON deliveries(seq, state);
"""


@dataclass(frozen=True, slots=True)
class LoggedEvent:
    """An event as stored: its position in the log, its broker ("namespace/name") and arrival."""

    seq: int
    broker: str
    event: CloudEvent
    received_ns: int


@dataclass(frozen=True, slots=True)
class Delivery:
    """The delivery state of one event for one subscription."""

    subscription: str
    seq: int
    state: DeliveryState
    attempts: int
    not_before_ns: int
    last_status: int | None
    last_error: str | None


class LogClosed(RuntimeError):
    """The log was closed; nothing more can be appended."""


class EventLog:
    """The broker's durable log. Create it inside a running event loop; `close()` it when done."""

    def __init__(self, path: Path, durability: Durability = "fsync"):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.durability = durability
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="eventlog-writer")
        self._db = self._writer.submit(self._open).result()
        self._next_seq = self._writer.submit(self._max_seq).result() + 1
        self._pending: list[tuple[tuple[str, str, bytes | None, int], asyncio.Future[list[int]] | None, int]] = []
        self._flushing = False
        self._flush_task: asyncio.Task[None] | None = None
        self._closed = False
        self._reader_local = threading.local()
        self.commits = 0
        """How many append transactions were committed (each covers one group of appends)."""

    # -- writer side -------------------------------------------------------------------------

    def _open(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=" + ("FULL" if self.durability == "fsync" else "NORMAL"))
        db.executescript(_SCHEMA)
        row = db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
        if row is None:
            db.execute("INSERT INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
        elif int(row[0]) != SCHEMA_VERSION:
            raise RuntimeError(f"{self.path}: log schema version {row[0]}, this mapemesh reads "
                               f"{SCHEMA_VERSION}")
        return db

    def _max_seq(self) -> int:
        return self._db.execute("SELECT COALESCE(MAX(seq), 0) FROM events").fetchone()[0]

    async def append(self, broker: str, events: Sequence[CloudEvent]) -> list[int]:
        """Append events atomically; return their sequence numbers once the transaction is durable."""
        if self._closed:
            raise LogClosed("the event log is closed")
        now = time.time_ns()
        # Encode before queueing: an event that cannot be stored fails its own request only.
        rows = [(broker, _encode_attrs(ev), ev.data, now) for ev in events]
        loop = asyncio.get_running_loop()
        future: asyncio.Future[list[int]] = loop.create_future()
        # Only the last row of a request carries the future; a request's rows commit together.
        last = len(rows) - 1
        self._pending.extend((row, future if i == last else None, len(rows)) for i, row in enumerate(rows))
        if not self._flushing:
            self._flushing = True
            self._flush_task = loop.create_task(self._flush_loop())
        return await future

    async def _flush_loop(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self._pending:
                batch, self._pending = self._pending, []
                first = self._next_seq
                rows = [(first + i, *row) for i, (row, _, _) in enumerate(batch)]
                try:
                    await loop.run_in_executor(self._writer, self._insert, rows)
                except Exception as exc:  # the whole group failed: nobody in it gets a 202
                    log.exception("event log append failed")
                    for _, fut, _ in batch:
                        if fut is not None and not fut.done():
                            fut.set_exception(exc)
                    continue
                self._next_seq = first + len(rows)
                self.commits += 1
                for i, (_, fut, n) in enumerate(batch):
                    if fut is not None and not fut.done():
                        fut.set_result(list(range(first + i - n + 1, first + i + 1)))
        finally:
            self._flushing = False

    def _insert(self, rows: list[tuple[int, str, str, bytes | None, int]]) -> None:
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            db.executemany("INSERT INTO events(seq, broker, attrs, data, received_ns) VALUES (?,?,?,?,?)", rows)
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    async def write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run `fn(connection)` on the writer thread inside one transaction."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._writer, self._transaction, fn)

    def _transaction(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            result = fn(db)
            db.execute("COMMIT")
            return result
        except BaseException:
            db.execute("ROLLBACK")
            raise

    async def route(self, seq: int, subscriptions: Iterable[str]) -> None:
        """Record which subscriptions an event must reach (pending each), and mark it routed."""
        subs = list(subscriptions)

        def _route(db: sqlite3.Connection) -> None:
            db.executemany("INSERT OR IGNORE INTO deliveries(subscription, seq, state) VALUES (?, ?, 'pending')",
                           [(s, seq) for s in subs])
            db.execute("UPDATE events SET routed = 1 WHERE seq = ?", (seq,))

        await self.write(_route)

    async def record_attempt(self, subscription: str, seq: int, state: DeliveryState, *,
                             status: int | None = None, error: str | None = None,
                             not_before_ns: int = 0) -> None:
        """Record the outcome of one delivery attempt: still pending (retry later), delivered or dead."""

        def _record(db: sqlite3.Connection) -> None:
            cur = db.execute(
                "UPDATE deliveries SET state = ?, attempts = attempts + 1, last_status = ?, last_error = ?, "
                "not_before_ns = ? WHERE subscription = ? AND seq = ?",
                (state, status, error, not_before_ns, subscription, seq))
            if cur.rowcount == 0:
                raise KeyError(f"no delivery of event {seq} to {subscription!r}")

        await self.write(_record)

    async def compact(self) -> int:
        """Delete events that every matching subscription has delivered or dead-lettered; return how many."""

        def _compact(db: sqlite3.Connection) -> int:
            n = db.execute(
                "DELETE FROM events WHERE routed = 1 AND NOT EXISTS "
                "(SELECT 1 FROM deliveries d WHERE d.seq = events.seq AND d.state = 'pending')").rowcount
            db.execute("DELETE FROM deliveries WHERE NOT EXISTS (SELECT 1 FROM events e WHERE e.seq = deliveries.seq)")
            return n

        n = await self.write(_compact)
        if n:
            log.debug("compacted %d fully handled events", n)
        return n

    async def close(self) -> None:
        """Wait for in-flight appends, then close the database."""
        self._closed = True
        if self._flush_task is not None:
            await self._flush_task  # it drains everything queued before it returns
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._writer, self._close_db)
        self._writer.shutdown(wait=True)

    def _close_db(self) -> None:
        self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        self._db.close()

    # -- reader side (any thread; each thread gets its own read connection) ------------------

    def _reader(self) -> sqlite3.Connection:
        db = getattr(self._reader_local, "db", None)
        if db is None:
            db = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, check_same_thread=False)
            self._reader_local.db = db
        return db

    def read(self, after: int = 0, limit: int = 1000, *, unrouted_only: bool = False) -> list[LoggedEvent]:
        """Events with seq > `after`, in log order."""
        sql = "SELECT seq, broker, attrs, data, received_ns FROM events WHERE seq > ?"
        if unrouted_only:
            sql += " AND routed = 0"
        rows = self._reader().execute(sql + " ORDER BY seq LIMIT ?", (after, limit)).fetchall()
        return [_decode_row(r) for r in rows]

    def deliveries(self, subscription: str | None = None, state: DeliveryState | None = None) -> list[Delivery]:
        """Delivery records, optionally for one subscription and/or one state."""
        sql = "SELECT subscription, seq, state, attempts, not_before_ns, last_status, last_error FROM deliveries"
        clauses, args = [], []
        if subscription is not None:
            clauses.append("subscription = ?")
            args.append(subscription)
        if state is not None:
            clauses.append("state = ?")
            args.append(state)
        if clauses:
            sql += " WHERE " + " AND ".join(clauses)
        rows = self._reader().execute(sql + " ORDER BY seq", args).fetchall()
        return [Delivery(*r) for r in rows]

    def count(self) -> int:
        """How many events the log holds now."""
        return self._reader().execute("SELECT COUNT(*) FROM events").fetchone()[0]


def read_all(path: Path) -> list[LoggedEvent]:
    """Every event in a log file, opened read-only (for tools and tests; the broker need not run)."""
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        rows = db.execute("SELECT seq, broker, attrs, data, received_ns FROM events ORDER BY seq").fetchall()
    finally:
        db.close()
    return [_decode_row(r) for r in rows]


def _encode_attrs(event: CloudEvent) -> str:
    return json.dumps(event.attributes, separators=(",", ":"), ensure_ascii=False)


def _decode_row(row: tuple[int, str, str, bytes | None, int]) -> LoggedEvent:
    seq, broker, attrs, data, received = row
    return LoggedEvent(seq, broker, CloudEvent(json.loads(attrs), data), received)
