"""The local host refuses every Service Knative's webhook refuses, with Knative's message, under the Knative config the
manifests carry; and admits a short window only through `MAPEMESH_LOCAL_MIN_WINDOW`.

| rule (knative/serving v1.23)                                  | test                                               |
|---------------------------------------------------------------|----------------------------------------------------|
| window in 6s..1h (autoscaling validateWindow)                 | RULES["window-short"], ["window-long"]             |
| Go durations only, not ISO-8601                               | RULES["window-iso"], ["retention-iso"]             |
| timeoutSeconds <= max-revision-timeout-seconds (600)          | RULES["timeout"]; config-defaults raises the limit |
| containerConcurrency <= container-concurrency-max-limit       | RULES["concurrency"]                               |
| no autoscaling annotation on the Service's metadata           | RULES["service-metadata"]                          |
| initial-scale 0 only with allow-zero-initial-scale            | RULES["zero-initial-scale"]                        |
| runtimeClassName only with kubernetes.podspec-runtimeclassname| RULES["runtime-class"]                             |

Each rule: the broken Service is not ready with Knative's message as the reason, and the same Service fixed (its
manifest, or the cluster's ConfigMap where that is the fix) is ready. The live test does the same through
`mapemesh up` and `mapemesh status`, with a good Service serving throughout; an update of a running Service that is
refused leaves its last admitted revision serving, as a cluster's webhook does.
"""

from __future__ import annotations

import copy
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
import yaml

from mapemesh.eventing.brokers import BrokerRegistry
from mapemesh.serving.admission import WINDOW_MIN_S
from mapemesh.serving.spec import services_from
from mapemesh.settings import Settings

from .conftest import REPO, wait_for

AT = "spec.template.metadata.annotations.autoscaling.knative.dev/"


def service(name: str = "fn", notes: dict | None = None, **spec: object) -> dict:
    return {"apiVersion": "serving.knative.dev/v1", "kind": "Service",
            "metadata": {"name": name, "namespace": "default"},
            "spec": {"template": {"metadata": {"annotations": dict(notes or {})}, "spec": {
                **spec, "containers": [{"image": "example/fn", "env": [
                    {"name": "FUNCTION_SOURCE", "value": "fns/echo.py"},
                    {"name": "FUNCTION_TARGET", "value": "echo"}]}]}}}}


def config_map(name: str, **data: str) -> dict:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "namespace": "knative-serving"},
            "data": data}


ALLOW_ZERO = config_map("config-autoscaler", **{"allow-zero-initial-scale": "true"})
RUNTIME_CLASS = config_map("config-features", **{"kubernetes.podspec-runtimeclassname": "enabled"})


def notes(**kv: str) -> dict:
    return {f"autoscaling.knative.dev/{k.replace('_', '-')}": v for k, v in kv.items()}


def on_metadata(doc: dict) -> dict:
    doc = copy.deepcopy(doc)
    doc["metadata"]["annotations"] = notes(min_scale="1")
    return doc


# name -> (broken docs, Knative's message, fixed docs)
RULES: dict[str, tuple[list[dict], str, list[dict]]] = {
    "window-short": ([service(notes=notes(window="5s"))], f"expected 6s <= 5s <= 1h0m0s: {AT}window",
                     [service(notes=notes(window="6s"))]),
    "window-long": ([service(notes=notes(window="2h"))], f"expected 6s <= 2h <= 1h0m0s: {AT}window",
                    [service(notes=notes(window="1h"))]),
    "window-iso": ([service(notes=notes(window="PT60S"))], f"invalid value: PT60S: {AT}window",
                   [service(notes=notes(window="60s"))]),
    "retention-iso": ([service(notes=notes(scale_to_zero_pod_retention_period="PT60S"))],
                      f"invalid value: PT60S: {AT}scale-to-zero-pod-retention-period",
                      [service(notes=notes(scale_to_zero_pod_retention_period="1m"))]),
    "timeout": ([service(timeoutSeconds=601)], "expected 0 <= 601 <= 600: spec.template.spec.timeoutSeconds",
                [service(timeoutSeconds=600)]),
    "concurrency": ([service(containerConcurrency=1001)],
                    "expected 0 <= 1001 <= 1000: spec.template.spec.containerConcurrency",
                    [service(containerConcurrency=1000)]),
    "service-metadata": ([on_metadata(service())],
                         'invalid key name "autoscaling.knative.dev/min-scale": metadata.annotations autoscaling '
                         'annotations must be put under "spec.template.metadata.annotations" to work',
                         [service(notes=notes(min_scale="1"))]),
    "zero-initial-scale": ([service(notes=notes(initial_scale="0"))], f"invalid value: 0: {AT}initial-scale=0 not "
                           "allowed by cluster", [service(notes=notes(initial_scale="0")), ALLOW_ZERO]),
    "runtime-class": ([service(runtimeClassName="urunc")],
                      "must not set the field(s): spec.template.spec.runtimeClassName",
                      [service(runtimeClassName="urunc"), RUNTIME_CLASS]),
}


def load(folder: Path, docs: list[dict], min_window_s: float = WINDOW_MIN_S) -> tuple[dict, dict]:
    """What the local host runs from a folder holding `docs`: (runnable, refused with reasons)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "app.yaml").write_text(yaml.safe_dump_all(docs))
    registry = BrokerRegistry(folder)
    registry.reload()
    return services_from(registry.found, min_window_s)


@pytest.mark.parametrize("rule", sorted(RULES))
def test_a_service_knative_refuses_is_not_ready_with_knatives_reason_and_ready_once_fixed(rule, tmp_path):
    broken, message, fixed = RULES[rule]
    ok, refused = load(tmp_path / "knative", broken)
    assert ok == {} and refused == {"default/fn": message}
    ok, refused = load(tmp_path / "knative", fixed)
    assert refused == {} and list(ok) == ["default/fn"]


def test_the_config_maps_set_the_limits_and_the_defaults(tmp_path):
    folder = tmp_path / "knative"
    assert load(folder, [service(timeoutSeconds=900)])[1]["default/fn"].startswith("expected 0 <= 900 <= 600")
    raised = config_map("config-defaults", **{"max-revision-timeout-seconds": "1200",
                                              "revision-timeout-seconds": "45"})
    ok, refused = load(folder, [service(timeoutSeconds=900), raised])
    assert refused == {} and ok["default/fn"].timeout_s == 900
    ok, _ = load(folder, [service(), raised, config_map("config-autoscaler", **{"stable-window": "2m"})])
    assert ok["default/fn"].timeout_s == 45 and ok["default/fn"].window_s == 120  # a cluster's defaults
    ok, _ = load(folder, [service()])
    assert (ok["default/fn"].timeout_s, ok["default/fn"].window_s, ok["default/fn"].initial_scale) == (300, 60, 1)


def test_the_other_services_run_on(tmp_path):
    ok, refused = load(tmp_path / "knative", [service("good"), service("bad", timeoutSeconds=601)])
    assert list(ok) == ["default/good"] and list(refused) == ["default/bad"]


def test_a_short_window_runs_only_through_the_local_setting(tmp_path):
    folder = tmp_path / "knative"
    short = [service(notes=notes(window="100ms"))]
    assert load(folder, short)[1] == {"default/fn": f"expected 6s <= 100ms <= 1h0m0s: {AT}window"}
    relaxed = Settings.load({"MAPEMESH_LOCAL_MIN_WINDOW": "100ms"}).local_min_window_s
    ok, refused = load(folder, short, relaxed)
    assert refused == {} and ok["default/fn"].window_s == 0.1
    assert load(folder, [service(notes=notes(window="50ms"))], relaxed)[1] == {
        "default/fn": f"expected 100ms <= 50ms <= 1h0m0s: {AT}window"}
    assert load(folder, [service(notes=notes(window="6500ms"))], relaxed)[1] == {  # from 6s on, Knative's rule
        "default/fn": f"must be specified with at most second precision: {AT}window"}
    assert Settings.load({}).local_min_window_s == WINDOW_MIN_S
    for bad in ("7s", "0s", "PT1S", "fast"):
        with pytest.raises(ValueError, match="local_min_window"):
            Settings.load({"MAPEMESH_LOCAL_MIN_WINDOW": bad})


def test_the_shipped_bundle_is_ready_under_its_own_config_maps_without_the_local_setting():
    registry = BrokerRegistry(REPO / "knative")
    registry.reload()
    ok, refused = services_from(registry.found)
    assert refused == {} and {"default/monitor", "default/accel-digits", "default/policy-cpu-frequency"} <= set(ok)


def test_the_suites_own_manifests_need_the_local_setting(tmp_path):
    from .test_serving import service as suite_service

    folder = tmp_path / "knative"
    docs = [suite_service("echo"), ALLOW_ZERO]  # the suite's Service idles for 1s
    assert load(folder, docs)[1]["default/echo"] == f"expected 6s <= 1s <= 1h0m0s: {AT}window"
    assert load(folder, docs, Settings.load().local_min_window_s)[1] == {}  # conftest sets it for the suite


@pytest.mark.live
def test_mapemesh_up_reports_each_refusal_and_serves_the_rest(tmp_path):
    from .test_serving import start_mesh

    good = service("good", notes=notes(window="6s"))
    root = tmp_path / "project"
    # MAPEMESH_LOCAL_MIN_WINDOW empty: unset, Knative's 6s
    mesh = start_mesh(root, good, env={"MAPEMESH_LOCAL_MIN_WINDOW": ""})
    status: Callable[[], dict] = lambda: httpx.get(mesh.serving + "/status").json()["functions"]  # noqa: E731
    try:
        assert mesh.post("good").status_code == 200
        # start_mesh adds the bundle's ConfigMaps: without two of them, two more rules bite
        for name in ("config-autoscaler.yaml", "knative-serving-features.yaml"):
            (root / "knative" / name).unlink()
        docs = [good]
        for rule in RULES:
            doc = copy.deepcopy(RULES[rule][0][0])
            doc["metadata"]["name"] = rule
            docs.append(doc)
        (root / "knative" / "app.yaml").write_text(yaml.safe_dump_all(docs))
        wait_for(lambda: set(RULES) <= {k.split("/")[1] for k in status()}, what="the new Services read")
        rows = status()
        for rule in RULES:
            assert not rows[f"default/{rule}"]["ready"] and rows[f"default/{rule}"]["reason"] == RULES[rule][1]
        out = subprocess.run([sys.executable, "-m", "mapemesh", "status", "--data", str(mesh.data)],
                             capture_output=True, text=True, timeout=60, cwd=root)
        assert f"NOT READY: {RULES['timeout'][1]}" in out.stdout, out.stdout + out.stderr
        assert rows["default/good"]["ready"] and mesh.post("good").status_code == 200  # the rest runs on
        # A running Service's refused update: as on a cluster, the last admitted revision serves on, saying why.
        (pid,) = wait_for(lambda: mesh.pids("good"), what="good's process")
        docs[0] = service("good", notes=notes(window="5s"))
        (root / "knative" / "app.yaml").write_text(yaml.safe_dump_all(docs))
        wait_for(lambda: "refused" in (status()["default/good"]["reason"] or ""), what="the update refused")
        row = status()["default/good"]
        assert row["ready"] and row["window_s"] == 6.0 and f"expected 6s <= 5s <= 1h0m0s: {AT}window" in row["reason"]
        assert mesh.post("good").headers["ce-pid"] == str(pid)
        fixed = [good]
        for rule in RULES:
            for doc in RULES[rule][2]:
                doc = copy.deepcopy(doc)
                if doc["kind"] == "Service":
                    doc["metadata"]["name"] = rule
                fixed.append(doc)
        (root / "knative" / "app.yaml").write_text(yaml.safe_dump_all(fixed))
        wait_for(lambda: all(row["ready"] and not row["reason"] for row in status().values()),
                 what="every fixed Service ready")
        assert mesh.post("timeout").status_code == 200
    finally:
        mesh.proc.terminate()
        mesh.proc.wait(20)
