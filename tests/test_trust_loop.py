"""Trust in the loop, on `mapemesh up` (every function of knative/, the API): a node whose knob applies keep failing
loses credit (the trust function), and a component that asks for a minimum credit is moved off it by the node
placement policy, as `mapemesh apps details` and `mapemesh infra trust` show."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time

import httpx
import yaml

from mapemesh import events as catalogue
from mapemesh.eventing.binding import to_binary

from .conftest import REPO, copy_knative, signed, wait_for
from .test_serving import start_mesh


def _node(name: str, cores: int) -> dict:
    return {"MLSysOpsNode": {"name": name, "continuum_layer": "edge", "hardware": {"cpu": {"cores": cores}}}}


def test_a_failing_node_loses_credit_and_its_component_moves(tmp_path):
    project = tmp_path / "project"
    copy_knative(project, drop=("policy-cluster-placement.yaml", "policy-telemetry-interval.yaml"))
    shutil.copytree(REPO / "functions", project / "functions", ignore=shutil.ignore_patterns("__pycache__"))
    config = yaml.safe_load((REPO / "functions" / "trust" / "trust.yaml").read_text())
    config["update"]["window_s"] = 0.2  # windows of evidence short enough for a test
    (tmp_path / "trust.yaml").write_text(yaml.safe_dump(config))
    mesh = start_mesh(project, {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "unused"}},
                      env={"MAPEMESH_TRUST_CONFIG": str(tmp_path / "trust.yaml")}, api=True)

    def post(data: catalogue.EventData, signer: str | None = None) -> None:
        event = catalogue.make_event(data, "/test")
        headers, body = to_binary(signed(event, mesh.data, signer) if signer else event)
        assert httpx.post(mesh.broker + "/default/default", headers=headers, content=body).status_code == 202

    def cli(*args: str) -> dict:
        done = subprocess.run([sys.executable, "-m", "mapemesh", "--data", str(mesh.data), *args, "-o", "json"],
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)

    def node_of_component() -> str | None:
        components = cli("apps", "details", "shop").get("components") or []
        return components[0].get("node") if components else None

    try:
        for name, cores in (("big", 16), ("small", 2)):
            post(catalogue.InfraRegistered(infra_id=name, kind="node", description=_node(name, cores)))
        def trust_rows() -> dict[str, dict]:
            return {r["infra_id"]: r for r in cli("infra", "trust")["trust"]}

        rows = wait_for(lambda: r if {"big", "small"} <= set(r := trust_rows()) else None, timeout=30,
                        what="the nodes' first credits")
        assert {n: r["credit"] for n, r in rows.items()} == {"big": 0.5, "small": 0.5}  # the priors: nothing known
        app = {"MLSysOpsApp": {"name": "shop", "components": [{
            "metadata": {"name": "web"}, "min_trust": 0.45, "node_placement": {"continuum_layer": ["edge"]},
            "containers": [{"image": "registry.example.com/shop/web:1"}]}]}}
        post(catalogue.AppSubmitted(app_id="shop", description=app))
        assert wait_for(lambda: node_of_component() == "big" or None, timeout=60, what="web placed on big")

        # big's knob applies keep failing (the hardware refuses), as big's node shim reports them (signed): its
        # credit falls under web's 0.45. The same failures from anyone else count for nothing.
        for i in range(4):
            post(catalogue.KnobFailed(node="big", knob="CPUFrequency", request=f"forged-{i}", code="hardware",
                                      error="forged"), signer="operator")
        time.sleep(1.0)
        assert trust_rows()["big"]["credit"] == 0.5
        for i in range(4):
            post(catalogue.KnobFailed(node="big", knob="CPUFrequency", request=f"apply-{i}", code="hardware",
                                      error="writing scaling_setspeed failed: EIO"), signer="node-shim-big")
            time.sleep(0.3)
        rows = wait_for(lambda: r if (r := trust_rows())["big"]["credit"] < 0.45 else None, timeout=30,
                        what="big's credit to fall")
        assert rows["big"]["indices"]["knob_success"] < 0.5 and rows["small"]["credit"] == 0.5
        assert wait_for(lambda: node_of_component() == "small" or None, timeout=60, what="web moved to small")
        plans = cli("apps", "details", "shop")["plans"]
        assert [p["policy"] for p in plans].count("node-placement") >= 2  # placed, then moved
    finally:
        mesh.proc.terminate()
        mesh.proc.wait(30)
