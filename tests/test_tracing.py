"""Distributed tracing: `traceparent` from every cause to its effects, spans exported over OTLP/HTTP when the
OpenTelemetry environment asks for it, and `mapemesh trace` rebuilding a reaction from the log alone."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
import threading
import time

import httpx
import pytest
from aiohttp import web

from mapemesh import events as catalogue
from mapemesh import tracing
from mapemesh.eventing.binding import to_binary
from mapemesh.eventing.cloudevent import CloudEvent
from mapemesh.eventing.ingress import stamp
from mapemesh.node_shim import simulate

from .conftest import REPO, copy_knative, wait_for
from .test_serving import start_mesh

CPU0 = "sys/devices/system/cpu/cpu0/cpufreq"


def test_a_hop_derives_its_childrens_ids_and_parses_w3c():
    hop = tracing.root("/s", "e1")
    assert tracing.root("/s", "e1") == hop and tracing.parse(hop.traceparent) == hop
    child = hop.child("default/monitor")
    assert child.trace_id == hop.trace_id and child.span_id == tracing.derive(hop.span_id, "default/monitor")
    assert child.span_id != hop.child("default/analyze").span_id
    assert tracing.parse("00-" + "0" * 32 + "-" + "1" * 16 + "-01") is None  # an all-zero trace id is invalid
    assert tracing.parse("not-a-traceparent") is None


def test_the_ingress_starts_a_trace_only_for_an_event_without_one():
    fresh = CloudEvent({"specversion": "1.0", "id": "a", "source": "/s", "type": "t"})
    assert stamp(fresh) == tracing.root("/s", "a") and fresh.get("traceparent") == tracing.root("/s", "a").traceparent
    given = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    theirs = CloudEvent({"specversion": "1.0", "id": "b", "source": "/s", "type": "t", "traceparent": given})
    assert stamp(theirs) is None and theirs.get("traceparent") == given


class OtlpReceiver:
    """An OTLP/HTTP trace receiver on loopback: decodes each export (protobuf) and keeps the spans."""

    def __init__(self) -> None:
        from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

        self.pb = trace_service_pb2
        self.spans: list = []
        self.loop = asyncio.new_event_loop()
        ready = threading.Event()
        threading.Thread(target=self._run, args=(ready,), daemon=True).start()
        assert ready.wait(10)

    def _run(self, ready: threading.Event) -> None:
        asyncio.set_event_loop(self.loop)
        app = web.Application()
        app.router.add_post("/v1/traces", self._export)
        self.runner = web.AppRunner(app, access_log=None)
        self.loop.run_until_complete(self.runner.setup())
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        self.loop.run_until_complete(site.start())
        self.url = f"http://127.0.0.1:{self.runner.addresses[0][1]}"
        ready.set()
        self.loop.run_forever()

    async def _export(self, request: web.Request) -> web.Response:
        export = self.pb.ExportTraceServiceRequest.FromString(await request.read())
        for resource in export.resource_spans:
            service = next((a.value.string_value for a in resource.resource.attributes if a.key == "service.name"),
                           "")
            for scope in resource.scope_spans:
                self.spans += [(service, s) for s in scope.spans]
        return web.Response(body=self.pb.ExportTraceServiceResponse().SerializeToString(),
                            content_type="application/x-protobuf")

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)


@pytest.fixture(scope="module")
def reaction(tmp_path_factory):
    """One reaction of the loop on a real node shim, with spans exported to an in-test OTLP receiver."""
    from mapemesh.state import open_store

    root = tmp_path_factory.mktemp("traced")
    receiver = OtlpReceiver()
    project = root / "project"
    copy_knative(project, drop="policy-*-placement.yaml")
    shutil.copytree(REPO / "functions", project / "functions", ignore=shutil.ignore_patterns("__pycache__"))
    sysfs = root / "sysfs"
    simulate.create(sysfs, "acpi-cpufreq")
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url, "OTEL_SERVICE_NAME": "mapemesh-test",
           "OTEL_BSP_SCHEDULE_DELAY": "100", "MAPEMESH_LOG_RETENTION_S": "600",
           "MAPEMESH_TELEMETRY_INTERVAL_S": "3600"}  # the shim's own telemetry would start analyses of its own
    mesh = start_mesh(project, {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "unused"}}, env=env,
                      shim=["--node", "node-1", "--sysfs-root", str(sysfs)])
    store = open_store("sqlite:", data=mesh.data)
    try:
        wait_for(lambda: store.get("infrastructure", "node-1"), timeout=30, what="the shim's registration")
        wait_for(lambda: "cpu-frequency" in store.list("policies"), timeout=30, what="the policy")
        app = {"MLSysOpsApp": {"name": "shop", "components": [{"metadata": {"name": "web"}, "qos_metrics": [
            {"application_metric_id": "latency_ms", "target": 20, "relation": "lower_or_equal"}]}]}}
        headers, body = to_binary(catalogue.make_event(catalogue.AppSubmitted(app_id="shop", description=app), "/t"))
        assert httpx.post(mesh.broker + "/default/default", headers=headers, content=body).status_code == 202
        wait_for(lambda: store.get("applications", "shop"), what="the application")
        # The application's own analysis over first: the reaction to the telemetry is then its own trace.
        seen: list[object] = []

        def settled() -> bool:
            pending = _pending(mesh)
            context = store.get("policy_contexts", "cpu-frequency/node-1")
            seen[:] = [pending, context.value if context else None]
            return not pending and _idle(context.value if context else None, interval_s=1.0)

        try:
            wait_for(settled, timeout=90, what="the mesh to be quiet")
        except AssertionError:
            raise AssertionError(f"the mesh is not quiet: pending deliveries and policy context {seen}") from None
        telemetry = catalogue.make_event(catalogue.TelemetryReported(asset="node-1", asset_kind="node", metrics=[
            catalogue.Metric(name="latency_ms", value=35.0)]), "/test/load")
        headers, body = to_binary(telemetry)
        assert httpx.post(mesh.broker + "/default/default", headers=headers, content=body).status_code == 202
        trace_id = tracing.root("/test/load", telemetry.id).trace_id

        def applied():
            return next((s for _, s in receiver.spans if s.name == "knob apply CPUFrequency"
                         and s.trace_id.hex() == trace_id), None)

        try:
            knob_span = wait_for(applied, timeout=60, what="the knob apply's span")
        except AssertionError:
            knobs = [s.trace_id.hex() for _, s in receiver.spans if s.name.startswith("knob")]
            mine = [s.name for _, s in receiver.spans if s.trace_id.hex() == trace_id]
            raise AssertionError(f"knob spans in {knobs}; trace {trace_id} has {mine}; plans "
                                 f"{[(p.value['status'], p.value['mechanisms']) for p in store.list('plans').values()]}"
                                 ) from None
        wait_for(lambda: any(s.name == "deliver default/execute" and s.trace_id.hex() == trace_id
                             for _, s in receiver.spans), timeout=30, what="the spans before it")
        yield mesh, receiver, telemetry, trace_id, knob_span
    finally:
        store.close()
        mesh.proc.terminate()
        mesh.proc.wait(20)
        receiver.close()


def test_one_reaction_is_one_trace_whose_spans_chain_from_the_telemetry_to_the_knobs_apply(reaction):
    _, receiver, _, trace_id, knob_span = reaction

    def chain() -> list[str] | None:
        spans = {s.span_id: s for _, s in receiver.spans if s.trace_id.hex() == trace_id}
        names, current = [], knob_span
        while current is not None:
            names.append(current.name)
            if not current.parent_span_id:
                return names[::-1]
            current = spans.get(current.parent_span_id)
        return None  # a span on the way is not exported yet

    names = wait_for(chain, timeout=30, what="every span of the chain")
    assert names == [
        "ingress default/default",
        "deliver default/monitor", "function monitor",
        "deliver default/analyze", "function analyze",
        "deliver default/policy-cpu-frequency", "function policy:cpu-frequency",
        "deliver default/plan", "function plan",
        "deliver default/schedule", "function schedule",
        "deliver default/execute", "function execute",
        "deliver default/node-shim-node-1", "knob apply CPUFrequency",
    ]
    attributes = {a.key: a.value.string_value for a in knob_span.attributes}
    assert attributes["mapemesh.node"] == "node-1" and attributes["mapemesh.knob"] == "CPUFrequency"
    assert attributes["mapemesh.plan_id"]


def test_mapemesh_trace_lists_every_hop_with_latencies_that_add_up(reaction):
    mesh, _, telemetry, trace_id, _ = reaction
    knob = wait_for(lambda: _knob_applied(mesh, trace_id), timeout=30, what="the knob's result in the log")
    plan_id = json.loads(knob["data"])["plan_id"]
    out = subprocess.run([sys.executable, "-m", "mapemesh", "--data", str(mesh.data), "trace", plan_id, "-o", "json"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert doc["trace_id"] == trace_id
    by_id = {e["id"]: e for e in doc["events"]}
    path, current = [], by_id[knob["id"]]
    while current is not None:
        path.append(current)
        current = by_id.get(current["parent"]) if current["parent"] else None
    path.reverse()
    assert [e["type"].split(".")[2:4] for e in path] == [
        ["telemetry", "reported"], ["state", "changed"], ["policy", "analyze"], ["policy", "analyze"],
        ["plan", "proposed"], ["plan", "scheduled"], ["knob", "apply"], ["knob", "applied"]]
    assert path[0]["id"] == telemetry.id
    assert [e["via"] for e in path[1:]] == ["default/monitor", "default/analyze", "default/policy-cpu-frequency",
                                            "default/plan", "default/schedule", "default/execute",
                                            "default/node-shim-node-1"]
    end_to_end = path[-1]["offset_ms"]
    assert sum(e["latency_ms"] for e in path) == pytest.approx(end_to_end, rel=0.1)
    human = subprocess.run([sys.executable, "-m", "mapemesh", "--data", str(mesh.data), "trace", telemetry.id],
                           capture_output=True, text=True, timeout=60)
    assert human.returncode == 0 and "node-shim-node-1 (knob apply) -> io.mapemesh.knob.applied.v1" in human.stdout
    missing = subprocess.run([sys.executable, "-m", "mapemesh", "--data", str(mesh.data), "trace", "no-such-id"],
                             capture_output=True, text=True, timeout=60)
    assert missing.returncode == 4 and "no event, plan or trace" in missing.stderr


def _knob_applied(mesh, trace_id: str) -> dict | None:
    from mapemesh.eventing.log import read_all

    for logged in read_all(mesh.data / "eventlog.db"):
        hop = tracing.of(logged.event.attributes)
        if logged.event.type == catalogue.KnobApplied.event_type and hop and hop.trace_id == trace_id:
            return {"id": logged.event.id, "data": logged.event.data}
    return None


def _idle(value: dict | None, interval_s: float) -> bool:
    """No analysis of the context in flight or deferred, the last one an interval ago: the next change is analyzed
    at once, in its own trace (a change within the interval is coalesced into the analysis under way)."""
    if value is None:
        return True
    return not (value.get("in_flight_since") or value.get("deferred_until") or value.get("rerun")) \
        and time.time() - float(value.get("last_analyzed") or 0.0) > interval_s * 1.5


def _pending(mesh) -> list:
    import sqlite3

    db = sqlite3.connect(f"file:{mesh.data / 'eventlog.db'}?mode=ro", uri=True)
    try:
        pending = db.execute("SELECT subscription, attempts, last_error FROM deliveries WHERE state = 'pending'"
                             ).fetchall()
    finally:
        db.close()
    return pending
