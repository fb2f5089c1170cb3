"""The northbound API's contract, route by route: success, 401, 404 and 422 (with the field path).

The app runs in-process over a real SQLite store; the events it publishes go to a stand-in broker ingress (a
real HTTP server) that records them, so each action is checked to become its CloudEvent.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml
from fastapi.testclient import TestClient

from mapemesh import events as catalogue
from mapemesh.api.app import ApiContext, create_app
from mapemesh.eventing.binding import content_mode, from_http
from mapemesh.eventing.cloudevent import MalformedEvent
from mapemesh.eventing.log import EventLog
from mapemesh.state import open_store

from .conftest import REPO, SHARED

TOKEN = "secret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
SAMPLES = REPO / "mapemesh" / "samples"


class Ingress:
    """A broker ingress stand-in with Knative's contract: one event per request (binary or structured), 400 to
    anything else, a batch included; records each accepted event in the CloudEvents JSON format."""

    def __init__(self, status: int = 202):
        self.events: list[dict] = []
        self.status = status
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                status = outer.status
                if content_mode(self.headers.get("Content-Type")) == "batch":
                    status = 400
                else:
                    try:
                        [event] = from_http(dict(self.headers.items()), body)
                    except MalformedEvent:
                        status = 400
                    else:
                        if status == 202:
                            outer.events.append(event.to_structured())
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/default/default"
        # shutdown() waits until serve_forever looks up, once per poll_interval: 0.5 s by default, at every teardown
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True).start()

    def of(self, kind: type[catalogue.EventData]) -> list[dict]:
        return [e for e in self.events if e["type"] == kind.event_type]


@pytest.fixture
def ingress() -> Iterator[Ingress]:
    ing = Ingress()
    yield ing
    ing.server.shutdown()


@pytest.fixture
def store(tmp_path):
    s = open_store("sqlite:", data=tmp_path)
    yield s
    s.close()


@pytest.fixture
def client(tmp_path, store, ingress) -> Iterator[TestClient]:
    async def ping() -> dict[str, str]:
        return {"broker": "ok"}

    ctx = ApiContext(store=store, token=TOKEN, broker=ingress.url, event_log=tmp_path / "eventlog.db", ping=ping,
                     submit_wait_s=0)
    with TestClient(create_app(ctx)) as c:
        yield c


def sample(name: str) -> dict:
    return yaml.safe_load((SAMPLES / f"{name}.yaml").read_text())


def add_app(store, app_id: str = "demo-app", kind: str = "application") -> None:
    store.put("applications", app_id, {"description": sample("demo-app"), "kind": kind, "submitted": time.time()})


def locs(response) -> list[list]:
    assert response.status_code == 422, response.text
    return [d["loc"] for d in response.json()["detail"]]


ROUTES = [("POST", "/apps/deploy"), ("GET", "/apps/list_all/"), ("GET", "/apps/status/x"),
          ("GET", "/apps/details/x"), ("GET", "/apps/apps/details/x"), ("GET", "/apps/performance/x"),
          ("DELETE", "/apps/remove/x"), ("POST", "/ml/deploy_ml"), ("GET", "/ml/list_all/"), ("GET", "/ml/status/x"),
          ("DELETE", "/ml/remove/x"), ("POST", "/infra/register"), ("GET", "/infra/list/"),
          ("GET", "/infra/trust/"), ("DELETE", "/infra/unregister/x"), ("GET", "/manage/ping"), ("GET", "/manage/mode"),
          ("PUT", "/manage/mode/1"), ("PUT", "/manage/override/on"), ("GET", "/events/stream"), ("GET", "/telemetry/x"),
          ("GET", "/dashboard/now"), ("GET", "/dashboard/continuum"), ("GET", "/dashboard/policies"),
          ("GET", "/trace/x")]


def test_every_route_of_the_openapi_document_is_covered_here(client):
    spec = client.get("/openapi.json").json()
    documented = {(m.upper(), p) for p, ops in spec["paths"].items() for m in ops}
    covered = {(m, p.replace("/x", "/{app_id}") if p.startswith("/apps/") and p.endswith("/x") else p)
               for m, p in ROUTES}
    covered = {(m, p.replace("/ml/status/x", "/ml/status/{model_uid}").replace("/ml/remove/x", "/ml/remove/{model_uid}")
                .replace("/infra/unregister/x", "/infra/unregister/{infra_id}").replace("/manage/mode/1",
                                                                                       "/manage/mode/{mode}")
                .replace("/telemetry/x", "/telemetry/{asset}").replace("/trace/x", "/trace/{ident}")
                .replace("/manage/override/on", "/manage/override/{state}"))
               for m, p in covered}
    assert documented == covered
    assert spec["components"]["securitySchemes"]["token"]["scheme"] == "bearer"


@pytest.mark.parametrize(("method", "path"), ROUTES)
def test_every_route_needs_the_token(client, ingress, method, path):
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {TOKEN}"}):
        r = client.request(method, path, headers=headers, json={"yaml": sample("demo-app")})
        assert r.status_code == 401, (method, path, headers, r.text)
        assert r.headers["www-authenticate"] == "Bearer"
    assert ingress.events == []  # nothing reached the broker


def test_health_and_openapi_need_no_token(client):
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/openapi.json").status_code == 200


# -- applications --

def test_deploy_publishes_app_submitted_with_the_validated_description(client, ingress):
    r = client.post("/apps/deploy", json={"yaml": sample("demo-app")}, headers=AUTH)
    assert r.status_code == 202, r.text
    doc = r.json()
    assert doc["app_id"] == "demo-app" and doc["state"] == "submitted"  # no monitor here to record it
    [event] = ingress.of(catalogue.AppSubmitted)
    assert event["id"] == doc["event_id"] and event["source"] == "/mapemesh/api" and event["subject"] == "demo-app"
    assert event["data"]["kind"] == "application"
    assert event["data"]["description"]["MLSysOpsApp"]["components"][0]["qos_metrics"][0]["target"] == 20


def test_deploy_takes_yaml_text_too(client, ingress):
    text = (SAMPLES / "demo-app.yaml").read_text()
    assert client.post("/apps/deploy", json={"yaml": text}, headers=AUTH).status_code == 202
    assert len(ingress.of(catalogue.AppSubmitted)) == 1


@pytest.mark.skipif(not (SHARED / "reference").is_dir(), reason="../shared/reference is not here (upstream samples)")
def test_deploy_takes_the_upstream_sample_application(client, ingress):
    doc = yaml.safe_load((SHARED / "reference" / "mlsysops" / "app-description.user_provided.yaml").read_text())
    r = client.post("/apps/deploy", json={"yaml": doc}, headers=AUTH)
    assert r.status_code == 202, r.text
    assert r.json()["app_id"] == "test-application"


def test_deploy_fetches_a_uri(client, ingress, tmp_path):
    from http.server import SimpleHTTPRequestHandler

    class Quiet(SimpleHTTPRequestHandler):
        def __init__(self, *a, **kw):
            super().__init__(*a, directory=str(SAMPLES), **kw)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True).start()  # shutdown() waits a poll
    try:
        base = f"http://127.0.0.1:{server.server_address[1]}"
        assert client.post("/apps/deploy", json={"uri": f"{base}/demo-app.yaml"}, headers=AUTH).status_code == 202
        assert locs(client.post("/apps/deploy", json={"uri": f"{base}/missing.yaml"}, headers=AUTH)) == [["body",
                                                                                                          "uri"]]
    finally:
        server.shutdown()
    assert locs(client.post("/apps/deploy", json={"uri": "file:///etc/passwd"}, headers=AUTH)) == [["body", "uri"]]
    assert len(ingress.of(catalogue.AppSubmitted)) == 1


def test_deploy_refuses_bad_input_with_the_field_path_and_publishes_nothing(client, ingress):
    bad = sample("demo-app")
    bad["MLSysOpsApp"]["components"][0]["containers"][0]["image"] = 5
    assert locs(client.post("/apps/deploy", json={"yaml": bad}, headers=AUTH)) == [
        ["body", "yaml", "MLSysOpsApp", "components", 0, "containers", 0, "image"]]
    del bad["MLSysOpsApp"]["components"]
    assert ["body", "yaml", "MLSysOpsApp", "components"] in locs(client.post("/apps/deploy", json={"yaml": bad},
                                                                            headers=AUTH))
    named = sample("demo-app")
    named["MLSysOpsApp"]["name"] = "Not_A_Label"
    assert locs(client.post("/apps/deploy", json={"yaml": named}, headers=AUTH)) == [
        ["body", "yaml", "MLSysOpsApp", "name"]]
    assert locs(client.post("/apps/deploy", json={}, headers=AUTH)) == [["body"]]
    assert locs(client.post("/apps/deploy", json={"yaml": {}, "uri": "http://x"}, headers=AUTH)) == [["body"]]
    assert locs(client.post("/apps/deploy", json={"yaml": "a: [b"}, headers=AUTH)) == [["body", "yaml"]]
    assert locs(client.post("/apps/deploy", json={"yaml": sample("demo-cluster")}, headers=AUTH)) == [
        ["body", "yaml", "MLSysOpsApp"], ["body", "yaml", "MLSysOpsCluster"]]  # missing, and not expected
    assert locs(client.post("/apps/deploy", json={"yaml": {}, "extra": 1}, headers=AUTH)) == [["body", "extra"]]
    assert client.post("/apps/deploy", content=b"not json", headers={**AUTH, "content-type": "application/json"}
                       ).status_code == 422
    assert ingress.events == []


def test_deploy_of_a_known_id_is_a_conflict(client, store, ingress):
    add_app(store, kind="ml_model")
    r = client.post("/apps/deploy", json={"yaml": sample("demo-app")}, headers=AUTH)
    assert r.status_code == 409 and "ML model" in r.json()["detail"]
    assert ingress.events == []


def test_deploy_answers_503_when_the_broker_refuses(client, ingress):
    ingress.status = 500
    r = client.post("/apps/deploy", json={"yaml": sample("demo-app")}, headers=AUTH)
    assert r.status_code == 503 and "broker" in r.json()["detail"]


def test_status_follows_the_plans_and_the_deployment(client, store):
    assert client.get("/apps/status/demo-app", headers=AUTH).status_code == 404
    add_app(store)
    assert client.get("/apps/status/demo-app", headers=AUTH).json()["status"] == "queued"
    now = time.time()
    store.put("plans", "p1", {"plan_id": "p1", "policy": "static-placement", "asset": "demo-app", "status": "Queued",
                              "mechanisms": {"ClusterPlacement": {}}, "created": now, "updated": now})
    assert client.get("/apps/status/demo-app", headers=AUTH).json()["status"] == "planned"
    store.put("deployments", "demo-app", {"status": "Written", "target": "local", "clusters": ["demo-cluster"],
                                          "placement": {"web": ["demo-cluster"]}, "plan_id": "p1", "at": now + 1,
                                          "objects": [{"kind": "Deployment", "metadata": {"name": "web"}}],
                                          "message": "rendered, not applied"})
    doc = client.get("/apps/status/demo-app", headers=AUTH).json()
    assert doc["status"] == "deployed" and doc["deployment"]["clusters"] == ["demo-cluster"]
    store.put("plans", "p2", {"plan_id": "p2", "policy": "cluster-placement", "asset": "demo-app",
                              "status": "Failed", "reason": "ClusterPlacement: cluster x is not ready",
                              "mechanisms": {"ClusterPlacement": {}}, "created": now + 2, "updated": now + 3})
    doc = client.get("/apps/status/demo-app", headers=AUTH).json()
    assert doc["status"] == "failed" and "not ready" in doc["message"]
    store.put("deployments", "demo-app", {"status": "Applied", "deployed": False, "target": "cluster",
                                          "plan_id": "p3", "at": now + 4})
    assert client.get("/apps/status/demo-app", headers=AUTH).json()["status"] == "deploying"
    listed = client.get("/apps/list_all/", headers=AUTH).json()
    assert listed["System_status"] == {"demo-app": "deploying"}


def test_ml_models_and_applications_are_kept_apart(client, store):
    add_app(store, "model-1", kind="ml_model")
    assert client.get("/apps/status/model-1", headers=AUTH).status_code == 404
    assert client.get("/apps/list_all/", headers=AUTH).json()["System_status"] == {}
    assert client.get("/ml/status/model-1", headers=AUTH).json()["model_uid"] == "model-1"
    assert client.get("/ml/list_all/", headers=AUTH).json()["System_status"] == {"model-1": "queued"}


@pytest.mark.parametrize("path", ["/apps/details/{}", "/apps/apps/details/{}"])
def test_details(client, store, path):
    assert client.get(path.format("demo-app"), headers=AUTH).status_code == 404
    add_app(store)
    store.put("deployments", "demo-app", {"status": "Written", "target": "local", "clusters": ["demo-cluster"],
                                          "placement": {"web": ["demo-cluster"]}, "nodes": {"worker": "n1"},
                                          "objects": [{"kind": "Deployment", "metadata": {"name": "web"}}]})
    doc = client.get(path.format("demo-app"), headers=AUTH).json()
    assert doc["state"] == "deployed"
    assert doc["components"] == [
        {"name": "web", "clusters": ["demo-cluster"], "node": None, "objects": ["Deployment/web"]},
        {"name": "worker", "clusters": [], "node": "n1", "objects": []}]
    assert doc["description"]["MLSysOpsApp"]["name"] == "demo-app"
    assert locs(client.get(path.format("x" * 300), headers=AUTH)) == [["path", "app_id"]]


def test_performance_reports_telemetry_against_the_targets(client, store):
    assert client.get("/apps/performance/demo-app", headers=AUTH).status_code == 404
    add_app(store)
    now = time.time()
    store.append_telemetry("demo-app/web", [("latency_ms", 30.0, now - 2), ("latency_ms", 18.0, now - 1)])
    store.append_telemetry("demo-app", [("requests_per_s", 120.0, now)])
    doc = client.get("/apps/performance/demo-app", headers=AUTH).json()
    rows = {(m["component"], m["metric"]): m for m in doc["metrics"]}
    web = rows[("web", "latency_ms")]
    assert (web["latest"], web["samples"], web["mean"], web["max"], web["target"], web["met"]) == (
        18.0, 2, 24.0, 30.0, 20, True)
    assert rows[(None, "requests_per_s")]["latest"] == 120.0
    assert doc["qos_met"] is True
    store.append_telemetry("demo-app/web", [("latency_ms", 25.0, now)])
    assert client.get("/apps/performance/demo-app", headers=AUTH).json()["qos_met"] is False
    assert locs(client.get("/apps/performance/" + "x" * 300, headers=AUTH)) == [["path", "app_id"]]


def test_remove_publishes_app_removed(client, store, ingress):
    assert client.delete("/apps/remove/demo-app", headers=AUTH).status_code == 404
    add_app(store)
    r = client.delete("/apps/remove/demo-app", headers=AUTH)
    assert r.status_code == 202
    [event] = ingress.of(catalogue.AppRemoved)
    assert event["data"] == {"app_id": "demo-app"} and event["id"] == r.json()["event_id"]
    assert locs(client.delete("/apps/remove/" + "x" * 300, headers=AUTH)) == [["path", "app_id"]]


# -- ML models --

def test_deploy_ml_publishes_an_ml_model_application(client, ingress, store):
    r = client.post("/ml/deploy_ml", json={"yaml": sample("demo-app"), "model_uid": "model-7"}, headers=AUTH)
    assert r.status_code == 202, r.text
    [event] = ingress.of(catalogue.AppSubmitted)
    assert event["data"]["app_id"] == "model-7" and event["data"]["kind"] == "ml_model"
    assert locs(client.post("/ml/deploy_ml", json={"yaml": sample("demo-app"), "model_uid": "Bad_Id"},
                            headers=AUTH)) == [["body", "model_uid"]]
    assert locs(client.post("/ml/deploy_ml", json={"yaml": sample("demo-app"), "model_uid": ""},
                            headers=AUTH)) == [["body", "model_uid"]]
    add_app(store, "model-7", kind="ml_model")
    assert client.post("/ml/deploy_ml", json={"yaml": sample("demo-app"), "model_uid": "model-7"},
                       headers=AUTH).status_code == 409


def test_ml_status_and_remove(client, store, ingress):
    assert client.get("/ml/status/m1", headers=AUTH).status_code == 404
    assert client.delete("/ml/remove/m1", headers=AUTH).status_code == 404
    add_app(store, "m1", kind="ml_model")
    assert client.get("/ml/status/m1", headers=AUTH).json()["status"] == "queued"
    assert client.delete("/ml/remove/m1", headers=AUTH).status_code == 202
    assert ingress.of(catalogue.AppRemoved)[0]["data"]["app_id"] == "m1"
    assert locs(client.get("/ml/status/" + "x" * 300, headers=AUTH)) == [["path", "model_uid"]]
    assert locs(client.delete("/ml/remove/" + "x" * 300, headers=AUTH)) == [["path", "model_uid"]]


# -- infrastructure --

@pytest.mark.parametrize(("name", "kind", "ident"), [("demo-cluster", "cluster", "demo-cluster"),
                                                     ("demo-continuum", "continuum", "demo-continuum")])
def test_register_publishes_infra_registered(client, ingress, name, kind, ident):
    r = client.post("/infra/register", json={"yaml": sample(name)}, headers=AUTH)
    assert r.status_code == 202, r.text
    assert (r.json()["infra_id"], r.json()["kind"]) == (ident, kind)
    [event] = ingress.of(catalogue.InfraRegistered)
    assert (event["data"]["infra_id"], event["data"]["kind"]) == (ident, kind)


@pytest.mark.skipif(not (SHARED / "reference").is_dir(), reason="../shared/reference is not here (upstream samples)")
def test_register_takes_the_upstream_node_cluster_and_continuum(client, ingress):
    for name, kind in (("node-description.node1.yaml", "node"), ("cluster-description.yaml", "cluster"),
                       ("continuum-description.yaml", "continuum")):
        doc = yaml.safe_load((SHARED / "reference" / "mlsysops" / name).read_text())
        r = client.post("/infra/register", json={"yaml": doc}, headers=AUTH)
        assert r.status_code == 202 and r.json()["kind"] == kind, r.text
    assert len(ingress.of(catalogue.InfraRegistered)) == 3


def test_register_refuses_bad_descriptions(client, ingress):
    assert locs(client.post("/infra/register", json={"yaml": sample("demo-app")}, headers=AUTH)) == [["body", "yaml"]]
    assert locs(client.post("/infra/register", json={"yaml": {"MLSysOpsNode": {"name": "n", "bogus": 1}}},
                            headers=AUTH)) == [["body", "yaml", "MLSysOpsNode", "bogus"]]
    assert ingress.events == []


def test_list_and_unregister(client, store, ingress):
    store.put("infrastructure", "n1", {"kind": "node", "description": {"MLSysOpsNode": {"name": "n1"}}})
    store.put("infrastructure", "c1", {"kind": "cluster", "description": {"MLSysOpsCluster": {"cluster_id": "c1"}}})
    assert [r["infra_id"] for r in client.get("/infra/list/", headers=AUTH).json()["infrastructure"]] == ["c1", "n1"]
    assert [r["infra_id"] for r in client.get("/infra/list/?kind=node", headers=AUTH).json()["infrastructure"]] == [
        "n1"]
    assert locs(client.get("/infra/list/?kind=planet", headers=AUTH)) == [["query", "kind"]]
    assert client.delete("/infra/unregister/nope", headers=AUTH).status_code == 404
    assert client.delete("/infra/unregister/n1", headers=AUTH).status_code == 202
    assert ingress.of(catalogue.InfraUnregistered)[0]["data"] == {"infra_id": "n1"}
    assert locs(client.delete("/infra/unregister/" + "x" * 300, headers=AUTH)) == [["path", "infra_id"]]


def test_trust_lists_the_credits_the_trust_function_keeps(client, store):
    assert client.get("/infra/trust/", headers=AUTH).json() == {"trust": []}
    store.put("trust", "n1", {"asset_kind": "node", "credit": 0.42, "values": {"knob_success": 0.3}, "updated": 5.0})
    assert client.get("/infra/trust/", headers=AUTH).json() == {"trust": [
        {"infra_id": "n1", "kind": "node", "credit": 0.42, "indices": {"knob_success": 0.3}, "updated": 5.0}]}


# -- management --

def test_ping(client):
    doc = client.get("/manage/ping", headers=AUTH).json()
    assert doc["status"] == "success" and doc["response"] == {"store": "ok", "broker": "ok"}


def test_ping_answers_503_naming_what_does_not_answer(tmp_path, store, ingress):
    async def ping() -> dict[str, str]:
        return {"broker": "not answering: refused"}

    ctx = ApiContext(store=store, token=TOKEN, broker=ingress.url, event_log=tmp_path / "x.db", ping=ping)
    with TestClient(create_app(ctx)) as c:
        r = c.get("/manage/ping", headers=AUTH)
    assert r.status_code == 503 and "broker" in r.json()["detail"]["message"]


@pytest.mark.parametrize(("given", "mode"), [("0", "heuristic"), ("1", "ml"), ("heuristic", "heuristic"),
                                             ("ml", "ml")])
def test_mode_publishes_mode_changed(client, store, ingress, given, mode):
    store.put("settings", "mode", {"mode": "ml", "manual_override": True})
    r = client.put(f"/manage/mode/{given}", headers=AUTH)
    assert r.status_code == 200 and r.json()["mode"] == mode
    [event] = ingress.of(catalogue.ModeChanged)
    assert event["data"] == {"mode": mode, "manual_override": True, "previous": "ml"}
    assert client.get("/manage/mode", headers=AUTH).json() == {"mode": "ml", "manual_override": True}


def test_mode_refuses_other_values(client, ingress):
    for bad in ("2", "auto", "-1"):
        assert locs(client.put(f"/manage/mode/{bad}", headers=AUTH)) == [["path", "mode"]]
    assert ingress.events == []


# -- the event stream --

def _log_with(path: Path, n: int) -> list[str]:
    async def fill() -> list[str]:
        log = EventLog(path)
        made = [catalogue.make_event(catalogue.AppRemoved(app_id=f"a{i}"), "/test") for i in range(n)]
        await log.append("default/default", made)
        await log.close()
        return [e.id for e in made]

    return asyncio.run(fill())


def _sse(text: str) -> list[dict]:
    out = []
    for block in text.strip().split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines() if not line.startswith(":"))
        if fields:
            out.append({"id": int(fields["id"]), "event": fields["event"], "data": json.loads(fields["data"])})
    return out


def test_event_stream_serves_the_log_as_server_sent_events(client, tmp_path):
    ids = _log_with(tmp_path / "eventlog.db", 3)
    r = client.get("/events/stream?after=0&limit=3", headers=AUTH)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    got = _sse(r.text)
    assert [g["data"]["id"] for g in got] == ids and [g["id"] for g in got] == [1, 2, 3]
    assert got[0]["event"] == catalogue.AppRemoved.event_type and got[0]["data"]["data"] == {"app_id": "a0"}
    resumed = _sse(client.get("/events/stream?limit=1", headers={**AUTH, "Last-Event-ID": "2"}).text)
    assert [g["id"] for g in resumed] == [3]
    assert _sse(client.get("/events/stream?after=0&limit=5&type=io.mapemesh.app.submitted&timeout_s=0.3",
                           headers=AUTH).text) == []
    assert locs(client.get("/events/stream?limit=0", headers=AUTH)) == [["query", "limit"]]


# -- what an independent review found --

def test_input_that_once_gave_a_5xx_gets_a_422(client, ingress):
    deep = "[" * 5000 + "]" * 5000
    assert locs(client.post("/apps/deploy", json={"yaml": deep}, headers=AUTH)) == [["body", "yaml"]]
    nan = sample("demo-app")
    nan["MLSysOpsApp"]["components"][0]["qos_metrics"][0]["target"] = ".nan"
    text = yaml.safe_dump(nan).replace("'.nan'", ".nan")
    assert locs(client.post("/apps/deploy", json={"yaml": text}, headers=AUTH)) == [
        ["body", "yaml", "MLSysOpsApp", "components", 0, "qos_metrics", 0, "target"]]
    assert locs(client.get("/events/stream?after=99999999999999999999", headers=AUTH)) == [["query", "after"]]
    assert client.get("/events/stream?limit=1&timeout_s=0.2", headers={**AUTH, "Last-Event-ID": b"\xb2"}
                      ).status_code == 200
    assert ingress.events == []


def test_last_event_id_wins_over_after(client, tmp_path):
    _log_with(tmp_path / "eventlog.db", 3)
    got = _sse(client.get("/events/stream?after=0&limit=1", headers={**AUTH, "Last-Event-ID": "2"}).text)
    assert [g["id"] for g in got] == [3]


def test_a_name_on_its_way_is_taken_and_reported_as_submitted(client, ingress):
    assert client.post("/apps/deploy", json={"yaml": sample("demo-app")}, headers=AUTH).json()["state"] == \
        "submitted"
    again = client.post("/ml/deploy_ml", json={"yaml": sample("demo-app")}, headers=AUTH)
    assert again.status_code == 409
    assert client.get("/apps/status/demo-app", headers=AUTH).json()["status"] == "submitted"
    assert client.get("/ml/status/demo-app", headers=AUTH).status_code == 404
    assert len(ingress.of(catalogue.AppSubmitted)) == 1


def test_concurrent_submissions_of_one_name_one_wins(client, ingress):
    from concurrent.futures import ThreadPoolExecutor

    def submit(path: str) -> int:
        return client.post(path, json={"yaml": sample("demo-app")}, headers=AUTH).status_code

    with ThreadPoolExecutor(4) as pool:
        codes = sorted(pool.map(submit, ["/apps/deploy", "/ml/deploy_ml", "/apps/deploy", "/ml/deploy_ml"]))
    assert codes == [202, 409, 409, 409]
    assert len(ingress.of(catalogue.AppSubmitted)) == 1


def test_plans_of_an_earlier_application_of_the_same_name_do_not_count(client, store):
    now = time.time()
    store.put("plans", "old", {"plan_id": "old", "policy": "static-placement", "asset": "demo-app",
                               "status": "Failed", "reason": "long ago", "mechanisms": {"ClusterPlacement": {}},
                               "created": now - 100, "updated": now - 99})
    add_app(store)
    assert client.get("/apps/status/demo-app", headers=AUTH).json()["status"] == "queued"
    assert client.get("/apps/details/demo-app", headers=AUTH).json()["plans"] == []


def test_infrastructure_ids_must_fit_in_a_url(client, ingress):
    r = client.post("/infra/register", json={"yaml": {"MLSysOpsNode": {"name": "a/b"}}}, headers=AUTH)
    assert locs(r) == [["body", "yaml", "MLSysOpsNode", "name"]]
    assert client.post("/infra/register", json={"yaml": {"MLSysOpsNode": {"name": "edge-1.lab"}}},
                       headers=AUTH).status_code == 202


def test_open_streams_end_when_the_api_stops(tmp_path, store, ingress):
    from mapemesh.api.app import _sse

    ctx = ApiContext(store=store, token=TOKEN, broker=ingress.url, event_log=tmp_path / "eventlog.db")

    class Request:
        async def is_disconnected(self) -> bool:
            return False

    async def run() -> list[bytes]:
        stream = _sse(ctx, Request(), None, None, None, None)  # type: ignore[arg-type]
        first = await stream.__anext__()
        ctx.closing.set()
        rest = [chunk async for chunk in stream]
        return [first, *rest]

    chunks = asyncio.run(asyncio.wait_for(run(), 5))
    assert chunks == [b": mapemesh events\n\n"]


def test_details_match_the_rendered_object_names(client, store):
    add_app(store)
    store.put("deployments", "demo-app", {"status": "Written", "target": "local", "placement": {},
                                          "objects": [{"kind": "Deployment", "metadata": {"name": "demo-app-web"}},
                                                      {"kind": "Service", "metadata": {"name": "web"}},
                                                      {"kind": "Deployment",
                                                       "metadata": {"name": "demo-app-worker"}}]})
    comps = {c["name"]: c["objects"] for c in client.get("/apps/details/demo-app", headers=AUTH).json()["components"]}
    assert comps == {"web": ["Deployment/demo-app-web", "Service/web"], "worker": ["Deployment/demo-app-worker"]}


# -- telemetry --

def test_telemetry_gives_an_assets_samples_within_the_window(client, store):
    import time

    now = time.time()
    store.append_telemetry("shop/web", [("latency_ms", 12.0, now - 500), ("latency_ms", 14.0, now - 5),
                                        ("queue", 3.0, now - 5)])
    r = client.get("/telemetry/shop/web", params={"metric": "latency_ms", "window": 60}, headers=AUTH)
    assert r.status_code == 200, r.text
    doc = r.json()
    assert doc["asset"] == "shop/web" and [v for _, v in doc["metrics"]["latency_ms"]] == [14.0]
    assert set(doc["metrics"]) == {"latency_ms"}
    every = client.get("/telemetry/shop/web", params={"window": 3600}, headers=AUTH).json()["metrics"]
    assert set(every) == {"latency_ms", "queue"} and len(every["latency_ms"]) == 2
    assert client.get("/telemetry/shop/web", params={"window": 0}, headers=AUTH).status_code == 422
    assert client.get("/telemetry/nothing-here", headers=AUTH).json()["metrics"] == {}


# -- the dashboard's reads and page (mapemesh/api/dashboard.py, page.py; the browser tests: test_dashboard.py) --

def test_override_publishes_mode_changed_and_keeps_the_mode(client, store, ingress):
    store.put("settings", "mode", {"mode": "ml", "manual_override": False})
    r = client.put("/manage/override/on", headers=AUTH)
    assert r.status_code == 200 and r.json()["mode"] == "ml"
    [event] = ingress.of(catalogue.ModeChanged)
    assert event["data"] == {"mode": "ml", "manual_override": True, "previous": "ml"}
    assert locs(client.put("/manage/override/maybe", headers=AUTH)) == [["path", "state"]]


def test_event_stream_tail_starts_that_many_positions_before_the_end(client, tmp_path):
    _log_with(tmp_path / "eventlog.db", 5)
    assert [g["id"] for g in _sse(client.get("/events/stream?tail=2&limit=2", headers=AUTH).text)] == [4, 5]
    assert [g["id"] for g in _sse(client.get("/events/stream?tail=2&after=0&limit=1", headers=AUTH).text)] == [1]
    assert [g["id"] for g in _sse(client.get("/events/stream?tail=2&limit=1",
                                             headers={**AUTH, "Last-Event-ID": "1"}).text)] == [2]


def test_dashboard_continuum_places_nodes_devices_knobs_and_targets(client, store):
    from mapemesh.api.dashboard import MAX_POINTS

    store.put("infrastructure", "c1", {"kind": "cluster", "description": {"MLSysOpsCluster": {
        "cluster_id": "c1", "nodes": ["n1", "dev1", "gone"]}}})
    store.put("infrastructure", "n1", {"kind": "node", "description": {"MLSysOpsNode": {
        "name": "n1", "environment": {"node_type": "native"}}}})
    store.put("infrastructure", "dev1", {"kind": "node", "description": {"MLSysOpsNode": {
        "name": "dev1", "continuum_layer": "far_edge", "mechanism_states": {"FarEdgeRadio": {"tx_power": 3}}}}})
    store.put("mechanisms", "n1/CPUFrequency", {"state": {"governor": "powersave"}, "updated": 5.0})
    add_app(store)
    store.put("deployments", "demo-app", {"placement": {"web": ["c1"], "worker": ["c1"]},
                                          "nodes": {"worker": "n1", "web": "dev1"}})
    now = time.time()
    store.append_telemetry("demo-app/web", [("latency_ms", 30.0 - i / 10, now - 200 + i) for i in range(150)])
    doc = client.get("/dashboard/continuum", headers=AUTH).json()
    assert doc["clusters"] == [{"cluster_id": "c1", "nodes": ["n1", "dev1", "gone"],
                                "apps": ["demo-app/web", "demo-app/worker"]}]
    nodes = {n["node"]: n for n in doc["nodes"]}
    assert nodes["n1"]["knobs"] == {"CPUFrequency": {"state": {"governor": "powersave"}, "updated": 5.0}}
    assert nodes["n1"]["apps"] == ["demo-app/worker"] and nodes["n1"]["cluster"] == "c1"
    assert nodes["dev1"]["far_edge"] and nodes["dev1"]["knobs"]["FarEdgeRadio"]["state"] == {"tx_power": 3}
    [app] = doc["applications"]
    [target] = app["targets"]
    assert (target["component"], target["metric"], target["target"], target["relation"]) == \
        ("web", "latency_ms", 20.0, "lower_or_equal")
    assert len(target["samples"]) == MAX_POINTS and target["latest"] == target["samples"][-1][1] == 15.1
    assert target["met"] is True
    short = client.get("/dashboard/continuum", params={"window": 10}, headers=AUTH).json()
    assert len(short["applications"][0]["targets"][0]["samples"]) < 15


def test_dashboard_policies_lists_each_policys_verdicts_per_asset_and_failures(client, store):
    store.put("settings", "mode", {"mode": "ml", "manual_override": True})
    store.put("policies", "cpu-frequency", {
        "name": "cpu-frequency", "status": "active", "analyses": 1, "failures": 1,
        "declaration": {"scope": "global", "mechanisms": ["CPUFrequency"], "machine_learning": True},
        "recent_failures": [{"at": 3.0, "asset": "n2", "method": "analyze", "error": "boom", "traceback": "..."}]})
    store.put("policy_contexts", "cpu-frequency/n1", {"analyses": 2, "last_verdict": {"at": 2.0, "verdict": True}})
    store.put("policy_contexts", "cpu-frequency/n3", {"analyses": 1, "last_verdict": {"at": 4.0, "verdict": False}})
    doc = client.get("/dashboard/policies", headers=AUTH).json()
    assert (doc["mode"], doc["manual_override"]) == ("ml", True)
    [row] = doc["policies"]
    assert row["kind"] == "ml" and row["analyses"] == 4 and row["failures"] == 1
    assert [(v["asset"], v["verdict"]) for v in row["verdicts_by_asset"]] == [("n3", False), ("n1", True)]
    assert row["recent_failures"] == [{"at": 3.0, "asset": "n2", "method": "analyze", "error": "boom"}]


def test_dashboard_now_says_what_it_cannot_reach_and_counts_the_backlog(client, tmp_path):
    from mapemesh.api.dashboard import backlog

    doc = client.get("/dashboard/now", headers=AUTH).json()
    assert doc["functions"] is None and doc["triggers"] is None and doc["backlog"] is None
    assert set(doc["errors"]) == {"serving", "broker"}

    async def fill() -> None:
        log = EventLog(tmp_path / "broker.db")
        made = [catalogue.make_event(catalogue.AppRemoved(app_id=f"a{i}"), "/test") for i in range(3)]
        await log.append("default/default", made, [["default/monitor", "default/trust"], ["default/monitor"], []])
        await log.close()

    asyncio.run(fill())
    found = backlog(tmp_path / "broker.db", time.time() + 10)
    assert found["pending"] == 3 and found["oldest_age_s"] >= 10
    assert {k: v["pending"] for k, v in found["by_trigger"].items()} == {"default/monitor": 2, "default/trust": 1}
    assert backlog(tmp_path / "none.db", time.time()) == {"pending": 0, "oldest_age_s": None, "by_trigger": {}}


def test_trace_gives_a_chain_from_the_log_and_404_for_an_unknown_id(client, tmp_path):
    from mapemesh.eventing.ingress import stamp

    assert client.get("/trace/nothing", headers=AUTH).status_code == 404  # no log yet

    async def fill() -> str:
        log = EventLog(tmp_path / "eventlog.db")
        event = catalogue.make_event(catalogue.AppRemoved(app_id="a"), "/test")
        stamp(event)
        await log.append("default/default", [event])
        await log.close()
        return event.id

    ident = asyncio.run(fill())
    doc = client.get(f"/trace/{ident}", headers=AUTH).json()
    assert [e["id"] for e in doc["events"]] == [ident] and doc["events"][0]["latency_ms"] == 0
    assert "not-there" in client.get("/trace/not-there", headers=AUTH).json()["detail"]


def test_the_page_is_served_without_the_token_under_a_strict_csp(client):
    import re

    r = client.get("/ui", follow_redirects=False)
    assert r.status_code == 308 and r.headers["location"] == "/ui/"
    page = client.get("/ui/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    csp = page.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "connect-src 'self'" in csp and "unsafe" not in csp
    # every file the page and its modules name is served, with its type
    names = set(re.findall(r'(?:src|href)="([\w.]+\.(?:js|css))"', page.text))
    seen: set[str] = set()
    while names - seen:
        name = (names - seen).pop()
        seen.add(name)
        served = client.get(f"/ui/{name}")
        assert served.status_code == 200, name
        assert served.headers["content-type"].startswith("text/css" if name.endswith(".css") else "text/javascript")
        names |= set(re.findall(r'from "\./([\w.]+\.js)"', served.text))
    assert {"app.js", "stream.js", "loop.js", "now.js", "continuum.js", "policies.js", "caps.js"} <= seen
    for bad in ("nope.js", "..%2Fapp.py", "dashboard.py"):
        assert client.get(f"/ui/{bad}").status_code == 404
    assert not [path for path in client.get("/openapi.json").json()["paths"] if path.startswith("/ui")]
