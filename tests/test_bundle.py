"""The Knative bundle as a cluster would take it: every object of the base and of every overlay passes the checks a
cluster's API server and admission webhooks make, each rule named with its source.

| check                                                  | source of the rule                                      |
|--------------------------------------------------------|---------------------------------------------------------|
| core objects (Deployment, DaemonSet, StatefulSet, RBAC,| the Kubernetes OpenAPI schemas (kubernetes-validate,    |
| Services, ConfigMaps, NetworkPolicy, RuntimeClass) and | strict: unknown fields refused)                         |
| every Knative Service's pod spec                       |                                                         |
| Karmada policies: none in the bundle (the deploy       | ../shared/reference/karmada CRD schemas                 |
| function's are checked in test_deploy_render.py)       |                                                         |
| Knative Services: initial-scale vs                     | knative/serving admission (mapemesh.serving.admission,  |
| allow-zero-initial-scale, window bounds, min <= max,   | whose docstring names each file and function), under    |
| containerConcurrency, timeoutSeconds, feature-gated    | the bundle's own config-autoscaler/-defaults/-features  |
| pod fields, volumes                                    |                                                         |
| Triggers: one dialect per filters element, delivery    | knative/eventing trigger_validation.go and              |
| fields and the flags they need (retryAfterMax)         | delivery_types.go (mapemesh.eventing.triggers,          |
|                                                        | .deliveryspec, .features)                               |
| Brokers: an explicit class, delivery valid             | eventing broker_validation.go; delivery_types.go        |
| SinkBindings: subject and sink in the bundle           | Knative's SinkBinding (sources.knative.dev/v1)          |
| images: every mapemesh image renamed on the cluster    | kustomize `images:` (one place per overlay)             |
"""

from __future__ import annotations

import copy
import re
from pathlib import Path

import pytest
import yaml

from mapemesh import kustomize, manifests
from mapemesh.eventing.authz import policies_from
from mapemesh.eventing.brokers import brokers_from
from mapemesh.eventing.features import EventingFeatures
from mapemesh.eventing.triggers import load_triggers
from mapemesh.serving.admission import KnativeConfig, check_service

from .conftest import REPO, SHARED, k8s_validation

BUNDLES = ["knative", "knative/overlays/local", "knative/overlays/cluster"]
K8S_VERSIONS = ("1.30.0", "1.33.0")
CORE_GROUPS = ("v1", "apps/v1", "rbac.authorization.k8s.io/v1", "networking.k8s.io/v1", "node.k8s.io/v1")
KNATIVE_POD_FIELDS = ("containerConcurrency", "timeoutSeconds", "responseStartTimeoutSeconds", "idleTimeoutSeconds")
KARMADA = SHARED / "reference" / "karmada"


def render(directory: str) -> list[dict]:
    return [obj for obj, _ in kustomize.render(REPO / directory).objects]


def as_manifests(objects: list[dict]) -> manifests.ManifestSet:
    found = manifests.ManifestSet()
    for obj in objects:
        meta = obj["metadata"]
        found.objects.append(manifests.Manifest(obj["apiVersion"], obj["kind"], meta["name"],
                                                meta.get("namespace") or "default", obj, "bundle"))
    return found


@pytest.mark.parametrize("bundle", BUNDLES)
def test_core_objects_and_pod_specs_are_valid_kubernetes(bundle):
    kubernetes_validate = k8s_validation()
    checked = 0
    for obj in render(bundle):
        if obj["apiVersion"] == "serving.knative.dev/v1":
            # A Knative Service is a CRD; its pod spec is a core PodSpec plus Knative's own fields.
            spec = {k: copy.deepcopy(v) for k, v in obj["spec"]["template"]["spec"].items()
                    if k not in KNATIVE_POD_FIELDS}
            for container in spec["containers"]:
                container.setdefault("name", "user-container")  # Knative's default
            obj = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": obj["metadata"]["name"]}, "spec": spec}
        elif obj["apiVersion"] not in CORE_GROUPS:
            continue
        for version in K8S_VERSIONS:
            try:
                kubernetes_validate.validate(obj, version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                pytest.fail(f"{bundle}: {obj['kind']} {obj['metadata']['name']} is not valid in Kubernetes "
                            f"{version}: {exc.message} at {'/'.join(map(str, exc.path))}")
        checked += 1
    assert checked >= 12


@pytest.mark.parametrize("bundle", BUNDLES)
def test_the_bundle_ships_no_karmada_object(bundle):
    # mapemesh's Karmada objects are the deploy function's, made per application and checked against
    # ../shared/reference/karmada by tests/test_deploy_render.py; one added to the bundle needs the same check here.
    assert [o["kind"] for o in render(bundle) if o["apiVersion"].startswith("policy.karmada.io/")] == []


@pytest.mark.parametrize("bundle", BUNDLES)
def test_knative_serving_would_admit_every_service(bundle):
    objects = render(bundle)
    config = KnativeConfig.from_objects(objects)
    assert config.errors == ()
    services = [o for o in objects if o["apiVersion"] == "serving.knative.dev/v1" and o["kind"] == "Service"]
    assert services
    refused = {o["metadata"]["name"]: check_service(o, config) for o in services}
    assert {name: errors for name, errors in refused.items() if errors} == {}


def test_the_stage_services_need_the_bundles_autoscaler_setting():
    # initial-scale 0 is refused by a stock cluster (allow-zero-initial-scale false): the bundle carries the
    # setting, and without it the check fails, as Knative's webhook would.
    objects = [o for o in render("knative") if o["kind"] != "ConfigMap" or o["metadata"]["name"] != "config-autoscaler"]
    monitor = next(o for o in objects if o["kind"] == "Service" and o["metadata"]["name"] == "monitor")
    assert check_service(monitor, KnativeConfig.from_objects(objects)) == [
        "invalid value: 0: spec.template.metadata.annotations.autoscaling.knative.dev/initial-scale=0 not allowed by "
        "cluster"]


@pytest.mark.parametrize(("change", "expected"), [
    (lambda s: s["metadata"].setdefault("annotations", {}).update({"autoscaling.knative.dev/min-scale": "1"}),
     'invalid key name "autoscaling.knative.dev/min-scale": metadata.annotations'),
    (lambda s: _notes(s).update({"autoscaling.knative.dev/window": "5s"}),
     "expected 6s <= 5s <= 1h0m0s: spec.template.metadata.annotations.autoscaling.knative.dev/window"),
    (lambda s: _notes(s).update({"autoscaling.knative.dev/window": "PT60S"}), "invalid value: PT60S"),
    (lambda s: _notes(s).update({"autoscaling.knative.dev/min-scale": "5"}), "max-scale=2 is less than min-scale=5"),
    (lambda s: s["spec"]["template"]["spec"].update(containerConcurrency=1001),
     "expected 0 <= 1001 <= 1000: spec.template.spec.containerConcurrency"),
    (lambda s: s["spec"]["template"]["spec"].update(timeoutSeconds=601),
     "expected 0 <= 601 <= 600: spec.template.spec.timeoutSeconds"),
    (lambda s: s["spec"]["template"]["spec"].update(hostNetwork=True),
     "must not set the field(s): spec.template.spec.hostNetwork"),
])
def test_each_serving_rule_catches_a_planted_break(change, expected):
    objects = render("knative")
    config = KnativeConfig.from_objects(objects)
    service = copy.deepcopy(next(o for o in objects if o["kind"] == "Service" and o["metadata"]["name"] == "monitor"))
    assert check_service(service, config) == []
    change(service)
    assert any(e.startswith(expected) for e in check_service(service, config)), check_service(service, config)


def _notes(service: dict) -> dict:
    return service["spec"]["template"]["metadata"]["annotations"]


@pytest.mark.parametrize("bundle", BUNDLES)
def test_knative_eventing_would_admit_every_event_policy(bundle):
    # eventpolicy_validation.go: refused while authentication-oidc is off (the stock, and these bundles'); the
    # EventPolicies are in knative/authentication, which the README says how to add (tests/test_ingress_authz.py)
    assert policies_from(as_manifests(render(bundle)))[1] == []


@pytest.mark.parametrize("bundle", BUNDLES)
def test_knative_eventing_would_admit_every_broker_and_trigger(bundle):
    objects = render(bundle)
    found = as_manifests(objects)
    assert EventingFeatures.from_objects(objects).errors == ()
    brokers, errors = brokers_from(found)
    assert errors == [] and set(brokers) == {"default/default"}
    for obj in objects:
        if obj["kind"] == "Broker":
            assert obj["metadata"]["annotations"]["eventing.knative.dev/broker.class"]  # explicit, never defaulted
    triggers, _ = load_triggers(found)
    assert triggers and {t.key: t.reason for t in triggers if not t.ready} == {}


def test_the_cluster_broker_is_durable_and_the_local_one_says_it_is_not():
    [cluster] = [o for o in render("knative/overlays/cluster") if o["kind"] == "Broker"]
    assert cluster["metadata"]["annotations"]["eventing.knative.dev/broker.class"] == "Kafka"
    config = cluster["spec"]["config"]
    [kafka] = [o for o in render("knative/overlays/cluster") if o["kind"] == "ConfigMap"
               and o["metadata"]["name"] == config["name"] and o["metadata"]["namespace"] == config["namespace"]]
    assert {"bootstrap.servers", "default.topic.partitions", "default.topic.replication.factor"} <= set(kafka["data"])


@pytest.mark.parametrize("bundle", BUNDLES[1:])
def test_every_sink_binding_binds_something_of_the_bundle_to_its_broker(bundle):
    objects = render(bundle)
    bindings = [o for o in objects if o["kind"] == "SinkBinding"]
    assert bindings
    for binding in bindings:
        subject, sink = binding["spec"]["subject"], binding["spec"]["sink"]["ref"]
        assert any(o["kind"] == sink["kind"] and o["metadata"]["name"] == sink["name"] for o in objects)
        kind = [o for o in objects if o["apiVersion"] == subject["apiVersion"] and o["kind"] == subject["kind"]]
        if "name" in subject:
            assert any(o["metadata"]["name"] == subject["name"] for o in kind), subject
        else:
            wanted = subject["selector"]["matchLabels"]
            assert any(wanted.items() <= (o["metadata"].get("labels") or {}).items() for o in kind), subject


def test_on_the_cluster_every_mapemesh_image_comes_from_the_registry_set_once():
    images = set()

    def walk(node):
        if isinstance(node, dict):
            for key, value in node.items():
                if key in ("containers", "initContainers"):
                    images.update(c["image"] for c in value)
                walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(render("knative/overlays/cluster"))
    assert images and not [i for i in images if i.startswith("mapemesh/")]
    assert {i.split("/")[0] for i in images if "mapemesh" in i} == {"registry.example.com"}


@pytest.mark.parametrize("bundle", BUNDLES[1:])
def test_every_secret_a_pod_needs_is_named_in_the_readme(bundle):
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("## Run on a cluster"):]
    secrets = set()
    for obj in render(bundle):
        text = yaml.safe_dump(obj)
        secrets.update(re.findall(r"secretName: ([\w.-]+)", text))
    assert secrets and all(s in section for s in secrets), secrets


def test_the_readme_names_every_object_the_cluster_overlay_creates():
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("## Run on a cluster"):]
    section = section[:section.index("\n## ", 4)] if "\n## " in section[4:] else section
    missing = [f"{o['kind']} {o['metadata']['name']}" for o in render("knative/overlays/cluster")
               if f"`{o['metadata']['name']}`" not in section]
    assert missing == []


# -- images ------------------------------------------------------------------------------------------------------

def test_the_containerfiles_function_image_is_the_one_bunny_builds_on():
    from mapemesh.runtimes import build

    stage = (REPO / "Containerfile").read_text().split("AS functions", 1)[1].split("\nFROM ", 1)[0]
    ours = [line for line in build.CONTAINERFILE.splitlines() if line.startswith(("CMD", "ENV PORT", "RUN pip"))]
    assert all(line in (REPO / "Containerfile").read_text() for line in ours)
    assert "/urunit" in stage and build.URUNIT_IMAGE in (REPO / "Containerfile").read_text()


def _fake_engine(tmp_path, answers: bool):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "engine.log"
    script = bin_dir / "docker"
    script.write_text(f"#!/bin/sh\necho \"$@\" >> {log}\n" + ("exit 0\n" if answers else
                                                              '[ "$1" = info ] && exit 1\nexit 0\n'))
    script.chmod(0o755)
    return bin_dir, log


@pytest.mark.parametrize("answers", [True, False])
def test_make_images_builds_every_image_or_says_there_is_no_engine(tmp_path, answers):
    import os
    import shutil
    import subprocess

    if shutil.which("make") is None:
        pytest.skip("make is not installed (.ci/run installs it)")
    bin_dir, log = _fake_engine(tmp_path, answers)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    command = ["make", "-s", "images", "ENGINES=docker", f"CONTEXTS={tmp_path / 'contexts'}"]
    r = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    calls = log.read_text().splitlines() if log.exists() else []
    if not answers:
        assert r.returncode != 0 and "no container engine answers" in r.stderr and "nothing was built" in r.stderr
        assert not [c for c in calls if c.startswith("build")]
        return
    assert r.returncode == 0, r.stderr
    for target in ("functions", "api", "node-shim"):
        assert f"build -f Containerfile --target {target} -t mapemesh/{target}:0.1.0 ." in calls
    unikernels = {p.stem for p in (REPO / "bunnyfiles").glob("*.bunnyfile")
                  if p.stem.startswith(("policy-", "accel-"))}
    built = " ".join(calls)
    assert all(f"mapemesh/{name}:0.1.0-urunc" in built for name in unikernels), calls


def test_the_node_shim_sees_the_hosts_firmware_and_radio_files_where_its_knobs_look():
    # `--sysfs-root /host`: the FPGABitstream knob lists bitstreams under /host/lib/firmware, the RadioConfig knob
    # reads (and rewrites) /host/etc/mapemesh/radio.json and the GPS fix beside it; without the host's folders
    # there, a cluster's shim offers no bitstream and no radio.
    from mapemesh.node_shim.knobs.fpga import FIRMWARE
    from mapemesh.node_shim.knobs.radio import GPS_FILE, RADIO_FILE

    def shim(bundle: str) -> dict:
        [daemonset] = [o for o in render(bundle) if o["kind"] == "DaemonSet"
                       and o["metadata"]["name"] == "mapemesh-node-shim"]
        return daemonset["spec"]["template"]["spec"]

    pod = shim("knative/overlays/cluster")
    [container] = pod["containers"]
    args = container["args"]
    root = args[args.index("--sysfs-root") + 1]
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    assert Path(GPS_FILE).parent == Path(RADIO_FILE).parent
    for folder, writable in ((FIRMWARE, False), (str(Path(RADIO_FILE).parent), True)):
        mount = mounts[f"{root}/{folder}"]
        host = volumes[mount["name"]]["hostPath"]
        assert host["path"] == f"/{folder}" and host.get("type") in (None, "", "DirectoryOrCreate")
        assert mount.get("readOnly", False) is not writable
    # The local overlay's shims drive a simulated tree: nothing of the host is mounted.
    assert not [v for v in shim("knative/overlays/local")["volumes"] if "hostPath" in v
                and v["hostPath"]["path"] != "/var/lib/mapemesh"]
