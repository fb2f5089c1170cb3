"""The scheduler's MLSysOps semantics: FIFO, core first, one plan per mechanism per cycle, lifecycle."""

from __future__ import annotations

import pytest

from mapemesh.functions.schedule import InvalidTransition, Plan, expire, schedule_cycle


def plan(pid: str, policy: str = "p", asset: str = "node-1", core: bool = False, **mechs) -> Plan:
    return Plan(pid, policy, asset, mechs or {"CPUFrequency": {"command": "reset"}}, core=core)


def test_fifo_first_plan_per_mechanism_wins_and_the_loser_names_it():
    a, b = plan("a", "cpu-1"), plan("b", "cpu-2")
    scheduled, discarded = schedule_cycle([a, b], cycle=7)
    assert scheduled == [a] and a.status == "Scheduled" and a.cycle == 7
    (d,) = discarded
    assert d.plan is b and d.winner is a and d.mechanism == "CPUFrequency"
    assert b.status == "Discarded" and b.winner == "a" and "plan a" in b.reason and "cycle 7" in b.reason


def test_core_plans_go_first():
    custom, core = plan("custom"), plan("core", core=True)
    scheduled, discarded = schedule_cycle([custom, core], cycle=1)
    assert scheduled == [core] and discarded[0].plan is custom and "core plan" in custom.reason


def test_different_assets_or_mechanisms_do_not_conflict():
    plans = [plan("a", asset="node-1"), plan("b", asset="node-2"),
             plan("c", asset="node-1", NVIDIAGPUFrequency={"command": "reset"})]
    scheduled, discarded = schedule_cycle(plans, cycle=1)
    assert [p.plan_id for p in scheduled] == ["a", "b", "c"] and not discarded


def test_a_plan_takes_all_its_mechanisms_or_none():
    first = plan("first", CPUFrequency={}, NVIDIAGPUFrequency={})
    second = plan("second", NVIDIAGPUFrequency={}, vAccelPlugin={})
    third = plan("third", vAccelPlugin={})
    scheduled, discarded = schedule_cycle([first, second, third], cycle=1)
    assert [p.plan_id for p in scheduled] == ["first", "third"]  # second took nothing, so third may
    assert discarded[0].mechanism == "NVIDIAGPUFrequency"


def test_only_queued_plans_are_considered():
    done = plan("done")
    schedule_cycle([done], cycle=1)
    fresh = plan("fresh")
    scheduled, _ = schedule_cycle([done, fresh], cycle=2)
    assert scheduled == [fresh]  # a new cycle: the mechanism is free again


def test_lifecycle_and_pending_timeout():
    p = plan("p")
    schedule_cycle([p], cycle=1)
    p.move("Pending", now=100.0)
    assert expire([p], timeout_s=30, now=120.0) == []
    assert expire([p], timeout_s=30, now=131.0) == [p]
    assert p.status == "Failed" and "30s" in p.reason
    with pytest.raises(InvalidTransition):
        p.move("Success")
    q = plan("q")
    with pytest.raises(InvalidTransition):
        q.move("Success")


def test_fifo_is_by_arrival_not_by_the_order_given():
    early, late = plan("zzz-early"), plan("aaa-late")
    early.created, late.created = 1.0, 2.0
    scheduled, _ = schedule_cycle(sorted([early, late], key=lambda p: p.plan_id), cycle=1)
    assert scheduled == [early]
