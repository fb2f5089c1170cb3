"""Node isolation (seed 5.3): the trust function isolates a node whose credit fell under the threshold (with its
GPS position), the monitor marks it in the node's description for good (across registrations), placement leaves it
out, and an isolation with `isolated: false` lets it back in; a successful FPGA reconfiguration's drain shows in the
plan's status."""

from __future__ import annotations

import asyncio

import pytest
import yaml

from mapemesh import events as catalogue
from mapemesh.functions import trust as trust_function
from mapemesh.functions.monitor import monitor
from mapemesh.identity.guard import Guard
from mapemesh.policy.placement import candidates
from mapemesh.state import from_environment

from .conftest import signed

GPS = {"latitude": 45.442997, "longitude": 9.16278, "fix": True, "source": "gps"}


@pytest.fixture
def store(tmp_path, monkeypatch):
    monkeypatch.setenv("MAPEMESH_DATA", str(tmp_path))
    monkeypatch.setenv("MAPEMESH_STATE", "sqlite:")
    from_environment.cache_clear()
    trust_function._guard.cache_clear()
    yield from_environment()
    from_environment().close()
    from_environment.cache_clear()
    trust_function._guard.cache_clear()


def call(data: catalogue.EventData, signer: str = "operator") -> catalogue.EventData | None:
    """The monitor's answer to `data`; an isolation (a command) signed by `signer`."""
    event = catalogue.make_event(data, source="/test")
    if isinstance(data, catalogue.NodeIsolated):
        event = signed(event, name=signer)
    reply = asyncio.run(monitor(event))
    return None if reply is None else catalogue.parse_data(reply)


def node(name: str = "edge-1") -> dict:
    return {"MLSysOpsNode": {"name": name, "location": GPS, "hardware": {"cpu": {"cores": 4}}}}


def nodes(store) -> dict:
    return {k: v.value["description"] for k, v in store.list("infrastructure").items()}


def test_an_isolated_node_takes_no_component_until_let_back_in(store) -> None:
    call(catalogue.InfraRegistered(infra_id="edge-1", kind="node", description=node()))
    call(catalogue.InfraRegistered(infra_id="edge-2", kind="node", description=node("edge-2")))
    component = {"metadata": {"name": "c"}}
    assert candidates(component, nodes(store))[0] == ["edge-1", "edge-2"]

    changed = call(catalogue.NodeIsolated(node="edge-1", reason="anomalous I/Q samples", by="anomaly-policy",
                                          location=GPS))
    assert isinstance(changed, catalogue.StateChanged) and changed.changed == ["isolated"]
    fits, why = candidates(component, nodes(store))
    assert fits == ["edge-2"] and why["edge-1"] == ["the node is isolated (anomalous I/Q samples)"]
    mark = nodes(store)["edge-1"]["MLSysOpsNode"]["isolated"]
    assert mark["by"] == "anomaly-policy" and mark["location"] == GPS

    # The node's shim registers it again (it does not know): it stays isolated; so after it left and came back.
    call(catalogue.InfraRegistered(infra_id="edge-1", kind="node", description=node()))
    assert "isolated" in nodes(store)["edge-1"]["MLSysOpsNode"]
    call(catalogue.InfraUnregistered(infra_id="edge-1"))
    call(catalogue.InfraRegistered(infra_id="edge-1", kind="node", description=node()))
    assert "isolated" in nodes(store)["edge-1"]["MLSysOpsNode"]

    call(catalogue.NodeIsolated(node="edge-1", isolated=False, reason="inspected on site", by="operator"))
    assert "isolated" not in nodes(store)["edge-1"]["MLSysOpsNode"]
    call(catalogue.InfraRegistered(infra_id="edge-1", kind="node", description=node()))
    assert candidates(component, nodes(store))[0] == ["edge-1", "edge-2"]


def test_an_isolation_is_a_command_only_trust_or_an_operator_may_send(store, tmp_path) -> None:
    event = catalogue.make_event(catalogue.NodeIsolated(node="edge-1", reason="x", by="someone"), source="/test")
    signed(event, name="operator")  # the mesh's authority, in this data directory
    guard = Guard.from_environment(tmp_path)
    assert guard.check(event).rule == "unsigned"
    assert guard.check(signed(event, name="node-shim-edge-1")).rule == "not-allowed"
    assert guard.check(signed(event, name="trust")).allowed and guard.check(signed(event, name="operator")).allowed


def test_isolating_an_unknown_node_changes_nothing(store) -> None:
    assert call(catalogue.NodeIsolated(node="ghost", reason="x", by="operator")) is None
    assert store.get("infrastructure", "ghost") is None and store.get("departed", "ghost") is None


def test_a_node_let_back_in_while_it_was_away_comes_back_free(store) -> None:
    call(catalogue.InfraRegistered(infra_id="edge-1", kind="node", description=node()))
    call(catalogue.NodeIsolated(node="edge-1", reason="anomalous I/Q samples", by="trust"))
    call(catalogue.InfraUnregistered(infra_id="edge-1"))
    assert call(catalogue.NodeIsolated(node="edge-1", isolated=False, reason="inspected", by="operator")) is None
    call(catalogue.InfraRegistered(infra_id="edge-1", kind="node", description=node()))
    assert "isolated" not in nodes(store)["edge-1"]["MLSysOpsNode"]
    # And one isolated while away comes back isolated.
    call(catalogue.InfraUnregistered(infra_id="edge-1"))
    call(catalogue.NodeIsolated(node="edge-1", reason="stolen", by="operator"))
    call(catalogue.InfraRegistered(infra_id="edge-1", kind="node", description=node()))
    assert nodes(store)["edge-1"]["MLSysOpsNode"]["isolated"]["reason"] == "stolen"


def test_a_registration_keeps_an_isolation_recorded_while_it_was_handled(store, monkeypatch) -> None:
    # Two monitor processes: one records the node's registration, the other its isolation, between the first's
    # read and its write. The registration must not write the node back unisolated.
    call(catalogue.InfraRegistered(infra_id="edge-1", kind="node", description=node()))
    isolated = {**node(), "MLSysOpsNode": {**node()["MLSysOpsNode"], "isolated": {"reason": "x", "by": "trust"}}}
    read = store.get
    raced: list[bool] = []

    def get(kind: str, key: str):
        found = read(kind, key)
        if kind == "infrastructure" and not raced:
            raced.append(True)
            store.put("infrastructure", key, {**found.value, "description": isolated})
        return found

    monkeypatch.setattr(store, "get", get)
    call(catalogue.InfraRegistered(infra_id="edge-1", kind="node", description=node()))
    assert raced and nodes(store)["edge-1"]["MLSysOpsNode"]["isolated"]["reason"] == "x"


@pytest.fixture
def strict_trust(tmp_path, monkeypatch):
    """Knob results alone, each one its own window of evidence: a few failures bring the credit down."""
    (tmp_path / "trust.yaml").write_text(yaml.safe_dump({
        "indices": {"knob_success": {"weight": 1, "prior": 0.5}},
        "update": {"window_s": 1e-9, "isolate_below": 0.3}}))
    monkeypatch.setenv("MAPEMESH_TRUST_CONFIG", str(tmp_path / "trust.yaml"))
    trust_function.config.cache_clear()
    yield
    trust_function.config.cache_clear()


def test_the_shipped_trust_configuration_isolates(store) -> None:
    trust_function.config.cache_clear()
    assert trust_function.config().isolate_below == 0.2


def test_trust_isolates_a_node_whose_credit_falls_under_the_threshold_once(store, strict_trust) -> None:
    call(catalogue.InfraRegistered(infra_id="edge-1", kind="node", description=node()))
    trust_function.registered(catalogue.InfraRegistered(infra_id="edge-1", kind="node", description=node()),
                              event=catalogue.make_event(catalogue.InfraRegistered(
                                  infra_id="edge-1", kind="node", description=node()), source="/test"),
                              store=store)
    threshold = trust_function.config().isolate_below
    assert threshold is not None
    isolations = []
    for i in range(40):
        data = catalogue.KnobFailed(node="edge-1", knob="RadioConfig", request=f"r{i}", code="hardware",
                                    error="the radio refused")
        event = signed(catalogue.make_event(data, source="/test"), name="node-shim-edge-1")
        replies = trust_function.failed(data, event=event, store=store) or []
        isolations += [r.data for r in replies if isinstance(r.data, catalogue.NodeIsolated)]
    credit = store.get("trust", "edge-1").value["credit"]
    assert credit < threshold
    [isolated] = isolations  # said once, not at every observation under the threshold
    assert isolated.node == "edge-1" and isolated.by == "trust" and isolated.location == GPS
    assert isolated.credit is not None and isolated.credit < threshold
    call(isolated, signer="trust")  # what the monitor does with it (signed by the trust function's identity)
    assert candidates({"metadata": {"name": "c"}}, nodes(store))[0] == []


def test_a_drain_before_a_reconfiguration_shows_in_the_plan(store) -> None:
    store.put("plans", "p1", {"plan_id": "p1", "status": "Pending", "mechanisms": {"FPGABitstream": {}}})
    last = {"manager": "fpga0", "bitstream": "conv2d.bit.bin", "partial": False, "region": None, "needs_idle": True,
            "drained": ["default/detect"], "at": 1.0}
    call(catalogue.KnobApplied(node="zcu102", knob="FPGABitstream", request="r", plan_id="p1", before={},
                               after={"managers": {}, "last_reconfiguration": last}))
    plan = store.get("plans", "p1").value
    assert plan["status"] == "Success" and plan["results"] == {"FPGABitstream": "applied"}
    assert "needed the accelerator idle" in plan["notes"]["FPGABitstream"]
    assert "default/detect" in plan["notes"]["FPGABitstream"]
    # Where nothing could drain (a cluster's shim), the operator's force is what the plan says.
    store.put("plans", "p2", {"plan_id": "p2", "status": "Pending", "mechanisms": {"FPGABitstream": {}}})
    call(catalogue.KnobApplied(node="zcu102", knob="FPGABitstream", request="r2", plan_id="p2", before={},
                               after={"managers": {}, "last_reconfiguration": {**last, "drained": [],
                                                                               "forced": True}}))
    assert "force" in store.get("plans", "p2").value["notes"]["FPGABitstream"]
