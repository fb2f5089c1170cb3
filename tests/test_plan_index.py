"""The sweep reads what its index says is due, never every plan (mapemesh.loop.plan_index): plans made through the
loop's own calls time out, finished ones and old cycles go, and a plan whose time moved on is filed again."""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

import pytest

from mapemesh.loop import contexts, plan_index, plan_store
from mapemesh.loop.plans import Plan
from mapemesh.state import open_store


def _left(store) -> dict[str, float]:
    """Every entry the index still holds, the earliest of each (its slots stay, empty, to be used again)."""
    left: dict[str, float] = {}
    for doc in store.inner.list("plan_index").values():
        for field in ("plans", "cycles"):
            for key, due in (doc.value.get(field) or {}).items():
                left[key] = min(due, left.get(key, due))
    return left


class Counted:
    """The store, counting its calls by name and kind."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.calls: Counter[tuple[str, str]] = Counter()

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.inner, name)
        if not callable(attr):
            return attr

        def counted(*args: Any, **kwargs: Any) -> Any:
            kind = args[0] if args and isinstance(args[0], str) else ""
            self.calls[(name, kind)] += 1
            return attr(*args, **kwargs)

        return counted


@pytest.fixture
def store(tmp_path, monkeypatch):
    monkeypatch.setattr(plan_store, "PLAN_TIMEOUT_S", 10.0)
    monkeypatch.setattr(plan_store, "PLAN_RETENTION_S", 100.0)
    monkeypatch.setattr(plan_store, "CYCLE_RETENTION_S", 50.0)
    inner = open_store(f"sqlite:///{tmp_path / 'state.db'}")
    yield Counted(inner)
    inner.close()


def _propose(store, plan_id: str, cause: str, now: float) -> Plan:
    plan = Plan(plan_id=plan_id, policy="cpu", asset="n1", mechanisms={"CPUFrequency": {"f": "max"}}, created=now,
                updated=now, inputs={"cause": cause})
    assert plan_store.propose(store, plan, contexts.Answer(verdict=True)) == (True, False)
    return plan


def _pending(store, plan_id: str, cause: str) -> None:
    decisions, _ = plan_store.decide(store, cause, plan_id)
    assert [p.status for p, _ in decisions] == ["Scheduled"]
    assert plan_store.dispatch(store, plan_id) == "Scheduled"


def test_plans_made_by_the_loop_time_out_and_go_without_a_scan(store):
    now = time.time()
    plan_store.sweep(store, now)  # the first sweep indexes the (empty) store once
    _propose(store, "stuck", "c1", now)
    _pending(store, "stuck", "c1")
    _propose(store, "done", "c2", now)
    _pending(store, "done", "c2")
    plan_store.record_result(store, "done", "CPUFrequency", True, None)
    _propose(store, "queued", "c3", now)  # never scheduled: its event was lost
    store.calls.clear()

    assert plan_store.sweep(store, now + 5) == []
    assert [p.plan_id for p in plan_store.sweep(store, now + 11)] == ["stuck"]
    assert store.get("plans", "stuck").value["status"] == "Failed"
    assert "no result within 10s" in store.get("plans", "stuck").value["reason"]
    assert [p.plan_id for p in plan_store.sweep(store, now + 21)] == ["queued"]
    assert store.get("plans", "queued").value["reason"] == "still Queued after 20s"
    assert store.get("plans", "done").value["status"] == "Success"
    # The cycles go after their retention, the finished plans after theirs (from when they finished).
    plan_store.sweep(store, now + 51)
    assert all(store.get("cycles", c) is None for c in ("c1", "c2", "c3"))
    assert store.get("plans", "done") is not None
    plan_store.sweep(store, now + 101)
    assert store.get("plans", "done") is None
    plan_store.sweep(store, now + 122)
    assert store.get("plans", "stuck") is None and store.get("plans", "queued") is None
    assert _left(store) == {}  # nothing left to look at: every entry taken
    assert not any(name == "list" for name, _ in store.calls), store.calls  # never a scan of every plan


def test_a_plan_whose_time_moved_on_is_filed_again_not_failed(store):
    now = time.time()
    plan_store.sweep(store, now)
    plan = _propose(store, "p", "c", now)
    plan.mechanisms["RAPLPowerCap"] = {"w": 10}
    store.put("plans", "p", {**store.get("plans", "p").value, "mechanisms": plan.mechanisms})
    _pending(store, "p", "c")
    time.sleep(0.05)
    plan_store.record_result(store, "p", "CPUFrequency", True, None)  # one of two: still Pending, updated later
    updated = store.get("plans", "p").value["updated"]
    first_due = _left(store)["p"]
    assert first_due < updated + 10  # filed when it went Pending, before the result moved its timeout
    assert plan_store.sweep(store, first_due) == []  # its first entry falls due, but its timeout moved
    assert store.get("plans", "p").value["status"] == "Pending"
    assert _left(store)["p"] == updated + 10  # filed again under its real time (the Queued entry still waits)
    assert [p.plan_id for p in plan_store.sweep(store, updated + 10.5)] == ["p"]


def test_a_store_written_before_the_index_is_indexed_once(store):
    now = time.time()
    for i in range(30):
        store.put("plans", f"old-{i}", {"plan_id": f"old-{i}", "policy": "cpu", "asset": "n1", "status": "Success",
                                        "updated": now - 500, "created": now - 500, "mechanisms": {}})
    store.put("plans", "recent", {"plan_id": "recent", "policy": "cpu", "asset": "n1", "status": "Success",
                                  "updated": now, "created": now, "mechanisms": {}})
    store.put("plans", "pending", {"plan_id": "pending", "policy": "cpu", "asset": "n1", "status": "Pending",
                                   "updated": now - 5, "created": now - 5, "mechanisms": {"M": {}}})
    assert plan_store.sweep(store, now) == []
    assert store.calls[("list", "plans")] == 1
    assert set(store.inner.list("plans")) == {"recent", "pending"}
    store.calls.clear()
    assert [p.plan_id for p in plan_store.sweep(store, now + 6)] == ["pending"]
    assert ("list", "plans") not in store.calls
    # What a sweep reads does not grow with the plans kept: the finished one is not read before its time.
    store.calls.clear()
    plan_store.sweep(store, now + 7)
    # The marker, the buckets due, and the one write (a read-change-write transaction) that moves the marker on: no
    # plan is read.
    assert dict(store.calls) == {("get", "settings"): 1, ("get_many", ""): 1, ("transact", ""): 1}, store.calls


def test_a_sweep_that_did_not_run_for_long_catches_up_bounded(store, monkeypatch):
    monkeypatch.setattr(plan_index, "MAX_BUCKETS", 10)
    monkeypatch.setattr(plan_store, "PLAN_TIMEOUT_S", 25 * plan_index.BUCKET_S)  # due 25 buckets from now
    now = time.time()
    plan_store.sweep(store, now)
    start = store.get(*plan_index.SWEEP).value["through"]
    _propose(store, "p", "c", now)
    _pending(store, "p", "c")
    pending_due = store.get("plans", "p").value["updated"] + plan_store.PLAN_TIMEOUT_S
    late = now + 100 * plan_index.BUCKET_S  # long after: each sweep takes 10 buckets, in order
    sweeps, failed = 0, []
    while not failed:
        before = store.get(*plan_index.SWEEP).value["through"]
        failed = plan_store.sweep(store, late)
        sweeps += 1
        assert store.get(*plan_index.SWEEP).value["through"] == before + 10
        assert sweeps < 10
    # Found by the sweep whose 10 buckets hold its timeout: not before, and not a sweep later.
    assert [p.plan_id for p in failed] == ["p"] and sweeps == -(-(plan_index.bucket(pending_due) - start) // 10)


def test_a_plan_that_could_not_be_executed_is_forgotten_after_its_retention(store):
    now = time.time()
    plan_store.sweep(store, now)
    _propose(store, "bad", "c", now)
    plan_store.decide(store, "c", "bad")
    assert plan_store.dispatch(store, "bad", "Failed", "cannot execute: no such knob") == "Scheduled"
    assert plan_store.sweep(store, now + 21) == []  # already Failed: filed again under its retention
    assert store.get("plans", "bad").value["status"] == "Failed"
    plan_store.sweep(store, now + 51)
    plan_store.sweep(store, now + 106)
    assert store.get("plans", "bad") is None
    assert _left(store) == {}  # no entry left behind


def test_an_entry_filed_late_behind_the_clock_is_still_found(store):
    """Two sweeps at once, one with its clock a bucket behind, or a writer whose clock is: an entry filed in a bucket
    the marker already passed is found all the same (the marker trails the clock; the ring comes round)."""
    now = time.time()
    plan_store.sweep(store, now)
    store.put("plans", "late", {"plan_id": "late", "policy": "cpu", "asset": "n1", "status": "Pending",
                                "updated": now - 30, "created": now - 30, "mechanisms": {"M": {}}})
    plan_store.sweep(store, now + 30)  # the marker moves on
    slot = plan_index.at(now + 2)  # 28 s behind the last sweep's clock
    store.put(*slot, plan_index.add((store.get(*slot).value if store.get(*slot) else None), plans={"late": now + 2}))
    assert [p.plan_id for p in plan_store.sweep(store, now + 31)] == ["late"]  # within the grace: read again
    # Behind the grace too (a clock far behind): found a lap of the ring later.
    plan_store.sweep(store, now + 200)  # the marker is past now + 140
    store.put("plans", "lost", {"plan_id": "lost", "policy": "cpu", "asset": "n1", "status": "Pending",
                                "updated": now, "created": now, "mechanisms": {"M": {}}})
    slot = plan_index.at(now + 10)
    store.put(*slot, plan_index.add((store.get(*slot).value if store.get(*slot) else None), plans={"lost": now + 10}))
    plan_store.sweep(store, now + 201)
    assert store.get("plans", "lost").value["status"] == "Pending"  # missed this lap (its bucket was passed)
    lap = plan_index.SLOTS * plan_index.BUCKET_S
    marker = store.get(*plan_index.SWEEP).value
    store.put(*plan_index.SWEEP, {**marker, "indexed": now + lap + 20})  # no full read meanwhile
    for t in range(int(now + 200), int(now + lap + 20), 4000):  # the sweep runs on, catching up
        plan_store.sweep(store, float(t))
    plan_store.sweep(store, now + lap + 20)
    assert store.get("plans", "lost").value["status"] == "Failed"


def test_every_plan_is_filed_again_from_a_full_read_now_and_then(store):
    """A plan written without an entry (by an older version, during a rolling upgrade) is indexed by the next full
    read, REINDEX_S after the last."""
    now = time.time()
    plan_store.sweep(store, now)
    store.put("plans", "old", {"plan_id": "old", "policy": "cpu", "asset": "n1", "status": "Pending",
                               "updated": now, "created": now, "mechanisms": {"M": {}}})
    store.calls.clear()
    assert plan_store.sweep(store, now + 20) == []  # no entry: not seen
    assert ("list", "plans") not in store.calls
    assert [p.plan_id for p in plan_store.sweep(store, now + plan_index.REINDEX_S + 1)] == ["old"]
    assert store.calls[("list", "plans")] == 1
