"""The durable log as a library: group commit, atomic batches, delivery state, compaction, restart."""

from __future__ import annotations

import asyncio

import pytest

from mapemesh.eventing.cloudevent import CloudEvent
from mapemesh.eventing.log import EventLog, LogClosed, UnstorableEvent, read_all


def ev(i: int) -> CloudEvent:
    return CloudEvent({"specversion": "1.0", "id": f"e{i}", "source": "/t", "type": "t"}, b"%d" % i)


def run(coro):
    return asyncio.run(coro)


def test_concurrent_appends_share_commits(tmp_path):
    async def main():
        log = EventLog(tmp_path / "log.db")
        seqs = await asyncio.gather(*(log.append("default/default", [ev(i)]) for i in range(200)))
        commits = log.commits
        await log.close()
        return seqs, commits

    seqs, commits = run(main())
    flat = sorted(s for (s,) in seqs)
    assert flat == list(range(1, 201))
    assert commits < 200  # group commit: many appends per transaction
    assert [e.event.id for e in read_all(tmp_path / "log.db")] == [f"e{i}" for i in range(200)]


def test_batch_gets_contiguous_sequence_numbers(tmp_path):
    async def main():
        log = EventLog(tmp_path / "log.db")
        a, b = await asyncio.gather(log.append("b", [ev(1), ev(2), ev(3)]), log.append("b", [ev(4)]))
        await log.close()
        return a, b

    a, b = run(main())
    assert a == [a[0], a[0] + 1, a[0] + 2]
    assert not set(a) & set(b)


def test_failed_group_stores_nothing_and_reports_the_error(tmp_path):
    async def main():
        log = EventLog(tmp_path / "log.db")
        await log.append("b", [ev(1)])
        bad = CloudEvent({"id": object()}, None)  # cannot be encoded: the whole request must fail
        with pytest.raises(UnstorableEvent):
            await log.append("b", [ev(2), bad])
        seqs = await log.append("b", [ev(3)])
        await log.close()
        return seqs

    assert run(main()) == [2]
    assert [e.event.id for e in read_all(tmp_path / "log.db")] == ["e1", "e3"]


def test_sequence_continues_after_reopen(tmp_path):
    async def first():
        log = EventLog(tmp_path / "log.db")
        await log.append("b", [ev(1), ev(2)])
        await log.close()

    async def second():
        log = EventLog(tmp_path / "log.db", durability="os")
        seqs = await log.append("b", [ev(3)])
        await log.close()
        return seqs

    run(first())
    assert run(second()) == [3]


def test_routes_are_stored_with_the_events_and_compaction_waits_for_them(tmp_path):
    async def main():
        log = EventLog(tmp_path / "log.db")
        s1, _, s3 = await log.append("b", [ev(1), ev(2), ev(3)], [["sub-a", "sub-b"], [], ["sub-a"]])
        assert {(d.subscription, d.seq) for d in log.deliveries(state="pending")} == {
            ("sub-a", s1), ("sub-b", s1), ("sub-a", s3)}
        assert await log.compact(retention_s=3600) == 0  # within the retention time: kept
        assert await log.compact() == 1  # s2 reached nobody; s1 and s3 are still owed
        await log.record_attempt("sub-a", s1, "pending", status=503, error="unavailable", not_before_ns=5)
        (d,) = log.deliveries("sub-a", state="pending")[:1]
        assert (d.seq, d.state, d.attempts, d.last_status, d.not_before_ns) == (s1, "pending", 1, 503, 5)
        await log.record_attempt("sub-a", s1, "delivered", status=202)
        assert await log.compact() == 0  # sub-b still owes s1
        await log.record_attempt("sub-b", s1, "dead", status=400, error="bad request", attempted=False)
        assert await log.compact() == 1
        assert [e.seq for e in log.read()] == [s3]
        assert [(d.subscription, d.seq, d.state) for d in log.deliveries()] == [("sub-a", s3, "pending")]
        with pytest.raises(KeyError):
            await log.record_attempt("sub-a", s1, "delivered")
        with pytest.raises(ValueError, match="every event"):
            await log.append("b", [ev(4), ev(5)], [["sub-a"]])
        await log.close()

    run(main())


def test_pending_deliveries_survive_reopen(tmp_path):
    async def first():
        log = EventLog(tmp_path / "log.db")
        seqs = await log.append("b", [ev(1), ev(2)], [["sub"], []])
        await log.close()
        return seqs

    async def second():
        log = EventLog(tmp_path / "log.db")
        pending = [(d.subscription, d.seq) for d in log.deliveries(state="pending")]
        events = log.get([seq for _, seq in pending])
        await log.close()
        return pending, events

    s1, _ = run(first())
    pending, events = run(second())
    assert pending == [("sub", s1)] and events[s1].event.id == "e1"


def test_sequence_numbers_are_never_reused_after_compaction(tmp_path):
    async def first():
        log = EventLog(tmp_path / "log.db")
        seqs = await log.append("b", [ev(1), ev(2), ev(3)])
        assert await log.compact() == 3
        await log.close()
        return seqs

    async def second():
        log = EventLog(tmp_path / "log.db")
        (seq,) = await log.append("b", [ev(4)])
        await log.close()
        return seq

    seqs = run(first())
    assert run(second()) > max(seqs)


def test_closed_log_refuses_appends_and_writes(tmp_path):
    async def main():
        log = EventLog(tmp_path / "log.db")
        await log.close()
        with pytest.raises(LogClosed):
            await log.append("b", [ev(1)])
        with pytest.raises(LogClosed):
            await log.compact()
        await log.close()  # closing twice is harmless

    run(main())


def test_a_reply_append_is_answered_at_commit_before_the_fsync(tmp_path, monkeypatch):
    import threading

    from mapemesh.eventing import log as eventlog

    release = threading.Event()
    real_fsync = eventlog.os.fsync

    def slow_fsync(fd):
        release.wait(10)
        real_fsync(fd)

    async def scenario():
        log = EventLog(tmp_path / "log.db")
        try:
            monkeypatch.setattr(eventlog.os, "fsync", slow_fsync)
            durable = asyncio.ensure_future(log.append("default/default", [ev(1)]))
            reply = await asyncio.wait_for(log.append("default/default", [ev(2)], durable=False), 5)
            assert not durable.done()  # still waiting for its fsync
            release.set()
            assert await asyncio.wait_for(durable, 5) == [1] and reply == [2]
        finally:
            release.set()
            await log.close()

    run(scenario())
