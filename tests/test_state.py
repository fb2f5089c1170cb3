"""The state store contract, run against SQLite and against a real redis-server started here."""

from __future__ import annotations

import multiprocessing
import os
import shutil
import socket
import sqlite3
import subprocess
import threading
import time

import pytest

from mapemesh.state import Conflict, StateStore, Write, open_store, update, update_many
from mapemesh.state.base import optimistic
from mapemesh.state.sqlite import SQLiteStore

from .conftest import wait_for


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory):
    exe = shutil.which("redis-server")
    if exe is None:
        reason = "redis-server is not installed (.ci/run installs it; apt-get install redis-server)"
        if os.environ.get("CI"):
            pytest.fail(reason)  # never skipped in CI
        pytest.skip(reason)
    port = _free_port()
    work = tmp_path_factory.mktemp("redis")
    proc = subprocess.Popen([exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                             "--dir", str(work)], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)

    def up() -> bool:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2) as s:
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    wait_for(up, what="redis-server to answer")
    yield f"redis://127.0.0.1:{port}/0"
    proc.terminate()
    proc.wait(10)


@pytest.fixture(params=["sqlite", pytest.param("redis", marks=pytest.mark.live)])  # redis: a redis-server process
def store_url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'state.db'}"
    url = request.getfixturevalue("redis_url")
    import redis

    redis.Redis.from_url(url).flushdb()
    return url


@pytest.fixture
def store(store_url) -> StateStore:
    s = open_store(store_url, retention_s=60)
    yield s
    s.close()


def test_is_a_state_store(store):
    assert isinstance(store, StateStore)


def test_documents_are_versioned(store):
    assert store.get("applications", "app-1") is None
    assert store.put("applications", "app-1", {"name": "a"}) == 1
    assert store.put("applications", "app-1", {"name": "b"}) == 2
    got = store.get("applications", "app-1")
    assert got.value == {"name": "b"} and got.version == 2
    assert list(store.list("applications")) == ["app-1"]
    assert store.delete("applications", "app-1") is True
    assert store.delete("applications", "app-1") is False
    assert store.list("applications") == {}


def test_expected_version_guards_writes(store):
    assert store.put("plans", "p1", {"s": "Queued"}, expected_version=0) == 1
    with pytest.raises(Conflict) as err:
        store.put("plans", "p1", {"s": "x"}, expected_version=0)  # it exists already
    assert err.value.current == 1
    assert store.put("plans", "p1", {"s": "Scheduled"}, expected_version=1) == 2
    with pytest.raises(Conflict):
        store.put("plans", "p1", {"s": "stale"}, expected_version=1)
    with pytest.raises(Conflict):
        store.delete("plans", "p1", expected_version=1)
    assert store.get("plans", "p1").value == {"s": "Scheduled"}
    assert store.delete("plans", "p1", expected_version=2)


def test_unknown_kinds_are_refused(store):
    with pytest.raises(ValueError, match="unknown kind"):
        store.put("aplications", "x", {})


def test_concurrent_updates_are_not_lost(store_url):
    stores = [open_store(store_url) for _ in range(8)]

    def bump(s) -> None:
        for _ in range(25):
            update(s, "settings", "counter", lambda doc: {"n": (doc or {"n": 0})["n"] + 1})

    threads = [threading.Thread(target=bump, args=(s,)) for s in stores]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    final = stores[0].get("settings", "counter")
    assert final.value == {"n": 200} and final.version == 200
    for s in stores:
        s.close()


def _bump_in_process(url: str, n: int) -> None:
    s = open_store(url)
    for _ in range(n):
        update(s, "settings", "counter", lambda doc: {"n": (doc or {"n": 0})["n"] + 1})
    s.close()


def _in_processes(target, url: str, n: int = 20, processes: int = 4) -> None:
    """Run `target(url, n)` in `processes` processes at once; each must succeed."""
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=target, args=(url, n)) for _ in range(processes)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0


def test_concurrent_processes_do_not_lose_updates(store_url):
    _in_processes(_bump_in_process, store_url)
    s = open_store(store_url)
    assert s.get("settings", "counter").value == {"n": 80}
    s.close()


def test_update_can_delete(store):
    store.put("policy_contexts", "cpu", {"x": 1})
    assert update(store, "policy_contexts", "cpu", lambda doc: None) is None
    assert store.get("policy_contexts", "cpu") is None


def test_telemetry_window_latest_and_retention(store_url):
    s = open_store(store_url, retention_s=1)
    now = time.time()
    s.append_telemetry("node-1", [("cpu", 0.5, now - 0.6), ("cpu", 0.7, now - 0.2), ("temp", 40.0, now - 0.5)])
    s.append_telemetry("node-2", [("cpu", 0.1, now)])
    window = s.telemetry("node-1")
    assert [v for _, v in window["cpu"]] == [0.5, 0.7] and [v for _, v in window["temp"]] == [40.0]
    assert s.telemetry("node-1", metrics=["cpu"], since=now - 0.4) == {"cpu": [(pytest.approx(now - 0.2), 0.7)]}
    assert s.latest("node-1") == {"cpu": 0.7, "temp": 40.0}
    s.append_telemetry("node-1", [("cpu", 0.9, now - 5)])  # older than the retention time: not kept
    assert [v for _, v in s.telemetry("node-1")["cpu"]] == [0.5, 0.7]
    time.sleep(max(0.0, now + 0.5 - time.time()))  # the window is now (now - 0.5 .. now + 0.5]
    assert [v for _, v in s.telemetry("node-1")["cpu"]] == [0.7]  # 0.5 aged out
    assert s.latest("node-2") == {"cpu": 0.1}
    s.close()


def test_same_timestamp_samples_are_all_kept(store):
    now = time.time()
    store.append_telemetry("n", [("m", 1.0, now), ("m", 2.0, now)])
    assert sorted(v for _, v in store.telemetry("n")["m"]) == [1.0, 2.0]


def test_open_store_urls(tmp_path):
    s = open_store("sqlite:", data=tmp_path)
    assert isinstance(s, SQLiteStore) and s.path == tmp_path / "state.db"
    s.close()
    with pytest.raises(ValueError, match="unsupported"):
        open_store("postgres://x")


def test_versions_never_repeat_after_a_delete(store):
    assert store.put("plans", "p", {"n": 1}) == 1
    assert store.delete("plans", "p", expected_version=1)
    assert store.get("plans", "p") is None and store.list("plans") == {}
    assert store.put("plans", "p", {"n": 2}, expected_version=0) == 3  # re-created: a new number
    with pytest.raises(Conflict):
        store.put("plans", "p", {"stale": True}, expected_version=1)  # a writer that read before the delete
    assert store.get("plans", "p").value == {"n": 2}
    assert store.delete("plans", "nope") is False


def test_telemetry_names_with_colons_stay_apart(store):
    now = time.time()
    store.append_telemetry("a:b", [("c", 1.0, now)])
    store.append_telemetry("a", [("b:c", 2.0, now)])
    assert store.latest("a:b") == {"c": 1.0} and store.latest("a") == {"b:c": 2.0}


def test_get_many_reads_several_documents_at_once(store):
    store.put("applications", "a", {"n": 1})
    store.put("applications", "b", {"n": 2})
    store.put("settings", "mode", {"mode": "ml"})
    store.delete("applications", "b")
    found = store.get_many([("applications", "a"), ("applications", "b"), ("settings", "mode"),
                            ("plans", "none"), ("applications", "a")])
    assert [None if f is None else (f.value, f.version) for f in found] == [
        ({"n": 1}, 1), None, ({"mode": "ml"}, 1), None, ({"n": 1}, 1)]
    assert store.get_many([]) == []
    with pytest.raises(ValueError, match="unknown kind"):
        store.get_many([("applications", "a"), ("aplications", "x")])


def test_commit_writes_all_or_nothing(store):
    store.put("plans", "p", {"status": "Queued"})
    store.put("cycles", "c", {"queued": ["p"]})
    assert store.commit([Write("plans", "p", {"status": "Scheduled"}, 1), Write("cycles", "c", None, 1),
                         Write("settings", "scheduler", {"cycle": 1}, 0)]) == [2, 2, 1]
    assert store.get("plans", "p").value == {"status": "Scheduled"}
    assert store.get("cycles", "c") is None
    # One expectation fails (the last one): nothing of the commit happens, and the Conflict names it.
    with pytest.raises(Conflict) as failed:
        store.commit([Write("plans", "p", {"status": "Pending"}, 2), Write("applications", "new", {"x": 1}),
                      Write("settings", "scheduler", {"cycle": 2}, 7)])
    assert (failed.value.kind, failed.value.key, failed.value.expected, failed.value.current) == (
        "settings", "scheduler", 7, 1)
    assert store.get("plans", "p").value == {"status": "Scheduled"} and store.get("plans", "p").version == 2
    assert store.get("applications", "new") is None
    assert "new" not in store.list("applications")
    # A delete of a document that is not there: version 0, nothing changes; a tombstone keeps numbers rising.
    assert store.commit([Write("cycles", "gone", None)]) == [0]
    assert store.commit([Write("cycles", "c", {"again": True}, 0)]) == [3]
    assert store.commit([]) == []


def test_commit_refuses_bad_writes_and_changes_nothing(store):
    store.put("plans", "p", {"n": 1})
    with pytest.raises(ValueError, match="written twice"):
        store.commit([Write("plans", "p", {"n": 2}), Write("plans", "p", {"n": 3})])
    with pytest.raises(ValueError, match="unknown kind"):
        store.commit([Write("plans", "p", {"n": 2}), Write("plan", "q", {"n": 3})])
    assert store.get("plans", "p").value == {"n": 1} and store.get("plans", "p").version == 1


def test_update_many_changes_several_documents_in_one_write(store):
    store.put("cycles", "c", {"queued": ["p"]})
    calls = []

    def change(docs):
        calls.append(dict(docs))
        cycle = docs[("cycles", "c")]
        return {("cycles", "c"): {**cycle, "queued": []}, ("plans", "p"): {"status": "Scheduled"},
                ("settings", "absent"): None}

    written = update_many(store, [("cycles", "c"), ("plans", "p"), ("settings", "absent")], change)
    assert written[("cycles", "c")].value == {"queued": []} and written[("cycles", "c")].version == 2
    assert written[("plans", "p")].version == 1 and written[("settings", "absent")] is None
    assert calls == [{("cycles", "c"): {"queued": ["p"]}, ("plans", "p"): None, ("settings", "absent"): None}]
    with pytest.raises(ValueError, match="was not read"):
        update_many(store, [("plans", "p")], lambda docs: {("plans", "q"): {}})


def test_optimistic_update_retries_on_a_conflict_with_fresh_documents(store):
    """How a store that cannot run the change itself (Redis) updates: read, change, commit, again on Conflict."""
    store.put("settings", "counter", {"n": 0})
    seen = []

    def change(docs):
        seen.append(docs[("settings", "counter")]["n"])
        if len(seen) == 1:  # another writer gets in between the read and the write
            store.put("settings", "counter", {"n": 10})
        return {("settings", "counter"): {"n": docs[("settings", "counter")]["n"] + 1},
                ("plans", "p"): {"counter_was": docs[("settings", "counter")]["n"]}}

    optimistic(store, [("settings", "counter"), ("plans", "p")], change)
    assert seen == [0, 10]
    assert store.get("settings", "counter").value == {"n": 11}
    assert store.get("plans", "p").value == {"counter_was": 10} and store.get("plans", "p").version == 1


def test_sqlite_updates_in_one_transaction_no_writer_comes_in_between(tmp_path):
    """SQLite runs the change inside its write transaction: one round trip, and the change runs once."""
    store = SQLiteStore(tmp_path / "state.db")
    store.put("settings", "counter", {"n": 0})
    other = sqlite3.connect(tmp_path / "state.db", isolation_level=None, timeout=0)
    refused, seen = [], []

    def change(docs):
        seen.append(docs[("settings", "counter")]["n"])
        try:
            other.execute("BEGIN IMMEDIATE")  # another writer, meanwhile
        except sqlite3.OperationalError as exc:
            refused.append(str(exc))
        else:
            other.execute("ROLLBACK")
        return {("settings", "counter"): {"n": docs[("settings", "counter")]["n"] + 1}}

    written = update_many(store, [("settings", "counter")], change)
    assert seen == [0] and refused == ["database is locked"]
    assert written[("settings", "counter")].version == 2 and store.get("settings", "counter").value == {"n": 1}
    with pytest.raises(RuntimeError, match="boom"):  # a change that fails writes nothing and frees the lock
        update_many(store, [("settings", "counter")], lambda docs: (_ for _ in ()).throw(RuntimeError("boom")))
    other.execute("BEGIN IMMEDIATE")
    other.execute("ROLLBACK")
    assert store.get("settings", "counter").version == 2
    other.close()
    store.close()


def test_telemetry_limit_gives_the_latest_samples_of_each_metric(store):
    now = time.time()
    store.append_telemetry("n1", [("cpu", float(i), now - 100 + i) for i in range(50)]
                           + [("mem", float(i), now - 10 + i) for i in range(3)] + [("old", 1.0, now - 120)])
    store.append_telemetry("n2", [("cpu", 99.0, now)])
    full = store.telemetry("n1")
    for metrics in (None, ["cpu", "mem"], ["mem", "absent"]):
        for limit in (1, 4, 60):
            got = store.telemetry("n1", metrics, limit=limit)
            assert got == {m: samples[-limit:] for m, samples in full.items() if metrics is None or m in metrics}
    assert store.telemetry("n1", ["cpu"], since=now - 52.5, limit=60)["cpu"] == full["cpu"][-2:]  # since holds
    assert store.telemetry("n1", ["cpu"], limit=0) == {} and store.telemetry("nobody", limit=5) == {}
    docs, window = store.snapshot([("plans", "p")], "n1", None, 2)
    assert docs == [None] and window == {m: samples[-2:] for m, samples in full.items()}


def test_the_latest_samples_are_read_without_reading_the_others(tmp_path):
    """A policy's request carries each metric's latest samples: reading them costs SQLite the same work (its VM's
    steps, counted, not timed) for an asset with 600 samples a metric as for one with 36 000 (an hour at 10/s)."""
    store = SQLiteStore(tmp_path / "state.db", retention_s=7200)
    now = time.time()
    for n in (600, 36_000):
        store.append_telemetry(f"n{n}", [(m, 1.0, now - 3600 + i * 3600 / n) for m in ("a", "b") for i in range(n)])
    steps = {}
    for n in (600, 36_000):
        for limit in (60, None):
            counted = [0]

            def step(c=counted) -> int:
                c[0] += 1
                return 0

            store._db().set_progress_handler(step, 100)
            window = store.snapshot([("plans", "p")], f"n{n}", None, limit)[1]
            store._db().set_progress_handler(None, 100)
            assert [len(v) for v in window.values()] == [limit or n] * 2
            steps[(n, limit)] = counted[0]
    assert steps[(36_000, 60)] <= steps[(600, 60)] * 1.2 + 2, steps
    assert steps[(36_000, None)] > steps[(600, None)] * 20, steps  # the count does see what a full read costs
    store.close()


def test_a_write_waits_for_another_processes_transaction_then_gives_up(tmp_path, monkeypatch):
    """The write lock is waited for (in short steps, not SQLite's 1-2-5-10 ms sleeps), and given up on after
    LOCK_TIMEOUT_S with SQLite's own error: nothing is written then."""
    from mapemesh.state import sqlite as sqlite_store

    store = SQLiteStore(tmp_path / "state.db")
    other = sqlite3.connect(tmp_path / "state.db", isolation_level=None, timeout=0)
    other.execute("BEGIN IMMEDIATE")  # another process's write transaction
    done = []
    writer = threading.Thread(target=lambda: done.append(store.put("settings", "a", {"n": 1})))
    writer.start()
    writer.join(0.3)
    assert writer.is_alive() and not done  # it cannot write while the other holds the lock
    other.execute("COMMIT")
    writer.join(10)
    assert done == [1] and store.get("settings", "a").value == {"n": 1}
    monkeypatch.setattr(sqlite_store, "LOCK_TIMEOUT_S", 0.05)
    other.execute("BEGIN IMMEDIATE")
    with pytest.raises(sqlite3.OperationalError, match="locked"):
        store.put("settings", "a", {"n": 2})
    other.execute("ROLLBACK")
    assert store.get("settings", "a").value == {"n": 1} and store.put("settings", "a", {"n": 3}) == 2
    other.close()
    store.close()


def test_snapshot_reads_documents_and_a_telemetry_window_together(store):
    store.put("plans", "p", {"status": "Queued"})
    now = time.time()
    store.append_telemetry("n1", [("cpu", 0.5, now - 2), ("cpu", 0.7, now - 1), ("mem", 3.0, now - 1)])
    docs, window = store.snapshot([("plans", "p"), ("plans", "absent")], "n1", ["cpu"])
    assert [d.value if d else None for d in docs] == [{"status": "Queued"}, None]
    assert window == store.telemetry("n1", ["cpu"]) and [v for _, v in window["cpu"]] == [0.5, 0.7]
    assert store.snapshot([], "n1")[1] == store.telemetry("n1")  # every metric when none is named
    assert store.snapshot([("plans", "p")], "nobody", ["cpu"])[1] == {}
    with pytest.raises(ValueError, match="unknown kind"):
        store.snapshot([("nonsense", "x")], "n1")


def _bump_many_in_process(url: str, n: int) -> None:
    s = open_store(url)
    for _ in range(n):
        update_many(s, [("settings", "a"), ("settings", "b")], lambda docs: {
            ref: {"n": (doc or {"n": 0})["n"] + 1} for ref, doc in docs.items()})
    s.close()


def test_concurrent_multi_document_updates_are_not_lost(store_url):
    _in_processes(_bump_many_in_process, store_url)
    s = open_store(store_url)
    assert [d.value for d in s.get_many([("settings", "a"), ("settings", "b")])] == [{"n": 80}, {"n": 80}]
    s.close()
