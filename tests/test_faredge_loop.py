"""Far-edge devices in the loop, on `mapemesh up` with the MQTT bridge (MAPEMESH_MQTT_URL), a real mosquitto and
simulated NextGenGW devices (`mapemesh bridge simulate-device`): a device announces and becomes a node; an
application's far-edge component is deployed to it through the four LwM2M steps; a failing step rolls back; its
telemetry arrives; the radio-power policy's plan sets the device's radio knob, read back."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys

import httpx

from mapemesh import events as catalogue
from mapemesh.eventing.binding import to_binary
from mapemesh.eventing.log import read_all
from mapemesh.state import open_store

from .conftest import REPO, copy_knative, signed, wait_for
from .test_serving import start_mesh

ADAPTER = {"communication-adapter.fita/image": "registry.example.com/fita/adapter:1",
           "communication-adapter.fita/ports": '[{"name": "http", "port": 8090, "protocol": "TCP"}]',
           "communication-adapter.fita/service-name": "Keyword"}


def _app(name: str, device: str | None = None, adapter: bool = False) -> dict:
    placement = {"continuum_layer": ["far_edge"], "labels": ["extra.resources.fhp/tinymml:true"]}
    if device:
        placement["node"] = device
    return {"MLSysOpsApp": {"name": name, "components": [{
        "metadata": {"name": "keyword-spotter"}, "node_placement": placement,
        **({"annotations": ADAPTER} if adapter else {}),
        "containers": [{"image": "registry.example.com/tinyml/keyword-spotter:1"}]}]}}


def _device(mosquitto_url: str, name: str, *extra: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "mapemesh", "bridge", "simulate-device", name, "--mqtt",
                             mosquitto_url, "--observe-period", "0.5", *extra])


def test_a_far_edge_device_joins_gets_a_workload_and_its_radio_is_tuned(mosquitto_url, tmp_path):
    project = tmp_path / "project"
    copy_knative(project, drop=("policy-cluster-placement.yaml", "policy-telemetry-interval.yaml"))
    shutil.copytree(REPO / "functions", project / "functions", ignore=shutil.ignore_patterns("__pycache__"))
    mesh = start_mesh(project, {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "unused"}},
                      env={"MAPEMESH_MQTT_URL": mosquitto_url})
    store = open_store("sqlite:", data=mesh.data)
    devices: list[subprocess.Popen[bytes]] = []

    def post(data: catalogue.EventData) -> None:
        headers, body = to_binary(catalogue.make_event(data, "/test"))
        assert httpx.post(mesh.broker + "/default/default", headers=headers, content=body).status_code == 202

    def logged(kind: type[catalogue.EventData]) -> list[dict]:
        return [json.loads(e.event.data) for e in read_all(mesh.data / "eventlog.db")
                if e.event.type == kind.event_type]

    try:
        wait_for(lambda: "bridge" in json.loads((mesh.data / "endpoints.json").read_text()), timeout=30,
                 what="the bridge")
        devices.append(_device(mosquitto_url, "dev-1"))
        devices.append(_device(mosquitto_url, "dev-bad", "--fail", "install"))
        for name in ("dev-1", "dev-bad"):
            node = wait_for(lambda n=name: store.get("infrastructure", n), timeout=30, what=f"{name} as a node")
            description = node.value["description"]["MLSysOpsNode"]
            assert description["continuum_layer"] == "far_edge" and description["sdf"]
            assert "extra.resources.fhp/tinymml:true" in description["labels"]
        # The device's telemetry: its radio signal, observed through the gateway.
        wait_for(lambda: store.latest("dev-1").get("radio_signal_strength_dbm"), timeout=30,
                 what="the device's radio signal as telemetry")

        post(catalogue.AppSubmitted(app_id="kws", description=_app("kws", "dev-1", adapter=True)))
        status = wait_for(lambda: [s for s in logged(catalogue.DeployStatus) if s["app_id"] == "kws"] or None,
                          timeout=60, what="the far-edge deploy's status")
        assert status[-1]["status"] in ("Applied", "Written"), status  # Written: its adapter, no cluster here
        steps = [(s["step"], s["ok"]) for s in logged(catalogue.FarEdgeStep) if s["app_id"] == "kws"]
        assert steps == [("create", True), ("package", True), ("install", True), ("activate", True)]
        record = store.get("deployments", "kws").value
        assert record["faredge"]["keyword-spotter"]["device"] == "dev-1"
        # Its layer-agnostic adapter (seed 6.3.5) is rendered for the higher layers, pointed at the device.
        adapter = next(o for o in (mesh.data / "deployments" / "kws").rglob("*.yaml")
                       if "keyword-spotter-communication-adapter" in o.read_text() and "Deployment" in o.read_text())
        text = adapter.read_text()
        assert "registry.example.com/fita/adapter:1" in text and "dev-1" in text and "Keyword" in text
        # Another plan placing it on the same device (a node plan after the core one, say) changes nothing on it:
        # a second create would be refused, and its rollback would remove the running workload.
        command = signed(catalogue.make_event(catalogue.DeployRequested(
            app_id="kws", plan_id="another-plan", placement={}, nodes={"keyword-spotter": "dev-1"}), "/test"),
            name="execute", data=mesh.data)  # a command: only execute's is taken
        headers, body = to_binary(command)
        assert httpx.post(mesh.broker + "/default/default", headers=headers, content=body).status_code == 202
        again = wait_for(lambda: [s for s in logged(catalogue.DeployStatus) if s["plan_id"] == "another-plan"] or None,
                         timeout=60, what="the second plan's deploy status")
        assert again[-1]["status"] in ("Applied", "Written"), again
        assert [(s["step"], s["ok"]) for s in logged(catalogue.FarEdgeStep) if s["app_id"] == "kws"] == steps

        # A device whose install fails: the instance is rolled back and the plan fails.
        post(catalogue.AppSubmitted(app_id="kws-bad", description=_app("kws-bad", "dev-bad")))
        failed = wait_for(lambda: [s for s in logged(catalogue.DeployStatus) if s["app_id"] == "kws-bad"] or None,
                          timeout=60, what="the failed deploy's status")
        assert failed[-1]["status"] == "Failed" and "install" in failed[-1]["message"]
        bad_steps = [(s["step"], s["ok"]) for s in logged(catalogue.FarEdgeStep) if s["app_id"] == "kws-bad"]
        assert bad_steps == [("create", True), ("package", True), ("install", False), ("rollback", True)]

        # The radio: strong signal at HIGH power, so the policy steps it down, and the shell reads it back.
        applied = wait_for(lambda: [a for a in logged(catalogue.KnobApplied)
                                    if a["node"] == "dev-1" and a["knob"] == "FarEdgeRadio"] or None,
                           timeout=60, what="the radio knob set by the radio-power policy")
        assert applied[0]["before"] == {"tx_power": "HIGH"} and applied[0]["after"] == {"tx_power": "MEDIUM"}
        plan = store.get("plans", applied[0]["plan_id"]).value
        assert plan["policy"] == "radio-power" and plan["status"] in ("Pending", "Success")
        wait_for(lambda: store.get("plans", applied[0]["plan_id"]).value["status"] == "Success", timeout=30,
                 what="the radio plan's success")

        # Removing the application deletes the workload's instance on the device.
        post(catalogue.AppRemoved(app_id="kws"))
        wait_for(lambda: ("remove", True) in [(s["step"], s["ok"]) for s in logged(catalogue.FarEdgeStep)
                                              if s["app_id"] == "kws"], timeout=60, what="the workload removed")
        # A device that goes away is unregistered.
        devices[1].send_signal(signal.SIGTERM)
        wait_for(lambda: store.get("infrastructure", "dev-bad") is None, timeout=30, what="dev-bad unregistered")
    finally:
        for proc in devices:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
        store.close()
        mesh.proc.terminate()
        mesh.proc.wait(20)
