"""Brokers come from Knative Broker manifests and follow the files as they change."""

from __future__ import annotations

import httpx

from mapemesh import manifests
from mapemesh.eventing.brokers import BrokerRegistry

from .conftest import add_resources, wait_for

BROKER = """apiVersion: eventing.knative.dev/v1
kind: Broker
metadata:
  name: {name}
  namespace: {ns}
"""


def test_registry_reads_brokers_and_reports_bad_documents(tmp_path):
    (tmp_path / "a.yaml").write_text(BROKER.format(name="default", ns="default") + "---\n"
                                     + BROKER.format(name="edge", ns="site-1"))
    (tmp_path / "b.yaml").write_text("apiVersion: eventing.knative.dev/v1\nkind: Broker\nmetadata: {}\n")
    (tmp_path / "c.yaml").write_text("key: [unclosed\n")
    (tmp_path / "d.yaml").write_text(BROKER.format(name="default", ns="default"))
    reg = BrokerRegistry(tmp_path)
    assert set(reg.brokers) == {"default/default", "site-1/edge"}
    errors = "\n".join(reg.errors)
    assert "no metadata.name" in errors and "cannot read YAML" in errors and "declared twice" in errors


def test_namespace_defaults_to_default(tmp_path):
    (tmp_path / "a.yml").write_text("apiVersion: eventing.knative.dev/v1\nkind: Broker\nmetadata:\n  name: x\n")
    assert BrokerRegistry(tmp_path).get("default", "x") is not None


def test_project_manifests_declare_the_default_broker():
    found = manifests.load(manifests_root())
    assert not found.errors
    assert [m.key for m in found.of(manifests.EVENTING_V1, "Broker")] == ["default/default"]


def manifests_root():
    from .conftest import REPO
    return REPO / "knative"


def test_running_broker_picks_up_new_and_removed_brokers(broker):
    headers = {"ce-specversion": "1.0", "ce-id": "1", "ce-source": "/s", "ce-type": "t"}
    url = broker.url + "/site-1/edge"
    assert httpx.post(url, headers=headers).status_code == 404
    extra = broker.manifests / "edge.yaml"
    extra.write_text(BROKER.format(name="edge", ns="site-1"))
    kustomization = broker.manifests / "kustomization.yaml"
    listed = kustomization.read_text()
    add_resources(broker.manifests, "edge.yaml")  # kubectl apply -k applies what the kustomization lists
    wait_for(lambda: httpx.post(url, headers=headers).status_code == 202, what="the new broker")
    extra.write_text("this: [is broken\n")  # a half-saved or mistyped file keeps its last good objects
    wait_for(lambda: "cannot read YAML" in json_stats(broker), what="the broken file to be noticed")
    assert httpx.post(url, headers=headers).status_code == 202
    kustomization.write_text(listed)
    extra.unlink()
    wait_for(lambda: httpx.post(url, headers=headers).status_code == 404, what="the broker to go away")
    assert httpx.post(broker.ingress, headers=headers).status_code == 202


def json_stats(broker) -> str:
    return httpx.get(broker.url + "/healthz").text


def test_a_broken_file_keeps_its_last_good_objects(tmp_path):
    f = tmp_path / "b.yaml"
    f.write_text(BROKER.format(name="edge", ns="site-1"))
    reg = BrokerRegistry(tmp_path)
    assert set(reg.brokers) == {"site-1/edge"}
    f.write_text("apiVersion: [oops\n")
    reg.reload()
    assert set(reg.brokers) == {"site-1/edge"}
    assert any("keeping its last good version" in e for e in reg.errors)
    f.unlink()
    reg.reload()
    assert reg.brokers == {}


def test_an_edit_made_while_the_manifests_load_is_seen_at_the_next_look(tmp_path, monkeypatch):
    from mapemesh import manifests

    f = tmp_path / "b.yaml"
    f.write_text(BROKER.format(name="edge", ns="site-1"))
    reg = BrokerRegistry(tmp_path)
    f.write_text(BROKER.format(name="edge", ns="site-2"))
    real = manifests._read

    def racing(path, cache, result):
        docs = real(path, cache, result)  # read as it was
        path.write_text(BROKER.format(name="core", ns="site-3") + "\n")  # then edited while the load runs
        return docs

    monkeypatch.setattr(manifests, "_read", racing)
    reg.reload()
    monkeypatch.undo()
    assert set(reg.brokers) == {"site-2/edge"}
    assert reg.reload() is True and set(reg.brokers) == {"site-3/core"}
