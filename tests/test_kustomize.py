"""mapemesh's kustomize renderer: what it supports gives `kubectl kustomize`'s result; the rest is refused by name."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from mapemesh import kustomize, manifests
from mapemesh.kustomize import KustomizeError

from .conftest import REPO


def write(path: Path, *docs: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump_all(docs, sort_keys=False))
    return path


def service(name: str, image: str = "mapemesh/functions:0.1.0", **labels: str) -> dict:
    return {"apiVersion": "serving.knative.dev/v1", "kind": "Service",
            "metadata": {"name": name, "namespace": "default", "labels": labels},
            "spec": {"template": {"spec": {"runtimeClassName": "urunc",
                                           "containers": [{"image": image, "env": [{"name": "A", "value": "1"}]}]}}}}


def objects(rendered: kustomize.Rendered) -> dict[tuple[str, str], dict]:
    return {(o["kind"], o["metadata"]["name"]): o for o, _ in rendered.objects}


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    write(tmp_path / "base" / "a.yaml", service("a", app="x"), service("b"))
    write(tmp_path / "base" / "kustomization.yaml", {"resources": ["a.yaml"]})
    return tmp_path


def test_resources_images_and_both_kinds_of_patch(tree):
    write(tree / "over" / "cm.yaml", {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"},
                                      "data": {"k": "v"}})
    write(tree / "over" / "kustomization.yaml", {
        "resources": ["../base", "cm.yaml"],
        "images": [{"name": "mapemesh/functions", "newName": "registry.example/mm/functions", "newTag": "1.2"}],
        "patches": [
            {"target": {"kind": "Service", "labelSelector": "app=x"},
             "patch": "- op: replace\n  path: /spec/template/spec/runtimeClassName\n  value: runc\n"
                      "- op: add\n  path: /spec/template/spec/containers/0/env/-\n  value: {name: B, value: '2'}\n"},
            {"patch": "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\ndata: {k: null, j: w}\n"},
        ]})
    got = objects(kustomize.render(tree / "over"))
    a, b = got[("Service", "a")], got[("Service", "b")]
    assert a["spec"]["template"]["spec"]["runtimeClassName"] == "runc"
    assert b["spec"]["template"]["spec"]["runtimeClassName"] == "urunc"  # not selected
    assert a["spec"]["template"]["spec"]["containers"][0]["env"] == [{"name": "A", "value": "1"},
                                                                     {"name": "B", "value": "2"}]
    assert {o["spec"]["template"]["spec"]["containers"][0]["image"] for o in (a, b)} == {
        "registry.example/mm/functions:1.2"}
    assert got[("ConfigMap", "c")]["data"] == {"j": "w"}


@pytest.mark.parametrize(("ref", "entry", "want"), [
    ("mapemesh/functions:0.1.0", {"newTag": "2"}, "mapemesh/functions:2"),
    ("mapemesh/functions", {"newName": "r.io/f"}, "r.io/f"),
    ("mapemesh/functions:0.1.0", {"digest": "sha256:ab"}, "mapemesh/functions@sha256:ab"),
    ("localhost:5000/mapemesh/functions:1", {"newTag": "2"}, "localhost:5000/mapemesh/functions:1"),  # other name
])
def test_image_references(ref, entry, want):
    assert kustomize.retag(ref, {"name": "mapemesh/functions", **entry}) == want


@pytest.mark.parametrize(("kustomization", "message"), [
    ({"resources": ["missing.yaml"]}, "missing.yaml does not exist"),
    ({"resources": ["a.yaml", "a.yaml"]}, "already a resource"),
    ({"resources": ["https://github.com/x/y"]}, "not a local file"),
    ({"resources": ["a.yaml"], "namespace": "mm"}, "namespace not supported"),
    ({"resources": ["a.yaml"], "patches": [{"target": {"kind": "Deployment"}, "patch": "- {op: remove, path: /x}"}]},
     "no resource matches"),
    ({"resources": ["a.yaml"], "patches": [{"target": {"kind": "Service"}, "patch": "- {op: remove, path: /nope}"}]},
     "operation 0"),
])
def test_what_cannot_be_rendered_is_refused_with_the_reason(tree, kustomization, message):
    write(tree / "base" / "kustomization.yaml", kustomization)
    with pytest.raises(KustomizeError, match=message):
        kustomize.render(tree / "base")


def test_a_resource_cycle_is_refused(tmp_path):
    write(tmp_path / "a" / "kustomization.yaml", {"resources": ["../b"]})
    write(tmp_path / "b" / "kustomization.yaml", {"resources": ["../a"]})
    with pytest.raises(KustomizeError, match="cycle"):
        kustomize.render(tmp_path / "a")


def test_the_mesh_reads_a_kustomization_and_not_every_file_under_it(tree):
    write(tree / "base" / "stray.yaml", service("stray"))  # not in the kustomization: kubectl apply -k skips it
    found = manifests.load(tree / "base")
    assert sorted(m.name for m in found.objects) == ["a", "b"] and not found.errors
    assert {p.name for p in found.inputs} == {"kustomization.yaml", "a.yaml"}


def test_a_file_that_breaks_keeps_its_last_good_objects(tree):
    cache: dict = {}
    manifests.load(tree / "base", cache)
    (tree / "base" / "a.yaml").write_text("kind: [unclosed")
    found = manifests.load(tree / "base", cache)
    assert sorted(m.name for m in found.objects) == ["a", "b"]
    assert any("cannot read YAML" in e and "last good" in e for e in found.errors)


def test_a_broken_kustomization_is_an_error_not_a_crash(tree):
    write(tree / "base" / "kustomization.yaml", {"resources": ["gone.yaml"]})
    found = manifests.load(tree / "base")
    assert found.objects == [] and any("gone.yaml does not exist" in e for e in found.errors)


KUBECTL = shutil.which("kubectl")


@pytest.mark.skipif(KUBECTL is None, reason="kubectl is not installed: the cross-check with kubectl kustomize "
                                            "needs it (mapemesh's own renderer is checked above)")
@pytest.mark.parametrize("directory", ["knative", "knative/overlays/local", "knative/overlays/cluster"])
def test_the_bundle_renders_as_kubectl_kustomize_renders_it(directory):
    out = subprocess.run([KUBECTL, "kustomize", str(REPO / directory)], capture_output=True, text=True, check=True)
    theirs = {kustomize.resource_id(o): o for o in yaml.safe_load_all(out.stdout) if o}
    ours = {kustomize.resource_id(o): o for o, _ in kustomize.render(REPO / directory).objects}
    assert set(ours) == set(theirs)
    for key, obj in ours.items():
        assert obj == theirs[key], key


@pytest.mark.parametrize(("patch", "message"), [
    ({"patch": "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d}\nspec: {template: {spec: "
               "{containers: [{name: c, image: x}]}}}\n"}, "sets a list"),
    ({"patch": "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d}\nspec: {$patch: replace}\n"},
     r"\$patch at /spec"),
    ({"target": {"kind": "Deployment", "labelSelector": "app!=x"}, "patch": "- {op: remove, path: /x}"},
     "only k=v and k terms"),
])
def test_what_kustomize_would_merge_differently_is_refused(tmp_path, patch, message):
    write(tmp_path / "d.yaml", {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d"},
                                "spec": {"template": {"spec": {"containers": [{"name": "c", "image": "y"},
                                                                              {"name": "s", "image": "z"}]}}}})
    write(tmp_path / "kustomization.yaml", {"resources": ["d.yaml"], "patches": [patch]})
    with pytest.raises(KustomizeError, match=message):
        kustomize.render(tmp_path)
