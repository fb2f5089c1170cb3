"""A coalesced change survives the analyze stage scaling to zero: the analysis it is due is held by an event in the
broker (`mapemesh.loop.contexts`), not by a process, so the Service may go away between the change and its
analysis."""

from __future__ import annotations

import shutil
import time

import httpx
import yaml

from mapemesh import events as catalogue
from mapemesh.eventing.binding import to_binary

from .conftest import REPO, copy_knative, wait_for
from .subscriber import Subscriber
from .test_loop import APP, NODE, shim_reply
from .test_serving import start_mesh


def test_a_deferred_analysis_survives_analyze_scaling_to_zero(tmp_path):
    root = tmp_path / "project"
    knative = copy_knative(root, drop="policy-*-placement.yaml")
    shutil.copytree(REPO / "functions", root / "functions", ignore=shutil.ignore_patterns("__pycache__"))
    policy = root / "functions" / "policies" / "cpu_frequency" / "policy.py"
    policy.write_text(policy.read_text().replace('"analyze_interval": "1s"', '"analyze_interval": "2s"'))
    analyze = knative / "base" / "analyze.yaml"
    docs = list(yaml.safe_load_all(analyze.read_text()))
    docs[0]["spec"]["template"]["metadata"]["annotations"].update({  # idle for 100 ms: gone
        "autoscaling.knative.dev/window": "100ms", "autoscaling.knative.dev/scale-to-zero-pod-retention-period": "0s"})
    analyze.write_text(yaml.safe_dump_all(docs))
    shim = Subscriber()
    shim.handlers["/node-1"] = shim_reply
    trigger = {"apiVersion": "eventing.knative.dev/v1", "kind": "Trigger",
               "metadata": {"name": "node-shim-node-1", "namespace": "default"},
               "spec": {"broker": "default",
                        "filters": [{"exact": {"type": catalogue.KnobApply.event_type}}, {"exact": {"node": "node-1"}}],
                        "subscriber": {"uri": shim.url + "/node-1"}}}
    mesh = start_mesh(root, trigger)

    def post(data: catalogue.EventData) -> None:
        headers, body = to_binary(catalogue.make_event(data, "/test"))
        assert httpx.post(mesh.broker + "/default/default", headers=headers, content=body).status_code == 202

    def frequencies() -> list[str]:
        seen: dict[str, str] = {}
        for received in shim.at("/node-1"):
            apply = catalogue.parse_data(received.event)
            if apply.knob == "CPUFrequency":
                seen.setdefault(apply.plan_id or received.event.id, apply.command["frequency"])
        return list(seen.values())

    def analyze_gone() -> bool:
        return httpx.get(mesh.serving + "/status").json()["functions"]["default/analyze"]["scaled_to_zero"]

    try:
        post(catalogue.InfraRegistered(infra_id="node-1", kind="node", description=NODE))
        post(catalogue.AppSubmitted(app_id="shop", description=APP))
        wait_for(lambda: frequencies() == ["min"], timeout=30, what="the first plan (no telemetry: min)")
        wait_for(analyze_gone, timeout=30, what="analyze to scale to zero")
        time.sleep(2.1)  # the analyze interval since that plan's analysis is over: the next change runs at once
        post(catalogue.TelemetryReported(asset="node-1", asset_kind="node",
                                         metrics=[catalogue.Metric(name="latency_ms", value=35.0)]))
        wait_for(lambda: frequencies() == ["min", "max"], timeout=30, what="the plan for the missed target")
        # Within the interval: this change is coalesced into a deferral the broker holds...
        post(catalogue.TelemetryReported(asset="node-1", asset_kind="node",
                                         metrics=[catalogue.Metric(name="latency_ms", value=5.0)]))
        # ...while analyze goes away (the deferral's early redeliveries wake it for a moment only)...
        wait_for(analyze_gone, timeout=30, what="analyze to scale to zero with the analysis still due")
        assert frequencies() == ["min", "max"]
        # ...and the analysis due runs anyway, in a process started for it.
        wait_for(lambda: frequencies() == ["min", "max", "min"], timeout=30, what="the deferred analysis's plan")
    finally:
        mesh.proc.terminate()
        mesh.proc.wait(20)
        shim.close()
