"""Rendering application descriptions and placement plans as Kubernetes, Knative and Karmada objects."""

from __future__ import annotations

import copy
import os
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from mapemesh.functions.deploy.render import RenderError, dns_name, render_app, to_yaml_files

from .conftest import k8s_validation

REFERENCE = Path(__file__).parents[2] / "shared" / "reference"
SAMPLE = REFERENCE / "mlsysops" / "app-description.user_provided.yaml"
KARMADA = REFERENCE / "karmada"
GOLDEN = Path(__file__).parent / "golden" / "deploy" / "sample"
SAMPLE_PLACEMENT = {"server-app": ["c1"], "client-app": ["c1", "c2"]}
K8S_VERSION = "1.30.0"
DNS_1035 = re.compile(r"[a-z]([-a-z0-9]{0,61}[a-z0-9])?")


def sample() -> dict[str, Any]:
    if not SAMPLE.is_file():
        pytest.skip(f"the upstream MLSysOps sample is not here ({SAMPLE}); it comes with the shared reference folder")
    return yaml.safe_load(SAMPLE.read_text(encoding="utf-8"))


def rich() -> dict[str, Any]:
    """A description using every feature: Divided weights, per-architecture images, two containers, a function."""
    return {"MLSysOpsApp": {"name": "Shop_App", "components": [
        {"metadata": {"name": "web", "uid": "u1"}, "replicas": 4,
         "node_placement": {"continuum_layer": ["edge", "fog"], "labels": ["zone:a", "gpu"], "node": "n1"},
         "restart_policy": "on_failure", "host_network": True, "runtime_class_name": "kata",
         "replica_scheduling": {"type": "Divided", "weights": {"c1": 3, "c2": 1, "gone": 7}},
         "containers": [
             {"image": "web:1", "image_per_architecture": {"arm64": "web:1-arm", "amd64": "web:1"},
              "command": ["serve", "--port", 8080],
              "env": [{"name": "A", "value": 1}, {"name": "FLAG", "value": True},
                      {"name": "POD", "value_from": {"field_ref": {"field_path": "metadata.name"}}}],
              "ports": [{"container_port": 8080}, {"container_port": 8080, "protocol": "udp"}],
              "image_pull_policy": "Always",
              "platform_requirements": {"cpu": {"requests": "250m", "limits": 1, "architecture": ["amd64", "arm64"],
                                                "frequency": 1.4},
                                        "memory": {"requests": "64Mi"}, "gpu": {"model": "k80"}}},
             {"image": "sidecar:2", "image_per_architecture": {"arm64": "sidecar:2-arm"},
              "platform_requirements": {"cpu": {"architecture": ["arm64", "amd64"]}}}]},
        {"metadata": {"name": "thumbnail"}, "function": True,
         "containers": [{"image": "thumb:1", "ports": [{"container_port": 8080}],
                         "platform_requirements": {"cpu": {"architecture": ["arm64"]}}}]},
        {"metadata": {"name": "resize"}, "kind": "function", "containers": [{"image": "resize:1"}]},
    ]}}


RICH_PLACEMENT = {"web": ["c2", "c1", "c4"], "thumbnail": ["c3"], "resize": ["c3"]}
RICH_ARCH = {"c1": "amd64", "c2": "arm64", "c3": "arm64", "c4": "arm64"}


def render_rich(**kwargs: Any):
    return render_app(rich(), RICH_PLACEMENT, cluster_arch=RICH_ARCH, app_id="shop-123", **kwargs)


def find(objects: list[dict], kind: str, name: str, api: str | None = None) -> dict:
    found = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name
             and (api is None or o["apiVersion"] == api)]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} found"
    return found[0]


def expressions(obj: dict) -> list[dict]:
    pod = obj["spec"]["template"]["spec"]
    terms = pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    assert len(terms) == 1, "one term: MLSysOps requires every condition at once"
    return terms[0]["matchExpressions"]


# --- golden files and schemas -----------------------------------------------------------------------------------


def test_the_upstream_sample_renders_as_the_golden_files():
    files = to_yaml_files(render_app(sample(), SAMPLE_PLACEMENT).objects)
    if os.environ.get("MAPEMESH_UPDATE_GOLDEN") == "1":
        GOLDEN.mkdir(parents=True, exist_ok=True)
        for old in GOLDEN.glob("*.yaml"):
            old.unlink()
        for name, text in files.items():
            (GOLDEN / name).write_text(text, encoding="utf-8")
    expected = {path.name: path.read_text(encoding="utf-8") for path in GOLDEN.glob("*.yaml")}
    hint = "if the change is intended, regenerate with MAPEMESH_UPDATE_GOLDEN=1 and review the diff"
    assert sorted(files) == sorted(expected), hint
    for name, text in files.items():
        assert text == expected[name], f"{name} differs from {GOLDEN / name}; {hint}"


def _renderings() -> list[tuple[str, Any]]:
    out = [("rich", render_rich()), ("rich-plain", render_rich(karmada=False))]
    if SAMPLE.is_file():
        out.append(("sample", render_app(sample(), SAMPLE_PLACEMENT)))
    return out


def test_every_core_object_is_valid_kubernetes():
    kubernetes_validate = k8s_validation()
    checked = 0
    for label, rendering in _renderings():
        core = [o for o in rendering.objects if o["apiVersion"] != "policy.karmada.io/v1alpha1"]
        for obj in core + [o for objs in rendering.per_cluster.values() for o in objs]:
            # Knative's Service is a CRD, not in the Kubernetes schemas kubernetes_validate bundles; its pod spec
            # is built by the same code as the Deployment's, which is checked here.
            if obj["apiVersion"] == "serving.knative.dev/v1":
                continue
            for version in (K8S_VERSION, kubernetes_validate.utils.latest_version()):
                try:
                    kubernetes_validate.validate(obj, version, strict=True)
                except kubernetes_validate.ValidationError as exc:
                    pytest.fail(f"{label}: {obj['kind']} {obj['metadata']['name']} is not valid in Kubernetes "
                                f"{version}: {exc.message} at {'/'.join(map(str, exc.path))}")
            checked += 1
    assert checked >= 10


def _strict(schema: Any) -> Any:
    # The API server prunes fields a structural schema does not name, silently; a misspelt field would vanish, so
    # the test rejects unknown fields wherever the CRD does not keep them on purpose.
    if isinstance(schema, list):
        return [_strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: _strict(v) for k, v in schema.items()}
    if "properties" in out and "additionalProperties" not in out \
            and not out.get("x-kubernetes-preserve-unknown-fields"):
        out["additionalProperties"] = False
    return out


def _crd_schema(kind: str) -> dict:
    path = KARMADA / {"PropagationPolicy": "policy.karmada.io_propagationpolicies.yaml",
                      "OverridePolicy": "policy.karmada.io_overridepolicies.yaml"}[kind]
    if not path.is_file():
        pytest.skip(f"the Karmada CRDs are not here ({KARMADA}); they come with the shared reference folder")
    crd = yaml.safe_load(path.read_text(encoding="utf-8"))
    version = next(v for v in crd["spec"]["versions"] if v["name"] == "v1alpha1")
    return _strict(version["schema"]["openAPIV3Schema"])


def test_karmada_policies_validate_against_the_crd_schemas():
    jsonschema = pytest.importorskip("jsonschema")
    schemas = {kind: _crd_schema(kind) for kind in ("PropagationPolicy", "OverridePolicy")}
    kinds = set()
    for _, rendering in _renderings():
        for obj in rendering.objects:
            if obj["apiVersion"] == "policy.karmada.io/v1alpha1":
                jsonschema.Draft7Validator(schemas[obj["kind"]]).validate(obj)
                kinds.add(obj["kind"])
    assert kinds == {"PropagationPolicy", "OverridePolicy"}


def test_the_strict_crd_check_rejects_a_misspelt_field():
    jsonschema = pytest.importorskip("jsonschema")
    policy = copy.deepcopy(find(render_rich().objects, "PropagationPolicy", "shop-app-web"))
    policy["spec"]["placement"]["clusterAffinity"]["clusterName"] = ["c1"]
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft7Validator(_crd_schema("PropagationPolicy")).validate(policy)


# --- pod specs ------------------------------------------------------------------------------------------------


def test_node_affinity_has_layer_labels_architecture_and_the_planned_node():
    objects = render_rich().objects
    assert expressions(find(objects, "Deployment", "shop-app-web")) == [
        {"key": "mlsysops.eu/continuum-layer", "operator": "In", "values": ["edge", "fog"]},
        {"key": "zone", "operator": "In", "values": ["a"]},
        {"key": "gpu", "operator": "Exists"},
        {"key": "kubernetes.io/arch", "operator": "In", "values": ["amd64", "arm64"]},
        {"key": "kubernetes.io/hostname", "operator": "In", "values": ["n1"]},
    ]
    planned = render_app(rich(), RICH_PLACEMENT, nodes={"web": "n9", "ghost": "n0"}).objects
    assert expressions(find(planned, "Deployment", "shop-app-web"))[-1] == {
        "key": "kubernetes.io/hostname", "operator": "In", "values": ["n9"]}
    assert "affinity" not in find(planned, "Service", "shop-app-resize", "serving.knative.dev/v1")["spec"][
        "template"]["spec"]


def test_the_sample_client_needs_an_edge_raspberry_pi_on_arm64():
    objects = render_app(sample(), SAMPLE_PLACEMENT).objects
    assert expressions(find(objects, "Deployment", "test-application-client-app")) == [
        {"key": "mlsysops.eu/continuum-layer", "operator": "In", "values": ["edge"]},
        {"key": "node-type", "operator": "In", "values": ["rpi"]},
        {"key": "kubernetes.io/arch", "operator": "In", "values": ["arm64"]},
    ]


def test_env_values_are_strings_and_field_refs_become_value_from():
    pod = find(render_rich().objects, "Deployment", "shop-app-web")["spec"]["template"]["spec"]
    assert pod["containers"][0]["env"] == [
        {"name": "A", "value": "1"}, {"name": "FLAG", "value": "true"},
        {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}]


def test_resources_come_from_cpu_and_memory_requirements_only():
    pod = find(render_rich().objects, "Deployment", "shop-app-web")["spec"]["template"]["spec"]
    assert pod["containers"][0]["resources"] == {"requests": {"cpu": "250m", "memory": "64Mi"},
                                                 "limits": {"cpu": "1"}}
    assert "resources" not in pod["containers"][1]
    sample_pod = find(render_app(sample(), SAMPLE_PLACEMENT).objects, "Deployment",
                      "test-application-server-app")["spec"]["template"]["spec"]
    assert sample_pod["containers"][0]["resources"] == {"requests": {"cpu": "250m", "memory": "64Mi"},
                                                        "limits": {"cpu": "500m", "memory": "128Mi"}}


def test_deployment_pod_spec_and_service():
    objects = render_rich().objects
    deployment = find(objects, "Deployment", "shop-app-web")
    pod = deployment["spec"]["template"]["spec"]
    assert deployment["spec"]["replicas"] == 4
    assert [c["name"] for c in pod["containers"]] == ["web", "web-1"]
    assert pod["containers"][0]["command"] == ["serve", "--port", "8080"]
    assert pod["containers"][0]["imagePullPolicy"] == "Always"
    assert pod["restartPolicy"] == "Always" and pod["hostNetwork"] is True and pod["runtimeClassName"] == "kata"
    service = find(objects, "Service", "web", "v1")  # named after the component: components call each other so
    assert service["spec"]["selector"] == pod_labels(deployment)
    assert service["spec"]["ports"] == [
        {"name": "p8080", "port": 8080, "targetPort": 8080, "protocol": "TCP"},
        {"name": "p8080-udp", "port": 8080, "targetPort": 8080, "protocol": "UDP"}]


def pod_labels(obj: dict) -> dict:
    return obj["spec"]["template"]["metadata"]["labels"]


def test_function_components_become_knative_services_without_a_kubernetes_service():
    rendering = render_rich()
    for name in ("shop-app-thumbnail", "shop-app-resize"):
        ksvc = find(rendering.objects, "Service", name)
        assert ksvc["apiVersion"] == "serving.knative.dev/v1"
        assert not [o for o in rendering.objects if o["kind"] == "Deployment" and o["metadata"]["name"] == name]
        pod = ksvc["spec"]["template"]["spec"]
        assert "restartPolicy" not in pod and "hostNetwork" not in pod and "replicas" not in ksvc["spec"]
    thumbnail = find(rendering.objects, "Service", "shop-app-thumbnail")["spec"]["template"]["spec"]
    assert thumbnail["containers"] == [{"name": "thumbnail", "image": "thumb:1",
                                        "ports": [{"containerPort": 8080, "protocol": "TCP"}]}]
    assert expressions(find(rendering.objects, "Service", "shop-app-thumbnail")) == [
        {"key": "kubernetes.io/arch", "operator": "In", "values": ["arm64"]}]
    policy = find(rendering.objects, "PropagationPolicy", "shop-app-thumbnail")
    assert policy["spec"]["resourceSelectors"] == [{"apiVersion": "serving.knative.dev/v1", "kind": "Service",
                                                    "name": "shop-app-thumbnail", "namespace": "default"}]


# --- Karmada ------------------------------------------------------------------------------------------------


def test_propagation_policies_select_exactly_the_components_objects():
    rendering = render_app(sample(), SAMPLE_PLACEMENT, namespace="apps")
    policy = find(rendering.objects, "PropagationPolicy", "test-application-client-app")
    assert policy["metadata"]["namespace"] == "apps"
    assert policy["spec"]["resourceSelectors"] == [
        {"apiVersion": "apps/v1", "kind": "Deployment", "name": "test-application-client-app", "namespace": "apps"},
        {"apiVersion": "v1", "kind": "Service", "name": "client-app", "namespace": "apps"}]
    assert policy["spec"]["placement"] == {"clusterAffinity": {"clusterNames": ["c1", "c2"]},
                                           "replicaScheduling": {"replicaSchedulingType": "Duplicated"}}
    assert [o["kind"] for o in rendering.objects] == ["Deployment", "Service"] * 2 + ["PropagationPolicy"] * 2


def test_divided_scheduling_has_static_weights_for_the_planned_clusters():
    rendering = render_rich()
    placement = find(rendering.objects, "PropagationPolicy", "shop-app-web")["spec"]["placement"]
    assert placement["clusterAffinity"] == {"clusterNames": ["c1", "c2", "c4"]}
    assert placement["replicaScheduling"] == {
        "replicaSchedulingType": "Divided", "replicaDivisionPreference": "Weighted",
        "weightPreference": {"staticWeightList": [
            {"targetCluster": {"clusterNames": ["c1"]}, "weight": 3},
            {"targetCluster": {"clusterNames": ["c2"]}, "weight": 1},
            {"targetCluster": {"clusterNames": ["c4"]}, "weight": 1}]}}
    shares = {cluster: find(objs, "Deployment", "shop-app-web")["spec"]["replicas"]
              for cluster, objs in rendering.per_cluster.items() if cluster != "c3"}
    assert shares == {"c1": 2, "c2": 1, "c4": 1}


def test_override_policy_replaces_images_per_architecture():
    rendering = render_rich()
    override = find(rendering.objects, "OverridePolicy", "shop-app-web")
    assert override["spec"] == {
        "resourceSelectors": [{"apiVersion": "apps/v1", "kind": "Deployment", "name": "shop-app-web",
                               "namespace": "default"}],
        "overrideRules": [{"targetCluster": {"clusterNames": ["c2", "c4"]}, "overriders": {"plaintext": [
            {"path": "/spec/template/spec/containers/0/image", "operator": "replace", "value": "web:1-arm"},
            {"path": "/spec/template/spec/containers/1/image", "operator": "replace", "value": "sidecar:2-arm"}]}}]}
    assert [o["kind"] for o in rendering.objects if o["kind"] == "OverridePolicy"] == ["OverridePolicy"]
    assert rendering.objects[-1] is override, "OverridePolicies come last"
    # Without cluster architectures nothing needs overriding.
    plain = render_app(rich(), RICH_PLACEMENT)
    assert not [o for o in plain.objects if o["kind"] == "OverridePolicy"]


def test_karmada_false_renders_no_policies_and_the_same_clusters():
    with_karmada, without = render_rich(), render_rich(karmada=False)
    assert not [o for o in without.objects if o["apiVersion"].startswith("policy.karmada.io")]
    assert without.objects == [o for o in with_karmada.objects if not o["apiVersion"].startswith("policy.karmada")]
    assert without.per_cluster == with_karmada.per_cluster


def test_per_cluster_holds_what_each_cluster_runs():
    per_cluster = render_rich().per_cluster
    assert sorted(per_cluster) == ["c1", "c2", "c3", "c4"]
    assert [(o["kind"], o["metadata"]["name"]) for o in per_cluster["c3"]] == [
        ("Service", "shop-app-thumbnail"), ("Service", "shop-app-resize")]
    images = {c: [x["image"] for x in find(per_cluster[c], "Deployment", "shop-app-web")["spec"]["template"]["spec"][
        "containers"]] for c in ("c1", "c2", "c4")}
    assert images == {"c1": ["web:1", "sidecar:2"], "c2": ["web:1-arm", "sidecar:2-arm"],
                      "c4": ["web:1-arm", "sidecar:2-arm"]}
    assert not [o for objs in per_cluster.values() for o in objs if o["kind"].endswith("Policy")]
    sample_clusters = render_app(sample(), SAMPLE_PLACEMENT).per_cluster
    assert {c: [o["metadata"]["name"] for o in objs if o["kind"] == "Deployment"]
            for c, objs in sample_clusters.items()} == {
        "c1": ["test-application-server-app", "test-application-client-app"], "c2": ["test-application-client-app"]}


def test_components_missing_from_the_plan_go_to_the_descriptions_clusters():
    rendering = render_app(sample(), {"client-app": ["c2"], "removed-component": ["c9"]})
    assert sorted(rendering.per_cluster) == ["c2", "mls-ubiw-1"]
    policy = find(rendering.objects, "PropagationPolicy", "test-application-server-app")
    assert policy["spec"]["placement"]["clusterAffinity"] == {"clusterNames": ["mls-ubiw-1"]}


# --- labels and names -------------------------------------------------------------------------------------------


def test_every_object_and_pod_template_carries_the_app_labels():
    rendering = render_rich()
    for obj in rendering.objects + [o for objs in rendering.per_cluster.values() for o in objs]:
        component = {"shop-app-web": "web", "shop-app-thumbnail": "thumbnail", "shop-app-resize": "resize",
                     "web": "web", "thumbnail": "thumbnail", "resize": "resize"}[obj["metadata"]["name"]]
        expected = {"app.kubernetes.io/part-of": "Shop_App", "app.kubernetes.io/name": component,
                    "app.kubernetes.io/managed-by": "mapemesh", "mapemesh.dev/app": "shop-123"}
        assert obj["metadata"]["labels"] == expected, obj["kind"]
        if "template" in obj["spec"]:
            assert pod_labels(obj) == expected
        if obj["kind"] == "Deployment":
            assert obj["spec"]["selector"]["matchLabels"] == expected
    assert rendering.app == "Shop_App"
    assert find(render_app(rich(), RICH_PLACEMENT).objects, "Deployment", "shop-app-web")["metadata"]["labels"][
        "mapemesh.dev/app"] == "Shop_App", "the app name labels the objects when there is no app id"


def test_names_are_dns_labels():
    assert dns_name("Shop_App", "Web.Front") == "shop-app-web-front"
    assert dns_name("9lives", "x") == "x-9lives-x"
    long_a, long_b = dns_name("a" * 70, "one"), dns_name("a" * 70, "two")
    assert len(long_a) == len(long_b) == 63 and long_a != long_b
    description = {"MLSysOpsApp": {"name": "My App!", "components": [
        {"metadata": {"name": "Über Component" + "x" * 60}, "containers": [{"image": "i", "ports": [
            {"container_port": 80}]}, {"image": "j"}]}]}}
    rendering = render_app(description, {"Über Component" + "x" * 60: ["c1"]})
    for obj in rendering.objects:
        assert DNS_1035.fullmatch(obj["metadata"]["name"]), obj["metadata"]["name"]
        assert all(len(v) <= 63 for v in obj["metadata"]["labels"].values())
    containers = rendering.objects[0]["spec"]["template"]["spec"]["containers"]
    assert all(DNS_1035.fullmatch(c["name"]) for c in containers)
    assert containers[1]["name"].endswith("-1")


# --- errors ---------------------------------------------------------------------------------------------------


def _with(change: Any) -> dict:
    description = rich()
    change(description["MLSysOpsApp"])
    return description


ERRORS = [
    ("missing image", lambda a: a["components"][1]["containers"][0].pop("image"),
     "components[1].containers[0].image: required"),
    ("missing name", lambda a: a["components"][2]["metadata"].pop("name"), "components[2].metadata.name: required"),
    ("no containers", lambda a: a["components"][2].pop("containers"), "components[2].containers: required"),
    ("env without name", lambda a: a["components"][0]["containers"][0]["env"][1].pop("name"),
     "components[0].containers[0].env[1].name: required"),
    ("bad value_from", lambda a: a["components"][0]["containers"][0]["env"][2].update(
        value_from={"secret_key_ref": {"name": "s"}}), "components[0].containers[0].env[2].value_from.field_ref"),
    ("bad port", lambda a: a["components"][0]["containers"][0]["ports"][1].update(container_port="80"),
     "components[0].containers[0].ports[1].container_port:"),
    ("bad protocol", lambda a: a["components"][0]["containers"][0]["ports"][0].update(protocol="HTTP"),
     "components[0].containers[0].ports[0].protocol:"),
    ("bad pull policy", lambda a: a["components"][0]["containers"][0].update(image_pull_policy="always"),
     "components[0].containers[0].image_pull_policy:"),
    ("restart never", lambda a: a["components"][0].update(restart_policy="never"), "components[0].restart_policy:"),
    ("disjoint architectures", lambda a: a["components"][0]["containers"][1]["platform_requirements"]["cpu"].update(
        architecture=["riscv64"]), "components[0].containers: no CPU architecture"),
    ("bad weight", lambda a: a["components"][0]["replica_scheduling"]["weights"].update(c2=0),
     "components[0].replica_scheduling.weights.c2:"),
    ("bad scheduling type", lambda a: a["components"][0]["replica_scheduling"].update(type="Spread"),
     "components[0].replica_scheduling.type:"),
    ("divided function", lambda a: a["components"][1].update(replica_scheduling={"type": "Divided"}),
     "components[1].replica_scheduling.type:"),
    ("function with two ports", lambda a: a["components"][1]["containers"][0]["ports"].append(
        {"container_port": 9090}), "components[1].containers: a function serves exactly one port"),
    ("function on the host network", lambda a: a["components"][1].update(host_network=True),
     "components[1].host_network:"),
    ("negative replicas", lambda a: a["components"][0].update(replicas=-1), "components[0].replicas:"),
    ("same object name", lambda a: a["components"][2]["metadata"].update(name="WEB"),
     "components[2].metadata.name: 'WEB' gives the same object name as components[0]"),
    ("no app name", lambda a: a.pop("name"), "name: required"),
    ("no components", lambda a: a.update(components=[]), "components: required"),
]


@pytest.mark.parametrize(("change", "message"), [e[1:] for e in ERRORS], ids=[e[0] for e in ERRORS])
def test_render_errors_name_the_field(change: Any, message: str):
    placement = {**RICH_PLACEMENT, "WEB": ["c1"]}
    with pytest.raises(RenderError) as caught:
        render_app(_with(change), placement, cluster_arch=RICH_ARCH)
    assert str(caught.value).startswith(message), str(caught.value)


def test_a_component_without_clusters_is_an_error_naming_it():
    description = sample()
    description["MLSysOpsApp"].pop("cluster_placement")
    with pytest.raises(RenderError) as caught:
        render_app(description, {"server-app": ["c1"]})
    message = str(caught.value)
    assert message.startswith("components[1]: component 'client-app' has no clusters"), message
    assert "cluster_placement.cluster_id" in message


def test_a_bad_namespace_is_an_error():
    with pytest.raises(RenderError, match=r"^namespace:"):
        render_rich(namespace="Apps_1")


# --- output ---------------------------------------------------------------------------------------------------


def test_rendering_is_deterministic_and_leaves_the_description_alone():
    description = rich()
    before = copy.deepcopy(description)
    first = to_yaml_files(render_app(description, RICH_PLACEMENT, cluster_arch=RICH_ARCH).objects)
    shuffled = {k: list(reversed(v)) for k, v in reversed(list(RICH_PLACEMENT.items()))}
    second = to_yaml_files(render_app(description, shuffled, cluster_arch=dict(reversed(RICH_ARCH.items()))).objects)
    assert first == second
    assert description == before


def test_yaml_files_hold_one_object_each():
    rendering = render_rich()
    files = to_yaml_files(rendering.objects)
    assert list(files)[:3] == ["deployment-shop-app-web.yaml", "service-web.yaml",
                               "service-shop-app-thumbnail.yaml"]
    assert "overridepolicy-shop-app-web.yaml" in files
    assert [yaml.safe_load(text) for text in files.values()] == rendering.objects
    clash = to_yaml_files([{"kind": "Service", "metadata": {"name": "a"}}] * 2)
    assert list(clash) == ["service-a.yaml", "service-a-2.yaml"]
