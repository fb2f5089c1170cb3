"""UPFSelect and JobOrder without a mesh: the job model and the job-order policy's figures against first come,
first served on a fixed seed; the upf-select policy's hysteresis on the simulated core's telemetry; the adapters
against the simulators' APIs."""

from __future__ import annotations

import asyncio
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
    order = policy.chosen_order(cluster, batch)
    ordered = jobs.simulate(cluster, batch, order)
    with capsys.disabled():
        print(f"\nJobOrder, seed {SEED}, {len(batch)} jobs on {cluster.gpus} GPUs: utilisation job-order policy "
              f"{ordered.utilisation:.4f} (makespan {ordered.makespan_s / 3600:.2f} h) vs FCFS "
              f"{fcfs.utilisation:.4f} (makespan {fcfs.makespan_s / 3600:.2f} h)")
    assert sorted(order) == sorted(j.id for j in batch)
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


def test_the_upf_policy_counts_the_load_the_ue_would_add():
    upf = _module(POLICIES / "upf_select" / "policy.py")
    assert upf.expected_latency("b", "b", 10.0, 0.5, 100, 1000) == 10.0  # where it is: as measured
    assert upf.expected_latency("a", "b", 10.0, 0.5, 100, 1000) == pytest.approx(12.5)  # 0.5 / 0.4 headroom
    assert upf.expected_latency("a", "b", 10.0, 0.99, 100, 1000) == pytest.approx(10.0)  # saturated either way


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
