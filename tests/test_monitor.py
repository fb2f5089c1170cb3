"""The monitor stage: as a function (called directly) and in the running mesh from the project's manifests."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest

import mapemesh
from mapemesh import events as catalogue
from mapemesh.eventing.log import read_all
from mapemesh.functions.monitor import monitor
from mapemesh.state import from_environment

from .conftest import REPO, copy_knative, wait_for
from .test_serving import start_mesh


@pytest.fixture
def store(tmp_path, monkeypatch):
    monkeypatch.setenv("MAPEMESH_DATA", str(tmp_path))
    monkeypatch.setenv("MAPEMESH_STATE", "sqlite:")
    from_environment.cache_clear()
    yield from_environment()
    from_environment().close()
    from_environment.cache_clear()


def ev(data: catalogue.EventData) -> mapemesh.CloudEvent:
    return catalogue.make_event(data, source="/test")


def call(event: mapemesh.CloudEvent) -> mapemesh.CloudEvent | None:
    return asyncio.run(monitor(event))


def test_telemetry_goes_to_the_window_and_state_changes(store):
    reply = call(ev(catalogue.TelemetryReported(asset="node-1", asset_kind="node", metrics=[
        catalogue.Metric(name="cpu", value=0.5), catalogue.Metric(name="temp", value=40)])))
    changed = catalogue.parse_data(reply)
    assert reply.type == "io.mapemesh.state.changed.v1" and reply.get("subject") == "node-1"
    assert changed.asset == "node-1" and changed.changed == ["cpu", "temp"]
    assert store.latest("node-1") == {"cpu": 0.5, "temp": 40.0}


def test_descriptions_and_mode(store):
    call(ev(catalogue.AppSubmitted(app_id="app-1", description={"name": "a"})))
    call(ev(catalogue.InfraRegistered(infra_id="node-1", kind="node", description={"cpu": 4})))
    assert store.get("applications", "app-1").value["description"] == {"name": "a"}
    doc = store.get("infrastructure", "node-1").value
    assert {k: doc[k] for k in ("kind", "description")} == {"kind": "node", "description": {"cpu": 4}}
    reply = call(ev(catalogue.InfraUnregistered(infra_id="node-1")))
    assert catalogue.parse_data(reply).asset_kind == "node" and store.get("infrastructure", "node-1") is None
    call(ev(catalogue.ModeChanged(mode="ml")))
    assert store.get("settings", "mode").value["mode"] == "ml"


def at(event: mapemesh.CloudEvent, when: str) -> mapemesh.CloudEvent:
    """`event` as sent at `when` (its `time`)."""
    event.attributes["time"] = when
    return event


def test_registrations_apply_in_the_order_they_were_sent_not_delivered(store):
    # A broker delivers at least once and in no set order: a registration redelivered after the node's
    # unregistration must not bring the node back, nor an old unregistration remove a newer registration.
    def register(when: str) -> mapemesh.CloudEvent | None:
        return call(at(ev(catalogue.InfraRegistered(infra_id="dev", kind="node", description={})), when))

    def unregister(when: str) -> mapemesh.CloudEvent | None:
        return call(at(ev(catalogue.InfraUnregistered(infra_id="dev")), when))

    assert register("2026-12-07T10:00:00.000001Z") is not None
    assert unregister("2026-12-07T10:00:05Z") is not None and store.get("infrastructure", "dev") is None
    assert register("2026-12-07T10:00:00.000001Z") is None  # the same registration, redelivered late
    assert store.get("infrastructure", "dev") is None
    assert register("2026-12-07T10:00:09Z") is not None  # the device came back
    assert unregister("2026-12-07T10:00:05Z") is None  # the old unregistration, redelivered
    assert store.get("infrastructure", "dev") is not None
    assert unregister("2026-12-07T10:00:10Z") is not None and store.get("infrastructure", "dev") is None
    # a newer registration is not overwritten by an older one delivered after it (lower-case RFC 3339 too)
    assert register("2026-12-07t10:00:20z") is not None
    assert register("2026-12-07T10:00:15Z") is None
    assert unregister("2026-12-07T10:00:17Z") is None and store.get("infrastructure", "dev") is not None


def test_knob_results_update_mechanisms_and_plans(store):
    store.put("plans", "p1", {"plan_id": "p1", "status": "Pending",
                              "mechanisms": {"CPUFrequency": {}, "RAPLPowerCap": {}}})
    call(ev(catalogue.KnobApplied(node="node-1", knob="CPUFrequency", request="r1", plan_id="p1",
                                     before={"max": 1}, after={"max": 2})))
    assert store.get("mechanisms", "node-1/CPUFrequency").value["state"] == {"max": 2}
    assert store.get("plans", "p1").value["status"] == "Pending"  # one mechanism still to report
    call(ev(catalogue.KnobApplied(node="node-1", knob="RAPLPowerCap", request="r2", plan_id="p1",
                                     before={}, after={"limit": 10})))
    assert store.get("plans", "p1").value["status"] == "Success"
    store.put("plans", "p2", {"plan_id": "p2", "status": "Pending", "mechanisms": {"CPUFrequency": {}}})
    call(ev(catalogue.KnobFailed(node="node-1", knob="CPUFrequency", request="r3", plan_id="p2",
                                    code="invalid", error="no such frequency")))
    plan = store.get("plans", "p2").value
    assert plan["status"] == "Failed" and "no such frequency" in plan["reason"]


def test_a_knob_result_without_a_plan_still_records_the_state(store):
    """An operator's command (no plan) changes the mechanism's state as a plan's does; a plan the loop does not
    know is not created by its result."""
    store.put("mechanisms", "node-1/vAccelPlugin", {"options": {"plugins": ["cpu", "gpu"]}})
    call(ev(catalogue.KnobApplied(node="node-1", knob="vAccelPlugin", request="r1", before={},
                                  after={"digits": "gpu"})))
    assert store.get("mechanisms", "node-1/vAccelPlugin").value["state"] == {"digits": "gpu"}
    assert store.get("mechanisms", "node-1/vAccelPlugin").value["options"] == {"plugins": ["cpu", "gpu"]}
    call(ev(catalogue.KnobApplied(node="node-1", knob="vAccelPlugin", request="r2", plan_id="unknown", before={},
                                  after={"digits": "cpu"})))
    assert store.get("mechanisms", "node-1/vAccelPlugin").value["state"] == {"digits": "cpu"}
    assert store.get("plans", "unknown") is None


def test_invalid_data_and_events_it_does_not_take_are_permanent_errors(store):
    bad = ev(catalogue.AppRemoved(app_id="a"))
    bad.data = b'{"app_id": ""}'
    with pytest.raises(mapemesh.PermanentError, match="invalid data"):
        call(bad)
    # Its Trigger sends only the types it has handlers for; anything else is a mistake to see, not to drop.
    with pytest.raises(mapemesh.PermanentError, match="not other"):
        call(mapemesh.CloudEvent({"specversion": "1.0", "id": "x", "source": "/s", "type": "other"}))


def test_in_the_mesh_from_the_project_manifests(tmp_path):
    import shutil

    root = tmp_path / "project"
    copy_knative(root)
    shutil.copytree(REPO / "functions", root / "functions", ignore=shutil.ignore_patterns("__pycache__"))
    mesh = start_mesh(root, {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "unused"}})
    try:
        event = ev(catalogue.TelemetryReported(asset="node-7", asset_kind="node", metrics=[
            catalogue.Metric(name="node_load1", value=1.5)]))
        from mapemesh.eventing.binding import to_binary

        headers, body = to_binary(event)
        assert httpx.post(mesh.broker + "/default/default", headers=headers, content=body).status_code == 202

        def changed():
            return [e for e in read_all(mesh.data / "eventlog.db")
                    if e.event.type == "io.mapemesh.state.changed.v1" and e.event.get("subject") == "node-7"]

        (reply,) = wait_for(changed, timeout=20, what="the monitor's state-changed reply in the broker")
        assert json.loads(reply.event.data)["cause"] == event.id
        status = mesh.status()["default/monitor"]
        assert status["ready"] and status["cold_starts"] == 1
    finally:
        mesh.proc.terminate()
        mesh.proc.wait(20)
