"""The cluster mechanisms in the loop, on `mapemesh up` with a simulated 5G core and a simulated datacenter
scheduler (`mapemesh.sim`), their APIs named in the endpoints file (MAPEMESH_MECHANISM_ENDPOINTS): a load rise at
the UE's UPF moves its user plane to another UPF and the calm brings it back (UPFSelect, policy upf-select); a batch
that arrives is ordered by the job-order policy and the order reaches the scheduler (JobOrder)."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import shutil
import threading

import httpx
import pytest
import yaml

from mapemesh import events as catalogue
from mapemesh.eventing.log import read_all
from mapemesh.identity.dsse import verify
from mapemesh.identity.guard import knob_reporters
from mapemesh.identity.pki import TrustStore, subject_of
from mapemesh.sim import Simulator
from mapemesh.sim.core5g import example
from mapemesh.sim.datacenter import SimulatedScheduler
from mapemesh.state import open_store

from .conftest import REPO, copy_knative, wait_for
from .test_serving import start_mesh


class Running:
    """A simulator served on its own event loop in a thread, as it would run beside the mesh."""

    def __init__(self, sim: Simulator):
        self.sim, self.loop = sim, asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        asyncio.run_coroutine_threadsafe(sim.start(), self.loop).result(30)

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.sim.stop(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


@pytest.fixture(scope="module")
def mesh_and_sims(tmp_path_factory):
    root = tmp_path_factory.mktemp("cluster-mechanisms")
    project = root / "project"
    copy_knative(project, drop=("policy-cluster-placement.yaml", "policy-telemetry-interval.yaml"))
    shutil.copytree(REPO / "functions", project / "functions", ignore=shutil.ignore_patterns("__pycache__"))
    endpoints = root / "endpoints.yaml"
    mesh = start_mesh(project, {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "unused"}},
                      env={"MAPEMESH_MECHANISM_ENDPOINTS": str(endpoints)})
    ingress = mesh.broker + "/default/default"
    core = Running(example("core-1", "edge-1", ingress, telemetry_every_s=0.5))
    scheduler = Running(SimulatedScheduler(name="scheduler-1", cluster="dc-1", broker=ingress, seed=7,
                                           telemetry_every_s=0.5))
    endpoints.write_text(yaml.safe_dump({"UPFSelect": {"edge-1": core.sim.url},
                                         "JobOrder": {"dc-1": scheduler.sim.url}}))
    store = open_store("sqlite:", data=mesh.data)
    try:
        yield mesh, store, core.sim, scheduler.sim
    finally:
        store.close()
        core.stop()
        scheduler.stop()
        mesh.proc.terminate()
        mesh.proc.wait(30)


def _applied(mesh, knob: str) -> list[dict]:
    """The knob's results, one per plan (a command delivered twice is applied twice, the second a no-op)."""
    found: dict[str, dict] = {}
    for e in _applied_events(mesh, knob):
        data = json.loads(e.data)
        found.setdefault(data["plan_id"], data)
    return list(found.values())


def _applied_events(mesh, knob: str) -> list:
    return [e.event for e in read_all(mesh.data / "eventlog.db")
            if e.event.type == catalogue.KnobApplied.event_type and json.loads(e.event.data)["knob"] == knob]


def test_a_load_rise_moves_the_ues_user_plane_and_the_calm_brings_it_back(mesh_and_sims):
    mesh, store, core, _ = mesh_and_sims
    # The core registered its UPFs as the mechanism's options, and each UE's UPF as its state.
    wait_for(lambda: (doc := store.get("mechanisms", "core-1/UPFSelect")) and doc.value.get("options"),
             timeout=30, what="the core's UPFSelect options")
    assert store.get("mechanisms", "core-1/UPFSelect").value["state"] == {"ue-1": "upf-near"}
    assert core.moves == []

    httpx.put(f"{core.url}/upfs/upf-near/load", json={"mbps": 920}).raise_for_status()  # peak hour at the near UPF
    wait_for(lambda: core.moves, timeout=60, what="the UE's user plane to move")
    assert core.moves == [("ue-1", "upf-mid")]  # the fastest under load, counting the UE's own traffic
    wait_for(lambda: store.get("mechanisms", "core-1/UPFSelect").value["state"] == {"ue-1": "upf-mid"},
             timeout=30, what="the move in the loop's record of the mechanism")
    plan = store.get("plans", _applied(mesh, "UPFSelect")[0]["plan_id"]).value
    assert plan["policy"] == "upf-select"

    httpx.put(f"{core.url}/upfs/upf-near/load", json={"mbps": 0}).raise_for_status()  # calm again
    wait_for(lambda: len(core.moves) > 1, timeout=60, what="the UE's user plane to come back")
    assert core.moves == [("ue-1", "upf-mid"), ("ue-1", "upf-near")]
    wait_for(lambda: store.get("mechanisms", "core-1/UPFSelect").value["state"] == {"ue-1": "upf-near"},
             timeout=30, what="the move back in the loop's record")
    applied = _applied(mesh, "UPFSelect")
    assert [a["after"] for a in applied] == [{"ue-1": "upf-mid"}, {"ue-1": "upf-near"}]
    assert all(a["plan_id"] for a in applied)
    # Each result is signed by the adapter, which may report for the core's node (the trust function counts it).
    trust = TrustStore(mesh.data / "identity")
    assert {verify(e, trust) for e in _applied_events(mesh, "UPFSelect")} == {subject_of("upf")}
    assert subject_of("upf") in knob_reporters("core-1", "UPFSelect")
    assert subject_of("upf") not in knob_reporters("core-1", "CPUFrequency")


def test_an_arriving_batch_is_ordered_by_the_policy_and_the_order_reaches_the_scheduler(mesh_and_sims, capsys):
    mesh, store, _, scheduler = mesh_and_sims
    spec = importlib.util.spec_from_file_location("job_order", REPO / "functions/policies/job_order/policy.py")
    policy = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(policy)

    for seed in (7, 11):  # the first batch came with the registration; the second arrives later
        if seed != 7:
            httpx.post(f"{scheduler.url}/batches", json={"seed": seed}).raise_for_status()
        wanted = policy.chosen_order(scheduler.cluster_model, scheduler.batch)
        wait_for(lambda w=wanted, s=seed: scheduler.order == w and scheduler.batch_id == f"batch-{s}", timeout=60,
                 what=f"the policy's order of batch-{seed} at the scheduler")
        status = httpx.get(f"{scheduler.url}/status").json()
        with capsys.disabled():
            print(f"\nJobOrder in the loop, seed {seed}: utilisation {status['utilisation']:.4f} with the policy's "
                  f"order vs {status['fcfs_utilisation']:.4f} first come, first served")
        assert status["utilisation"] > status["fcfs_utilisation"]
        wait_for(lambda s=seed: store.get("mechanisms", "scheduler-1/JobOrder").value["state"].get("batch")
                 == f"batch-{s}", timeout=30, what="the order in the loop's record of the mechanism")
    applied = _applied(mesh, "JobOrder")
    assert [a["after"]["batch"] for a in applied] == ["batch-7", "batch-11"]  # one plan per batch
    assert store.get("plans", applied[0]["plan_id"]).value["policy"] == "job-order"
