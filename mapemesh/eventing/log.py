"""The durable append-only event log: SQLite in WAL mode with group commit.

Every accepted event is appended here before the ingress answers 202, together with one pending delivery
per subscription it matched (in the same transaction, so an event is never stored unrouted). The log holds
the delivery state of each (subscription, event) pair, so a restarted broker resumes where it stopped, and
it compacts events once every subscription that matched them has delivered or dead-lettered them and the
retention time has passed.

All writes go through one writer thread. Appends that arrive while a commit is in flight are gathered into
the next transaction (group commit). With `fsync` durability the transactions are committed without
waiting for the disk, and a second thread fsyncs the write-ahead log and only then answers the appends
of every transaction it covered: the writer goes on with the next group meanwhile, so one fsync covers many
groups and the disk's latency does not limit throughput. Nothing is acknowledged before it is on disk.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import queue
import sqlite3
import threading
import time
from collections import deque
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
    seq INTEGER PRIMARY KEY AUTOINCREMENT,  -- AUTOINCREMENT: a number is never handed out twice
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
    last_body BLOB,
    PRIMARY KEY (subscription, seq)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS deliveries_by_seq ON deliveries(seq, state);
"""


_COLUMNS = 5  # seq, broker, attrs, data, received_ns
_ROWS_PER_INSERT = 256  # 1280 parameters, well under SQLite's 32766


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
    last_body: bytes | None = None
    """The start of the last answer's body (kept for the dead-letter sink's `knativeerrordata`)."""


class LogClosed(RuntimeError):
    """The log was closed; nothing more can be appended."""


class UnstorableEvent(ValueError):
    """An event whose attributes cannot be encoded for the log (nothing was stored)."""


class _Append:
    """One append request: its rows go into the next group commit; `future` gets their sequence numbers."""

    __slots__ = ("count", "durable", "future", "loop", "params", "routes")

    def __init__(self, params: list[object], count: int, routes: Sequence[Sequence[str]],
                 loop: asyncio.AbstractEventLoop, future: asyncio.Future[list[int]], durable: bool = True):
        self.params = params
        self.count = count
        self.routes = routes
        self.loop = loop
        self.future = future
        self.durable = durable


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
        # sqlite_sequence remembers the highest number ever used, even after compaction deleted it.
        row = self._db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'events'").fetchone()
        self._next_seq = (row[0] if row else 0) + 1
        # (second, time of the last commit in it, last seq then): compaction finds the retention horizon
        # without an index on arrival time.
        now = time.time_ns()
        self._horizons: deque[tuple[int, int, int]] = deque([(now // 1_000_000_000, now, self._next_seq - 1)])
        self._queue: queue.SimpleQueue[_Append | _Call | None] = queue.SimpleQueue()
        self._closed = False
        self._close_lock = threading.Lock()
        self._reader_local = threading.local()
        self.commits = 0
        """How many append transactions were committed (each covers one group of appends)."""
        self.appended = 0
        """How many events were appended since the log was opened."""
        self._sync_queue: queue.SimpleQueue[dict[asyncio.AbstractEventLoop, list[_Outcome]] | None] = \
            queue.SimpleQueue()
        self._wal_fd: int | None = None
        self.syncs = 0
        """How many fsyncs of the write-ahead log acknowledged commits."""
        self._thread = threading.Thread(target=self._run, name="eventlog-writer", daemon=True)
        self._thread.start()
        self._syncer = threading.Thread(target=self._sync_run, name="eventlog-sync", daemon=True)
        if durability == "fsync":
            self._syncer.start()

    # -- writer side -------------------------------------------------------------------------

    def _open(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        mode = db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if mode != "wal":
            raise RuntimeError(f"{self.path}: the file system does not support SQLite's WAL mode (got {mode})")
        # NORMAL: commits do not fsync the WAL; with `fsync` durability the sync thread does, before any
        # answer goes out (SQLite still syncs around checkpoints, keeping the database consistent).
        db.execute("PRAGMA synchronous=NORMAL")
        db.executescript("BEGIN;" + _SCHEMA + f"""
            INSERT OR IGNORE INTO meta VALUES ('schema_version', '{SCHEMA_VERSION}');
            COMMIT;""")
        row = db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
        if int(row[0]) != SCHEMA_VERSION:
            raise RuntimeError(f"{self.path}: log schema version {row[0]}, this mapemesh reads "
                               f"{SCHEMA_VERSION}")
        return db

    async def append(self, broker: str, events: Sequence[CloudEvent],
                     routes: Sequence[Sequence[str]] = (), *, durable: bool = True) -> list[int]:
        """Append events atomically; return their sequence numbers once the transaction is durable.

        `routes[i]` names the subscriptions event i must reach: each gets a pending delivery in the same
        transaction. Without routes an event reaches nobody (it is kept for the retention time only).
        `durable=False` answers once the transaction is committed, before the fsync that follows it: for a
        subscriber's reply, whose parent delivery is marked done only in a later (so later fsynced)
        transaction; lost to a power cut, the reply is made again when the parent is delivered again.
        """
        if routes and len(routes) != len(events):
            raise ValueError("routes must name the subscriptions of every event")
        now = time.time_ns()
        # Encode before queueing: an event that cannot be stored fails its own request only.
        params: list[object] = []
        try:
            for ev in events:  # flat INSERT parameters; the writer fills in each seq (the None)
                params += (None, broker, _encode_attrs(ev), ev.data, now)
        except TypeError as exc:  # orjson.JSONEncodeError is a TypeError
            raise UnstorableEvent(f"the event's attributes cannot be stored: {exc}") from None
        loop = asyncio.get_running_loop()
        future: asyncio.Future[list[int]] = loop.create_future()
        self._enqueue(_Append(params, len(events), routes, loop, future, durable))
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
            self._commit(group, calls)
        self._sync_queue.put(None)
        if self._syncer.is_alive():
            self._syncer.join()
        self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        self._db.close()
        if self._wal_fd is not None:
            os.close(self._wal_fd)

    def _sync_run(self) -> None:
        """fsync the WAL, then answer every commit made before the fsync began."""
        get, get_nowait = self._sync_queue.get, self._sync_queue.get_nowait
        stop = False
        while not stop:
            item = get()
            if item is None:
                break
            pending = [item]
            while True:
                try:
                    item = get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    stop = True
                    break
                pending.append(item)
            error: OSError | None = None
            try:
                if self._wal_fd is None:
                    self._wal_fd = os.open(f"{self.path}-wal", os.O_RDONLY)
                    _fsync_dir(self.path.parent)  # the WAL's directory entry must survive too
                os.fsync(self._wal_fd)
                self.syncs += 1
            except OSError as exc:  # committed but maybe not on disk: tell the senders to retry
                log.error("fsync of %s-wal failed: %s", self.path, exc)
                error = exc
            for by_loop in pending:
                for loop, outcomes in by_loop.items():
                    _reply(loop, outcomes if error is None else [(f, None, error) for f, _, _ in outcomes])

    def _commit(self, group: list[_Append], calls: list[_Call]) -> None:
        """One transaction (one fsync) for every queued append and write; a savepoint keeps each write apart."""
        db = self._db
        first = seq = self._next_seq
        params: list[object] = []
        deliveries: list[tuple[str, int]] = []
        for request in group:
            request.params[0::_COLUMNS] = range(seq, seq + request.count)
            params += request.params
            for i, subs in enumerate(request.routes):
                deliveries += [(sub, seq + i) for sub in subs]
            seq += request.count
        n_rows = seq - first
        results: list[_Outcome] = []
        loops: list[asyncio.AbstractEventLoop] = []
        committed = False
        try:
            db.execute("BEGIN IMMEDIATE")
            # One multi-row INSERT per chunk instead of executemany: the sqlite3 module releases and
            # retakes the GIL around every statement step, and each hand-off slows the event loop thread.
            step = _ROWS_PER_INSERT * _COLUMNS
            for i in range(0, len(params), step):
                chunk = params[i:i + step]
                db.execute(_insert_sql(len(chunk) // _COLUMNS), chunk)
            if deliveries:
                db.executemany("INSERT INTO deliveries(subscription, seq, state) VALUES (?, ?, 'pending')",
                               deliveries)
            for call in calls:
                db.execute("SAVEPOINT call")
                try:
                    result = call.fn(db)
                except Exception as exc:
                    db.execute("ROLLBACK TO call")
                    results.append((call.future, None, exc))
                else:
                    results.append((call.future, result, None))
                db.execute("RELEASE call")
                loops.append(call.loop)
            db.execute("COMMIT")
            committed = True
        except Exception as exc:  # the transaction failed: none of it happened, nobody gets a 202
            with contextlib.suppress(sqlite3.Error):
                db.execute("ROLLBACK")
            log.exception("event log commit of %d events and %d writes failed", n_rows, len(calls))
            results = [(item.future, None, exc) for item in (*group, *calls)]
            loops = [item.loop for item in (*group, *calls)]
        else:
            if n_rows:
                self._next_seq = seq
                self.commits += 1
                self.appended += n_rows
                now = time.time_ns()
                second = now // 1_000_000_000
                if self._horizons and self._horizons[-1][0] == second:  # one entry per second at most
                    self._horizons[-1] = (second, now, seq - 1)
                else:
                    self._horizons.append((second, now, seq - 1))
            appended: list[_Outcome] = []
            for request in group:
                appended.append((request.future, list(range(first, first + request.count)), None))
                first += request.count
            results = appended + results
            loops = [r.loop for r in group] + loops
        by_loop: dict[asyncio.AbstractEventLoop, list[_Outcome]] = {}
        at_once: dict[asyncio.AbstractEventLoop, list[_Outcome]] = {}
        fsync = committed and self.durability == "fsync"
        eager = {id(r.future) for r in group if not r.durable} if fsync else set()
        for loop, outcome in zip(loops, results, strict=True):
            (at_once if id(outcome[0]) in eager else by_loop).setdefault(loop, []).append(outcome)
        for loop, outcomes in at_once.items():
            _reply(loop, outcomes)
        if fsync:
            if by_loop:
                self._sync_queue.put(by_loop)  # answered once the sync thread has fsynced the WAL
            return
        for loop, outcomes in by_loop.items():
            _reply(loop, outcomes)

    async def write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run `fn(connection)` on the writer thread inside one transaction."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._enqueue(_Call(fn, loop, future))  # type: ignore[arg-type]
        return await future

    async def record_attempt(self, subscription: str, seq: int, state: DeliveryState, *,
                             status: int | None = None, error: str | None = None, body: bytes | None = None,
                             not_before_ns: int = 0, attempted: bool = True) -> None:
        """Record the outcome of a delivery attempt: still pending (retry later), delivered or dead.

        `attempted=False` changes the state without counting an attempt (for example after dead-lettering).
        """

        def _record(db: sqlite3.Connection) -> None:
            cur = db.execute(
                "UPDATE deliveries SET state = ?, attempts = attempts + ?, last_status = ?, last_error = ?, "
                "last_body = ?, not_before_ns = ? WHERE subscription = ? AND seq = ?",
                (state, int(attempted), status, error, body, not_before_ns, subscription, seq))
            if cur.rowcount == 0:
                raise KeyError(f"no delivery of event {seq} to {subscription!r}")

        await self.write(_record)

    async def compact(self, retention_s: float = 0.0) -> int:
        """Delete events older than `retention_s` that no subscription still owes; return how many."""
        horizon = time.time_ns() - int(retention_s * 1e9)

        def _compact(db: sqlite3.Connection) -> int:
            # Runs on the writer thread, which alone appends to _horizons.
            upto = 0
            while self._horizons and self._horizons[0][1] <= horizon:
                upto = self._horizons.popleft()[2]
            if upto:  # keep the boundary for the next compaction
                self._horizons.appendleft((horizon // 1_000_000_000, horizon, upto))
            n = db.execute(
                "DELETE FROM events WHERE seq <= ? AND NOT EXISTS "
                "(SELECT 1 FROM deliveries d WHERE d.seq = events.seq AND d.state = 'pending')",
                (upto,)).rowcount
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
        """Events with seq > `after`, in log order."""
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

    def delivery(self, subscription: str, seq: int) -> Delivery | None:
        """One delivery's record, or None when there is none (any more)."""
        row = self._reader().execute(_DELIVERY_SQL + " WHERE subscription = ? AND seq = ?",
                                     (subscription, seq)).fetchone()
        return None if row is None else Delivery(*row)

    def pending_after(self, subscription: str, after: int, limit: int) -> list[Delivery]:
        """A subscription's pending deliveries with seq > `after`, in log order, at most `limit`."""
        rows = self._reader().execute(
            _DELIVERY_SQL + " WHERE subscription = ? AND state = 'pending' AND seq > ? ORDER BY seq LIMIT ?",
            (subscription, after, limit)).fetchall()
        return [Delivery(*r) for r in rows]

    def pending_subscriptions(self) -> list[str]:
        """The subscriptions that still owe deliveries."""
        rows = self._reader().execute("SELECT DISTINCT subscription FROM deliveries WHERE state = 'pending'")
        return [r[0] for r in rows]

    def deliveries(self, subscription: str | None = None, state: DeliveryState | None = None) -> list[Delivery]:
        """Delivery records, optionally for one subscription and/or one state."""
        sql = _DELIVERY_SQL
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


def open_readonly(path: Path) -> sqlite3.Connection:
    """A read-only connection to a log file (usable from any thread; the broker need not run)."""
    return sqlite3.connect(f"file:{path}?mode=ro", uri=True, check_same_thread=False)


def read_after(db: sqlite3.Connection, after: int = 0, limit: int | None = None) -> list[LoggedEvent]:
    """The events with seq > `after` through a read-only connection, in log order (at most `limit`)."""
    rows = db.execute("SELECT seq, broker, attrs, data, received_ns FROM events WHERE seq > ? ORDER BY seq LIMIT ?",
                      (after, -1 if limit is None else limit)).fetchall()
    return [_decode_row(r) for r in rows]


def last_seq(db: sqlite3.Connection) -> int:
    """The newest position in the log (0 when it is empty)."""
    return int(db.execute("SELECT MAX(seq) FROM events").fetchone()[0] or 0)


def backlog(db: sqlite3.Connection) -> list[tuple[str, int, int]]:
    """Deliveries not made yet, per subscription: (subscription, how many, the oldest one's arrival in ns); a log
    still being created has none."""
    try:
        rows = db.execute("SELECT d.subscription, COUNT(*), MIN(e.received_ns) FROM deliveries d JOIN events e "
                          "ON e.seq = d.seq WHERE d.state = 'pending' GROUP BY d.subscription").fetchall()
    except sqlite3.OperationalError:  # no tables yet
        return []
    return [(str(s), int(n), int(oldest)) for s, n, oldest in rows]


def read_all(path: Path) -> list[LoggedEvent]:
    """Every event in a log file, opened read-only (for tools and tests; the broker need not run)."""
    db = open_readonly(path)
    try:
        return read_after(db)
    finally:
        db.close()


def _encode_attrs(event: CloudEvent) -> bytes:
    return orjson.dumps(event.attributes)


_DELIVERY_SQL = ("SELECT subscription, seq, state, attempts, not_before_ns, last_status, last_error, last_body "
                 "FROM deliveries")


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _decode_row(row: tuple[int, str, bytes, bytes | None, int]) -> LoggedEvent:
    seq, broker, attrs, data, received = row
    return LoggedEvent(seq, broker, CloudEvent(orjson.loads(attrs), data), received)
