"""Reputation credit (seed 7.1): the model's update rule under property-based tests, the configuration, the trust
function as a function, and trust-aware placement in the shipped policies."""

from __future__ import annotations

import asyncio
import json

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from mapemesh import events as catalogue
from mapemesh import trust
from mapemesh.functions import trust as trust_function
from mapemesh.policy import load_policy
from mapemesh.state import from_environment

from .conftest import REPO, signed

CONFIG = trust.TrustConfig.load(REPO / "functions" / "trust" / "trust.yaml")
NAMES = sorted(CONFIG.indices)

observations = st.lists(st.tuples(st.sampled_from(NAMES), st.floats(0, 1), st.floats(0, 3600)), max_size=60)


def _replay(config: trust.TrustConfig, steps, start: float = 1000.0) -> tuple[dict, float]:
    doc, now = None, start
    for index, good, gap in steps:
        now += gap
        doc = trust.observe(config, doc, index, good, now)
    return doc or {}, now


@settings(max_examples=300, deadline=None)
@given(observations, st.floats(0, 1e6))
def test_credits_and_indices_stay_within_0_and_1(steps, later):
    doc, now = _replay(CONFIG, steps)
    for at in (now, now + later):
        value = trust.credit(CONFIG, doc, at)
        assert 0.0 <= value <= 1.0
        assert all(0.0 <= v <= 1.0 for v in trust.values(CONFIG, doc, at).values())
    json.dumps(doc)  # the record is plain JSON (the store keeps it)


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 200))
def test_a_burst_inside_one_window_counts_as_one_window(burst):
    """After 20 good windows, any number of failures within one window moves the index as one bad window does."""
    steps = [("knob_success", 1.0, CONFIG.window_s)] * 20
    doc, now = _replay(CONFIG, steps)
    one = trust.observe(CONFIG, doc, "knob_success", 0.0, now + CONFIG.window_s)
    many = one
    for i in range(burst - 1):
        many = trust.observe(CONFIG, many, "knob_success", 0.0, now + CONFIG.window_s + 0.001 * (i + 1))
    at = now + CONFIG.window_s + 1.0
    assert trust.values(CONFIG, many, at)["knob_success"] == pytest.approx(
        trust.values(CONFIG, one, at)["knob_success"], abs=1e-6)
    assert trust.values(CONFIG, many, at)["knob_success"] > 0.85  # one bad window among twenty good


def test_failures_that_keep_coming_bring_the_index_down_and_old_evidence_fades():
    doc, now = _replay(CONFIG, [("knob_success", 1.0, CONFIG.window_s)] * 30)
    assert trust.values(CONFIG, doc, now)["knob_success"] > 0.9
    doc, now = _replay(CONFIG, [("knob_success", 0.0, CONFIG.window_s)] * 30, start=now)
    assert trust.values(CONFIG, doc, now)["knob_success"] < 0.6
    # Left alone for many half-lives, the record fades back to the prior.
    assert trust.values(CONFIG, doc, now + 50 * CONFIG.half_life_s)["knob_success"] == pytest.approx(0.5, abs=0.01)


@settings(max_examples=100, deadline=None)
@given(observations.filter(lambda s: {i for i, _, _ in s} >= {"knob_success", "telemetry_freshness"}))
def test_weights_from_the_configuration_change_the_credit(steps):
    raw = yaml.safe_load((REPO / "functions" / "trust" / "trust.yaml").read_text())
    only_knobs = trust.TrustConfig.parse({**raw, "indices": {n: {"weight": 1.0 if n == "knob_success" else 0.0}
                                                             for n in raw["indices"]}})
    doc, now = _replay(CONFIG, steps)
    assert trust.credit(only_knobs, doc, now) == pytest.approx(trust.values(only_knobs, doc, now)["knob_success"])
    by_value = trust.values(CONFIG, doc, now)
    expected = sum(CONFIG.indices[n].weight * v for n, v in by_value.items()) / sum(
        i.weight for i in CONFIG.indices.values())
    assert trust.credit(CONFIG, doc, now) == pytest.approx(expected)


def test_a_configuration_is_checked_and_names_the_field(tmp_path):
    for doc, message in (({}, "indices"), ({"indices": {"a": {"weight": -1}}}, "weight >= 0"),
                         ({"indices": {"a": {"weight": 1, "prior": 2}}}, "prior in"),
                         ({"indices": {"a": 0}}, "weight above 0"), ({"indices": {"a": 1}, "x": 1}, "unknown"),
                         ({"indices": {"a": 1}, "update": {"window_s": 0}}, "above 0"),
                         ({"indices": {"a": {"weight": "heavy"}}}, "a number")):
        with pytest.raises(trust.TrustConfigError, match=message):
            trust.TrustConfig.parse(doc)
    with pytest.raises(KeyError, match="no trust index"):
        trust.observe(CONFIG, None, "nonsense", 1.0, 0.0)


@pytest.fixture
def store(tmp_path, monkeypatch):
    monkeypatch.setenv("MAPEMESH_DATA", str(tmp_path))
    monkeypatch.setenv("MAPEMESH_STATE", "sqlite:")
    from_environment.cache_clear()
    trust_function._guard.cache_clear()  # the trust anchor of this test's data directory
    yield from_environment()
    from_environment().close()
    from_environment.cache_clear()
    trust_function._guard.cache_clear()


def _call(data: catalogue.EventData, signer: str | None = None) -> list[catalogue.EventData]:
    event = catalogue.make_event(data, source="/test")
    if signer is not None:
        event = signed(event, name=signer)
    reply = asyncio.run(trust_function.trust_stage(event))
    return [] if reply is None else [catalogue.parse_data(reply)]


def test_the_trust_function_follows_knob_results_and_says_when_the_credit_moves(store):
    [first] = _call(catalogue.InfraRegistered(infra_id="n1", kind="node", description={}))
    assert isinstance(first, catalogue.TrustUpdated) and first.credit == pytest.approx(0.5) and first.previous is None
    # Results only from what applied the knob: unsigned, or signed by another identity, they count for nothing; a
    # mechanism adapter reports only its own knob (upf: UPFSelect, jobs: JobOrder), not the node's CPUFrequency.
    for forger in (None, "operator", "node-shim-n2", "upf", "jobs"):
        assert _call(catalogue.KnobFailed(node="n1", knob="CPUFrequency", request="f", code="hardware",
                                          error="forged"), signer=forger) == []
    assert store.get("trust", "n1").value["credit"] == pytest.approx(0.5)
    assert _call(catalogue.KnobFailed(node="n1", knob="JobOrder", request="j", code="hardware", error="forged"),
                 signer="upf") == []
    _call(catalogue.InfraRegistered(infra_id="core-1", kind="node", description={}))
    [counted] = _call(catalogue.KnobFailed(node="core-1", knob="UPFSelect", request="u", code="hardware",
                                           error="the core reads back another UPF"), signer="upf")
    assert counted.asset == "core-1" and counted.credit < 0.5  # the adapter's own knob: counted
    updates = []
    for i in range(6):
        updates += _call(catalogue.KnobFailed(node="n1", knob="CPUFrequency", request=f"r{i}", code="hardware",
                                              error="the write failed"), signer="node-shim-n1")
    assert updates and all(u.credit < u.previous for u in updates)
    doc = store.get("trust", "n1").value
    assert doc["values"]["knob_success"] < 0.5 and 0 <= doc["credit"] < 0.5
    # A bad command is not the node's fault; a bucket made through S3 is no knob apply.
    before = store.get("trust", "n1").value["indices"]
    assert _call(catalogue.KnobFailed(node="n1", knob="CPUFrequency", request="r", code="invalid", error="x"),
                 signer="node-shim-n1") == []
    assert _call(catalogue.KnobApplied(node="n1", knob="StoragePolicy", request="s3:abc", before={}, after={}),
                 signer="n1") == []
    assert store.get("trust", "n1").value["indices"] == before
    _call(catalogue.InfraUnregistered(infra_id="n1"))
    assert store.get("trust", "n1") is None


def test_the_configuration_can_come_from_another_file(store, tmp_path, monkeypatch):
    (tmp_path / "t.yaml").write_text(yaml.safe_dump({"indices": {"knob_success": {"weight": 1, "prior": 0.9}}}))
    monkeypatch.setenv("MAPEMESH_TRUST_CONFIG", str(tmp_path / "t.yaml"))
    trust_function.config.cache_clear()
    try:
        [first] = _call(catalogue.InfraRegistered(infra_id="n2", kind="node", description={}))
        assert first.credit == pytest.approx(0.9) and set(first.indices) == {"knob_success"}
    finally:
        trust_function.config.cache_clear()


def _app(min_trust: float | None, node: str | None = None) -> dict:
    component = {"metadata": {"name": "c"}, "containers": [{"image": "x"}]}
    if min_trust is not None:
        component["min_trust"] = min_trust
    if node:
        component["node_placement"] = {"node": node}
    return {"MLSysOpsApp": {"name": "a", "components": [component]}}


def _place(name: str, app: dict, trust_credits: dict) -> dict:
    policy = load_policy(REPO / "functions" / "policies" / name / "policy.py")
    decl = asyncio.run(policy.initialize())
    nodes = {"big": {"MLSysOpsNode": {"name": "big", "cluster_id": "c1", "hardware": {"cpu": {"cores": 16}}}},
             "small": {"MLSysOpsNode": {"name": "small", "cluster_id": "c2", "hardware": {"cpu": {"cores": 2}}}}}
    inputs = {"context": dict(decl.context), "application_description": app, "mechanisms": {},
              "system_description": {"nodes": nodes, "clusters": {}, "trust": trust_credits}, "telemetry": {}}
    verdict, context = asyncio.run(policy.analyze(inputs))
    if not verdict:
        return {"unplaceable": context.get("unplaceable")}
    plan, _ = asyncio.run(policy.plan({**inputs, "context": context}))
    return plan


def test_every_placement_policy_keeps_components_off_nodes_under_their_minimum():
    trusted, doubted = {"big": 0.9, "small": 0.8}, {"big": 0.3, "small": 0.8}
    assert _place("node_placement", _app(0.7), trusted) == {"ComponentPlacement": {"nodes": {"c": "big"}}}
    assert _place("node_placement", _app(0.7), doubted) == {"ComponentPlacement": {"nodes": {"c": "small"}}}
    assert _place("node_placement", _app(None), doubted) == {"ComponentPlacement": {"nodes": {"c": "big"}}}
    nowhere = _place("node_placement", _app(0.95), doubted)["unplaceable"]["c"]
    assert "trust credit 0.30 is under the component's minimum 0.95" in nowhere["big"]
    assert "no trust credit recorded" in _place("node_placement", _app(0.5), {})["unplaceable"]["c"]["big"][0]
    assert _place("cluster_placement", _app(0.7), trusted) == {"ClusterPlacement": {"placement": {"c": ["c1"]}}}
    assert _place("cluster_placement", _app(0.7), doubted) == {"ClusterPlacement": {"placement": {"c": ["c2"]}}}
    assert _place("cluster_placement", _app(0.7), {**trusted, "c1": 0.1}) == {
        "ClusterPlacement": {"placement": {"c": ["c2"]}}}  # the cluster's own credit (its deploy results)
    assert _place("static_placement", _app(0.7, node="big"), trusted) == {"ComponentPlacement": {"nodes": {"c": "big"}}}
    assert _place("static_placement", _app(0.7, node="big"), doubted) == {"unplaceable": None}


def test_min_trust_is_checked_in_the_description():
    from mapemesh.descriptions import DescriptionError, load

    with pytest.raises(DescriptionError, match="min_trust"):
        load(_app(1.5))
    assert load(_app(0.7)).MLSysOpsApp.components[0].min_trust == 0.7


def test_the_monitor_says_a_credit_moved_only_when_an_application_asks_for_one(store):
    from mapemesh.functions.monitor import monitor

    moved = catalogue.make_event(catalogue.TrustUpdated(asset="n1", asset_kind="node", credit=0.4, previous=0.5,
                                                        indices={"knob_success": 0.3}), "/test")
    store.put("applications", "plain", {"description": _app(None)})
    assert asyncio.run(monitor(moved)) is None  # no component cares: no analysis is started for it
    store.put("applications", "careful", {"description": _app(0.45)})
    changed = catalogue.parse_data(asyncio.run(monitor(moved)))
    assert changed.asset == "n1" and changed.changed == ["trust"]
