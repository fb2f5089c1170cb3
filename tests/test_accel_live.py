"""The example accelerated function in a running mesh: invoked over HTTP and through the broker, switched
between vAccel plugins by the knob with no failed request, moved by the accelerator policy from simulated GPU
telemetry, and reporting its invocations as telemetry."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from mapemesh import events as catalogue
from mapemesh.eventing.binding import to_binary
from mapemesh.eventing.log import read_all
from mapemesh.runtimes import vaccel

from .conftest import REPO, wait_for

pytest.importorskip("torch", reason="torch is not installed (pip install mapemesh[accel]); CI installs it")
NODE = "accel-node"


@dataclass
class Mesh:
    proc: subprocess.Popen[bytes]
    data: Path
    urls: dict[str, str]

    def knob(self, command: dict) -> httpx.Response:
        token = (self.data / "node-shim.token").read_text().strip()
        return httpx.post(self.urls["node-shim"] + "/knobs/vAccelPlugin", json=command, timeout=10,
                          headers={"Authorization": f"Bearer {token}"})

    def post(self, data: catalogue.EventData, **ext: str) -> str:
        event = catalogue.make_event(data, "/test", extensions=ext or None)
        headers, body = to_binary(event)
        r = httpx.post(self.urls["broker"] + "/default/default", headers=headers, content=body, timeout=10)
        assert r.status_code == 202, r.text
        return event.id

    def invoke(self, http: httpx.Client, digit: str, seed: int = 0) -> tuple[int, dict | None]:
        event = catalogue.make_event(catalogue.AccelRequested(input={"digit": digit, "noise": 0.3, "seed": seed}),
                                     "/test", extensions={"function": "digits"})
        headers, body = to_binary(event)
        r = http.post(self.urls["serving"] + "/default/accel-digits", headers=headers, content=body, timeout=30)
        return r.status_code, (json.loads(r.content) if r.content else None)


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    root = tmp_path_factory.mktemp("accel")
    data, sysfs = root / "data", root / "sysfs"
    subprocess.run([sys.executable, "-m", "mapemesh", "node-shim", "simulate", "--profile", "acpi-cpufreq",
                    str(sysfs)], check=True, capture_output=True)
    log = open(root / "up.log", "wb")  # noqa: SIM115 (closed after the process)
    proc = subprocess.Popen([sys.executable, "-m", "mapemesh", "--log-level", "warning", "up", "--manifests",
                             str(REPO / "knative"), "--data", str(data), "--port", "0", "--serving-port", "0",
                             "--node-shim-port", "0", "--api-port", "-1", "--node", NODE, "--sysfs-root", str(sysfs)],
                            cwd=root, stdout=log, stderr=subprocess.STDOUT,
                            env={**os.environ, "MAPEMESH_ACCEL_REPORT_S": "0.5", "MAPEMESH_VACCEL": "local"})

    def ready() -> dict | None:
        assert proc.poll() is None, (root / "up.log").read_text()[-3000:]
        try:
            found = json.loads((data / "endpoints.json").read_text())
        except (OSError, ValueError):
            return None
        return found if {"broker", "serving", "node-shim"} <= set(found) else None

    urls = wait_for(ready, timeout=60, what="the mesh")
    try:
        yield Mesh(proc, data, urls)  # type: ignore[arg-type]
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def test_invoked_over_http_the_reply_names_the_plugin_and_device(mesh):
    with httpx.Client() as http:
        status, reply = mesh.invoke(http, "7")
    assert status == 200, reply
    assert reply["result"]["label"] == "7" and len(reply["result"]["scores"]) == 10
    assert (reply["backend"], reply["device"], reply.get("error")) == ("mapemesh-local", "cpu", None)
    assert reply["plugin"] in vaccel.PLUGINS


def test_invoked_through_the_broker(mesh):
    request = mesh.post(catalogue.AccelRequested(input={"digit": "5", "seed": 3}), function="digits")

    def replied() -> dict | None:
        for logged in read_all(mesh.data / "eventlog.db"):
            if logged.event.type == catalogue.AccelReplied.event_type and logged.event.data and \
                    json.loads(logged.event.data)["request"] == request:
                return json.loads(logged.event.data)
        return None

    reply = wait_for(replied, timeout=30, what="the reply in the broker's log")
    assert reply["result"]["label"] == "5" and reply["device"] == "cpu"
    bad = mesh.post(catalogue.AccelRequested(input={"digit": "x"}), function="digits")
    answer = wait_for(lambda: next((json.loads(e.event.data) for e in read_all(mesh.data / "eventlog.db")
                                    if e.event.type == catalogue.AccelReplied.event_type
                                    and json.loads(e.event.data)["request"] == bad), None), what="the error reply")
    assert "0-9" in answer["error"] and answer["result"] == {}


def test_a_plugin_switch_takes_effect_with_no_failed_request(mesh):
    results: list[tuple[int, str | None]] = []
    stop = threading.Event()

    def load() -> None:
        with httpx.Client() as http:
            i = 0
            while not stop.is_set():
                status, reply = mesh.invoke(http, str(i % 10), i)
                results.append((status, reply and reply["plugin"]))
                i += 1

    threads = [threading.Thread(target=load) for _ in range(3)]  # requests wait in the queue at the switch
    for thread in threads:
        thread.start()
    try:
        for plugin in ("gpu", "cpu", "gpu"):
            time.sleep(0.5)
            assert mesh.knob({"function": "digits", "plugin": plugin}).status_code == 200
            seen = len(results)
            wait_for(lambda p=plugin, n=seen: any(r[1] == p for r in results[n:]), timeout=20,
                     what=f"a reply from the {plugin} plugin")
            after = len(results)
            time.sleep(0.3)
            # and it stays (the requests in flight at the switch may still answer from the old processes)
            assert all(r[1] == plugin for r in results[after + 6:]), results[after:]
    finally:
        stop.set()
        for thread in threads:
            thread.join(30)
    assert len(results) > 20
    assert [r for r in results if r[0] != 200] == []  # no request failed for the switches


def test_the_policy_moves_the_function_off_a_busy_gpu(mesh):
    def options_known() -> bool:
        from mapemesh.state import open_store

        store = open_store("sqlite:", data=mesh.data)
        try:
            doc = store.get("mechanisms", f"{NODE}/vAccelPlugin")
        finally:
            store.close()
        return bool(doc and "digits" in ((doc.value.get("options") or {}).get("functions") or {}))

    wait_for(options_known, timeout=30, what="the node's vAccelPlugin options (its registration)")
    assert mesh.knob({"function": "digits", "plugin": "gpu"}).status_code == 200
    choices = mesh.data / vaccel.CHOICES_FILE
    gpu = [catalogue.Metric(name="gpu0_utilization_pct", value=96.0, unit="%")]
    mesh.post(catalogue.TelemetryReported(asset=NODE, asset_kind="node", metrics=gpu))
    wait_for(lambda: vaccel.read_choices(choices).get("digits", {}).get("plugin") == "cpu", timeout=30,
             what="the accelerator policy to move digits to the CPU plugin")
    with httpx.Client() as http:
        wait_for(lambda: mesh.invoke(http, "1")[1]["plugin"] == "cpu", timeout=10, what="a reply from cpu")
    time.sleep(2.5)  # the policy's analyze_interval
    calm = [catalogue.Metric(name="gpu0_utilization_pct", value=12.0, unit="%")]
    cause = mesh.post(catalogue.TelemetryReported(asset=NODE, asset_kind="node", metrics=calm))

    def answered() -> dict | None:
        for logged in read_all(mesh.data / "eventlog.db"):
            if logged.event.type == catalogue.PolicyAnalyzeReplied.event_type and logged.event.data:
                doc = json.loads(logged.event.data)
                if doc["policy"] == "accel-plugin" and doc.get("cause") == cause:
                    return doc
        return None

    # Calm again; but this node's shim has no GPU (no NVML here), so nothing goes back to the gpu plugin
    # (with a GPU it would: tests/test_vaccel.py).
    assert wait_for(answered, timeout=30, what="the policy's answer to the calm GPU")["verdict"] is False
    assert vaccel.read_choices(choices)["digits"]["plugin"] == "cpu"


def test_invocations_are_reported_as_telemetry(mesh):
    with httpx.Client() as http:
        for i in range(5):
            assert mesh.invoke(http, str(i))[0] == 200

    def reported() -> list[dict]:
        found = []
        for logged in read_all(mesh.data / "eventlog.db"):
            if logged.event.type == catalogue.TelemetryReported.event_type and logged.event.data:
                doc = json.loads(logged.event.data)
                if doc["asset"] == "digits" and doc["asset_kind"] == "function":
                    found += doc["metrics"]
        return found

    metrics = wait_for(reported, timeout=20, what="the function's telemetry")
    names = {m["name"] for m in metrics}
    assert {"accel_invocations", "accel_errors", "accel_latency_ms_mean", "accel_latency_ms_max"} <= names
    assert all(set(m["labels"]) == {"plugin", "device"} for m in metrics)
    assert sum(m["value"] for m in metrics if m["name"] == "accel_invocations") >= 5


def test_no_component_posted_a_batch(mesh):
    # Last in the module: everything above ran through this broker, which takes one event per request (Knative).
    health = httpx.get(mesh.urls["broker"] + "/healthz", timeout=10).json()
    assert health["accept_batch"] is False and health["batches_refused"] == 0
