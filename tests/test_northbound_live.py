"""The northbound API and CLI against a running `mapemesh up` (every function of `knative/`, this machine's node
shim on a simulated tree): the CLI through subprocesses, the end-to-end path of the upstream sample
application, and a bounded property-based run over the generated OpenAPI document (no 5xx)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import yaml

from .conftest import REPO, SHARED, wait_for

SAMPLES = REPO / "mapemesh" / "samples"
UPSTREAM_APP = SHARED / "reference" / "mlsysops" / "app-description.user_provided.yaml"


@dataclass
class LiveMesh:
    proc: subprocess.Popen[bytes]
    data: Path
    api: str
    token: str

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveMesh]:
    root = tmp_path_factory.mktemp("live")
    data = root / "data"
    sysfs = root / "sysfs"
    subprocess.run([sys.executable, "-m", "mapemesh", "node-shim", "simulate", "--profile", "acpi-cpufreq",
                    str(sysfs)], check=True, capture_output=True)
    log = open(root / "up.log", "wb")  # noqa: SIM115 (closed after the process)
    proc = subprocess.Popen([sys.executable, "-m", "mapemesh", "--log-level", "warning", "up", "--manifests",
                             str(REPO / "knative"), "--data", str(data), "--port", "0", "--serving-port", "0",
                             "--node-shim-port", "0", "--api-port", "0", "--node", "live-node", "--sysfs-root",
                             str(sysfs)], cwd=root, stdout=log, stderr=subprocess.STDOUT)

    def ready() -> dict | None:
        assert proc.poll() is None, f"mapemesh up exited: {(root / 'up.log').read_text()[-3000:]}"
        try:
            found = json.loads((data / "endpoints.json").read_text())
        except (OSError, ValueError):
            return None
        return found if "api" in found else None

    found = wait_for(ready, timeout=60, what="mapemesh up with its API")
    live = LiveMesh(proc, data, found["api"], (data / "api.token").read_text().strip())
    try:
        yield live
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def cli(mesh: LiveMesh | None, *args: str, data: Path | None = None, stdin: str | None = None,
        timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {**os.environ}
    env.pop("MAPEMESH_DATA", None)
    target = data if data is not None else mesh.data  # type: ignore[union-attr]
    return subprocess.run([sys.executable, "-m", "mapemesh", "--data", str(target), *args], capture_output=True,
                          text=True, env=env, input=stdin, timeout=timeout)


# -- the CLI ----------------------------------------------------------------------------------------------------

def test_without_a_running_mesh_the_cli_says_so_and_exits_3(tmp_path):
    r = cli(None, "apps", "list", data=tmp_path)
    assert r.returncode == 3 and "mapemesh up" in r.stderr


def test_manage_ping_and_mode(mesh):
    r = cli(mesh, "manage", "ping")
    assert r.returncode == 0 and "broker ok" in r.stdout and "node-shim ok" in r.stdout, r.stderr
    doc = json.loads(cli(mesh, "manage", "ping", "--output", "json").stdout)
    assert doc["status"] == "success"
    assert cli(mesh, "manage", "mode", "1").returncode == 0
    wait_for(lambda: json.loads(cli(mesh, "manage", "mode", "-o", "json").stdout)["mode"] == "ml",
             what="the mode to become ml")
    assert cli(mesh, "manage", "mode", "heuristic").returncode == 0
    wait_for(lambda: json.loads(cli(mesh, "manage", "mode", "-o", "json").stdout)["mode"] == "heuristic",
             what="the mode to become heuristic")
    bad = cli(mesh, "manage", "mode", "2")
    assert bad.returncode == 2


def test_infra_register_list_unregister(mesh):
    r = cli(mesh, "infra", "register", str(SAMPLES / "demo-cluster.yaml"))
    assert r.returncode == 0 and "cluster demo-cluster registered" in r.stdout, r.stderr
    wait_for(lambda: "demo-cluster" in cli(mesh, "infra", "list").stdout, what="the cluster in the list")
    listed = json.loads(cli(mesh, "infra", "list", "--kind", "node", "-o", "json").stdout)
    assert [n["infra_id"] for n in listed["infrastructure"]] == ["live-node"]  # the node shim registered it
    assert cli(mesh, "infra", "unregister", "demo-cluster").returncode == 0
    wait_for(lambda: "demo-cluster" not in cli(mesh, "infra", "list").stdout, what="the cluster to leave")
    gone = cli(mesh, "infra", "unregister", "demo-cluster")
    assert gone.returncode == 4 and "not known" in gone.stderr


def test_bad_input_exits_2_with_the_field_path_and_unknown_ids_4(mesh, tmp_path):
    bad = yaml.safe_load((SAMPLES / "demo-app.yaml").read_text())
    bad["MLSysOpsApp"]["components"][0]["containers"][0]["ports"][0]["container_port"] = 70000
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(bad))
    r = cli(mesh, "apps", "deploy", str(path))
    assert r.returncode == 2
    assert "body.yaml.MLSysOpsApp.components[0].containers[0].ports[0].container_port" in r.stderr
    r = cli(mesh, "apps", "deploy", str(path), "-o", "json")
    assert r.returncode == 2 and json.loads(r.stdout)["status"] == 422
    missing = cli(mesh, "apps", "deploy", str(tmp_path / "missing.yaml"))
    assert missing.returncode == 2 and "cannot read" in missing.stderr
    (tmp_path / "notyaml.yaml").write_text("a: [b")
    assert cli(mesh, "apps", "deploy", str(tmp_path / "notyaml.yaml")).returncode == 2
    (tmp_path / "binary.yaml").write_bytes(b"\xff\xfe\x00a")
    binary = cli(mesh, "apps", "deploy", str(tmp_path / "binary.yaml"))
    assert binary.returncode == 2 and "not UTF-8" in binary.stderr
    assert cli(mesh, "watch", "--type", "x" * 300, "--limit", "1").returncode == 2
    for args in (("apps", "status", "nope"), ("apps", "details", "nope"), ("apps", "performance", "nope"),
                 ("apps", "remove", "nope"), ("ml", "status", "nope"), ("ml", "remove", "nope")):
        r = cli(mesh, *args)
        assert r.returncode == 4, (args, r.stdout, r.stderr)


def test_ml_deploy_list_remove(mesh):
    r = cli(mesh, "ml", "deploy", "-", "--model-uid", "model-a", "--wait", "--timeout", "60",
            stdin=(SAMPLES / "demo-app.yaml").read_text())
    assert r.returncode == 0 and "model-a: deployed" in r.stdout, r.stdout + r.stderr
    assert "model-a" in cli(mesh, "ml", "list").stdout
    assert "model-a" not in cli(mesh, "apps", "list").stdout
    again = cli(mesh, "ml", "deploy", str(SAMPLES / "demo-app.yaml"), "--model-uid", "model-a")
    assert again.returncode == 5
    assert cli(mesh, "ml", "remove", "model-a").returncode == 0
    wait_for(lambda: cli(mesh, "ml", "status", "model-a").returncode == 4, timeout=30, what="the model to go")


def test_watch_prints_the_mesh_events(mesh):
    r = cli(mesh, "watch", "--after", "0", "--limit", "5", "--all", "-o", "json", timeout=60)
    assert r.returncode == 0, r.stderr
    events = [json.loads(line) for line in r.stdout.splitlines()]
    assert len(events) == 5 and all(e["specversion"] == "1.0" for e in events)
    human = cli(mesh, "watch", "--after", "0", "--limit", "1", "--type", "io.mapemesh.infra.registered", timeout=60)
    assert "node live-node registered" in human.stdout


def test_clients_that_leave_the_event_stream_mid_read_do_not_crash_the_api(mesh):
    """A client that goes cancels the stream's await, not the log read its thread is running: the connection must
    not be closed under that read (it was, and the process died of a segfault in libsqlite3, now and then, when
    the dashboard's page closed its stream)."""
    from mapemesh.eventing.binding import to_binary
    from mapemesh.eventing.cloudevent import CloudEvent

    broker = json.loads((mesh.data / "endpoints.json").read_text())["broker"] + "/default/default"
    with httpx.Client(timeout=30) as http:
        for i in range(1500):  # a log long enough that each stream spends its time in reads of 500 events
            event = CloudEvent({"specversion": "1.0", "id": f"filler-{i}", "source": "/test/filler",
                                "type": "io.example.filler"}, b"x" * 2048)
            headers, body = to_binary(event)
            assert http.post(broker, headers=headers, content=body).status_code == 202
        for n in range(60):
            # A type nothing has: the stream reads the whole log and sends nothing, so it is reading when we leave.
            with http.stream("GET", mesh.api + "/events/stream", params={"after": 0, "type": "io.example.none"},
                             headers=mesh.auth) as stream:
                next(stream.iter_bytes())  # its opening comment
                time.sleep(0.003 * (n % 10))
        assert mesh.proc.poll() is None, "the mesh died"
        assert http.get(mesh.api + "/manage/ping", headers=mesh.auth).status_code == 200


# -- end to end: the upstream sample application ----------------------------------------------------------------

@pytest.mark.skipif(not UPSTREAM_APP.exists(), reason="../shared/reference is not here (the upstream sample app)")
def test_the_upstream_sample_application_is_deployed_then_removed(mesh):
    r = cli(mesh, "apps", "deploy", str(UPSTREAM_APP))
    assert r.returncode == 0 and "test-application" in r.stdout, r.stderr

    def deployed() -> dict | None:
        got = cli(mesh, "apps", "status", "test-application", "-o", "json")
        doc = json.loads(got.stdout)
        assert doc["status"] != "failed", doc
        return doc if doc["status"] == "deployed" else None

    doc = wait_for(deployed, timeout=60, interval=0.3, what="test-application to be deployed")
    assert doc["deployment"]["target"] == "local" and doc["deployment"]["clusters"] == ["mls-ubiw-1"]
    folder = mesh.data / "deployments" / "test-application"
    assert sorted(p.name for p in (folder / "mls-ubiw-1").iterdir())  # the rendered objects are there
    details = json.loads(cli(mesh, "apps", "details", "test-application", "-o", "json").stdout)
    assert {c["name"] for c in details["components"]} == {"server-app", "client-app"}
    listed = cli(mesh, "apps", "list")
    assert "test-application" in listed.stdout and "deployed" in listed.stdout
    r = cli(mesh, "apps", "remove", "test-application", "--wait", "--timeout", "60")
    assert r.returncode == 0 and "removed" in r.stdout, r.stderr
    wait_for(lambda: not folder.exists(), timeout=30, what="the deployed objects to be removed")
    assert cli(mesh, "apps", "status", "test-application").returncode == 4
    # The same name again is a new application: the placement policies place it afresh.
    again = cli(mesh, "apps", "deploy", str(UPSTREAM_APP), "--wait", "--timeout", "60")
    assert again.returncode == 0 and "test-application: deployed" in again.stdout, again.stdout + again.stderr
    assert cli(mesh, "apps", "remove", "test-application", "--wait").returncode == 0


# -- properties: the OpenAPI document, run against the live API -------------------------------------------------

def test_no_generated_request_makes_the_api_fail_with_a_5xx(mesh):
    """schemathesis generates requests from the OpenAPI document (valid and invalid ones, a bounded number per
    operation, derandomized so CI is repeatable) and sends them with the token: none may answer 5xx.
    `/events/stream` is left out: it streams until the client stops (tested on its own)."""
    import schemathesis
    from hypothesis import HealthCheck, given, settings
    from schemathesis import GenerationMode

    schema = schemathesis.openapi.from_url(f"{mesh.api}/openapi.json")
    failures: list[str] = []
    calls: list[int] = []
    operations = 0
    for result in schema.get_all_operations():
        operation = result.ok()
        if operation.path == "/events/stream":
            continue
        operations += 1
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            @given(case=operation.as_strategy(generation_mode=mode))
            @settings(max_examples=15, deadline=None, derandomize=True, database=None,
                      suppress_health_check=list(HealthCheck))
            def check(case) -> None:
                response = case.call(base_url=mesh.api, headers=mesh.auth, timeout=30)
                calls.append(response.status_code)
                if response.status_code >= 500:
                    failures.append(f"{case.method} {case.formatted_path} {case.body!r:.200} -> "
                                    f"{response.status_code} {response.text[:300]}")

            check()
    assert operations >= 17
    assert failures == []
    assert len(calls) >= operations * 10  # the run did make its requests
    assert {200, 404, 422} <= set(calls)  # and they reached the routes, not only the validation
    assert httpx.get(f"{mesh.api}/manage/ping", headers=mesh.auth, timeout=10).status_code == 200


def test_no_component_posted_a_batch(mesh):
    # Last in the module: the API, the functions and the node shim above all posted to this broker, which takes
    # one event per request as Knative's ingress does.
    broker = json.loads((mesh.data / "endpoints.json").read_text())["broker"]
    health = httpx.get(broker + "/healthz", timeout=10).json()
    assert health["accept_batch"] is False and health["batches_refused"] == 0
