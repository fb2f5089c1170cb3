"""The analyze, plan, schedule and execute stages as plain function calls against a real SQLite store."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest

import mapemesh
from mapemesh import events as catalogue
from mapemesh.functions import analyze as analyze_stage
from mapemesh.functions.analyze import analyze, bound_assets, claim, release, relevant
from mapemesh.functions.execute import commands, execute
from mapemesh.functions.plan import plan
from mapemesh.functions.schedule import schedule, sweep
from mapemesh.policy import registry
from mapemesh.policy.function import PolicyFunction
from mapemesh.policy.loader import Declaration
from mapemesh.state import from_environment, update

from .conftest import REPO

POLICIES = REPO / "tests" / "policies"


@pytest.fixture
def store(tmp_path, monkeypatch):
    monkeypatch.setenv("MAPEMESH_DATA", str(tmp_path))
    monkeypatch.setenv("MAPEMESH_STATE", "sqlite:")
    monkeypatch.setenv("K_SINK", "http://127.0.0.1:9/unused")
    from_environment.cache_clear()
    analyze_stage._cache.clear()
    yield from_environment()
    from_environment().close()
    from_environment.cache_clear()
    analyze_stage._cache.clear()


def declaration(**kw) -> Declaration:
    base = dict(metrics=(), mechanisms=("CPUFrequency",), analyze_interval_s=0.0, scope="global",
                machine_learning=False, core=False, packages=(), context={})
    return Declaration(**{**base, **kw})


def changed(asset: str, kind: str = "node", keys: tuple[str, ...] = ("latency_ms",)) -> catalogue.StateChanged:
    return catalogue.StateChanged(asset=asset, asset_kind=kind, changed=list(keys), cause="cause-1")


def ev(data: catalogue.EventData) -> mapemesh.CloudEvent:
    return catalogue.make_event(data, "/test")


def register(store, path: Path, name: str) -> PolicyFunction:
    served = PolicyFunction(path, name)
    asyncio.run(served.register())
    return served


def test_binding_follows_scope_and_asset_kind(store):
    store.put("infrastructure", "n1", {"kind": "node", "description": {}})
    store.put("infrastructure", "n2", {"kind": "node", "description": {}})
    store.put("infrastructure", "c1", {"kind": "cluster", "description": {}})
    store.put("applications", "app", {"description": {}})
    glob, app = declaration(), declaration(scope="application")
    assert bound_assets(store, glob, changed("n9")) == ["n9"]  # telemetry of an unregistered node still counts
    assert bound_assets(store, glob, changed("app", "application", ("description",))) == ["n1", "n2"]
    assert bound_assets(store, glob, changed("continuum", "continuum", ("mode",))) == ["n1", "n2"]
    assert bound_assets(store, app, changed("app", "application")) == ["app"]
    assert bound_assets(store, app, changed("n1")) == []
    assert bound_assets(store, app, changed("gone", "application")) == []
    assert bound_assets(store, glob, changed("n1", keys=("removed",))) == []


def test_relevance_declared_metrics_knowledge_not_mechanism_results():
    assert relevant(declaration(), ["anything"])
    assert relevant(declaration(metrics=("cpu",)), ["cpu", "temp"])
    assert not relevant(declaration(metrics=("cpu",)), ["temp"])
    assert relevant(declaration(metrics=("cpu",)), ["description"])
    assert not relevant(declaration(), ["mechanism:CPUFrequency"])


def test_analyze_interval_spaces_and_coalesces_never_drops(store):
    assert claim(store, "p", "n1", 1.0, now=100.0) == 0.0
    assert release(store, "p", "n1") is None  # answered; nothing came meanwhile
    assert claim(store, "p", "n1", 1.0, now=100.2) == pytest.approx(0.8)  # deferred to the interval's end
    assert claim(store, "p", "n1", 1.0, now=100.5) is None  # coalesced into the deferred one
    assert claim(store, "p", "n1", 1.0, now=101.0) is None  # due, but the deferral event holds it, not a change
    # The deferral event (redelivered by the broker) is told to wait while it is early, and runs when due.
    assert claim(store, "p", "n1", 1.0, now=100.7, deferred=True) == pytest.approx(0.3)
    assert claim(store, "p", "n1", 1.0, now=101.0, deferred=True) == 0.0  # the deferred one runs
    assert claim(store, "p", "n2", 1.0, now=101.0) == 0.0  # per asset
    # A deferral whose event was lost (dead-lettered) is taken over once it is well overdue.
    assert claim(store, "p", "n3", 1.0, now=200.0) == 0.0
    release(store, "p", "n3")
    assert claim(store, "p", "n3", 1.0, now=200.5) == pytest.approx(0.5)
    assert claim(store, "p", "n3", 1.0, now=200.9) is None
    assert claim(store, "p", "n3", 1.0, now=201.0 + analyze_stage.contexts.STALE_DEFERRAL_S + 0.1) == 0.0


def test_one_analysis_in_flight_per_policy_and_asset_and_changes_meanwhile_rerun(store):
    assert claim(store, "p", "n1", 0.0, now=100.0) == 0.0
    assert claim(store, "p", "n1", 0.0, now=100.1, rerun={"asset_kind": "node", "changed": ["cpu"], "cause": "e1"}) \
        is None
    assert claim(store, "p", "n1", 0.0, now=100.2, rerun={"asset_kind": "node", "changed": ["temp"], "cause": "e2"}) \
        is None
    rerun = release(store, "p", "n1")
    data = catalogue.parse_data(rerun)
    # The first change that came meanwhile is enough to ask again (the analysis reads the state as it is then).
    assert rerun.get("policy") == "p" and data.asset == "n1" and data.changed == ["cpu"] and data.cause == "e1"
    assert release(store, "p", "n1") is None
    # An analysis whose answer never comes stops holding the others after a while.
    assert claim(store, "p", "n9", 0.0, now=300.0) == 0.0
    assert claim(store, "p", "n9", 0.0, now=300.0 + analyze_stage.contexts.IN_FLIGHT_STALE_S + 1) == 0.0


def test_analyze_asks_each_bound_policy_with_all_inputs(store, monkeypatch):
    register(store, REPO / "functions" / "policies" / "cpu_frequency" / "policy.py", "cpu-frequency")
    register(store, POLICIES / "policy-power-documented.py", "power")
    store.put("infrastructure", "n1", {"kind": "node", "description": {"MLSysOpsNode": {"name": "n1"}}})
    now = time.time()
    store.append_telemetry("n1", [("node_power_watts", 150.0, now), ("latency_ms", 3.0, now)])
    published = []

    async def fake_publish(events, timeout_s=10.0):
        published.extend(events)

    monkeypatch.setattr("mapemesh.serving.sink.publish", fake_publish)
    reply = asyncio.run(analyze(ev(changed("n1", keys=("node_power_watts",)))))
    requests = [catalogue.parse_data(e) for e in [reply, *published]]
    assert sorted(r.policy for r in requests) == ["cpu-frequency", "power"]
    power = next(r for r in requests if r.policy == "power")
    assert power.telemetry["data"] == {"node_power_watts": 150.0}  # only what it declared
    assert power.system_description == {"MLSysOpsNode": {"name": "n1"}} and power.available_assets == ["n1"]
    assert power.cause == "cause-1" and reply.get("policy") in ("cpu-frequency", "power")
    cpu = next(r for r in requests if r.policy == "cpu-frequency")
    assert cpu.mechanisms == {"CPUFrequency": {"state": {}, "options": {}}}
    assert set(cpu.telemetry["data"]) == {"node_power_watts", "latency_ms"}


def test_modes_skip_visibly(store):
    register(store, POLICIES / "policy-cpu-documented.py", "ml")  # declares machine learning, scope application
    store.put("applications", "a", {"description": {"targets": {"application_metric": 1}}})
    assert asyncio.run(analyze(ev(changed("a", "application", ("description",))))) is None
    assert "heuristic" in store.get("policies", "ml").value["skipped"]["reason"]
    store.put("settings", "mode", {"mode": "ml", "manual_override": True})
    analyze_stage._cache.clear()
    assert asyncio.run(analyze(ev(changed("a", "application", ("description",))))) is None
    assert store.get("policies", "ml").value["skipped"]["reason"] == "manual override"
    store.put("settings", "mode", {"mode": "ml", "manual_override": False})
    analyze_stage._cache.clear()
    request = asyncio.run(analyze(ev(changed("a", "application", ("description",)))))
    assert request is not None and catalogue.parse_data(request).mode == "ml"


def test_policy_function_plans_with_a_true_verdict_and_reports_failures(store):
    served = register(store, REPO / "functions" / "policies" / "cpu_frequency" / "policy.py", "cpu-frequency")
    request = catalogue.PolicyAnalyzeRequested(
        policy="cpu-frequency", asset="n1", telemetry={"data": {"latency_ms": 50.0}},
        application_description=[{"MLSysOpsApp": {"components": [{"metadata": {"name": "w"}, "qos_metrics": [
            {"application_metric_id": "latency_ms", "target": 20, "relation": "lower_or_equal"}]}]}}])
    reply = catalogue.parse_data(asyncio.run(served.handle(ev(request))))
    assert reply.verdict is True and reply.plan == {"CPUFrequency": {"command": "set", "cpu": "all",
                                                                      "frequency": "max"}}
    assert reply.context["planned_frequency"] == "max" and reply.inputs == {"telemetry": {"latency_ms": 50.0}}
    broken = register(store, POLICIES / "policy-broken.py", "broken")
    failed = catalogue.parse_data(asyncio.run(broken.handle(ev(request.model_copy(update={"policy": "broken"})))))
    assert failed.verdict is False and "this policy is broken on purpose" in failed.error
    assert "Traceback" in failed.traceback
    with pytest.raises(mapemesh.PermanentError, match="reached policy"):
        asyncio.run(broken.handle(ev(request)))  # a request for another policy


def test_a_policy_that_cannot_load_is_registered_as_an_error(store, tmp_path):
    bad = tmp_path / "policy-bad.py"
    bad.write_text("def initialize():\n    return []\n\n\ndef analyze(context):\n    pass\n\n\n"
                   "def plan(context):\n    pass\n")
    register(store, bad, "bad")
    doc = store.get("policies", "bad").value
    assert doc["status"] == "error" and "initialize must return the context dict" in doc["error"]
    assert "bad" not in registry.active(store)


def test_plan_stage_queues_valid_plans_and_records_bad_ones(store):
    register(store, REPO / "functions" / "policies" / "cpu_frequency" / "policy.py", "cpu-frequency")
    verdict = catalogue.PolicyAnalyzeReplied(policy="cpu-frequency", asset="n1", request="r1", verdict=True,
                                             plan={"CPUFrequency": {"frequency": "max"}}, context={"k": 1},
                                             cause="c1", inputs={"telemetry": {"latency_ms": 50.0}})
    proposed = catalogue.parse_data(asyncio.run(plan(ev(verdict))))
    assert isinstance(proposed, catalogue.PlanProposed) and proposed.cause == "c1"
    stored = store.get("plans", proposed.plan_id).value
    assert stored["status"] == "Queued" and stored["inputs"]["telemetry"] == {"latency_ms": 50.0}
    assert store.get("policy_contexts", "cpu-frequency/n1").value["context"] == {"k": 1}
    assert store.get("cycles", "c1").value["queued"] == [proposed.plan_id]
    bad = verdict.model_copy(update={"plan": {"RAPLPowerCap": {"limit": 1}}})
    assert asyncio.run(plan(ev(bad))) is None
    doc = store.get("policies", "cpu-frequency").value
    assert doc["failures"] == 1 and "did not declare" in doc["recent_failures"][0]["error"]
    not_a_dict = verdict.model_copy(update={"plan": {"CPUFrequency": "max"}})
    assert asyncio.run(plan(ev(not_a_dict))) is None
    assert "must be a dict" in store.get("policies", "cpu-frequency").value["recent_failures"][0]["error"]
    # A verdict without a plan (an older policy function) asks for one.
    asked = asyncio.run(plan(ev(verdict.model_copy(update={"plan": None}))))
    assert asked.type == catalogue.PolicyPlanRequested.event_type and asked.get("policy") == "cpu-frequency"


def _queue(store, plan_id: str, cause: str, core: bool = False, asset: str = "n1", created: float = 1.0,
           **mechanisms) -> catalogue.PlanProposed:
    created += time.time()  # recent: older Queued plans are failed by the sweep
    store.put("plans", plan_id, {"plan_id": plan_id, "policy": f"pol-{plan_id}", "asset": asset,
                                 "mechanisms": mechanisms, "core": core, "created": created, "updated": created,
                                 "status": "Queued", "inputs": {"cause": cause}})
    update(store, "cycles", cause, lambda d: {**(d or {"taken": {}, "created": 1e12}),
                                              "queued": [*((d or {}).get("queued") or []), plan_id]})
    return catalogue.PlanProposed(plan_id=plan_id, policy=f"pol-{plan_id}", asset=asset, mechanisms=mechanisms,
                                  core=core, cause=cause)


def test_schedule_decides_a_cycle_core_first_and_discards_late_conflicts(store, monkeypatch):
    published = []

    async def fake_publish(events, timeout_s=10.0):
        published.extend(events)

    monkeypatch.setattr("mapemesh.serving.sink.publish", fake_publish)
    a = _queue(store, "a", "c1", created=1.0, CPUFrequency={"f": "min"})
    b = _queue(store, "b", "c1", core=True, created=2.0, CPUFrequency={"f": "max"})
    first = asyncio.run(schedule(ev(a)))
    out = [catalogue.parse_data(e) for e in [first, *published]]
    scheduled = [o for o in out if isinstance(o, catalogue.PlanScheduled)]
    discarded = [o for o in out if isinstance(o, catalogue.PlanDiscarded)]
    assert [s.plan_id for s in scheduled] == ["b"] and [d.plan_id for d in discarded] == ["a"]
    assert discarded[0].winner == "b" and "core plan" in discarded[0].reason
    assert store.get("plans", "a").value["status"] == "Discarded"
    # b's own proposal, decided with a's: nothing is announced again (execute would run b twice: a far-edge
    # deployment's second create fails and rolls the first back).
    published.clear()
    assert asyncio.run(schedule(ev(b))) is None and published == []
    # a's proposal redelivered: what its call decided is announced again, as recorded.
    again = [catalogue.parse_data(e) for e in [asyncio.run(schedule(ev(a))), *published]]
    assert sorted((type(o).__name__, o.plan_id) for o in again) == [("PlanDiscarded", "a"), ("PlanScheduled", "b")]
    # A plan of the same cause arriving later still loses to the winner of its cycle.
    late = _queue(store, "c", "c1", created=3.0, CPUFrequency={"f": "min"})
    published.clear()
    (loser,) = [catalogue.parse_data(asyncio.run(schedule(ev(late))))]
    assert isinstance(loser, catalogue.PlanDiscarded) and loser.winner == "b" and loser.cycle == scheduled[0].cycle
    # Another cause is another cycle.
    other = _queue(store, "d", "c2", created=4.0, CPUFrequency={"f": "min"})
    (won,) = [catalogue.parse_data(asyncio.run(schedule(ev(other))))]
    assert isinstance(won, catalogue.PlanScheduled) and won.cycle == scheduled[0].cycle + 1
    # Redelivered after it was decided: announced again, decided once.
    again = catalogue.parse_data(asyncio.run(schedule(ev(other))))
    assert isinstance(again, catalogue.PlanScheduled) and again.plan_id == "d"


def test_pending_plans_fail_after_the_timeout_and_old_plans_go(store, monkeypatch):
    from mapemesh.loop import plan_store

    monkeypatch.setattr(plan_store, "PLAN_TIMEOUT_S", 10.0)
    monkeypatch.setattr(plan_store, "PLAN_RETENTION_S", 100.0)
    store.put("plans", "p", {"plan_id": "p", "policy": "x", "asset": "n", "mechanisms": {"M": {}},
                             "status": "Pending", "updated": 1000.0, "created": 1000.0})
    store.put("plans", "old", {"plan_id": "old", "policy": "x", "asset": "n", "mechanisms": {"M": {}},
                               "status": "Success", "updated": 500.0, "created": 500.0})
    assert [p.plan_id for p in sweep(store, now=1005.0)] == []
    assert [p.plan_id for p in sweep(store, now=1011.0)] == ["p"]
    assert store.get("plans", "p").value["status"] == "Failed" and "no result within 10s" in \
        store.get("plans", "p").value["reason"]
    assert store.get("plans", "old") is None


def test_execute_sends_knobs_to_the_node_and_placement_to_deploy(store, monkeypatch):
    published = []

    async def fake_publish(events, timeout_s=10.0):
        published.extend(events)

    monkeypatch.setattr("mapemesh.serving.sink.publish", fake_publish)
    store.put("plans", "p1", {"plan_id": "p1", "status": "Scheduled", "mechanisms": {}})
    scheduled = catalogue.PlanScheduled(plan_id="p1", policy="cpu", asset="n1", cycle=1, mechanisms={
        "CPUFrequency": {"command": "set", "frequency": "max"}, "RAPLPowerCap": {"limit_uw": 5}})
    first = asyncio.run(execute(ev(scheduled)))
    sent = [first, *published]
    assert all(e.get("node") == "n1" and e.type == catalogue.KnobApply.event_type for e in sent)
    assert {json.loads(e.data)["knob"] for e in sent} == {"CPUFrequency", "RAPLPowerCap"}
    assert json.loads(first.data)["requested_by"] == "policy/cpu"
    assert store.get("plans", "p1").value["status"] == "Pending"
    placement = catalogue.PlanScheduled(plan_id="p2", policy="place", asset="shop", cycle=2, mechanisms={
        "ClusterPlacement": {"placement": {"web": ["c1"]}}, "ComponentPlacement": {"nodes": {"web": "n1"}}})
    (deploy,) = commands(placement)
    data = catalogue.parse_data(deploy)
    assert isinstance(data, catalogue.DeployRequested) and data.placement == {"web": ["c1"]}
    assert data.nodes == {"web": "n1"} and data.app_id == "shop"
    store.put("plans", "p3", {"plan_id": "p3", "status": "Scheduled", "mechanisms": {}})
    bad = catalogue.PlanScheduled(plan_id="p3", policy="place", asset="shop", cycle=3,
                                  mechanisms={"ClusterPlacement": {"placement": "c1"}})
    assert asyncio.run(execute(ev(bad))) is None
    assert store.get("plans", "p3").value["status"] == "Failed"


def test_a_deferred_analysis_runs_at_the_end_of_the_interval_in_the_background(store, tmp_path, monkeypatch):
    spaced = tmp_path / "policy-spaced.py"
    spaced.write_text((POLICIES / "policy-power-documented.py").read_text().replace('"0s"', '"300ms"'))
    register(store, spaced, "spaced")
    published = []

    async def fake_publish(events, timeout_s=10.0, url=None):
        published.extend(events)

    monkeypatch.setattr("mapemesh.serving.sink.publish", fake_publish)

    async def scenario() -> list:
        first = await analyze(ev(changed("n1", keys=("node_power_watts",))))
        release(store, "spaced", "n1")  # its answer came
        assert await analyze(ev(changed("n1", keys=("node_power_watts",)))) is None  # inside the interval
        assert await analyze(ev(changed("n1", keys=("node_power_watts",)))) is None  # coalesced
        await asyncio.sleep(0.6)
        return [first]

    (first,) = asyncio.run(scenario())
    assert first is not None and len(published) == 1  # exactly one more analysis, at the interval's end
    assert published[0].type == catalogue.PolicyAnalyzeRequested.event_type
    assert catalogue.parse_data(published[0]).asset == "n1"


def test_a_process_stopping_hands_its_deferred_analyses_to_the_broker(store, tmp_path, monkeypatch):
    """Scaled to zero with an analysis still due: the stage's stop hook turns it into a deferral event the broker
    holds; redelivered early it is told to wait (503 + Retry-After), then it runs once, for every change."""
    from mapemesh.serving.errors import TemporaryError

    spaced = tmp_path / "policy-spaced.py"
    spaced.write_text((POLICIES / "policy-power-documented.py").read_text().replace('"0s"', '"300ms"'))
    register(store, spaced, "spaced")
    published = []

    async def fake_publish(events, timeout_s=10.0, url=None):
        published.extend(events)

    monkeypatch.setattr("mapemesh.serving.sink.publish", fake_publish)

    async def scenario() -> tuple:
        await analyze.start()
        await analyze(ev(changed("n1", keys=("node_power_watts",))))
        release(store, "spaced", "n1")
        assert await analyze(ev(changed("n1", keys=("node_power_watts",)))) is None  # deferred, on a timer
        await analyze.stop()  # SIGTERM: the process goes before the analysis is due
        (deferral,) = published
        with pytest.raises(TemporaryError) as early:
            await analyze(deferral)  # the broker brought it back too soon
        await asyncio.sleep(0.35)
        return deferral, early.value, await analyze(deferral)

    deferral, early, due = asyncio.run(scenario())
    assert deferral.type == catalogue.StateChanged.event_type and deferral.get("policy") == "spaced" \
        and deferral.get("deferred") == "true" and catalogue.parse_data(deferral).asset == "n1"
    assert 0 < early.delay <= 0.3 and early.retry_after == "1"
    assert due.type == catalogue.PolicyAnalyzeRequested.event_type and catalogue.parse_data(due).asset == "n1"
    assert len(published) == 1  # the timer was cancelled: no second analysis


def test_a_policy_answer_that_is_not_json_is_its_failure(store, tmp_path):
    odd = tmp_path / "policy-odd.py"
    odd.write_text("def initialize():\n    return {'mechanisms': ['CPUFrequency'], 'scope': 'global'}\n\n\n"
                   "def analyze(context, application_description, system_description, mechanisms, telemetry, "
                   "ml_connector):\n    context['when'] = object()\n    return True, context\n\n\n"
                   "def plan(context, application_description, system_description, mechanisms, telemetry, "
                   "ml_connector):\n    return {'CPUFrequency': {'f': 1}}, context\n")
    served = register(store, odd, "odd")
    reply = asyncio.run(served.handle(ev(catalogue.PolicyAnalyzeRequested(policy="odd", asset="n1"))))
    data = catalogue.parse_data(reply)
    assert data.verdict is False and "not JSON-serializable" in data.error and data.plan is None


def test_a_redelivered_reply_makes_one_plan(store):
    register(store, REPO / "functions" / "policies" / "cpu_frequency" / "policy.py", "cpu-frequency")
    reply = ev(catalogue.PolicyAnalyzeReplied(policy="cpu-frequency", asset="n1", request="r1", verdict=True,
                                              plan={"CPUFrequency": {"frequency": "max"}}, cause="c1"))
    first = catalogue.parse_data(asyncio.run(plan(reply)))
    again = catalogue.parse_data(asyncio.run(plan(reply)))
    assert first.plan_id == again.plan_id and len(store.list("plans")) == 1
    assert registry.stats(store, "cpu-frequency")["plans"] == 1


def test_policy_names_from_files():
    from mapemesh.runtimes.scaffold import name_from_file

    assert name_from_file(Path("policy-cpu_freq.py")) == "cpu-freq"
    assert name_from_file(Path("functions/policies/hot_cpu/policy.py")) == "hot-cpu"


def test_a_node_is_asked_about_only_by_policies_of_mechanisms_it_offers(store, monkeypatch):
    """A far-edge device (FarEdgeRadio only) is not asked about CPU frequency; a node that does not say what it
    offers (registered by hand) is asked by everyone."""
    register(store, REPO / "functions" / "policies" / "cpu_frequency" / "policy.py", "cpu-frequency")
    store.put("infrastructure", "dev-1", {"kind": "node", "description": {"MLSysOpsNode": {
        "name": "dev-1", "mechanisms": ["FarEdgeRadio"]}}})
    store.put("infrastructure", "n1", {"kind": "node", "description": {"MLSysOpsNode": {"name": "n1"}}})
    assert asyncio.run(analyze(ev(changed("dev-1")))) is None
    asked = asyncio.run(analyze(ev(changed("n1"))))
    assert asked is not None and catalogue.parse_data(asked).asset == "n1"
