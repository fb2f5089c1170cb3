"""The whole MAPE loop in a running mesh (real processes, the project's manifests): telemetry in, a knob
command at a node shim endpoint out, and the plan's status back to Success."""

from __future__ import annotations

import json
import shutil
import sqlite3
import time
from pathlib import Path

import httpx
import pytest
from aiohttp import web

from mapemesh import events as catalogue
from mapemesh.eventing.binding import to_binary
from mapemesh.eventing.log import read_after
from mapemesh.policy import registry
from mapemesh.runtimes import policy_service as service
from mapemesh.state import open_store

from .conftest import REPO, copy_knative, wait_for
from .subscriber import Received, Subscriber
from .test_serving import start_mesh

APP = {"MLSysOpsApp": {"name": "shop", "components": [{
    "metadata": {"name": "web"},
    "qos_metrics": [{"application_metric_id": "latency_ms", "target": 20, "relation": "lower_or_equal"}]}]}}
NODE = {"MLSysOpsNode": {"name": "node-1", "continuum_layer": "edge", "cluster_id": "c1",
                         "hardware": {"cpu": {"cores": 4, "architecture": "amd64"}, "memory": 8}}}


def shim_reply(rec: Received) -> web.Response:
    """What a node shim answers: the command applied, values before and after."""
    apply = catalogue.parse_data(rec.event)
    assert isinstance(apply, catalogue.KnobApply)
    reply = catalogue.make_event(catalogue.KnobApplied(
        node=apply.node, knob=apply.knob, request=rec.event.id, plan_id=apply.plan_id,
        before={}, after=dict(apply.command)), "/test/node-shim")
    headers, body = to_binary(reply)
    return web.Response(status=200, headers=headers, body=body)


class Loop:
    def __init__(self, tmp_path: Path, extra_policies: dict[str, Path] | None = None, shipped: bool = True):
        root = tmp_path / "project"
        copy_knative(root, drop=None if shipped else "policy-*.yaml")
        shutil.copytree(REPO / "functions", root / "functions", ignore=shutil.ignore_patterns("__pycache__"))
        self.shim = Subscriber()
        self.shim.handlers["/node-1"] = shim_reply
        docs = [{"apiVersion": "eventing.knative.dev/v1", "kind": "Trigger",
                 "metadata": {"name": "node-shim-node-1", "namespace": "default"},
                 "spec": {"broker": "default",
                          "filters": [{"exact": {"type": catalogue.KnobApply.event_type}},
                                      {"exact": {"node": "node-1"}}],
                          "subscriber": {"uri": self.shim.url + "/node-1"}}}]
        for name, path in (extra_policies or {}).items():
            module = root / "policies" / name / "__init__.py"
            module.parent.mkdir(parents=True)
            shutil.copy(path, module.parent / "policy.py")
            module.write_text("from pathlib import Path\nfrom mapemesh.policy.function import policy_function\n"
                              f"policy = policy_function(Path(__file__).with_name('policy.py'), {name!r})\n")
            docs += service.objects(name, f"policies/{name}/__init__.py")
        self.mesh = start_mesh(root, *docs)
        self.store = open_store("sqlite:", data=self.mesh.data)

    def post(self, data: catalogue.EventData) -> str:
        event = catalogue.make_event(data, "/test")
        headers, body = to_binary(event)
        response = httpx.post(self.mesh.broker + "/default/default", headers=headers, content=body)
        assert response.status_code == 202, response.text
        return event.id

    def registered(self, *names: str) -> None:
        """Wait until the policies are registered and the analyses their registration asked for are over (a
        test's own event then starts its own cycle)."""
        def ready():
            docs = self.store.list("policies")
            return all(n in docs and docs[n].value["status"] == "active" for n in names)

        wait_for(ready, timeout=30, what=f"policies {', '.join(names)} registered")
        log = self.mesh.data / "eventlog.db"

        def settled():
            db = sqlite3.connect(f"file:{log}?mode=ro", uri=True)
            try:
                announced = {e.event.source for e in read_after(db)
                             if e.event.type == catalogue.StateChanged.event_type}
                pending = db.execute("SELECT COUNT(*) FROM deliveries WHERE state = 'pending'").fetchone()[0]
            finally:
                db.close()
            return all(f"/mapemesh/policies/{n}" in announced for n in names) and pending == 0

        wait_for(settled, timeout=30, what=f"the analyses asked for by {', '.join(names)}")

    def commands(self, knob: str) -> list[dict]:
        """The commands for `knob`, one per plan: delivery is at least once, so a plan's command may come twice
        (a real shim applies it once and answers no-op the second time)."""
        by_plan: dict[str, dict] = {}
        for r in self.shim.at("/node-1"):
            data = json.loads(r.event.data)
            if data["knob"] == knob:
                by_plan.setdefault(data.get("plan_id") or r.event.id, data)
        return list(by_plan.values())

    def idle(self, policy: str, asset: str) -> bool:
        """No analysis of (policy, asset) in flight, due or to rerun, and its interval (1 s) over since the last."""
        doc = self.store.get("policy_contexts", f"{policy}/{asset}")
        value = doc.value if doc else {}
        return bool(value) and not (value.get("in_flight_since") or value.get("deferred_until") or value.get("rerun")) \
            and time.time() - float(value.get("last_analyzed") or 0) > 1.0

    def plan(self, plan_id: str) -> dict:
        doc = self.store.get("plans", plan_id)
        return doc.value if doc else {}

    def close(self) -> None:
        refused = self.mesh.batches_refused() if self.mesh.proc.poll() is None else 0
        self.mesh.proc.terminate()
        self.mesh.proc.wait(20)
        self.store.close()
        self.shim.close()
        assert refused == 0, f"a mapemesh component posted {refused} batch request(s); Knative's ingress refuses them"


@pytest.fixture
def loop_factory(tmp_path):
    made: list[Loop] = []

    def make(**kwargs) -> Loop:
        made.append(Loop(tmp_path, **kwargs))
        return made[-1]

    yield make
    for loop in made:
        loop.close()


def test_a_broken_target_sets_the_node_to_max_frequency_and_the_plan_succeeds(loop_factory):
    loop = loop_factory()
    loop.registered("cpu-frequency", "static-placement", "node-placement", "cluster-placement")
    loop.post(catalogue.InfraRegistered(infra_id="node-1", kind="node", description=NODE))
    loop.post(catalogue.AppSubmitted(app_id="shop", description=APP))
    # No telemetry yet: every target counts as met, so the node goes to its minimum frequency.
    (first,) = wait_for(lambda: loop.commands("CPUFrequency") or None, timeout=20, what="the first knob command")
    assert first["command"] == {"command": "set", "cpu": "all", "frequency": "min"}
    wait_for(lambda: loop.plan(first["plan_id"]).get("status") == "Success", timeout=20, what="the first plan")
    # The analyses the registration and the submission asked for are over (a knob's result asks for none: the
    # policy sees the mechanism's new state in its next inputs), so the reading below is analyzed on its own.
    wait_for(lambda: loop.idle("cpu-frequency", "node-1"), timeout=20, what="the policy's analyses to be over")
    loop.post(catalogue.TelemetryReported(asset="node-1", asset_kind="node", metrics=[
        catalogue.Metric(name="latency_ms", value=35.0)]))
    commands = wait_for(lambda: c if len(c := loop.commands("CPUFrequency")) >= 2 else None, timeout=20,
                        what="the knob command for the broken target")
    second = commands[1]
    assert second["command"] == {"command": "set", "cpu": "all", "frequency": "max"}
    assert second["node"] == "node-1" and second["requested_by"] == "policy/cpu-frequency"
    plan = wait_for(lambda: p if (p := loop.plan(second["plan_id"])).get("status") == "Success" else None,
                    timeout=20, what="the plan to succeed")
    assert plan["policy"] == "cpu-frequency" and plan["asset"] == "node-1"
    # Why it exists: the reading it saw. (Its cause is the event whose analysis saw the reading first: usually
    # the reading itself, or a change whose analysis was still running when the reading was stored.)
    assert plan["inputs"]["telemetry"] == {"latency_ms": 35.0} and plan["inputs"]["cause"]
    state = loop.store.get("mechanisms", "node-1/CPUFrequency").value["state"]
    assert state["frequency"] == "max"
    # The same reading again changes nothing: no third command.
    wait_for(lambda: loop.idle("cpu-frequency", "node-1"), timeout=20, what="the analysis of the reading to be over")
    seen = registry.stats(loop.store, "cpu-frequency")["analyses"]
    loop.post(catalogue.TelemetryReported(asset="node-1", asset_kind="node", metrics=[
        catalogue.Metric(name="latency_ms", value=36.0)]))
    wait_for(lambda: registry.stats(loop.store, "cpu-frequency")["analyses"] > seen, timeout=20,
             what="the policy to look at the new reading")
    time.sleep(0.3)
    assert len(loop.commands("CPUFrequency")) == 2
    # Placement policies answered the submission too: static placement had nothing fixed to place.
    node_placement = wait_for(lambda: [p.value for p in loop.store.list("plans").values()
                                       if p.value["policy"] == "node-placement"] or None,
                              timeout=20, what="the node placement plan")
    assert node_placement[0]["mechanisms"] == {"ComponentPlacement": {"nodes": {"web": "node-1"}}}


def test_two_policies_that_want_one_mechanism_in_one_cycle_conflict(loop_factory):
    loop = loop_factory()
    loop.registered("static-placement", "cluster-placement")
    app = {"MLSysOpsApp": {"name": "pinned", "cluster_placement": {"cluster_id": ["c9"]},
                           "components": [{"metadata": {"name": "web"}}]}}
    cause = loop.post(catalogue.AppSubmitted(app_id="pinned", description=app))

    def decided():
        plans = [p.value for p in loop.store.list("plans").values() if p.value["inputs"]["cause"] == cause]
        done = [p for p in plans if p["status"] in ("Scheduled", "Pending", "Success", "Failed", "Discarded")]
        return plans if len(plans) == 2 and len(done) == 2 else None

    plans = wait_for(decided, timeout=30, what="both placement plans decided")
    discarded = [p for p in plans if p["status"] == "Discarded"]
    kept = [p for p in plans if p["status"] != "Discarded"]
    assert len(discarded) == 1 and len(kept) == 1, plans
    assert discarded[0]["winner"] == kept[0]["plan_id"]
    assert "ClusterPlacement on pinned was already planned" in discarded[0]["reason"]
    assert kept[0]["cycle"] == discarded[0]["cycle"]
    events = wait_for(lambda: [e for e in _log(loop) if e["type"] == catalogue.PlanDiscarded.event_type] or None,
                      timeout=10, what="the plan.discarded event")
    assert events[0]["data"]["winner"] == kept[0]["plan_id"] and events[0]["data"]["mechanism"] == "ClusterPlacement"


def _log(loop: Loop) -> list[dict]:
    from mapemesh.eventing.log import read_all

    return [{"type": e.event.type, "data": json.loads(e.event.data or b"null")}
            for e in read_all(loop.mesh.data / "eventlog.db")]


def test_a_failing_policy_is_recorded_and_does_not_block_the_others(loop_factory):
    policies = REPO / "tests" / "policies"
    loop = loop_factory(shipped=False, extra_policies={
        "broken": policies / "policy-broken.py", "power": policies / "policy-power-documented.py",
        "cpu-code": policies / "policy-cpu-code.py"})
    loop.registered("broken", "power")
    loop.post(catalogue.InfraRegistered(infra_id="node-1", kind="node", description=NODE))
    loop.post(catalogue.TelemetryReported(asset="node-1", asset_kind="node", metrics=[
        catalogue.Metric(name="node_power_watts", value=140.0)]))
    (command,) = wait_for(lambda: loop.commands("RAPLPowerCap") or None, timeout=20,
                          what="the documented-shape policy's knob command")
    assert command["command"] == {"command": "set", "domain": "package", "limit_uw": 90_000_000}
    wait_for(lambda: loop.plan(command["plan_id"]).get("status") == "Success", timeout=20, what="its plan to succeed")
    broken = wait_for(lambda: d if (d := loop.store.get("policies", "broken").value)["failures"] else None,
                      timeout=20, what="the broken policy's failure recorded")
    failure = broken["recent_failures"][0]
    assert "RuntimeError: this policy is broken on purpose" in failure["error"]
    assert "Traceback" in failure["traceback"] and "policy.py" in failure["traceback"]
    assert broken["status"] == "active"  # it stays deployed; the next change asks it again


def test_heuristic_mode_skips_machine_learning_policies_until_ml_mode(loop_factory):
    ml = Path(__file__).parent / "policies" / "policy-cpu-documented.py"
    loop = loop_factory(shipped=False, extra_policies={"ml-cpu": ml})
    loop.registered("ml-cpu")
    app = {"targets": {"application_metric": 10}}
    loop.post(catalogue.AppSubmitted(app_id="ml-app", description=app))
    skipped = wait_for(lambda: loop.store.get("policies", "ml-cpu").value.get("skipped"), timeout=20,
                       what="the ML policy skipped in heuristic mode")
    assert "heuristic mode" in skipped["reason"]
    loop.post(catalogue.TelemetryReported(asset="ml-app", asset_kind="application", metrics=[
        catalogue.Metric(name="application_metric", value=50.0)]))
    wait_for(lambda: loop.store.latest("ml-app"), timeout=20, what="the reading stored")
    assert not registry.stats(loop.store, "ml-cpu").get("analyses")
    # The mode change itself makes every application-scope policy look at every application again.
    loop.post(catalogue.ModeChanged(mode="ml"))
    doc = wait_for(lambda: d if (d := registry.stats(loop.store, "ml-cpu")).get("analyses") else None,
                   timeout=20, what="the ML policy asked in ML mode")
    assert "skipped" not in doc and doc["last_verdict"]["verdict"] is True
    plan = wait_for(lambda: [p.value for p in loop.store.list("plans").values()] or None, timeout=20,
                    what="the ML policy's plan")
    assert plan[0]["policy"] == "ml-cpu" and plan[0]["mechanisms"]["CPUFrequency"]["frequency"] == "max"
