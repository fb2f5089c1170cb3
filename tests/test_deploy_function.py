"""The deploy function without a cluster: placement plans become YAML files per cluster, "rendered, not
applied", the plan succeeds, and removal removes them; and `mapemesh render` for inspection."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys

import httpx
import yaml

from mapemesh import events as catalogue
from mapemesh.eventing.binding import to_binary
from mapemesh.functions.deploy import deploy
from mapemesh.state import from_environment, open_store

from .conftest import REPO, copy_knative, signed, wait_for, wait_for_async

APP = {"MLSysOpsApp": {"name": "shop", "cluster_placement": {"cluster_id": ["edge-c"]}, "components": [
    {"metadata": {"name": "web"}, "node_placement": {"node": "node-1"},
     "containers": [{"image": "nginx:1.27", "ports": [{"container_port": 80, "protocol": "TCP"}],
                     "platform_requirements": {"cpu": {"requests": "250m"}, "memory": {"requests": "64Mi"}}}]}]}}


def ev(data: catalogue.EventData):
    """The event as the execute stage sends it: a deploy request signed by its identity."""
    event = catalogue.make_event(data, "/test")
    return signed(event, name="execute") if isinstance(data, catalogue.DeployRequested) else event


def test_a_placement_is_written_per_cluster_and_removed(tmp_path, monkeypatch):
    monkeypatch.setenv("MAPEMESH_DATA", str(tmp_path))
    monkeypatch.delenv("MAPEMESH_KUBECONFIG", raising=False)
    from_environment.cache_clear()
    store = from_environment()
    try:
        store.put("applications", "shop", {"description": APP})
        reply = asyncio.run(deploy(ev(catalogue.DeployRequested(app_id="shop", plan_id="p1",
                                                                placement={"web": ["edge-c", "cloud-c"]}))))
        status = catalogue.parse_data(reply)
        assert status.status == "Written" and status.clusters == ["cloud-c", "edge-c"] and status.objects > 0
        assert "rendered, not applied" in status.message
        root = tmp_path / "deployments" / "shop"
        assert json.loads((root / "STATUS").read_text())["status"] == "rendered, not applied"
        for cluster in ("edge-c", "cloud-c"):
            kinds = {yaml.safe_load(p.read_text())["kind"] for p in (root / cluster).glob("*.yaml")}
            assert {"Deployment", "Service"} <= kinds
        # The same plan again (redelivered): answered as recorded, nothing done a second time.
        recorded = store.get("deployments", "shop")
        again = catalogue.parse_data(asyncio.run(deploy(ev(catalogue.DeployRequested(
            app_id="shop", plan_id="p1", placement={"web": ["edge-c", "cloud-c"]})))))
        assert (again.status, again.clusters, again.objects) == ("Written", status.clusters, status.objects)
        assert "deployed already" in again.message and store.get("deployments", "shop").version == recorded.version
        # A node plan later keeps the clusters and adds the node.
        reply = asyncio.run(deploy(ev(catalogue.DeployRequested(app_id="shop", plan_id="p2", placement={},
                                                                nodes={"web": "node-1"}))))
        assert catalogue.parse_data(reply).clusters == ["cloud-c", "edge-c"]
        assert store.get("deployments", "shop").value["nodes"] == {"web": "node-1"}
        unknown = catalogue.parse_data(asyncio.run(deploy(ev(catalogue.DeployRequested(
            app_id="nope", placement={"web": ["x"]})))))
        assert unknown.status == "Failed" and "not known" in unknown.message
        removed = catalogue.parse_data(asyncio.run(deploy(ev(catalogue.AppRemoved(app_id="shop")))))
        assert removed.status == "Removed" and not root.exists() and store.get("deployments", "shop") is None
    finally:
        store.close()
        from_environment.cache_clear()


def test_the_loop_places_and_writes_an_application(tmp_path):
    from .test_serving import start_mesh

    root = tmp_path / "project"
    copy_knative(root)
    shutil.copytree(REPO / "functions", root / "functions", ignore=shutil.ignore_patterns("__pycache__"))
    mesh = start_mesh(root, {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "unused"}})
    store = open_store("sqlite:", data=mesh.data)
    try:
        wait_for(lambda: "static-placement" in store.list("policies"), timeout=30, what="the placement policies")
        headers, body = to_binary(ev(catalogue.AppSubmitted(app_id="shop", description=APP)))
        assert httpx.post(mesh.broker + "/default/default", headers=headers, content=body).status_code == 202
        deployed = mesh.data / "deployments" / "shop" / "edge-c"
        wait_for(lambda: any(deployed.glob("deployment-*.yaml")) if deployed.exists() else None, timeout=30,
                 what="the application's objects written for cluster edge-c")
        plans = wait_for(lambda: [p.value for p in store.list("plans").values() if p.value["status"] == "Success"
                                  and "ClusterPlacement" in p.value["mechanisms"]] or None, timeout=30,
                         what="the placement plan's Success")
        assert plans[0]["policy"] in ("static-placement", "cluster-placement")
        headers, body = to_binary(ev(catalogue.AppRemoved(app_id="shop")))
        assert httpx.post(mesh.broker + "/default/default", headers=headers, content=body).status_code == 202
        wait_for(lambda: not (mesh.data / "deployments" / "shop").exists(), timeout=30, what="the removal")
    finally:
        store.close()
        mesh.proc.terminate()
        mesh.proc.wait(20)


def test_render_app_and_mesh(tmp_path):
    app = tmp_path / "app.yaml"
    app.write_text(yaml.safe_dump(APP))
    node = tmp_path / "node.yaml"
    node.write_text(yaml.safe_dump({"MLSysOpsNode": {"name": "node-1", "cluster_id": "edge-c",
                                                     "hardware": {"cpu": {"cores": 4, "architecture": "amd64"}}}}))
    mm = [sys.executable, "-m", "mapemesh"]
    out = tmp_path / "out"
    result = subprocess.run([*mm, "render", "app", str(app), "--infra", str(node), "--out", str(out)],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    kinds = {yaml.safe_load(p.read_text())["kind"] for p in out.glob("*.yaml")}
    assert {"Deployment", "Service", "PropagationPolicy"} <= kinds
    policy = next(yaml.safe_load(p.read_text()) for p in out.glob("*.yaml")
                  if yaml.safe_load(p.read_text())["kind"] == "PropagationPolicy")
    assert policy["spec"]["placement"]["clusterAffinity"]["clusterNames"] == ["edge-c"]
    plan = tmp_path / "plan.yaml"
    plan.write_text(yaml.safe_dump({"ClusterPlacement": {"placement": {"web": ["c9"]}}}))
    again = subprocess.run([*mm, "render", "app", str(app), "--plan", str(plan), "--no-karmada", "--out",
                            str(tmp_path / "plain")], capture_output=True, text=True)
    assert again.returncode == 0, again.stderr
    assert "PropagationPolicy" not in {yaml.safe_load(p.read_text())["kind"] for p in (tmp_path / "plain").glob("*")}
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"MLSysOpsApp": {"name": "x", "components": [{"metadata": {"name": "w"},
                                                                               "containers": [{}]}]}}))
    bad_plan = tmp_path / "bad-plan.yaml"
    bad_plan.write_text(yaml.safe_dump({"placement": {"w": ["c9"]}}))
    refused = subprocess.run([*mm, "render", "app", str(bad), "--plan", str(bad_plan), "--out", str(tmp_path / "b")],
                             capture_output=True, text=True)
    assert refused.returncode == 2 and "image" in refused.stderr
    mesh = subprocess.run([*mm, "render", "mesh", "--manifests", str(REPO / "knative"), "--out",
                           str(tmp_path / "mesh")], capture_output=True, text=True)
    assert mesh.returncode == 0, mesh.stderr
    names = {p.name for p in (tmp_path / "mesh").glob("*.yaml")}
    assert "broker-default.yaml" in names and "trigger-monitor.yaml" in names and "service-monitor.yaml" in names


def _kubeconfig(tmp_path, url: str):
    """A kubeconfig whose current context is the stand-in API server at `url`."""
    path = tmp_path / "kubeconfig"
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "karmada",
        "clusters": [{"name": "k", "cluster": {"server": url}}],
        "users": [{"name": "u", "user": {"token": "t"}}],
        "contexts": [{"name": "karmada", "context": {"cluster": "k", "user": "u"}}]}))
    return path


def test_with_karmada_it_applies_refuses_unready_clusters_and_reports_when_running(tmp_path, monkeypatch):
    """Against a stand-in API server (what is sent, not a cluster): apply, a Cluster that is not ready, the
    ResourceBinding turning applied on every cluster, and removal."""
    from .test_deploy_apply import FakeApiServer
    from .test_deploy_clusters import CLUSTERS, _cluster

    server = FakeApiServer().start()
    kubeconfig = _kubeconfig(tmp_path, server.url)
    server.objects[CLUSTERS] = {"kind": "ClusterList", "apiVersion": "cluster.karmada.io/v1alpha1", "metadata": {},
                                "items": [_cluster("edge-c"), _cluster("down", ready="False")]}
    monkeypatch.setenv("MAPEMESH_DATA", str(tmp_path))
    monkeypatch.setenv("MAPEMESH_KUBECONFIG", str(kubeconfig))
    monkeypatch.setenv("K_SINK", "http://127.0.0.1:9/unused")
    from mapemesh.functions import deploy as deploy_module

    published = []

    async def fake_publish(events, timeout_s=10.0):
        published.extend(events)

    monkeypatch.setattr("mapemesh.serving.sink.publish", fake_publish)
    monkeypatch.setattr(deploy_module, "STATUS_EVERY_S", 0.01)
    from_environment.cache_clear()
    store = from_environment()
    try:
        store.put("applications", "shop", {"description": APP})
        refused = catalogue.parse_data(asyncio.run(deploy(ev(catalogue.DeployRequested(
            app_id="shop", placement={"web": ["down"]})))))
        assert refused.status == "Failed" and "down" in refused.message and not any(
            r.method == "PATCH" for r in server.requests)

        async def scenario():
            reply = await deploy(ev(catalogue.DeployRequested(app_id="shop", plan_id="p",
                                                              placement={"web": ["edge-c"]})))
            name = "shop-web"
            binding = f"/apis/work.karmada.io/v1alpha2/namespaces/default/resourcebindings/{name}-deployment"
            server.objects[binding] = {"apiVersion": "work.karmada.io/v1alpha2", "kind": "ResourceBinding",
                                       "metadata": {"name": f"{name}-deployment", "namespace": "default"},
                                       "spec": {"clusters": [{"name": "edge-c"}]},
                                       "status": {"aggregatedStatus": [{"clusterName": "edge-c", "applied": True,
                                                                        "health": "Healthy"}]}}
            await wait_for_async(lambda: published, timeout=5, what="the deployed status to be published")
            return reply

        status = catalogue.parse_data(asyncio.run(scenario()))
        assert status.status == "Applied" and status.deployed is False and status.clusters == ["edge-c"]
        patched = {r.path for r in server.requests if r.method == "PATCH"}
        assert "/apis/apps/v1/namespaces/default/deployments/shop-web" in patched
        assert any("propagationpolicies" in p for p in patched)
        later = catalogue.parse_data(published[0])
        assert later.deployed is True and later.plan_id == "p"
        removed = catalogue.parse_data(asyncio.run(deploy(ev(catalogue.AppRemoved(app_id="shop")))))
        assert removed.status == "Removed"
        assert {r.path for r in server.requests if r.method == "DELETE"} >= patched
    finally:
        store.close()
        from_environment.cache_clear()
        server.stop()


def test_a_redeploy_deletes_what_it_no_longer_makes_and_does_not_take_over_others(tmp_path, monkeypatch):
    """Against a stand-in API server (what is sent, not a cluster)."""
    from .test_deploy_apply import FakeApiServer
    from .test_deploy_clusters import CLUSTERS, _cluster

    server = FakeApiServer().start()
    kubeconfig = _kubeconfig(tmp_path, server.url)
    server.objects[CLUSTERS] = {"kind": "ClusterList", "apiVersion": "cluster.karmada.io/v1alpha1", "metadata": {},
                                "items": [_cluster("edge-c")]}
    monkeypatch.setenv("MAPEMESH_DATA", str(tmp_path))
    monkeypatch.setenv("MAPEMESH_KUBECONFIG", str(kubeconfig))
    from mapemesh.functions import deploy as deploy_module

    monkeypatch.setattr(deploy_module, "_follow", lambda *a, **k: None)
    from_environment.cache_clear()
    store = from_environment()
    two = {"MLSysOpsApp": {**APP["MLSysOpsApp"], "components": [
        *APP["MLSysOpsApp"]["components"],
        {"metadata": {"name": "db"}, "containers": [{"image": "postgres:17",
                                                      "ports": [{"container_port": 5432, "protocol": "TCP"}]}]}]}}
    try:
        store.put("applications", "shop", {"description": two})
        first = catalogue.parse_data(asyncio.run(deploy(ev(catalogue.DeployRequested(
            app_id="shop", placement={"web": ["edge-c"], "db": ["edge-c"]})))))
        assert first.status == "Applied"
        store.put("applications", "shop", {"description": APP})  # db is gone from the description
        second = catalogue.parse_data(asyncio.run(deploy(ev(catalogue.DeployRequested(
            app_id="shop", placement={"web": ["edge-c"]})))))
        assert second.status == "Applied"
        deleted = {r.path for r in server.requests if r.method == "DELETE"}
        assert "/apis/apps/v1/namespaces/default/deployments/shop-db" in deleted
        assert "/api/v1/namespaces/default/services/db" in deleted
        assert "/apis/apps/v1/namespaces/default/deployments/shop-web" not in deleted
        # Another application's object of the same name is not taken over.
        store.put("applications", "blog", {"description": {"MLSysOpsApp": {**APP["MLSysOpsApp"], "name": "blog"}}})
        clash = catalogue.parse_data(asyncio.run(deploy(ev(catalogue.DeployRequested(
            app_id="blog", placement={"web": ["edge-c"]})))))
        assert clash.status == "Failed" and "belongs to application shop" in clash.message
    finally:
        store.close()
        from_environment.cache_clear()
        server.stop()


def test_two_local_writes_of_one_application_at_once_both_land_and_leave_no_temporary_folder(tmp_path):
    """Two placement plans for one application reach the deploy function together: the second swap must wait for
    the first (it failed with ENOTEMPTY and left a `.APP.old.*` folder before)."""
    import threading

    from mapemesh.functions.deploy import write_local

    objects = {"local": [{"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x", "namespace": "default"},
                          "data": {"k": "v"}}]}
    errors: list[BaseException] = []
    start = threading.Barrier(4)

    def writer(n: int) -> None:
        start.wait()
        for i in range(25):
            try:
                write_local(tmp_path, "race-app", objects, f"plan-{n}-{i}")
            except BaseException as exc:  # collected: an assertion in a thread would be lost
                errors.append(exc)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    left = sorted(p.name for p in (tmp_path / "deployments").iterdir())
    assert left == [".race-app.lock", "race-app"]
    assert json.loads((tmp_path / "deployments" / "race-app" / "STATUS").read_text())["plan_id"].startswith("plan-")
