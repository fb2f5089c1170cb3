"""What a cluster runs besides the functions, driven here as real processes: the node shim applying its own
Trigger (owned by its pod) through a stand-in API server, knob commands reaching only their node's shim, and the
API serving alone with its event feed (the stream's source on a cluster)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import uuid

import httpx
import pytest
import yaml

from mapemesh import events as catalogue
from mapemesh.eventing.binding import to_binary
from mapemesh.eventing.log import read_all

from .conftest import jsonl, signed, wait_for
from .test_deploy_apply import TOKEN, FakeApiServer
from .test_serving import free_port, start_mesh

MM = [sys.executable, "-m", "mapemesh"]


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("MAPEMESH_DATA", "K_SINK")}
    return {**env, **extra}


def _kubeconfig(tmp_path, url: str):
    path = tmp_path / "kubeconfig"
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "fake",
        "clusters": [{"name": "fake", "cluster": {"server": url}}],
        "users": [{"name": "u", "user": {"token": TOKEN}}],
        "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "u"}}]}))
    return path


@pytest.fixture
def api_server():
    server = FakeApiServer().start()
    yield server
    server.stop()


def test_on_a_cluster_the_shim_applies_its_own_trigger_owned_by_its_pod(tmp_path, api_server):
    port = free_port()
    env = _env(MAPEMESH_KUBECONFIG=str(_kubeconfig(tmp_path, api_server.url)), POD_NAME="shim-x1",
               POD_NAMESPACE="mm", POD_UID="0f3c-uid", POD_IP="10.1.2.3")
    proc = subprocess.Popen([*MM, "--data", str(tmp_path / "data"), "node-shim", "serve", "--node", "worker-1",
                             "--port", str(port), "--simulate", "acpi-cpufreq", "--register", "kubernetes",
                             "--broker", "http://127.0.0.1:9/mm/default"], env=env)
    path = "/apis/eventing.knative.dev/v1/namespaces/mm/triggers/node-shim-worker-1"
    try:
        applied = wait_for(lambda: api_server.objects.get(path), timeout=30, what="the shim's Trigger")
        assert applied["spec"]["filters"] == [{"exact": {"type": catalogue.KnobApply.event_type}},
                                              {"exact": {"node": "worker-1"}}]
        assert applied["spec"]["subscriber"] == {"uri": f"http://10.1.2.3:{port}/"}
        assert applied["metadata"]["ownerReferences"] == [{"apiVersion": "v1", "kind": "Pod", "name": "shim-x1",
                                                           "uid": "0f3c-uid"}]
        [patch] = [r for r in api_server.requests if r.method == "PATCH"]
        assert patch.content_type == "application/apply-patch+yaml" and patch.query["fieldManager"] == [
            "mapemesh-node-shim"]
        # The simulated tree, not this machine's /sys.
        assert (tmp_path / "data" / "simulated-sysfs").is_dir()
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
    assert any(r.method == "DELETE" and r.path == path for r in api_server.requests)


def test_register_kubernetes_needs_the_pods_identity(tmp_path):
    r = subprocess.run([*MM, "--data", str(tmp_path), "node-shim", "serve", "--port", str(free_port()),
                        "--register", "kubernetes"], env=_env(), capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "POD_NAME" in r.stderr and "downward API" in r.stderr


def test_a_knob_command_reaches_its_nodes_shim_only(tmp_path):
    sysfs = tmp_path / "sysfs"
    subprocess.run([*MM, "node-shim", "simulate", "--profile", "acpi-cpufreq", str(sysfs)], check=True,
                   capture_output=True)
    mesh = start_mesh(tmp_path, {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "unused"}},
                      shim=["--node", "node-a", "--sysfs-root", str(sysfs)])
    other = subprocess.Popen([*MM, "--data", str(mesh.data), "node-shim", "serve", "--node", "node-b",
                              "--sysfs-root", str(sysfs), "--port", "0"], env=_env())
    try:
        wait_for(lambda: (mesh.data / "manifests" / "node-shim-node-b.yaml").exists(), what="node-b's Trigger")
        stats = lambda: httpx.get(mesh.broker + "/stats").json()["triggers"]  # noqa: E731
        wait_for(lambda: {"default/node-shim-node-a", "default/node-shim-node-b"} <= set(stats()),
                 what="both shims' Triggers in the broker")

        def send(node: str) -> str:
            plan = str(uuid.uuid4())
            event = catalogue.make_event(catalogue.KnobApply(node=node, knob="CPUFrequency", command={
                "frequency": "min"}, plan_id=plan, requested_by="test"), "/test", extensions={"node": node})
            headers, body = to_binary(signed(event, mesh.data))
            assert httpx.post(mesh.broker + "/default/default", headers=headers, content=body).status_code == 202
            return plan

        def journal(node: str) -> list[dict]:
            return jsonl(mesh.data / "node-shim" / node / "journal.jsonl")

        sent = send("node-b")
        wait_for(lambda: any(j.get("plan_id") == sent for j in journal("node-b")), timeout=30,
                 what="node-b's shim to apply its command")
        assert not any(j.get("plan_id") == sent for j in journal("node-a"))
        sent = send("node-a")
        wait_for(lambda: any(j.get("plan_id") == sent for j in journal("node-a")), timeout=30,
                 what="node-a's shim to apply its command")
        assert not any(j.get("plan_id") == sent for j in journal("node-b"))
        assert stats()["default/node-shim-node-a"]["delivered"] == 1
        assert stats()["default/node-shim-node-b"]["delivered"] == 1
    finally:
        other.send_signal(signal.SIGTERM)
        other.wait(20)
        mesh.proc.send_signal(signal.SIGTERM)
        mesh.proc.wait(20)


def test_the_api_alone_posts_actions_and_streams_what_its_feed_is_sent(tmp_path, broker):
    port, feed = free_port(), free_port()
    data = tmp_path / "api"
    proc = subprocess.Popen([*MM, "--data", str(data), "api", "serve", "--port", str(port), "--events-port",
                             str(feed)], env=_env(K_SINK=broker.ingress, MAPEMESH_STATE=f"sqlite:///{tmp_path}/s.db"))
    api = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: _answers(api + "/healthz"), timeout=30, what="the API")
        auth = {"Authorization": "Bearer " + (data / "api.token").read_text().strip()}
        # An action becomes one CloudEvent posted to K_SINK (Knative's one-event contract).
        r = httpx.put(api + "/manage/mode/ml", headers=auth)
        assert r.status_code == 200, r.text
        [stored] = [e for e in read_all(broker.log_file) if e.event.id == r.json()["event_id"]]
        assert stored.event.type == catalogue.ModeChanged.event_type
        # The feed takes one event per request and the stream serves it.
        event = catalogue.make_event(catalogue.ModeChanged(mode="ml", manual_override=False), "/test")
        headers, body = to_binary(event)
        assert httpx.post(f"http://127.0.0.1:{feed}/", headers=headers, content=body).status_code == 202
        batch = httpx.post(f"http://127.0.0.1:{feed}/", content=b"[]",
                           headers={"content-type": "application/cloudevents-batch+json"})
        assert batch.status_code == 400
        lines = httpx.get(api + "/events/stream", params={"after": 0, "limit": 1, "timeout_s": 10},
                          headers=auth, timeout=20).text
        data_line = next(li for li in lines.splitlines() if li.startswith("data: "))
        assert json.loads(data_line[6:])["id"] == event.id
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False
