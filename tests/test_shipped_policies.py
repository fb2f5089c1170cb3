"""The policies mapemesh ships, run through the policy SDK as the loop runs them."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import yaml

from mapemesh.policy import load_policy

from .conftest import SHARED

REPO = Path(__file__).resolve().parent.parent
CPU = REPO / "functions" / "policies" / "cpu_frequency" / "policy.py"


def app(target: float = 20, relation: str = "lower_or_equal") -> dict:
    return {"MLSysOpsApp": {"name": "a", "components": [{"metadata": {"name": "c"}, "qos_metrics": [
        {"application_metric_id": "metric-1", "target": target, "relation": relation}]}]}}


def test_cpu_frequency_goes_to_max_when_a_target_is_missed_and_back_to_min():
    policy = load_policy(CPU)
    decl = asyncio.run(policy.initialize())
    assert decl.mechanisms == ("CPUFrequency",) and decl.scope == "global"
    context = dict(decl.context)

    def step(value: float) -> dict | None:
        nonlocal context
        inputs = {"context": context, "application_description": [app()], "telemetry": {"data": {"metric-1": value}},
                  "mechanisms": {}, "system_description": {}}
        verdict, context = asyncio.run(policy.analyze(inputs))
        if not verdict:
            return None
        plan, context = asyncio.run(policy.plan({**inputs, "context": context}))
        return plan["CPUFrequency"]

    assert step(25) == {"command": "set", "cpu": "all", "frequency": "max"}  # 25 > 20: missed
    assert step(30) is None  # still missed: already planned, no new plan
    assert step(10) == {"command": "set", "cpu": "all", "frequency": "min"}
    assert step(12) is None


def test_cpu_frequency_reads_the_upstream_application_description():
    upstream = SHARED / "reference" / "mlsysops" / "app-description.user_provided.yaml"
    if not upstream.exists():
        pytest.skip(f"{upstream} is not here (../shared is laid beside the checkout in CI)")
    description = yaml.safe_load(upstream.read_text())
    policy = load_policy(CPU)
    decl = asyncio.run(policy.initialize())
    inputs = {"context": dict(decl.context), "application_description": [description],
              "telemetry": {"data": {"metric-1": 21}}}
    verdict, context = asyncio.run(policy.analyze(inputs))
    plan, _ = asyncio.run(policy.plan({**inputs, "context": context}))
    assert verdict and plan["CPUFrequency"]["frequency"] == "max"  # metric-1 must stay <= 20


POLICIES = REPO / "functions" / "policies"
NODES = {
    "edge-arm": {"MLSysOpsNode": {"name": "edge-arm", "continuum_layer": "edge", "cluster_id": "edge-c",
                                  "labels": ["node-type:rpi"],
                                  "hardware": {"cpu": {"cores": 4, "architecture": "arm64"}, "memory": 4}}},
    "edge-gpu": {"MLSysOpsNode": {"name": "edge-gpu", "continuum_layer": "edge", "cluster_id": "edge-c",
                                  "hardware": {"cpu": {"cores": 8, "architecture": "amd64"}, "memory": 16,
                                               "gpu": {"model": "k80"}}}},
    "cloud-1": {"MLSysOpsNode": {"name": "cloud-1", "continuum_layer": "cloud", "cluster_id": "cloud-c",
                                 "hardware": {"cpu": {"cores": 64, "architecture": "amd64"}, "memory": 256}}},
}


def component(name: str, **placement_and_needs) -> dict:
    needs = placement_and_needs.pop("needs", {})
    return {"metadata": {"name": name}, "node_placement": placement_and_needs,
            "containers": [{"image": "x", "platform_requirements": needs}]}


def run(path: Path, description: dict, nodes: dict | None = None) -> tuple[bool, dict, dict]:
    policy = load_policy(path)
    decl = asyncio.run(policy.initialize())
    inputs = {"context": dict(decl.context), "application_description": description,
              "system_description": {"nodes": nodes or {}, "clusters": {}}, "telemetry": {"data": {}},
              "mechanisms": {}}
    verdict, context = asyncio.run(policy.analyze(inputs))
    if not verdict:
        return False, {}, context
    plan, context = asyncio.run(policy.plan({**inputs, "context": context}))
    again, _ = asyncio.run(policy.analyze({**inputs, "context": context}))
    assert not again  # nothing changed: no new plan
    return True, plan, context


def test_node_placement_matches_layer_labels_architecture_gpu_and_memory():
    app = {"MLSysOpsApp": {"name": "a", "components": [
        component("camera", continuum_layer=["edge"], labels=["node-type:rpi"]),
        component("inference", continuum_layer=["edge"], needs={"gpu": {"model": "k80"}}),
        component("big", needs={"cpu": {"architecture": ["amd64"]}, "memory": {"requests": "64Gi"}}),
        component("pinned", node="edge-arm"),
        component("nowhere", continuum_layer=["far_edge"]),
    ]}}
    verdict, plan, context = run(POLICIES / "node_placement" / "policy.py", app, NODES)
    assert verdict and plan == {"ComponentPlacement": {"nodes": {
        "camera": "edge-arm", "inference": "edge-gpu", "big": "cloud-1", "pinned": "edge-arm"}}}
    assert "layer cloud is not one of far_edge" in context["unplaceable"]["nowhere"]["cloud-1"]


def test_cluster_placement_prefers_the_cluster_with_most_fitting_nodes_or_the_fixed_one():
    app = {"MLSysOpsApp": {"name": "a", "components": [component("web", needs={"cpu": {"architecture": ["amd64"]}}),
                                                       component("iot", continuum_layer=["edge"])]}}
    verdict, plan, _ = run(POLICIES / "cluster_placement" / "policy.py", app, NODES)
    assert verdict and plan == {"ClusterPlacement": {"placement": {"web": ["cloud-c"], "iot": ["edge-c"]}}}
    fixed = {"MLSysOpsApp": {**app["MLSysOpsApp"], "cluster_placement": {"cluster_id": ["x"]}}}
    _, plan, _ = run(POLICIES / "cluster_placement" / "policy.py", fixed, NODES)
    assert plan == {"ClusterPlacement": {"placement": {"web": ["x"], "iot": ["x"]}}}
    verdict, _, context = run(POLICIES / "cluster_placement" / "policy.py", app, {})
    assert not verdict and context["unplaceable"]["web"] == {"*": ["no node is registered"]}


def test_static_placement_places_only_what_the_description_fixes():
    app = {"MLSysOpsApp": {"name": "a", "cluster_placement": {"cluster_id": ["c1"]},
                           "components": [component("web", node="n1"), component("db")]}}
    verdict, plan, _ = run(POLICIES / "static_placement" / "policy.py", app)
    assert verdict and plan == {"ComponentPlacement": {"nodes": {"web": "n1"}},
                                "ClusterPlacement": {"placement": {"web": ["c1"], "db": ["c1"]}}}
    verdict, _, _ = run(POLICIES / "static_placement" / "policy.py", {"MLSysOpsApp": {"components": [component("x")]}})
    assert not verdict


def test_placement_reads_the_upstream_descriptions():
    ref = SHARED / "reference" / "mlsysops"
    if not ref.exists():
        pytest.skip(f"{ref} is not here (../shared is laid beside the checkout in CI)")
    app = yaml.safe_load((ref / "app-description.user_provided.yaml").read_text())
    node = yaml.safe_load((ref / "node-description.node1.yaml").read_text())
    verdict, plan, context = run(POLICIES / "node_placement" / "policy.py", app, {"node-1": node})
    # server-app wants an amd64 edge node (node-1 is one); client-app wants an arm64 rpi with a GPU.
    assert verdict and plan == {"ComponentPlacement": {"nodes": {"server-app": "node-1"}}}
    assert "architecture amd64 is not one of arm64" in context["unplaceable"]["client-app"]["node-1"]
    _, plan, _ = run(POLICIES / "static_placement" / "policy.py", app)
    assert plan == {"ClusterPlacement": {"placement": {"server-app": ["mls-ubiw-1"], "client-app": ["mls-ubiw-1"]}}}


def test_every_shipped_policy_has_a_function_and_manifests():
    from mapemesh import manifests
    from mapemesh.runtimes.policy_service import render

    found = manifests.load(REPO / "knative")
    for folder in sorted(p for p in POLICIES.iterdir() if (p / "policy.py").exists()):
        name = folder.name.replace("_", "-")
        assert (folder / "__init__.py").read_text().count(f'"{name}"') == 1, folder
        rendered = render(name, f"functions/policies/{folder.name}/__init__.py")
        assert (REPO / "knative" / "base" / f"policy-{name}.yaml").read_text() == rendered, name
        assert any(m.kind == "Service" and m.name == f"policy-{name}" for m in found.objects)
        assert f"policy-{name}.yaml" in (REPO / "knative" / "base" / "kustomization.yaml").read_text()


INTERVAL = REPO / "functions" / "policies" / "telemetry_interval" / "policy.py"


def test_telemetry_interval_shortens_on_a_fast_move_or_broken_target_and_lengthens_after_calm(monkeypatch):
    """Hysteresis: short at once when the watched metric moves fast or breaks its target, long only after
    CALM_FOR_S of calm, unchanged in between; no plan while nothing changes."""
    policy = load_policy(INTERVAL, "telemetry-interval")
    decl = asyncio.run(policy.initialize())
    assert decl.mechanisms == ("TelemetryInterval",) and decl.scope == "global"
    module = policy._module  # the file itself, for its constants and its clock
    clock = [1000.0]
    monkeypatch.setattr(module.time, "time", lambda: clock[0])
    context = dict(decl.context)
    samples: list = []

    def step(value: float | None, at: float, interval_s: float = 5.0) -> str | None:
        nonlocal context
        clock[0] = at
        if value is not None:
            samples.append([at, value])
        inputs = {"context": context, "application_description": [app(target=20)],
                  "telemetry": {"data": {}, "window": {"metric-1": list(samples)}},
                  "mechanisms": {"TelemetryInterval": {"state": {"interval_s": interval_s}}}, "system_description": {}}
        verdict, context = asyncio.run(policy.analyze(inputs))
        if not verdict:
            return None
        plan, context = asyncio.run(policy.plan({**inputs, "context": context}))
        return plan["TelemetryInterval"]["interval"]

    assert step(10, 1000) is None                    # first sight: the calm clock starts, nothing planned
    assert step(11, 1001) is None                    # a small move, within the target
    assert step(15, 1002) == module.SHORT            # +36%: moving fast
    assert step(15.5, 1003) is None                  # already short
    assert step(16, 1003 + module.CALM_FOR_S / 2) is None      # calm, not for long enough: unchanged
    assert step(16, 1002 + module.CALM_FOR_S + 1) == module.LONG  # calm for CALM_FOR_S: long again
    assert step(25, 1100) == module.SHORT            # 25 breaks the target (<= 20), no fast move needed
    assert step(None, 1100 + module.CALM_FOR_S + 1) == module.LONG  # the broken sample went stale: calm
    assert step(None, 1200) is None                  # steady: no plan


def test_telemetry_interval_does_not_plan_what_the_node_already_has(monkeypatch):
    policy = load_policy(INTERVAL, "telemetry-interval")
    module = policy._module  # the file itself, for its constants and its clock
    monkeypatch.setattr(module.time, "time", lambda: 5000.0)
    context = {"last_moving": 0.0}
    inputs = {"context": context, "application_description": [], "telemetry": {"data": {}, "window": {}},
              "mechanisms": {"TelemetryInterval": {"state": {"interval_s": 30.0}}}, "system_description": {}}
    verdict, context = asyncio.run(policy.analyze(inputs))
    assert not verdict and context["planned_interval"] == module.LONG


STORAGE = POLICIES / "storage_placement" / "policy.py"
LOCATIONS = [{"name": n, "country": c, "region": r, "cost_per_gb": cost} for n, c, r, cost in (
    ("ie", "IE", "eu", 0.010), ("de", "DE", "eu", 0.011), ("fr", "FR", "eu", 0.012), ("us", "US", "us", 0.013),
    ("jp", "JP", "ap", 0.020))]


def _storage_step(policy, state: dict, window: dict, apps: list | None = None, restrictions: dict | None = None):
    decl = asyncio.run(policy.initialize())
    inputs = {"context": dict(decl.context), "application_description": apps or [], "system_description": {},
              "telemetry": {"data": {}, "window": window},
              "mechanisms": {"StoragePolicy": {"state": state, "options": {
                  "locations": LOCATIONS, "restrictions": restrictions or {}}}}}
    verdict, context = asyncio.run(policy.analyze(inputs))
    if not verdict:
        return None
    plan, _ = asyncio.run(policy.plan({**inputs, "context": context}))
    return plan["StoragePolicy"]


def _accesses(bucket: str, **countries: list[float]) -> dict:
    return {f"storage_accesses:{bucket}:{c}": [(i, v) for i, v in enumerate(vs)] for c, vs in countries.items()}


def test_storage_placement_follows_demand_within_restrictions_and_targets():
    policy = load_policy(STORAGE)
    three = {"b": {"k": 2, "m": 1, "locations": ["ie", "de", "fr"]}}
    # Demand moves to Japan: a location there replaces the least used one, in place (the others stay).
    assert _storage_step(policy, three, _accesses("b", IE=[10, 10], JP=[30, 40])) == {
        "command": "set", "bucket": "b", "k": 2, "m": 1, "locations": ["ie", "de", "jp"]}
    # ... unless the bucket may only be in Europe (the gateway's restriction, or the application's regions).
    assert _storage_step(policy, three, _accesses("b", IE=[10, 10], JP=[30, 40]), restrictions={"b": ["eu"]}) is None
    eu_only = [{"MLSysOpsApp": {"name": "a", "storage": [{"bucket": "b", "regions": ["eu"]}]}}]
    assert _storage_step(policy, three, _accesses("b", IE=[10, 10], JP=[30, 40]), apps=eu_only) is None
    # Busy: one more parity fragment, on the cheapest spare location; the application's ceiling holds it back.
    busy = _accesses("b", IE=[500, 600, 700])
    assert _storage_step(policy, three, busy)["locations"] == ["ie", "de", "fr", "us"]
    capped = [{"MLSysOpsApp": {"name": "a", "storage": [{"bucket": "b", "max_parity": 1}]}}]
    assert _storage_step(policy, three, busy, apps=capped) is None
    # Quiet: one parity fragment less, down to the floor (MIN_PARITY, or the application's min_parity).
    four = {"b": {"k": 2, "m": 2, "locations": ["ie", "de", "us", "fr"]}}
    assert _storage_step(policy, four, _accesses("b", IE=[0, 0])) == {
        "command": "set", "bucket": "b", "k": 2, "m": 1, "locations": ["ie", "de", "fr"]}  # us, dearest, dropped
    assert _storage_step(policy, three, _accesses("b", IE=[0, 0])) is None
    floor = [{"MLSysOpsApp": {"name": "a", "storage": [{"bucket": "b", "min_parity": 2}]}}]
    assert _storage_step(policy, four, _accesses("b", IE=[0, 0]), apps=floor) is None
    assert _storage_step(policy, three, {}, apps=floor)["m"] == 2  # raised to the application's floor
    # Slow: a location whose probe is over the application's max_latency_ms is replaced.
    slow = [{"MLSysOpsApp": {"name": "a", "storage": [{"bucket": "b", "max_latency_ms": 50}]}}]
    probes = {f"location_latency_ms:{n}": [(0, 200.0 if n == "de" else 5.0)] for n in ("ie", "de", "fr", "us", "jp")}
    assert _storage_step(policy, three, probes, apps=slow)["locations"] == ["ie", "us", "fr"]
    # A location outside the application's regions is replaced first.
    assert _storage_step(policy, {"b": {"k": 2, "m": 1, "locations": ["ie", "us", "fr"]}}, {},
                         apps=eu_only)["locations"] == ["ie", "de", "fr"]


def test_storage_placement_is_asked_only_about_the_gateway_s_metrics():
    from mapemesh.functions.analyze import relevant
    from mapemesh.policy.inputs import matches

    declared = ("storage_accesses:*", "location_latency_ms:*")
    assert matches("storage_accesses:photos:JP", declared) and not matches("latency_ms", declared)
    decl = asyncio.run(load_policy(STORAGE).initialize())
    assert decl.metrics == declared
    assert not relevant(decl, ["latency_ms"])  # another node's application metric: not asked
    assert relevant(decl, ["storage_accesses:photos:JP"]) and relevant(decl, ["description"])
