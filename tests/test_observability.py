"""Distributed tracing: `traceparent` from every cause to its effects, spans exported over OTLP/HTTP when the
OpenTelemetry environment asks for it, and `mapemesh trace` rebuilding a reaction from the log alone."""

from __future__ import annotations

import asyncio
import json
import os
import re
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
    # Two events from one function (the same parent span) through the same Trigger are two deliveries.
    assert tracing.delivery(hop, "default/analyze", "a") != tracing.delivery(hop, "default/analyze", "b")
    assert tracing.delivery(hop, "default/analyze", "a").span_id == tracing.delivery_span(hop.span_id,
                                                                                          "default/analyze", "a")
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
        self.metrics: list[str] = []
        self.loop = asyncio.new_event_loop()
        ready = threading.Event()
        threading.Thread(target=self._run, args=(ready,), daemon=True).start()
        assert ready.wait(10)

    def _run(self, ready: threading.Event) -> None:
        asyncio.set_event_loop(self.loop)
        app = web.Application()
        app.router.add_post("/v1/traces", self._export)
        app.router.add_post("/v1/metrics", self._metrics)
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

    async def _metrics(self, request: web.Request) -> web.Response:
        from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2

        export = metrics_service_pb2.ExportMetricsServiceRequest.FromString(await request.read())
        self.metrics += [m.name for r in export.resource_metrics for sc in r.scope_metrics for m in sc.metrics]
        return web.Response(body=metrics_service_pb2.ExportMetricsServiceResponse().SerializeToString(),
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
    # One policy reacts to the telemetry: with two, the schedule stage may take both plans in one cycle, and one
    # knob's apply is then in the trace of the other policy's path (truly: that is what caused it).
    copy_knative(project, drop=("policy-*-placement.yaml", "policy-telemetry-interval.yaml"))
    shutil.copytree(REPO / "functions", project / "functions", ignore=shutil.ignore_patterns("__pycache__"))
    sysfs = root / "sysfs"
    simulate.create(sysfs, "acpi-cpufreq")
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url, "OTEL_SERVICE_NAME": "mapemesh-test",
           "OTEL_BSP_SCHEDULE_DELAY": "100", "MAPEMESH_LOG_RETENTION_S": "600",
           "MAPEMESH_TELEMETRY_INTERVAL_S": "3600"}  # the shim's own telemetry would start analyses of its own
    mesh = start_mesh(project, {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "unused"}}, env=env,
                      shim=["--node", "node-1", "--sysfs-root", str(sysfs)], api=True)
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
        _settle(mesh, store, "cpu-frequency/node-1")
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


def _settle(mesh, store, context: str, timeout: float = 90) -> None:
    """Wait until no delivery is pending and the policy context is idle (see `_idle`)."""
    seen: list[object] = []

    def settled() -> bool:
        pending = _pending(mesh)
        seen[:] = [pending, _context(store, context), time.time()]
        return not pending and _idle(seen[1], interval_s=1.0)

    try:
        wait_for(settled, timeout=timeout, what="the mesh to be quiet")
    except AssertionError:
        raise AssertionError(f"the mesh is not quiet: pending deliveries, policy context, now: {seen}") from None


def _context(store, key: str) -> dict | None:
    found = store.get("policy_contexts", key)
    return found.value if found else None


def _pending(mesh) -> list:
    import sqlite3

    db = sqlite3.connect(f"file:{mesh.data / 'eventlog.db'}?mode=ro", uri=True)
    try:
        pending = db.execute("SELECT subscription, attempts, last_error FROM deliveries WHERE state = 'pending'"
                             ).fetchall()
    finally:
        db.close()
    return pending


# -- Prometheus ----------------------------------------------------------------------------------------------------

def _scrape(url: str) -> dict[str, float]:
    """Every sample of a component's /metrics, parsed as Prometheus parses it: 'name{k="v",...}' -> value."""
    from prometheus_client.parser import text_string_to_metric_families

    response = httpx.get(url + "/metrics", timeout=10)
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    out = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
            out[f"{sample.name}{{{labels}}}"] = sample.value
    return out


def _sum(samples: dict[str, float], name: str, **labels: str) -> float:
    wanted = [f'{k}="{v}"' for k, v in labels.items()]
    return sum(v for k, v in samples.items() if k.split("{", 1)[0] == name and all(w in k for w in wanted))


def test_every_component_serves_prometheus_text_whose_counters_move(reaction):
    mesh = reaction[0]
    found = json.loads((mesh.data / "endpoints.json").read_text())
    urls = {"broker": mesh.broker, "host": mesh.serving, "shim": found["node-shim"], "api": found["api"]}
    before = {name: _scrape(url) for name, url in urls.items()}
    assert _sum(before["broker"], "mt_broker_ingress_event_count_total", broker_name="default/default",
                response_code="202") > 0
    assert _sum(before["broker"], "mt_broker_filter_event_dispatch_latencies_count",
                trigger_name="default/monitor") > 0
    assert _sum(before["host"], "revision_request_count_total", service_name="monitor", response_code_class="2xx") > 0
    assert _sum(before["host"], "autoscaler_actual_pods", service_name="monitor") >= 1
    assert _sum(before["shim"], "mapemesh_knob_apply_count_total", knob="CPUFrequency", result="applied") >= 1
    assert _sum(before["shim"], "mapemesh_telemetry_interval_seconds", node="node-1") == 3600
    assert _sum(before["api"], "mapemesh_plans", status="Success") >= 1

    telemetry = catalogue.make_event(catalogue.TelemetryReported(asset="node-1", asset_kind="node", metrics=[
        catalogue.Metric(name="latency_ms", value=5.0)]), "/test/scrape")
    headers, body = to_binary(telemetry)
    assert httpx.post(mesh.broker + "/default/default", headers=headers, content=body).status_code == 202
    token = (mesh.data / "api.token").read_text().strip()
    assert httpx.get(urls["api"] + "/infra/list/", headers={"Authorization": f"Bearer {token}"}).status_code == 200

    def moved():
        after = {name: _scrape(url) for name, url in urls.items()}
        kind = catalogue.TelemetryReported.event_type
        return after if (
            _sum(after["broker"], "mt_broker_ingress_event_count_total", event_type=kind)
            > _sum(before["broker"], "mt_broker_ingress_event_count_total", event_type=kind)
            and _sum(after["host"], "revision_request_count_total", service_name="monitor")
            > _sum(before["host"], "revision_request_count_total", service_name="monitor")
            and _sum(after["api"], "mapemesh_api_request_count_total", route="/infra/list/", code="200")
            > _sum(before["api"], "mapemesh_api_request_count_total", route="/infra/list/", code="200")) else None

    after = wait_for(moved, timeout=30, what="the counters to move")
    assert _sum(after["shim"], "mapemesh_node_latency_ms") == 0  # the shim reports its own metrics, not others'
    assert any(k.startswith("mapemesh_node_") for k in after["shim"])


# -- the telemetry SDK ---------------------------------------------------------------------------------------------

def test_push_then_get_round_trips_through_the_broker_and_the_api(reaction, monkeypatch):
    from mapemesh import telemetry as sdk

    mesh = reaction[0]
    for name in ("K_SINK", "MAPEMESH_BROKER_URL", "MAPEMESH_API_URL", "MAPEMESH_API_TOKEN", "MAPEMESH_STATE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MAPEMESH_DATA", str(mesh.data))
    event_id = sdk.push("queue_depth", 7, labels={"queue": "orders"}, asset="shop/web")
    assert event_id
    samples = wait_for(lambda: sdk.get("queue_depth", asset="shop/web", window=60), timeout=30,
                       what="the pushed sample in the store")
    assert [v for _, v in samples] == [7.0] and abs(samples[0][0] - time.time()) < 60
    assert sdk.get("queue_depth", asset="no-such-asset", window=60) == []
    with pytest.raises(ValueError, match="finite number"):
        sdk.push("queue_depth", float("nan"), asset="shop/web")
    with pytest.raises(ValueError, match="window"):
        sdk.get("queue_depth", asset="shop/web", window=0)
    monkeypatch.setenv("MAPEMESH_BROKER_URL", "http://127.0.0.1:9")  # nothing listens there
    with pytest.raises(sdk.TelemetryError, match="does not answer"):
        sdk.push("queue_depth", 1, asset="shop/web")


def _dashboard_queries() -> list[str]:
    import yaml

    doc = yaml.safe_load((REPO / "knative" / "platform" / "grafana-dashboard.yaml").read_text())
    dashboard = json.loads(doc["data"]["mapemesh.json"])
    return [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]


def _selectors(expr: str) -> list[tuple[str, set[str]]]:
    """(metric, label names it uses) for every selector of a PromQL expression: a name followed by `{` or `[`,
    or alone inside a call; the labels of its matchers and of the `by (...)` around it."""
    import re

    grouping = set().union(*(set(re.split(r"\s*,\s*", m.strip())) for m in re.findall(r"\bby\s*\(([^)]*)\)", expr)))
    bare = re.sub(r"\bby\s*\([^)]*\)", "", expr)
    out = []
    for name, matchers in re.findall(r"([a-zA-Z_:][a-zA-Z0-9_:]*)\s*(\{[^}]*\})?\s*(?=[\[)])", bare):
        if name in ("rate", "sum", "max", "histogram_quantile"):
            continue
        labels = set(re.findall(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*!?[=~]", matchers)) | (grouping - {"le"})
        out.append((name, labels))
    return out


def test_every_metric_and_label_the_grafana_dashboard_queries_exists(reaction):
    mesh = reaction[0]
    found = json.loads((mesh.data / "endpoints.json").read_text())
    scraped: dict[str, float] = {}
    for url in (mesh.broker, mesh.serving, found["node-shim"], found["api"]):
        scraped.update(_scrape(url))
    names: dict[str, set[str]] = {}
    for sample in scraped:
        name, labels = sample.split("{", 1)
        names.setdefault(name, set()).update(re.findall(r'([a-zA-Z_][a-zA-Z0-9_]*)="', labels))
    queries = _dashboard_queries()
    assert len(queries) >= 10
    for expr in queries:
        selectors = _selectors(expr)
        assert selectors, expr
        for metric, labels in selectors:
            assert metric in names, f"{expr}: no component exposes {metric}"
            assert labels <= names[metric], f"{expr}: {metric} has no label {labels - names[metric]}"


def test_the_dashboard_check_catches_a_metric_that_does_not_exist():
    assert _selectors('sum by (service_name, le) (rate(revision_request_latencies_bucket{namespace_name="x"}[5m]))'
                      ) == [("revision_request_latencies_bucket", {"service_name", "namespace_name"})]
    assert _selectors("sum by (node) (mapemesh_no_such_metric)") == [("mapemesh_no_such_metric", {"node"})]


# -- adaptive collection ---------------------------------------------------------------------------------------------

def test_the_adaptive_policy_shortens_then_lengthens_the_nodes_telemetry_interval(tmp_path):
    """The loop end to end: a fast move of a watched metric shortens the shim's interval (it reports more often,
    and `mapemesh trace` of that telemetry ends at the TelemetryInterval knob); calm lengthens it again."""
    from mapemesh.state import open_store

    project = tmp_path / "project"
    copy_knative(project, drop="policy-*-placement.yaml")
    shutil.copytree(REPO / "functions", project / "functions", ignore=shutil.ignore_patterns("__pycache__"))
    policy = project / "functions" / "policies" / "telemetry_interval" / "policy.py"
    text = policy.read_text()
    for old, new in (('SHORT = "1s"', 'SHORT = "500ms"'), ('LONG = "30s"', 'LONG = "5s"'),
                     ("CALM_FOR_S = 30.0", "CALM_FOR_S = 2.0"),
                     ('"analyze_interval": "5s"', '"analyze_interval": "1s"')):
        assert old in text
        text = text.replace(old, new)
    policy.write_text(text)
    sysfs = tmp_path / "sysfs"
    simulate.create(sysfs, "acpi-cpufreq")
    mesh = start_mesh(project, {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "unused"}},
                      env={"MAPEMESH_TELEMETRY_INTERVAL_S": "1"},
                      shim=["--node", "node-1", "--sysfs-root", str(sysfs)])
    store = open_store("sqlite:", data=mesh.data)
    try:
        wait_for(lambda: store.get("infrastructure", "node-1"), timeout=30, what="the shim's registration")
        wait_for(lambda: "telemetry-interval" in store.list("policies"), timeout=30, what="the policy")
        shim = json.loads((mesh.data / "endpoints.json").read_text())["node-shim"]

        def interval() -> float:
            return _sum(_scrape(shim), "mapemesh_telemetry_interval_seconds", node="node-1")

        def reports() -> float:
            return _sum(_scrape(shim), "mapemesh_telemetry_reports_count_total", node="node-1", outcome="sent")

        app = {"MLSysOpsApp": {"name": "shop", "components": [{"metadata": {"name": "web"}, "qos_metrics": [
            {"application_metric_id": "latency_ms", "target": 20, "relation": "lower_or_equal"}]}]}}
        headers, body = to_binary(catalogue.make_event(catalogue.AppSubmitted(app_id="shop", description=app), "/t"))
        assert httpx.post(mesh.broker + "/default/default", headers=headers, content=body).status_code == 202
        wait_for(lambda: store.get("applications", "shop"), what="the application")
        # Nothing it watches moves (the shim's own metrics come every second): after CALM_FOR_S the node reports
        # less often.
        assert interval() == 1.0
        wait_for(lambda: interval() == 5.0, timeout=30, what="the long interval while calm")
        sent = []
        for value in (10.0, 16.0):  # +60%: moving fast (and within the target: the move alone counts)
            sent.append(catalogue.make_event(catalogue.TelemetryReported(asset="node-1", asset_kind="node", metrics=[
                catalogue.Metric(name="latency_ms", value=value)]), "/test/load"))
            headers, body = to_binary(sent[-1])
            assert httpx.post(mesh.broker + "/default/default", headers=headers, content=body).status_code == 202
            time.sleep(0.3)
        wait_for(lambda: interval() == 0.5, timeout=30, what="the short interval")
        before = reports()
        wait_for(lambda: reports() - before >= 2, timeout=4, what="two reports: every 0.5 s now, not every 5 s")
        wait_for(lambda: interval() == 5.0, timeout=30, what="the long interval after calm")

        applied = [e for e in _log(mesh) if e.type == catalogue.KnobApplied.event_type
                   and json.loads(e.data)["knob"] == "TelemetryInterval"]
        assert [json.loads(e.data)["after"]["interval_s"] for e in applied][:3] == [5.0, 0.5, 5.0]
        short_trace = tracing.of(applied[1].attributes).trace_id
        out = subprocess.run([sys.executable, "-m", "mapemesh", "--data", str(mesh.data), "trace", short_trace],
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        assert "policy=telemetry-interval" in out.stdout and 'knob="TelemetryInterval"' in out.stdout
        doc = json.loads(subprocess.run([sys.executable, "-m", "mapemesh", "--data", str(mesh.data), "trace",
                                         short_trace, "-o", "json"], capture_output=True, text=True,
                                        timeout=60).stdout)
        # It began at a telemetry report: the fast move's own, or the shim's whose analysis the move joined (a
        # change within an analysis's interval joins the analysis under way, and its trace).
        assert doc["events"][0]["type"] == catalogue.TelemetryReported.event_type, out.stdout
        assert any(e["summary"].get("after") == {"interval_s": 0.5} for e in doc["events"])
    finally:
        store.close()
        mesh.proc.terminate()
        mesh.proc.wait(20)


def _log(mesh) -> list[CloudEvent]:
    from mapemesh.eventing.log import read_all

    return [logged.event for logged in read_all(mesh.data / "eventlog.db")]


def test_an_accelerated_functions_instruments_are_pushed_over_otlp():
    """The accel function's OpenTelemetry meter had no provider and recorded nothing: with OTLP configured, its
    invocation latency arrives (pushed: a function that scales to zero cannot be scraped)."""
    receiver = OtlpReceiver()
    try:
        script = ("import asyncio\n"
                  "from mapemesh import tracing, events as catalogue\n"
                  "from mapemesh.functions.accel import invocation\n"
                  "stage = invocation.function('probe', lambda data: {'plugin': 'cpu', 'device': 'none'})\n"
                  "event = catalogue.make_event(catalogue.AccelRequested(input={}), '/t',\n"
                  "                             extensions={'function': 'probe'})\n"
                  "tracing.enabled()\n"
                  "asyncio.run(stage.call(event))\n"
                  "tracing.flush()\n")
        env = {**os.environ, "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url, "OTEL_METRIC_EXPORT_INTERVAL": "100"}
        out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        wait_for(lambda: "accel_invocation_latency" in receiver.metrics, timeout=20, what="the metric over OTLP")
    finally:
        receiver.close()
