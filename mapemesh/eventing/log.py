"""The durable append-only event log: SQLite in WAL mode with group commit.

Every accepted event is appended here before the ingress answers 202. The log also holds the delivery
state of each (subscription, event) pair, so a restarted broker resumes where it stopped, and it compacts
events once every subscription that matched them has delivered or dead-lettered them.

All writes go through one writer thread. Appends that arrive while a commit is in flight are gathered into
the next transaction (group commit), so one fsync covers many events.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

import orjson

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
    received_ns INTEGER NOT NULL
);
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


_ROWS_PER_INSERT = 256  # 5 parameters a row, well under SQLite's 32766


@functools.lru_cache(maxsize=_ROWS_PER_INSERT)
def _insert_sql(n: int) -> str:
    return "INSERT INTO events(seq, broker, attrs, data, received_ns) VALUES " + ",".join(["(?,?,?,?,?)"] * n)


_Outcome = tuple[asyncio.Future[Any], Any, BaseException | None]


def _reply(loop: asyncio.AbstractEventLoop, outcomes: list[_Outcome]) -> None:
    """Settle futures from the writer thread: one wake-up of the loop for a whole group."""
    with contextlib.suppress(RuntimeError):  # a closed loop: nobody is waiting any more
        loop.call_soon_threadsafe(_settle, outcomes)


def _settle(outcomes: list[_Outcome]) -> None:
    for future, result, exc in outcomes:
        if future.done():
            continue
        if exc is not None:
            future.set_exception(exc)
        else:
            future.set_result(result)


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


class UnstorableEvent(ValueError):
    """An event whose attributes cannot be encoded for the log (nothing was stored)."""


class _Append:
    """One append request: its rows go into the next group commit; `future` gets their sequence numbers."""

    __slots__ = ("future", "loop", "rows")

    def __init__(self, rows: list[tuple[str, bytes, bytes | None, int]], loop: asyncio.AbstractEventLoop,
                 future: asyncio.Future[list[int]]):
        self.rows = rows
        self.loop = loop
        self.future = future


class _Call:
    """Any other write: `fn(connection)` in a transaction of its own."""

    __slots__ = ("fn", "future", "loop")

    def __init__(self, fn: Callable[[sqlite3.Connection], object], loop: asyncio.AbstractEventLoop,
                 future: asyncio.Future[object]):
        self.fn = fn
        self.loop = loop
        self.future = future


class EventLog:
    """The broker's durable log. Create it inside a running event loop; `close()` it when done.

    One writer thread owns the database connection. It takes every append queued while it was busy and
    commits them in one transaction, then answers all of them with one call into the event loop; it
    never waits for the loop between commits.
    """

    def __init__(self, path: Path, durability: Durability = "fsync"):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.durability = durability
        self._db = self._open()
        self._routed_through = int(
            self._db.execute("SELECT value FROM meta WHERE key='routed_through'").fetchone()[0])
        # Compaction may have removed every event up to the routing cursor: never hand out a number again.
        max_seq = self._db.execute("SELECT COALESCE(MAX(seq), 0) FROM events").fetchone()[0]
        self._next_seq = max(max_seq, self._routed_through) + 1
        self._queue: queue.SimpleQueue[_Append | _Call | None] = queue.SimpleQueue()
        self._closed = False
        self._close_lock = threading.Lock()
        self._reader_local = threading.local()
        self.commits = 0
        """How many append transactions were committed (each covers one group of appends)."""
        self.appended = 0
        """How many events were appended since the log was opened."""
        self._thread = threading.Thread(target=self._run, name="eventlog-writer", daemon=True)
        self._thread.start()

    # -- writer side -------------------------------------------------------------------------

    def _open(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=" + ("FULL" if self.durability == "fsync" else "NORMAL"))
        db.executescript("BEGIN;" + _SCHEMA + f"""
            INSERT OR IGNORE INTO meta VALUES ('schema_version', '{SCHEMA_VERSION}');
            INSERT OR IGNORE INTO meta VALUES ('routed_through', '0');
            COMMIT;""")
        row = db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
        if int(row[0]) != SCHEMA_VERSION:
            raise RuntimeError(f"{self.path}: log schema version {row[0]}, this mapemesh reads "
                               f"{SCHEMA_VERSION}")
        return db

    async def append(self, broker: str, events: Sequence[CloudEvent]) -> list[int]:
        """Append events atomically; return their sequence numbers once the transaction is durable."""
        now = time.time_ns()
        # Encode before queueing: an event that cannot be stored fails its own request only.
        try:
            rows = [(broker, _encode_attrs(ev), ev.data, now) for ev in events]
        except TypeError as exc:  # orjson.JSONEncodeError is a TypeError
            raise UnstorableEvent(f"the event's attributes cannot be stored: {exc}") from None
        loop = asyncio.get_running_loop()
        future: asyncio.Future[list[int]] = loop.create_future()
        self._enqueue(_Append(rows, loop, future))
        return await future

    def _enqueue(self, item: _Append | _Call) -> None:
        with self._close_lock:  # nothing may slip in behind the writer's stop sentinel
            if self._closed:
                raise LogClosed("the event log is closed")
            self._queue.put(item)

    def _run(self) -> None:
        get, get_nowait = self._queue.get, self._queue.get_nowait
        stop = False
        while not stop:
            item = get()
            if item is None:
                break
            group: list[_Append] = []
            calls: list[_Call] = []
            while item is not None:
                (group if isinstance(item, _Append) else calls).append(item)  # type: ignore[arg-type]
                try:
                    item = get_nowait()
                except queue.Empty:
                    break
            else:
                stop = True  # close() was queued behind these: finish them, then stop
            if group:
                self._commit_group(group)
            if calls:
                self._run_calls(calls)
        self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        self._db.close()

    def _commit_group(self, group: list[_Append]) -> None:
        first = seq = self._next_seq
        rows: list[tuple[int, str, bytes, bytes | None, int]] = []
        for request in group:
            for row in request.rows:
                rows.append((seq, *row))
                seq += 1
        try:
            self._insert(rows)
        except Exception as exc:  # the whole group failed: nobody in it gets a 202
            log.exception("event log append of %d events failed", len(rows))
            outcome = [(r.future, None, exc) for r in group]
        else:
            self._next_seq = seq
            self.commits += 1
            self.appended += len(rows)
            outcome = []
            for request in group:
                n = len(request.rows)
                outcome.append((request.future, list(range(first, first + n)), None))
                first += n
        by_loop: dict[asyncio.AbstractEventLoop, list[_Outcome]] = {}
        for request, result in zip(group, outcome, strict=True):
            by_loop.setdefault(request.loop, []).append(result)
        for loop, results in by_loop.items():
            _reply(loop, results)

    def _run_calls(self, calls: list[_Call]) -> None:
        # Every queued write shares one transaction (one fsync); a savepoint each keeps them independent.
        db = self._db
        outcomes: list[tuple[_Call, object, BaseException | None]] = []
        try:
            db.execute("BEGIN IMMEDIATE")
            for call in calls:
                db.execute("SAVEPOINT call")
                try:
                    result = call.fn(db)
                except Exception as exc:
                    db.execute("ROLLBACK TO call")
                    outcomes.append((call, None, exc))
                else:
                    outcomes.append((call, result, None))
                db.execute("RELEASE call")
            db.execute("COMMIT")
        except Exception as exc:  # the transaction itself failed: none of it happened
            with contextlib.suppress(sqlite3.Error):
                db.execute("ROLLBACK")
            log.exception("event log write failed")
            outcomes = [(call, None, exc) for call in calls]
        by_loop: dict[asyncio.AbstractEventLoop, list[_Outcome]] = {}
        for call, result, exc in outcomes:
            by_loop.setdefault(call.loop, []).append((call.future, result, exc))
        for loop, results in by_loop.items():
            _reply(loop, results)

    def _insert(self, rows: list[tuple[int, str, bytes, bytes | None, int]]) -> None:
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            # One multi-row INSERT per chunk instead of executemany: the sqlite3 module releases and
            # retakes the GIL around every statement step, and each hand-off slows the event loop thread.
            for i in range(0, len(rows), _ROWS_PER_INSERT):
                chunk = rows[i:i + _ROWS_PER_INSERT]
                db.execute(_insert_sql(len(chunk)), [v for row in chunk for v in row])
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    async def write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run `fn(connection)` on the writer thread inside one transaction."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._enqueue(_Call(fn, loop, future))  # type: ignore[arg-type]
        return await future

    @property
    def routed_through(self) -> int:
        """Every event up to this sequence number has been routed to its subscriptions."""
        return self._routed_through

    async def route(self, routes: Sequence[tuple[int, Iterable[str]]]) -> None:
        """Record, for events in log order, the subscriptions each must reach; advance the routing cursor.

        The events must be the next unrouted ones, in order (the dispatcher routes in log order). An event
        that matched no subscription is handled as soon as it is routed.
        """
        if not routes:
            return
        seqs = [seq for seq, _ in routes]
        if seqs != sorted(seqs) or seqs[0] <= self._routed_through:
            raise ValueError(f"events must be routed in log order after {self._routed_through}, got {seqs}")
        rows = [(sub, seq) for seq, subs in routes for sub in subs]
        last = seqs[-1]

        def _route(db: sqlite3.Connection) -> None:
            db.executemany("INSERT OR IGNORE INTO deliveries(subscription, seq, state) VALUES (?, ?, 'pending')",
                           rows)
            db.execute("UPDATE meta SET value = ? WHERE key = 'routed_through'", (str(last),))

        await self.write(_route)
        self._routed_through = last

    async def record_attempt(self, subscription: str, seq: int, state: DeliveryState, *,
                             status: int | None = None, error: str | None = None,
                             not_before_ns: int = 0, attempted: bool = True) -> None:
        """Record the outcome of a delivery attempt: still pending (retry later), delivered or dead.

        `attempted=False` changes the state without counting an attempt (for example after dead-lettering).
        """

        def _record(db: sqlite3.Connection) -> None:
            cur = db.execute(
                "UPDATE deliveries SET state = ?, attempts = attempts + ?, last_status = ?, last_error = ?, "
                "not_before_ns = ? WHERE subscription = ? AND seq = ?",
                (state, int(attempted), status, error, not_before_ns, subscription, seq))
            if cur.rowcount == 0:
                raise KeyError(f"no delivery of event {seq} to {subscription!r}")

        await self.write(_record)

    async def compact(self) -> int:
        """Delete events that every matching subscription has delivered or dead-lettered; return how many."""

        def _compact(db: sqlite3.Connection) -> int:
            n = db.execute(
                "DELETE FROM events WHERE seq <= ? AND NOT EXISTS "
                "(SELECT 1 FROM deliveries d WHERE d.seq = events.seq AND d.state = 'pending')",
                (self._routed_through,)).rowcount
            db.execute("DELETE FROM deliveries WHERE NOT EXISTS (SELECT 1 FROM events e WHERE e.seq = deliveries.seq)")
            return n

        n = await self.write(_compact)
        if n:
            log.debug("compacted %d fully handled events", n)
        return n

    async def close(self) -> None:
        """Finish every queued write, then close the database."""
        with self._close_lock:
            if self._closed:
                return
            self._closed = True
            self._queue.put(None)
        await asyncio.to_thread(self._thread.join)

    # -- reader side (any thread; each thread gets its own read connection) ------------------

    def _reader(self) -> sqlite3.Connection:
        db = getattr(self._reader_local, "db", None)
        if db is None:
            db = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, check_same_thread=False)
            self._reader_local.db = db
        return db

    def read(self, after: int = 0, limit: int = 1000) -> list[LoggedEvent]:
        """Events with seq > `after`, in log order (`after=log.routed_through`: the unrouted ones)."""
        rows = self._reader().execute(
            "SELECT seq, broker, attrs, data, received_ns FROM events WHERE seq > ? ORDER BY seq LIMIT ?",
            (after, limit)).fetchall()
        return [_decode_row(r) for r in rows]

    def get(self, seqs: Iterable[int]) -> dict[int, LoggedEvent]:
        """The events with these sequence numbers that are still in the log."""
        wanted = list(seqs)
        out: dict[int, LoggedEvent] = {}
        for i in range(0, len(wanted), 500):
            chunk = wanted[i:i + 500]
            rows = self._reader().execute(
                "SELECT seq, broker, attrs, data, received_ns FROM events WHERE seq IN "
                f"({','.join('?' * len(chunk))})", chunk).fetchall()
            out.update((r[0], _decode_row(r)) for r in rows)
        return out

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


def _encode_attrs(event: CloudEvent) -> bytes:
    return orjson.dumps(event.attributes)


def _decode_row(row: tuple[int, str, bytes, bytes | None, int]) -> LoggedEvent:
    seq, broker, attrs, data, received = row
    return LoggedEvent(seq, broker, CloudEvent(orjson.loads(attrs), data), received)
