"""`mapemesh policy new|deploy|list` as a user runs them: subprocesses, a running mesh for deploy and list."""

from __future__ import annotations

import json
import shutil

import httpx

from mapemesh import events as catalogue
from mapemesh.eventing.binding import to_binary
from mapemesh.state import open_store

from .conftest import REPO, wait_for
from .test_cli import mapemesh
from .test_serving import start_mesh

POLICIES = REPO / "tests" / "policies"


def test_new_scaffolds_a_policy_that_tests_and_refuses_to_overwrite(tmp_path):
    (tmp_path / "knative").mkdir()
    (tmp_path / "knative" / "kustomization.yaml").write_text("resources:\n  - broker.yaml\n")
    result = mapemesh("policy", "new", "hot-cpu", "--root", str(tmp_path))
    assert result.returncode == 0, result.stderr
    module = tmp_path / "functions" / "policies" / "hot_cpu" / "policy.py"
    for path in (module, module.with_name("__init__.py"), tmp_path / "knative" / "policy-hot-cpu.yaml",
                 tmp_path / "bunnyfiles" / "policy-hot-cpu.bunnyfile"):
        assert path.exists(), path
    assert "policy-hot-cpu.yaml" in (tmp_path / "knative" / "kustomization.yaml").read_text()
    assert "framework: linux" in (tmp_path / "bunnyfiles" / "policy-hot-cpu.bunnyfile").read_text()
    events = tmp_path / "events.jsonl"
    event = catalogue.make_event(catalogue.TelemetryReported(asset="n1", asset_kind="node", metrics=[
        catalogue.Metric(name="node_cpu_utilization", value=0.95)]), "/test")
    events.write_text(json.dumps(event.to_structured()) + "\n")
    tested = mapemesh("policy", "test", str(module), "--events", str(events), "-o", "json")
    assert tested.returncode == 0, tested.stderr
    (plan,) = json.loads(tested.stdout)["plans"]
    assert plan["mechanisms"] == {"CPUFrequency": {"command": "set", "cpu": "all", "frequency": "max"}}
    before = module.read_text()
    again = mapemesh("policy", "new", "hot-cpu", "--root", str(tmp_path))
    assert again.returncode == 2 and "exists already" in again.stderr and module.read_text() == before
    bad = mapemesh("policy", "new", "Hot_CPU", "--root", str(tmp_path))
    assert bad.returncode == 2 and "lowercase" in bad.stderr


def test_deploy_adds_a_policy_to_a_running_mesh_and_list_shows_it(tmp_path):
    root = tmp_path / "project"
    shutil.copytree(REPO / "functions", root / "functions", ignore=shutil.ignore_patterns("__pycache__"))
    mesh = start_mesh(root, {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "unused"}})
    try:
        for name in ("monitor", "analyze", "plan", "schedule", "execute"):
            shutil.copy(REPO / "knative" / "base" / f"{name}.yaml", root / "knative" / f"{name}.yaml")
        bad = mapemesh("policy", "deploy", str(tmp_path / "nope.py"), data=mesh.data)
        assert bad.returncode == 2
        broken_file = tmp_path / "policy-nonsense.py"
        broken_file.write_text("def initialize():\n    return 7\n")
        refused = mapemesh("policy", "deploy", str(broken_file), data=mesh.data)
        assert refused.returncode == 2 and "no analyze() function" in refused.stderr
        assert not (mesh.data / "manifests" / "policy-nonsense.yaml").exists()
        deployed = mapemesh("policy", "deploy", str(POLICIES / "policy-power-documented.py"), data=mesh.data)
        assert deployed.returncode == 0, deployed.stderr
        assert "policy power-documented is running" in deployed.stdout
        assert (mesh.data / "manifests" / "policy-power-documented.yaml").exists()
        # It takes part in the loop at once: high power on a node leads to a knob command event.
        for data in (catalogue.InfraRegistered(infra_id="n1", kind="node", description={}),
                     catalogue.TelemetryReported(asset="n1", asset_kind="node", metrics=[
                         catalogue.Metric(name="node_power_watts", value=150.0)])):
            headers, body = to_binary(catalogue.make_event(data, "/test"))
            assert httpx.post(mesh.broker + "/default/default", headers=headers, content=body).status_code == 202
        store = open_store("sqlite:", data=mesh.data)
        try:
            plans = wait_for(lambda: [p.value for p in store.list("plans").values()] or None, timeout=30,
                             what="the deployed policy's plan")
        finally:
            store.close()
        assert plans[0]["policy"] == "power-documented" and "RAPLPowerCap" in plans[0]["mechanisms"]
        listed = mapemesh("policy", "list", "-o", "json", data=mesh.data)
        assert listed.returncode == 0, listed.stderr
        doc = json.loads(listed.stdout)["policies"]["power-documented"]
        assert doc["status"] == "active" and doc["shape"] == "documented" and doc["analyses"] >= 1
        human = mapemesh("policy", "list", data=mesh.data)
        assert "power-documented" in human.stdout and "for n1" in human.stdout
    finally:
        mesh.proc.terminate()
        mesh.proc.wait(20)


def test_list_without_a_mesh_says_so(tmp_path):
    result = mapemesh("policy", "list", data=tmp_path / "nothing")
    assert result.returncode == 2 and "no mesh state" in result.stderr
