"""The node shim as users meet it: its HTTP API with the token, the CloudEvent endpoint, telemetry and
registration through a real broker, the CLI, and the whole loop changing a simulated node's frequency."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import stat
import subprocess
import sys
import threading
from pathlib import Path

import httpx
import pytest

from mapemesh import events as catalogue
from mapemesh.eventing.binding import to_binary
from mapemesh.eventing.cloudevent import CloudEvent
from mapemesh.eventing.log import read_all
from mapemesh.node_shim import simulate
from mapemesh.node_shim.daemon import start_node_shim
from mapemesh.node_shim.knobs.base import Sysfs
from mapemesh.node_shim.telemetry import Collector

from .conftest import REPO, copy_knative, signed, wait_for

CPU0 = "sys/devices/system/cpu/cpu0/cpufreq"


class Shim:
    """A node shim running in a thread of this process (its own event loop), on a simulated tree."""

    def __init__(self, tmp_path: Path, profile: str = "acpi-cpufreq", broker: str | None = None,
                 interval_s: float = 5.0):
        self.root = tmp_path / "sysfs"
        simulate.create(self.root, profile)
        self.data = tmp_path / "data"
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.running = asyncio.run_coroutine_threadsafe(start_node_shim(
            "node-1", self.data, sysfs_root=self.root, broker=broker, interval_s=interval_s), self.loop).result(10)
        self.url = self.running.url
        self.token = (self.data / "node-shim.token").read_text().strip()
        self.http = httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {self.token}"}, timeout=10)

    def read(self, relative: str) -> str:
        return (self.root / relative).read_text().strip()

    def close(self) -> None:
        self.http.close()
        asyncio.run_coroutine_threadsafe(self.running.stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


@pytest.fixture
def shim(tmp_path):
    s = Shim(tmp_path)
    yield s
    s.close()


def test_the_token_is_made_private_and_required(shim):
    path = shim.data / "node-shim.token"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and len(shim.token) >= 32
    assert httpx.get(shim.url + "/knobs").status_code == 401
    assert httpx.get(shim.url + "/knobs", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert httpx.post(shim.url + "/knobs/CPUFrequency", json={"command": "reset"}).status_code == 401
    assert httpx.get(shim.url + "/healthz").status_code == 200
    assert shim.http.get("/knobs").status_code == 200


def test_knobs_are_listed_applied_and_journaled(shim):
    knobs = shim.http.get("/knobs").json()
    assert {"CPUFrequency", "RAPLPowerCap", "TelemetryInterval"} <= set(knobs)
    assert "NVIDIAGPUFrequency" not in knobs  # no NVML here: left out, not faked
    answer = shim.http.post("/knobs/CPUFrequency", json={"command": "set", "cpu": "all", "frequency": "max"},
                            headers={"X-Requested-By": "operator:ana"})
    assert answer.status_code == 200, answer.text
    doc = answer.json()
    assert doc["noop"] is False and shim.read(f"{CPU0}/scaling_min_freq") == shim.read(f"{CPU0}/cpuinfo_max_freq")
    again = shim.http.post("/knobs/CPUFrequency", json={"command": "set", "cpu": "all", "frequency": "max"})
    assert again.json()["noop"] is True
    journal = shim.http.get("/journal").json()
    assert journal[0]["requested_by"] == "operator:ana" and journal[0]["before"] != journal[0]["after"]
    assert journal[1]["noop"] is True


def test_a_bad_command_gets_422_with_the_options_and_writes_nothing(shim):
    before = {p: p.read_text() for p in shim.root.rglob("*") if p.is_file()}
    answer = shim.http.post("/knobs/CPUFrequency", json={"command": "set", "frequency": "1234 Hz"})
    assert answer.status_code == 422
    doc = answer.json()
    assert doc["code"] == "invalid" and doc["options"]["frequencies_hz"]
    assert {p: p.read_text() for p in shim.root.rglob("*") if p.is_file()} == before
    assert shim.http.get("/journal").json()[-1]["code"] == "invalid"  # refusals are recorded too
    assert shim.http.post("/knobs/Nope", json={}).status_code == 404
    assert shim.http.post("/knobs/CPUFrequency", content=b"[1]").status_code == 422
    assert shim.http.post("/knobs/CPUFrequency", content=b"{").status_code == 400


def test_the_cloudevent_endpoint_answers_with_applied_or_failed(shim):
    def send(command: dict, node: str = "node-1") -> httpx.Response:
        event = catalogue.make_event(catalogue.KnobApply(node=node, knob="CPUFrequency", command=command,
                                                         plan_id="p1", requested_by="policy/cpu"), "/test",
                                     extensions={"node": node})
        headers, body = to_binary(signed(event, shim.data))
        return httpx.post(shim.url + "/", headers=headers, content=body)

    ok = send({"command": "set", "cpu": "0", "frequency": "min"})
    assert ok.status_code == 200 and ok.headers["ce-type"] == catalogue.KnobApplied.event_type
    applied = json.loads(ok.content)
    assert applied["plan_id"] == "p1" and applied["before"] != applied["after"] and applied["noop"] is False
    assert applied["after"]["cpus"]["0"]["max_hz"] == 1_000_000_000
    failed = send({"command": "set", "frequency": "99 GHz"})
    assert failed.headers["ce-type"] == catalogue.KnobFailed.event_type
    assert json.loads(failed.content)["code"] == "invalid"
    assert send({"command": "reset"}, node="node-2").status_code == 422


def test_telemetry_reads_the_tree_and_proc(tmp_path):
    root = tmp_path / "sysfs"
    simulate.create(root, "intel_pstate")
    from mapemesh.node_shim.knobs.rapl import RAPLPowerCap

    sysfs = Sysfs(root)
    collector = Collector(sysfs, {"RAPLPowerCap": RAPLPowerCap(sysfs)})
    first = {m.name: m for m in collector.collect()}
    assert first["node_cpu_frequency_hz"].value > 0 and first["node_memory_total_bytes"].value > 0
    assert {"node_load1", "node_load5", "node_load15", "node_rapl_package_0_energy_joules"} <= set(first)
    energy = root / "sys/class/powercap/intel-rapl:0/energy_uj"
    energy.write_text(str(int(energy.read_text()) + 5_000_000))
    second = {m.name: m for m in collector.collect()}
    assert second["node_rapl_package_0_power_watts"].value > 0
    # Utilisation is a difference of /proc/stat counters: it shows once the kernel's tick has moved on.
    busy = wait_for(lambda: next((m.value for m in collector.collect() if m.name == "node_cpu_utilization"), None)
                    is not None or None, what="a CPU utilisation sample")
    assert busy
    cores = [m for m in collector.collect() if m.name == "node_cpu_core_frequency_hz"]
    assert sorted(m.labels["cpu"] for m in cores) == ["0", "1", "2", "3"]


def test_it_registers_and_reports_and_waits_out_a_missing_broker(tmp_path, broker_factory):
    import socket

    with socket.socket() as s:  # a port with nothing behind it yet
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    shim = Shim(tmp_path / "shim", broker=f"http://127.0.0.1:{port}/default/default", interval_s=0.2)
    try:
        wait_for(lambda: len(shim.running.reporter.backlog) >= 2, what="samples kept while the broker is away")
        assert shim.http.post("/knobs/TelemetryInterval", json={"command": "set", "interval": "100ms"}).json()[
            "after"] == {"interval_s": 0.1}  # the knobs work without a broker
        broker = broker_factory("--port", str(port))
        events = wait_for(lambda: e if len(e := [x.event for x in read_all(broker.log_file)]) >= 3 else None,
                          what="registration and the kept telemetry")
        assert events[0].type == catalogue.InfraRegistered.event_type
        registered = json.loads(events[0].data)
        node = registered["description"]["MLSysOpsNode"]
        assert registered["infra_id"] == "node-1" and "CPUFrequency" in node["mechanisms"]
        assert node["hardware"]["cpu"]["frequency"] and node["hardware"]["memory"] > 0
        telemetry = json.loads(events[1].data)
        assert events[1].type == catalogue.TelemetryReported.event_type and telemetry["asset"] == "node-1"
        catalogue.TelemetryReported.model_validate(telemetry)
        gauges = shim.http.get("/metrics.json").json()
        assert gauges["mapemesh.node.node_load1"][0]["attributes"]["node"] == "node-1"
    finally:
        shim.close()


def test_cli_simulate_and_serve(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "MAPEMESH_DATA"}
    mm = [sys.executable, "-m", "mapemesh"]
    made = subprocess.run([*mm, "node-shim", "simulate", "--profile", "arm", str(tmp_path / "t")], env=env,
                          capture_output=True, text=True)
    assert made.returncode == 0 and (tmp_path / "t" / CPU0 / "scaling_available_frequencies").exists()
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "x").write_text("x")
    refused = subprocess.run([*mm, "node-shim", "simulate", "--profile", "arm", str(tmp_path / "other")], env=env,
                             capture_output=True, text=True)
    assert refused.returncode == 2
    data = tmp_path / "data"
    proc = subprocess.Popen([*mm, "--data", str(data), "node-shim", "serve", "--node", "edge-7", "--sysfs-root",
                             str(tmp_path / "t"), "--port", "0"], env=env)
    try:
        url = wait_for(lambda: json.loads((data / "endpoints.json").read_text()).get("node-shim")
                       if (data / "endpoints.json").exists() else None, what="the shim's endpoint")
        token = (data / "node-shim.token").read_text().strip()
        knobs = httpx.get(url + "/knobs", headers={"Authorization": f"Bearer {token}"}).json()
        assert knobs["CPUFrequency"]["options"]["driver"] == "cpufreq-dt" and "RAPLPowerCap" not in knobs
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
    assert "node-shim" not in json.loads((data / "endpoints.json").read_text())


def test_the_loop_sets_a_simulated_node_to_max_frequency(tmp_path):
    """Telemetry breaks an application target; the CPU frequency policy's plan reaches the real node shim
    of `mapemesh up`, which writes the simulated cpufreq files; the plan ends as Success."""
    import shutil

    from mapemesh.state import open_store

    from .test_serving import start_mesh

    root = tmp_path / "project"
    copy_knative(root, drop="policy-*-placement.yaml")
    shutil.copytree(REPO / "functions", root / "functions", ignore=shutil.ignore_patterns("__pycache__"))
    sysfs = tmp_path / "sysfs"
    simulate.create(sysfs, "acpi-cpufreq")
    mesh = start_mesh(root, {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "unused"}},
                      shim=["--node", "node-1", "--sysfs-root", str(sysfs)])
    store = open_store("sqlite:", data=mesh.data)
    try:
        wait_for(lambda: store.get("infrastructure", "node-1"), timeout=30, what="the shim's registration")
        wait_for(lambda: "cpu-frequency" in store.list("policies"), timeout=30, what="the policy")
        app = {"MLSysOpsApp": {"name": "shop", "components": [{"metadata": {"name": "web"}, "qos_metrics": [
            {"application_metric_id": "latency_ms", "target": 20, "relation": "lower_or_equal"}]}]}}
        for data in (catalogue.AppSubmitted(app_id="shop", description=app),
                     catalogue.TelemetryReported(asset="node-1", asset_kind="node", metrics=[
                         catalogue.Metric(name="latency_ms", value=35.0)])):
            headers, body = to_binary(catalogue.make_event(data, "/test"))
            assert httpx.post(mesh.broker + "/default/default", headers=headers, content=body).status_code == 202
        top = (sysfs / CPU0 / "cpuinfo_max_freq").read_text().strip()
        wait_for(lambda: (sysfs / CPU0 / "scaling_min_freq").read_text().strip() == top, timeout=30,
                 what="the node's CPUs pinned at their maximum frequency")
        plans = wait_for(lambda: [p.value for p in store.list("plans").values() if p.value["status"] == "Success"
                                  and p.value["mechanisms"].get("CPUFrequency", {}).get("frequency") == "max"] or None,
                         timeout=30, what="the plan's Success")
        assert plans[0]["asset"] == "node-1"
        state = store.get("mechanisms", "node-1/CPUFrequency").value["state"]
        assert state["cpus"]["0"]["min_hz"] == int(top) * 1000
    finally:
        store.close()
        mesh.proc.terminate()
        mesh.proc.wait(20)


def test_not_a_number_is_refused_and_recorded_not_a_crash(shim):
    answer = shim.http.post("/knobs/RAPLPowerCap", content=b'{"command": "set", "domain": "package", "limit_w": NaN}',
                            headers={"content-type": "application/json"})
    assert answer.status_code == 400  # not JSON
    event = catalogue.make_event(catalogue.KnobApply(node="node-1", knob="RAPLPowerCap", command={
        "command": "set", "domain": "package", "limit_w": 1.0}, requested_by="t"), "/t", extensions={"node": "node-1"})
    event = CloudEvent(event.attributes, event.data.replace(b"1.0", b"Infinity"))  # a JSON parser lets it through
    headers, body = to_binary(signed(event, shim.data))
    failed = httpx.post(shim.url + "/", headers=headers, content=body)
    assert failed.status_code == 200 and failed.headers["ce-type"] == catalogue.KnobFailed.event_type
    assert json.loads(failed.content)["code"] == "invalid"
    assert shim.http.get("/journal").json()[-1]["code"] == "invalid"


def test_no_op_holds_while_readings_move_and_reset_keeps_the_first_baseline(tmp_path):
    shim = Shim(tmp_path)
    cur = shim.root / CPU0 / "scaling_cur_freq"
    try:
        command = {"command": "set", "cpu": "all", "governor": "userspace", "frequency": "max"}
        assert shim.http.post("/knobs/CPUFrequency", json=command).json()["noop"] is False
        cur.write_text("1234567")  # the current frequency moves, as it does on a real machine
        assert shim.http.post("/knobs/CPUFrequency", json=command).json()["noop"] is True
    finally:
        shim.close()
    # A restart (up restarted, the shim crashed) must not take the shim's own setting as the baseline.
    data = tmp_path / "data"
    loop = asyncio.new_event_loop()
    try:
        again = loop.run_until_complete(start_node_shim("node-1", data, sysfs_root=shim.root))
        knob = again.shim.knobs["CPUFrequency"]
        knob.apply({"command": "reset"})
        assert (shim.root / CPU0 / "scaling_governor").read_text().strip() == "schedutil"
        loop.run_until_complete(again.stop())
    finally:
        loop.close()


def test_a_readable_token_is_made_private(tmp_path):
    from mapemesh.node_shim.server import token

    (tmp_path / "node-shim.token").write_text("secret-token\n")
    (tmp_path / "node-shim.token").chmod(0o644)
    assert token(tmp_path) == "secret-token"
    assert stat.S_IMODE((tmp_path / "node-shim.token").stat().st_mode) == 0o600


def test_a_mounted_secret_token_that_cannot_be_made_private_is_still_read(tmp_path, monkeypatch, caplog):
    # A Kubernetes Secret under fsGroup: group-readable, owned by root, on a read-only mount. chmod fails there.
    from pathlib import Path

    from mapemesh.node_shim.server import token

    (tmp_path / "node-shim.token").write_text("from-a-secret\n")
    (tmp_path / "node-shim.token").chmod(0o440)

    def refuse(self, mode):
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(Path, "chmod", refuse)
    assert token(tmp_path) == "from-a-secret"
    assert "cannot be made private" in caplog.text


@pytest.mark.parametrize(("node", "expected"), [
    ("worker-1", "node-shim-worker-1"),
    ("Worker_1.example", None),          # not a DNS-1123 label as it is: rewritten and hashed
    ("ip-10-0-0-1." + "a" * 60, None),   # too long: cut and hashed
])
def test_a_shims_trigger_has_a_valid_name_whatever_the_node_is_called(node, expected):
    import re as regex

    from mapemesh.node_shim.daemon import trigger, trigger_name

    name = trigger_name(node)
    assert regex.fullmatch(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?", name), name
    assert expected is None or name == expected
    doc = trigger(node, "http://10.0.0.1:8082")
    assert doc["metadata"]["annotations"]["mapemesh.dev/node"] == node  # a label value could not hold it
    assert trigger_name(node + "x") != name


def test_a_shims_trigger_waits_longer_for_a_knob_than_an_fpga_reconfiguration_takes():
    # Knative's default delivery timeout (30 s) is shorter than a command that first drains an FPGA's functions may
    # take: the broker would give up on it, and the command's result would be lost.
    from mapemesh.eventing.deliveryspec import DEFAULT_TIMEOUT_S
    from mapemesh.eventing.triggers import load_triggers
    from mapemesh.node_shim.daemon import Pod, pod_trigger, trigger
    from mapemesh.node_shim.knobs.fpga import DRAIN_TIMEOUT_S

    from .test_bundle import as_manifests, render

    docs = [trigger("worker-1", "http://10.0.0.1:8082"),  # `mapemesh up`'s and `node-shim serve`'s
            pod_trigger("worker-2", Pod("shim-x", "default", "uid", "10.0.0.2"), 8082)]  # the DaemonSet's
    triggers, _ = load_triggers(as_manifests([*render("knative"), *docs]))  # under the bundle's eventing settings
    mine = {t.name: t for t in triggers if t.name.startswith("node-shim-")}
    assert set(mine) == {"node-shim-worker-1", "node-shim-worker-2"}
    for t in mine.values():
        assert t.reason is None
        # the drain, the shim's margin on the host's drain (HostDrainer), and time to program the fabric
        assert t.delivery.timeout == 60.0 >= DRAIN_TIMEOUT_S + 5 + 30 > DEFAULT_TIMEOUT_S
