"""UPFSelect and JobOrder without a mesh: the job model and the job-order policy's figures against first come,
first served on a fixed seed; the upf-select policy's hysteresis on the simulated core's telemetry; the adapters
against the simulators' APIs."""

from __future__ import annotations

import asyncio
import ssl
import time
from pathlib import Path

import pytest
import yaml

from mapemesh import events as catalogue
from mapemesh import jobs
from mapemesh.eventing.cloudevent import CloudEvent
from mapemesh.policy import load_policy
from mapemesh.sim.core5g import example
from mapemesh.sim.datacenter import SimulatedScheduler
from mapemesh.state import open_store

from .conftest import REPO

POLICIES = REPO / "functions" / "policies"
SEED = 7


def _module(path: Path):
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"policy_{path.parent.name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_job_order_policy_beats_first_come_first_served_on_a_fixed_seed(capsys):
    policy = _module(POLICIES / "job_order" / "policy.py")
    cluster, batch = jobs.batch(SEED)
    fcfs = jobs.simulate(cluster, batch, [j.id for j in batch])
    alone = {name: jobs.simulate(cluster, batch, o) for name, o in policy.candidate_orders(cluster, batch).items()}
    order = policy.chosen_order(cluster, batch)
    ordered = jobs.simulate(cluster, batch, order)
    with capsys.disabled():
        print(f"\nJobOrder, seed {SEED}, {len(batch)} jobs on {cluster.gpus} GPUs: utilisation "
              + ", ".join(f"{name} alone {o.utilisation:.4f}" for name, o in alone.items())
              + f"; chosen {ordered.utilisation:.4f} (makespan {ordered.makespan_s / 3600:.2f} h) vs FCFS "
              f"{fcfs.utilisation:.4f} (makespan {fcfs.makespan_s / 3600:.2f} h)")
    assert sorted(order) == sorted(j.id for j in batch)
    # The best-fit list schedule on its own beats first come, first served; the policy takes the best candidate.
    assert alone["best-fit"].utilisation > fcfs.utilisation and alone["best-fit"].makespan_s < fcfs.makespan_s
    assert ordered.utilisation == max(o.utilisation for o in alone.values())
    assert ordered.utilisation > fcfs.utilisation and ordered.makespan_s < fcfs.makespan_s


def test_the_job_model_places_best_fit_then_spans_switches_with_uplinks():
    cluster = jobs.Cluster((jobs.Switch("a", 8, 2), jobs.Switch("b", 8, 2)),
                           (jobs.Busy("r", "a", 4, 0, 10.0),))
    occupancy = jobs.Occupancy(cluster)
    assert occupancy.place(jobs.Job("small", 4, 1.0)) == {"a": (4, 0)}  # the fuller switch it fits in
    assert occupancy.place(jobs.Job("ring", 10, 1.0)) == {"b": (8, 1), "a": (2, 1)}
    assert occupancy.place(jobs.Job("mesh", 12, 1.0, "all-to-all")) == {"b": (8, 1), "a": (4, 1)}
    assert occupancy.place(jobs.Job("huge", 13, 1.0)) is None
    outcome = jobs.simulate(cluster, [jobs.Job("huge", 16, 5.0)], ["huge"])
    assert outcome.starts == {"huge": 10.0} and outcome.makespan_s == 15.0  # it waits for the running job
    with pytest.raises(jobs.Unplaceable):
        jobs.simulate(cluster, [jobs.Job("never", 17, 1.0)], ["never"])
    with pytest.raises(ValueError, match="every job"):
        jobs.simulate(cluster, [jobs.Job("x", 1, 1.0)], [])


def test_the_job_order_policy_plans_each_batch_once():
    policy = load_policy(POLICIES / "job_order" / "policy.py")
    decl = asyncio.run(policy.initialize())
    assert decl.mechanisms == ("JobOrder",) and decl.scope == "global"
    sim = SimulatedScheduler(name="scheduler-1", cluster="dc-1", seed=SEED)
    options = sim.description()["MLSysOpsNode"]["mechanism_options"]["JobOrder"]
    inputs = {"context": dict(decl.context), "mechanisms": {"JobOrder": {"options": options, "state": {}}}}
    verdict, context = asyncio.run(policy.analyze(inputs))
    assert verdict
    plan, context = asyncio.run(policy.plan({**inputs, "context": context}))
    assert plan["JobOrder"]["batch"] == f"batch-{SEED}"
    assert plan["JobOrder"]["order"] == _module(POLICIES / "job_order" / "policy.py").chosen_order(
        sim.cluster_model, sim.batch)
    assert asyncio.run(policy.analyze({**inputs, "context": context}))[0] is False  # planned: not again
    ordered = {"options": options, "state": {"batch": f"batch-{SEED}", "order": plan["JobOrder"]["order"]}}
    assert asyncio.run(policy.analyze({**inputs, "context": {}, "mechanisms": {"JobOrder": ordered}}))[0] is False


def _core_inputs(core, context, at):
    window = {m.name: [(at, m.value)] for m in core.metrics()}
    options = core.description()["MLSysOpsNode"]["mechanism_options"]["UPFSelect"]
    return {"context": context, "telemetry": {"window": window},
            "mechanisms": {"UPFSelect": {"options": options, "state": core.state()}}}


def _job_inputs(options, state, context, current_plan=None):
    return {"context": context, "current_plan": current_plan,
            "mechanisms": {"JobOrder": {"options": options, "state": state}}}


def test_the_job_order_policy_plans_a_batch_again_when_its_plan_did_not_take():
    policy = load_policy(POLICIES / "job_order" / "policy.py")
    module = _module(POLICIES / "job_order" / "policy.py")
    decl = asyncio.run(policy.initialize())
    sim = SimulatedScheduler(name="scheduler-1", cluster="dc-1", seed=SEED)
    options = sim.description()["MLSysOpsNode"]["mechanism_options"]["JobOrder"]
    plan, context = asyncio.run(policy.plan(_job_inputs(options, {}, dict(decl.context))))
    ours = dict(plan)
    assert asyncio.run(policy.analyze(_job_inputs(options, {}, context, ours)))[0] is False  # in hand
    # The plan failed or was discarded (the loop no longer gives it as the current plan): again, after RETRY_S.
    assert asyncio.run(policy.analyze(_job_inputs(options, {}, context, None)))[0] is False  # not on every analysis
    later = {**context, "planned_at": context["planned_at"] - module.RETRY_S - 1}
    assert asyncio.run(policy.analyze(_job_inputs(options, {}, later, None)))[0] is True
    # Still in hand but not in the scheduler's state after REPLAN_S (timed out, dropped under an override): again.
    assert asyncio.run(policy.analyze(_job_inputs(options, {}, later, ours)))[0] is False
    stale = {**context, "planned_at": context["planned_at"] - module.REPLAN_S - 1}
    assert asyncio.run(policy.analyze(_job_inputs(options, {}, stale, ours)))[0] is True
    again, _ = asyncio.run(policy.plan(_job_inputs(options, {}, stale, ours)))
    assert again == plan
    ordered = {"batch": f"batch-{SEED}", "order": plan["JobOrder"]["order"]}
    assert asyncio.run(policy.analyze(_job_inputs(options, ordered, stale, ours)))[0] is False  # it took


def test_the_job_order_policy_puts_a_job_the_cluster_can_never_start_last_and_says_why():
    policy = load_policy(POLICIES / "job_order" / "policy.py")
    decl = asyncio.run(policy.initialize())
    cluster = jobs.Cluster((jobs.Switch("a", 8, 2), jobs.Switch("b", 8, 2)))
    batch = [jobs.Job("huge", 64, 10.0), jobs.Job("x", 8, 5.0), jobs.Job("y", 4, 20.0)]
    options = {"batch": "b1", "jobs": [j.describe() for j in batch], "cluster": cluster.describe()}
    inputs = _job_inputs(options, {}, dict(decl.context))
    assert asyncio.run(policy.analyze(inputs))[0] is True
    plan, _ = asyncio.run(policy.plan(inputs))  # a PolicyFailure (no tuple) if Unplaceable escaped
    command = plan["JobOrder"]
    assert command["order"][-1] == "huge" and sorted(command["order"]) == ["huge", "x", "y"]
    assert set(command["unplaceable"]) == {"huge"} and "never fits" in command["unplaceable"]["huge"]


def test_the_upf_policy_moves_away_under_load_and_back_when_calm_without_flapping():
    policy = load_policy(POLICIES / "upf_select" / "policy.py")
    decl = asyncio.run(policy.initialize())
    assert decl.mechanisms == ("UPFSelect",) and decl.scope == "global"
    core = example("core-1", "edge-1", None)
    context, clock = dict(decl.context), time.time()

    def step(settled: bool = True):
        """The policy's plan on the core's telemetry now (taken after the last move settled, or just after it)."""
        nonlocal context, clock
        clock += 10
        inputs = _core_inputs(core, context, clock if settled else float(context.get("planned_at") or 0) + 0.1)
        verdict, context = asyncio.run(policy.analyze(inputs))
        if not verdict:
            return None
        plan, context = asyncio.run(policy.plan({**inputs, "context": context}))
        core.slices[plan["UPFSelect"]["ue"]] = plan["UPFSelect"]["upf"]  # applied
        return plan["UPFSelect"]

    assert step() is None  # calm: the near UPF is the fastest
    core.upf("upf-near").load_mbps = 920  # peak hour at the near UPF: 4 ms -> about 40 ms
    assert step() == {"command": "set", "ue": "ue-1", "upf": "upf-mid"}
    assert step() is None and step() is None  # still loaded: it stays on upf-mid
    core.upf("upf-near").load_mbps = 500  # calmer: near would be ~8.9 ms against 9.5 ms, not 20 % better
    assert step() is None
    core.upf("upf-near").load_mbps = 0
    assert step(settled=False) is None  # a reading from before the move settled decides nothing
    assert step() == {"command": "set", "ue": "ue-1", "upf": "upf-near"}
    assert step() is None


def test_the_upf_policy_passes_over_a_ue_on_a_upf_not_offered_and_plans_nothing_without_upfs():
    policy = load_policy(POLICIES / "upf_select" / "policy.py")
    decl = asyncio.run(policy.initialize())
    core = example("core-1", "edge-1", None)
    core.ues["ue-2"], core.slices["ue-2"] = 50.0, "upf-near"
    core.slices["ue-1"] = "upf-far"
    core.upf("upf-near").load_mbps = 920
    inputs = _core_inputs(core, dict(decl.context), time.time() + 10)
    knob = inputs["mechanisms"]["UPFSelect"]
    # ue-1 is on a UPF with telemetry that the core's options no longer offer: passed over, not a KeyError.
    knob["options"]["upfs"] = [u for u in knob["options"]["upfs"] if u["name"] != "upf-far"]
    knob["state"] = {"ue-1": "upf-far", "ue-2": "upf-near"}
    verdict, context = asyncio.run(policy.analyze(inputs))
    assert verdict is True
    plan, _ = asyncio.run(policy.plan({**inputs, "context": context}))
    assert plan == {"UPFSelect": {"command": "set", "ue": "ue-2", "upf": "upf-mid"}}  # ue-1 passed over
    empty = {**inputs, "mechanisms": {"UPFSelect": {"options": {}, "state": {"ue-2": "upf-near"}}}}
    assert asyncio.run(policy.analyze(empty))[0] is False
    assert asyncio.run(policy.plan(empty))[0] == {}


def test_the_upf_policy_counts_the_load_the_ue_would_add():
    upf = _module(POLICIES / "upf_select" / "policy.py")
    assert upf.expected_latency("b", "b", 10.0, 0.5, 100, 1000) == 10.0  # where it is: as measured
    assert upf.expected_latency("a", "b", 10.0, 0.5, 100, 1000) == pytest.approx(12.5)  # 0.5 / 0.4 headroom
    assert upf.expected_latency("a", "b", 10.0, 0.99, 100, 1000) == pytest.approx(10.0)  # saturated either way


def test_placement_puts_no_component_on_the_simulated_core_or_scheduler():
    from mapemesh.policy.placement import candidates

    core, scheduler = example("core-1", "edge-1", None), SimulatedScheduler(name="scheduler-1", cluster="dc-1")
    worker = {"MLSysOpsNode": {"name": "worker-1", "cluster_id": "w-1", "continuum_layer": "edge",
                               "hardware": {"cpu": {"cores": 1, "architecture": "amd64"}}}}
    nodes = {"core-1": core.description(), "scheduler-1": scheduler.description(), "worker-1": worker}
    component = {"metadata": {"name": "c"}}  # asks for nothing: any compute node will do
    fits, why = candidates(component, nodes)
    assert fits == ["worker-1"]
    assert why == {"core-1": ["a 5G core, not a place to run components"],
                   "scheduler-1": ["a job scheduler, not a place to run components"]}
    app = {"MLSysOpsApp": {"name": "a", "components": [component]}}
    system = {"nodes": nodes, "clusters": {}, "trust": {}}
    for policy, mechanism, wanted in (("cluster_placement", "ClusterPlacement", {"placement": {"c": ["w-1"]}}),
                                      ("node_placement", "ComponentPlacement", {"nodes": {"c": "worker-1"}})):
        loaded = load_policy(POLICIES / policy / "policy.py")
        decl = asyncio.run(loaded.initialize())
        plan, _ = asyncio.run(loaded.plan({"context": dict(decl.context), "application_description": app,
                                           "system_description": system, "mechanisms": {}, "telemetry": {}}))
        assert plan == {mechanism: wanted}, policy  # edge-1 (the core's cluster) would win a tie on its name
    del nodes["worker-1"]
    loaded = load_policy(POLICIES / "node_placement" / "policy.py")
    verdict, context = asyncio.run(loaded.analyze({"context": {}, "application_description": app,
                                                   "system_description": system}))
    assert verdict is False and "a 5G core" in context["unplaceable"]["c"]["core-1"][0]


# -- the adapters against the simulators' APIs --

def _apply(node: str, knob: str, command: dict) -> CloudEvent:
    return catalogue.make_event(catalogue.KnobApply(node=node, knob=knob, command=command, plan_id="p1",
                                                    requested_by="test"), "/test", extensions={"node": node})


@pytest.fixture
def adapter_env(tmp_path, monkeypatch):
    monkeypatch.setenv("MAPEMESH_IDENTITIES", "off")
    store = open_store("sqlite:", data=tmp_path)
    endpoints = tmp_path / "endpoints.yaml"
    monkeypatch.setenv("MAPEMESH_MECHANISM_ENDPOINTS", str(endpoints))
    yield store, endpoints
    store.close()


def _register(store, sim) -> None:
    node = sim.description()["MLSysOpsNode"]
    store.put("infrastructure", sim.name, {"kind": "node", "description": {"MLSysOpsNode": node}})
    for name, options in node["mechanism_options"].items():
        store.put("mechanisms", f"{sim.name}/{name}", {"options": options, "state": node["mechanism_states"][name]})


def test_the_upf_adapter_steers_the_ue_through_the_cores_api_and_reads_it_back(adapter_env):
    from mapemesh.functions.upf import apply

    store, endpoints = adapter_env

    async def run() -> list[catalogue.EventData]:
        core = example("core-1", "edge-1", None)
        await core.start()
        try:
            _register(store, core)
            out = [catalogue.parse_data(await apply(catalogue.parse_data(e), event=e, store=store)) for e in [
                _apply("core-1", "UPFSelect", {"command": "set", "ue": "ue-1", "upf": "upf-far"})]]
            endpoints.write_text(yaml.safe_dump({"UPFSelect": {"edge-1": core.url}}))
            for command in ({"command": "set", "ue": "ue-1", "upf": "upf-far"},
                            {"command": "set", "ue": "ue-9", "upf": "upf-far"},
                            {"command": "set", "ue": "ue-1", "upf": "upf-moon"},
                            {"command": "set", "ue": "ue-1"}):
                e = _apply("core-1", "UPFSelect", command)
                out.append(catalogue.parse_data(await apply(catalogue.parse_data(e), event=e, store=store)))
            assert core.moves == [("ue-1", "upf-far")]
            return out
        finally:
            await core.stop()

    unconfigured, moved, no_ue, no_upf, bad = asyncio.run(run())
    assert isinstance(unconfigured, catalogue.KnobFailed) and unconfigured.code == "unsupported"
    assert isinstance(moved, catalogue.KnobApplied) and moved.plan_id == "p1"
    assert moved.before == {"ue-1": "upf-near"} and moved.after == {"ue-1": "upf-far"}
    assert [f.code for f in (no_ue, no_upf, bad)] == ["invalid"] * 3
    assert "upf-moon" in no_upf.error


def test_the_upf_adapter_takes_the_upfs_address_from_the_core_not_from_the_registration(adapter_env):
    from mapemesh.functions.upf import apply

    store, endpoints = adapter_env

    async def run() -> catalogue.EventData:
        core = example("core-1", "edge-1", None)
        await core.start()
        try:
            _register(store, core)
            # Whoever may register forges the core's options: upf-far "at" the near UPF's address, and elsewhere.
            forged = {"upfs": [{"name": "upf-far", "address": "10.45.0.1", "max_bandwidth_mbps": 1000.0},
                               {"name": "upf-near", "address": "203.0.113.66", "max_bandwidth_mbps": 1000.0}],
                      "ues": ["ue-1"]}
            store.put("mechanisms", "core-1/UPFSelect", {"options": forged, "state": core.state()})
            endpoints.write_text(yaml.safe_dump({"UPFSelect": {"edge-1": core.url}}))
            e = _apply("core-1", "UPFSelect", {"command": "set", "ue": "ue-1", "upf": "upf-far"})
            out = catalogue.parse_data(await apply(catalogue.parse_data(e), event=e, store=store))
            assert core.moves == [("ue-1", "upf-far")]  # the address the core gives for upf-far, 10.45.2.1
            return out
        finally:
            await core.stop()

    moved = asyncio.run(run())
    assert isinstance(moved, catalogue.KnobApplied) and moved.after == {"ue-1": "upf-far"}


@pytest.fixture
def odd_api():
    """An API on loopback that answers what `answers` says: {path: JSON body, or (delay in s, JSON body)}."""
    from aiohttp import web

    answers: dict[str, object] = {}

    async def serve(request: web.Request) -> web.Response:
        answer = answers.get(request.path, {})
        if isinstance(answer, tuple):
            await asyncio.sleep(answer[0])
            answer = answer[1]
        return web.json_response(answer)

    async def start():
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", serve)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]
        return runner, f"http://127.0.0.1:{port}"

    return answers, start


def test_the_adapters_answer_a_malformed_or_slow_api_with_a_failure(adapter_env, odd_api, monkeypatch):
    from mapemesh import adapters
    from mapemesh.functions.jobs import apply as order
    from mapemesh.functions.upf import apply as steer

    store, endpoints = adapter_env
    answers, start = odd_api
    monkeypatch.setattr(adapters, "CALL_TIMEOUT_S", 0.3)
    monkeypatch.setattr(adapters, "DEADLINE_S", 0.5)
    upf = {"command": "set", "ue": "ue-1", "upf": "upf-far"}
    job = {"command": "set", "batch": "b", "order": ["j"]}
    upfs = {"upf-far": {"address": "10.45.2.1"}}
    cases = [  # (knob, command, the API's answers, the failure's code)
        ("UPFSelect", upf, {"/upfs": ["upf-far"]}, "hardware"),  # a JSON list, not an object
        ("UPFSelect", upf, {"/upfs": {"upf-far": "10.45.2.1"}}, "hardware"),
        ("UPFSelect", upf, {"/upfs": upfs, "/slices": []}, "hardware"),
        ("UPFSelect", upf, {"/upfs": upfs, "/slices": {"ue-1": "upf-near"}}, "hardware"),
        ("JobOrder", job, {"/order": "batch-7"}, "hardware"),
        ("JobOrder", job, {"/order": {"batch": "b", "order": "j"}}, "hardware"),
        ("JobOrder", job, {"/order": (0.8, {})}, "timeout"),  # one call past CALL_TIMEOUT_S
        ("UPFSelect", upf, {"/upfs": (0.2, upfs), "/slices": (0.2, {"ue-1": {"upf": "upf-near"}})},
         "timeout"),  # each call in time, the exchange past DEADLINE_S
    ]

    async def run() -> list[catalogue.EventData]:
        runner, url = await start()
        try:
            endpoints.write_text(yaml.safe_dump({"UPFSelect": {"fake": url}, "JobOrder": {"fake": url}}))
            out = []
            for knob, command, api, _ in cases:
                answers.clear()
                answers.update(api)
                e = _apply("fake", knob, command)
                apply = steer if knob == "UPFSelect" else order
                out.append(catalogue.parse_data(await apply(catalogue.parse_data(e), event=e, store=store)))
            return out
        finally:
            await runner.cleanup()

    contexts: list[object] = []
    made = ssl.create_default_context
    monkeypatch.setattr(ssl, "create_default_context", lambda *a, **k: contexts.append(1) or made(*a, **k))
    results = asyncio.run(run())
    assert len(contexts) <= 1, "each command built its own TLS context (~40 ms of CPU): share mapemesh.tls's"
    assert all(isinstance(r, catalogue.KnobFailed) for r in results), results
    assert [r.code for r in results] == [code for *_, code in cases], [r.error for r in results]
    assert "not an object" in results[0].error and "did not finish in 0.5 s" in results[-1].error


def test_the_job_adapter_sends_the_order_to_the_scheduler_and_reads_it_back(adapter_env):
    from mapemesh.functions.jobs import apply

    store, endpoints = adapter_env

    async def run() -> list[catalogue.EventData]:
        sim = SimulatedScheduler(name="scheduler-1", cluster="dc-1", seed=SEED)
        await sim.start()
        try:
            _register(store, sim)
            endpoints.write_text(yaml.safe_dump({"JobOrder": {"dc-1": sim.url}}))
            reverse = list(reversed(sim.fcfs()))
            out = []
            for command in ({"command": "set", "batch": f"batch-{SEED}", "order": reverse},
                            {"command": "set", "batch": "batch-other", "order": reverse},
                            {"command": "set", "batch": f"batch-{SEED}", "order": reverse[:3]}):
                e = _apply("scheduler-1", "JobOrder", command)
                out.append(catalogue.parse_data(await apply(catalogue.parse_data(e), event=e, store=store)))
            assert sim.order == reverse
            return out
        finally:
            await sim.stop()

    ordered, other_batch, partial = asyncio.run(run())
    assert isinstance(ordered, catalogue.KnobApplied) and ordered.after["batch"] == f"batch-{SEED}"
    assert ordered.before["order"] != ordered.after["order"]
    assert [f.code for f in (other_batch, partial)] == ["invalid", "invalid"]


def test_mapemesh_simulate_serves_the_api_before_the_broker_answers(tmp_path):
    import signal
    import subprocess
    import sys

    import httpx

    proc = subprocess.Popen([sys.executable, "-m", "mapemesh", "--data", str(tmp_path), "simulate", "5g-core",
                             "core-9", "--cluster", "edge-9", "--broker", "http://127.0.0.1:9/default/default"],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        url = proc.stdout.readline().strip()  # printed once the API listens
        assert url.startswith("http://127.0.0.1:")
        assert httpx.get(f"{url}/slices").json() == {"ue-1": {"upf": "upf-near", "upf_address": "10.45.0.1"}}
        assert httpx.put(f"{url}/upfs/upf-moon/load", json={"mbps": 1}).status_code == 404
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
