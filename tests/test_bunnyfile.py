"""Bunnyfiles (bunny's rules, urunc's pairs, the annotations bunny sets), build contexts, and the runtime each
function runs on."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from mapemesh.runtimes import build, bunnyfile, choice

from .conftest import REPO, SHARED

GOLDEN = REPO / "tests" / "golden" / "packaging"
BUNNY_SAMPLES = SHARED / "reference" / "bunny"

VALID = """\
#syntax=harbor.nbfc.io/nubificus/bunny:latest
version: v0.1

platforms:
  framework: unikraft
  version: 0.18.0
  monitor: qemu
  architecture: x86

rootfs:
  from: scratch
  include:
    - chttp:/chttp

kernel:
  from: unikraft.org/base:latest
  path: /unikraft/bin/kernel

cmd: ["/chttp"]
"""


def problems(text: str) -> list[tuple[str, int, str]]:
    return [(p.field, p.line, p.message) for p in bunnyfile.check_text(textwrap.dedent(text), "b")]


def edited(**changes: object) -> str:
    doc = yaml.safe_load(VALID)
    for path, value in changes.items():
        *parents, last = path.split("__")
        node = doc
        for part in parents:
            node = node.setdefault(part, {})
        if value is None:
            node.pop(last, None)
        else:
            node[last] = value
    return "#syntax=harbor.nbfc.io/nubificus/bunny:latest\n" + yaml.safe_dump(doc, sort_keys=False)


def test_a_valid_bunnyfile_has_no_problems():
    assert problems(VALID) == []


@pytest.mark.skipif(not BUNNY_SAMPLES.is_dir(), reason="../shared/reference/bunny is not here (bunny's samples)")
@pytest.mark.parametrize("name", ["chttp-unikraft-qemu", "nginx-unikraft-qemu", "readme-unikraft-local-initrd",
                                  "redis-rumprun-hvt"])
def test_bunnys_own_samples_pass(name):
    assert bunnyfile.check_file(BUNNY_SAMPLES / f"{name}.bunnyfile") == []


# -- each rule, refusing and accepting --

@pytest.mark.parametrize(("version", "ok"), [("v0.1", True), ("0.1", True), ("0.0.9", True), ("v0.1.0", True),
                                             ("0.1.0-beta", True), ("0.1.0.0", True), ("0.10", False),
                                             ("v0.2", False), ("0.2.0", False), ("v1", False), ("latest", False)])
def test_version_is_at_most_v0_1(version, ok):
    text = edited(version="VERSION").replace("VERSION", version)  # as written: 0.10 is not 0.1
    found = problems(text)
    assert (found == []) is ok
    if not ok:
        [(field, line, message)] = found
        assert field == "version" and line == 2
        assert "Please use v0.1 or earlier" in message or "Could not parse version" in message


def test_version_is_required():
    [(field, _line, message)] = problems(edited(version=None))
    assert (field, message) == ("version", "The version field is necessary")


@pytest.mark.parametrize("field", ["framework", "monitor"])
def test_platforms_framework_and_monitor_are_required(field):
    text = edited(**{f"platforms__{field}": None})
    [(name, line, message)] = problems(text)
    assert name == f"platforms.{field}" and message == f"The {field} field of platforms is necessary"
    assert text.splitlines()[line - 1] == "platforms:"  # the field itself is missing: its parent's line


@pytest.mark.parametrize("field", ["from", "path"])
def test_kernel_from_and_path_are_required(field):
    [(name, _line, message)] = problems(edited(**{f"kernel__{field}": None}))
    assert name == f"kernel.{field}" and message == f"The {field} field of kernel is necessary"


def test_problems_name_the_line_of_their_field():
    text = VALID.replace("from: unikraft.org/base:latest", "from: ''")
    [(name, line, _message)] = problems(text)
    assert name == "kernel.from" and text.splitlines()[line - 1].strip() == "from: ''"


def test_rootfs_path_needs_a_from_other_than_scratch():
    bad = problems(edited(rootfs={"path": "initrd"}))
    assert [(f, m) for f, _l, m in bad] == [("rootfs.from", "The from field of rootfs can not be empty or scratch, "
                                                            "if path is set")]
    assert problems(edited(rootfs={"from": "scratch", "path": "initrd"}))
    assert problems(edited(rootfs={"from": "local", "path": "initrd", "type": "initrd"})) == []
    assert problems(edited(rootfs={"from": "some/image:1", "path": "/rootfs.ext2", "type": "block"})) == []


def test_a_raw_rootfs_takes_no_path_and_no_local_from():
    assert [(f, m) for f, _l, m in problems(edited(rootfs={"from": "img:1", "type": "raw", "path": "x"}))] == [
        ("rootfs.path", "The path field in rootfs can not be combined with a raw rootfs")]
    assert [(f, m) for f, _l, m in problems(edited(rootfs={"from": "local", "type": "raw"}))] == [
        ("rootfs.from", "If type of rootfs is raw, then from can not be local")]
    assert problems(edited(rootfs={"from": "redis:alpine", "type": "raw"})) == []


def test_include_only_adds_to_a_scratch_rootfs():
    [(field, _line, message)] = problems(edited(rootfs={"from": "local", "path": "initrd", "include": ["a:/a"]}))
    assert field == "rootfs.include" and "Adding files to an existing rootfs is not yet supported" in message
    assert problems(edited(rootfs={"from": "scratch", "include": ["a:/a", "b"]})) == []


def test_include_entries_are_src_dst_or_mappings():
    ok = {"from": "scratch", "include": ["conf/:/conf", "file", {"from": "nginx:latest", "source": "/etc/nginx",
                                                                "destination": "/nginx"}]}
    assert problems(edited(rootfs=ok)) == []
    bad = {"from": "scratch", "include": [":/conf", "a:b:c", {"source": "x"}, {"destination": "y"}, 5,
                                          {"source": "x", "destination": "y", "dest": "z", 1: "w"}]}
    found = problems(edited(rootfs=bad))
    fields = [f for f, _l, _m in found]
    assert fields == ["rootfs.include[0]", "rootfs.include[2].destination", "rootfs.include[3].source",
                      "rootfs.include[4]", "rootfs.include[5]"]  # a:b:c is taken, as bunny takes it
    assert "first part empty" in found[0][2] and "destination is empty" in found[1][2]
    assert "source is empty" in found[2][2] and "invalid Include file format" in found[3][2]
    assert "1, dest" in found[4][2]
    assert len({line for _f, line, _m in found}) == 5  # each entry on its own line
    assert problems(edited(rootfs={"from": "img:1", "type": "raw", "include": []})) == []  # empty: nothing added


def test_a_rootfs_type_must_be_known():
    [(field, _line, message)] = problems(edited(rootfs={"from": "img:1", "type": "squashfs"}))
    assert field == "rootfs.type" and "squashfs" in message


def test_odd_yaml_is_a_problem_not_a_crash():
    assert problems(VALID + "x: &a [*a]\n") == []  # a recursive alias (unknown keys are bunny's to ignore)
    bomb = VALID + "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}]\n"
        for i in range(8))
    assert problems(bomb) == []
    [(field, line, message)] = problems(VALID.replace("version: v0.1", "version: v0.9\nversion: v0.1"))
    assert (field, line, message) == ("version", 3, "mapping key 'version' already defined")
    assert problems(VALID + "---\nversion: v9\n") == []  # bunny reads the first document
    [(field, line, _message)] = problems(VALID.replace("#syntax=harbor.nbfc.io/nubificus/bunny:latest\n", ""))
    assert (field, line) == ("#syntax", 1)
    [(field, _line, message)] = problems(VALID.replace("framework: unikraft", "framework: [unikraft]"))
    assert field == "platforms.framework" and message == "platforms.framework must be a string"


def test_documents_that_are_not_bunnyfiles():
    assert problems("version: v0.1") == [("(document)", 1, "Invalid format of file")]
    assert problems("a: [b\nc: d\n")[0][2].startswith("not YAML")
    assert problems("- a\n- b\n")[0][0] == "(document)"
    assert [(f, m) for f, _l, m in problems(edited(cmd="run"))] == [("cmd", "cmd must be a list of strings")]


# -- urunc's pairs --

FRAMEWORKS = ("rumprun", "mirage", "mewz", "unikraft", "linux", "hermit")
PAIRS = [(m, f) for m in bunnyfile.SUPPORTED_PAIRS for f in FRAMEWORKS]


@pytest.mark.parametrize(("monitor", "framework"), PAIRS)
def test_every_pair_urunc_supports_passes_and_every_other_fails(monitor, framework):
    supported = {("hvt", "rumprun"), ("hvt", "mirage"), ("spt", "rumprun"), ("spt", "mirage"), ("qemu", "mewz"),
                 ("qemu", "mirage"), ("qemu", "unikraft"), ("qemu", "linux"), ("qemu", "hermit"),
                 ("firecracker", "linux"), ("firecracker", "unikraft"), ("cloud-hypervisor", "linux")}
    found = problems(edited(platforms__monitor=monitor, platforms__framework=framework))
    if (monitor, framework) in supported:
        assert found == []
    else:
        [(field, _line, message)] = found
        assert field == "platforms.framework"
        assert message.startswith(f"unsupported guest monitor pair {monitor} {framework}")


def test_an_unknown_monitor_is_named():
    [(field, _line, message)] = problems(edited(platforms__monitor="vmware"))
    assert field == "platforms.monitor" and "vmware" in message


# -- annotations --

def test_annotations_follow_the_rootfs_type():
    initrd = bunnyfile.annotations(yaml.safe_load(VALID))  # unikraft's default rootfs type is initrd
    # The kernel's image is the base (the rootfs is made from scratch): the kernel stays at its path.
    assert initrd == {"com.urunc.unikernel.unikernelType": "unikraft", "com.urunc.unikernel.cmdline": "/chttp",
                      "com.urunc.unikernel.hypervisor": "qemu", "com.urunc.unikernel.binary": "/unikraft/bin/kernel",
                      "com.urunc.unikernel.mountRootfs": "false", "com.urunc.unikernel.unikernelVersion": "0.18.0",
                      "com.urunc.unikernel.initrd": "/.boot/rootfs"}
    raw = bunnyfile.annotations(yaml.safe_load(edited(platforms__framework="rumprun", platforms__monitor="hvt",
                                                      rootfs={"from": "scratch", "type": "raw"})))
    assert raw["com.urunc.unikernel.mountRootfs"] == "true" and "com.urunc.unikernel.initrd" not in raw
    block = bunnyfile.annotations(yaml.safe_load(edited(platforms__framework="rumprun", platforms__monitor="hvt",
                                                        rootfs={"from": "img:1", "path": "/r.ext2",
                                                                "type": "block"})))
    # The rootfs image is the base: the kernel is copied in, the block file stays at its path in the image.
    assert (block["com.urunc.unikernel.block"], block["com.urunc.unikernel.blkMntPoint"]) == ("/r.ext2", "/data")
    assert block["com.urunc.unikernel.binary"] == "/.boot/kernel"
    local = bunnyfile.annotations(yaml.safe_load(edited(rootfs={"from": "local", "path": "initramfs.cpio",
                                                                "type": "initrd"}, kernel={"from": "local",
                                                                                           "path": "kernel"})))
    assert (local["com.urunc.unikernel.initrd"], local["com.urunc.unikernel.binary"]) == ("/.boot/rootfs",
                                                                                         "/.boot/kernel")
    bare = bunnyfile.annotations(yaml.safe_load(edited(rootfs={"type": "initrd"}, cmd=None, cmdline="/app -v")))
    assert "com.urunc.unikernel.initrd" not in bare  # nothing to put in it
    assert bare["com.urunc.unikernel.cmdline"] == "/app -v"
    none = bunnyfile.annotations(yaml.safe_load(edited(rootfs=None)))
    assert not any(k.endswith(("initrd", "block")) for k in none) and none["com.urunc.unikernel.mountRootfs"] == \
        "false"


# -- every function: a valid bunnyfile, a Service on the chosen runtime --

def _function_packages() -> list[str]:
    core = [p.name for p in (REPO / "functions").iterdir() if (p / "__init__.py").exists()
            and p.name not in ("policies", "accel") and not p.name.startswith("_")]
    policies = [p.name for p in (REPO / "functions" / "policies").iterdir() if (p / "policy.py").exists()]
    accel = [p.name for p in (REPO / "functions" / "accel").iterdir() if (p / "__init__.py").exists()]
    return sorted(core) + [f"policy-{p.replace('_', '-')}" for p in sorted(policies)] + \
        [f"accel-{p.replace('_', '-')}" for p in sorted(accel)]


@pytest.mark.parametrize("name", _function_packages())
def test_every_function_has_a_valid_bunnyfile_and_a_service_on_its_runtime(name):
    functions = build.functions(REPO)
    assert name in functions, f"functions/ has {name} but knative/ has no Service for it"
    fn = functions[name]
    path = REPO / "bunnyfiles" / f"{name}.bunnyfile"
    assert bunnyfile.check_file(path) == []
    doc = yaml.safe_load(path.read_text())
    assert doc["cmd"] == build.function_command(fn.source, fn.target)  # the bunnyfile runs this function
    assert (REPO / fn.source).exists()
    pod = fn.service["spec"]["template"]["spec"]
    runtime = choice.choose(choice.kind_of(fn.service))
    assert pod["runtimeClassName"] == runtime
    assert pod["containers"][0]["image"] == (choice.unikernel_image(name) if runtime == "urunc"
                                             else choice.FUNCTION_IMAGE)
    assert choice.apply(fn.service, runtime) == fn.service  # the manifest is what the choice makes of it


def test_every_bunnyfile_belongs_to_a_function():
    names = {p.stem for p in (REPO / "bunnyfiles").glob("*.bunnyfile")}
    assert names == set(build.functions(REPO))


# -- the runtime choice --

def test_core_functions_run_on_the_default_runtime_and_policies_on_urunc_then_kata():
    assert choice.choose("core") == "runc"
    assert choice.choose("policy") == "urunc"
    assert choice.choose("policy", ["runc", "kata-qemu", "kata-fc"]) == "kata-fc"
    assert choice.choose("policy", ["runc", "kata-qemu"]) == "kata-qemu"
    assert choice.choose("policy", ["runc"]) == "runc"
    assert choice.choose("accel", ["runc", "kata-qemu", "kata-fc"]) == "kata-qemu"
    with pytest.raises(choice.RuntimeChoiceError, match="gvisor"):
        choice.choose("policy", ["gvisor"])
    with pytest.raises(choice.RuntimeChoiceError, match="no runtime"):
        choice.choose("core", ["urunc"])


def test_services_that_are_not_mapemesh_functions_are_left_as_they_are():
    hello = {"apiVersion": "serving.knative.dev/v1", "kind": "Service", "metadata": {"name": "hello"},
             "spec": {"template": {"spec": {"runtimeClassName": "kata-qemu",
                                            "containers": [{"image": "ghcr.io/example/hello:1"}]}}}}
    assert choice.for_cluster(hello, ["runc"]) == hello
    fn = _service("policy-x", {"mapemesh.dev/policy": "x"})
    fn["spec"]["template"]["spec"]["containers"] = [
        {"image": "x", "env": [{"name": "FUNCTION_SOURCE", "value": "f.py"}]}, {"image": "sidecar:1"}]
    out = choice.for_cluster(fn, ["runc", "kata-fc"])
    assert [c["image"] for c in out["spec"]["template"]["spec"]["containers"]] == [choice.FUNCTION_IMAGE,
                                                                                  "sidecar:1"]


def test_kind_of_a_service():
    assert choice.kind_of({"metadata": {"name": "analyze"}}) == "core"
    assert choice.kind_of({"metadata": {"name": "policy-x", "labels": {"mapemesh.dev/policy": "x"}}}) == "policy"
    assert choice.kind_of({"metadata": {"name": "f", "labels": {"mapemesh.dev/accel": "f"}}}) == "accel"
    assert choice.kind_of({"metadata": {"name": "hello"}}) == "function"


def _service(name: str, labels: dict | None = None) -> dict:
    return {"apiVersion": "serving.knative.dev/v1", "kind": "Service",
            "metadata": {"name": name, "labels": labels or {}},
            "spec": {"template": {"spec": {"containers": [
                {"image": "x", "env": [{"name": "FUNCTION_SOURCE", "value": "f.py"}]}]}}}}


@pytest.mark.parametrize(("monitor", "address"), [("qemu", "vsock://2:2048"),
                                                  ("firecracker", "unix:///run/vaccel/vaccel.sock_2048")])
def test_accelerated_functions_on_urunc_get_the_vaccel_annotations(monitor, address):
    out = choice.apply(_service("accel-x", {"mapemesh.dev/accel": "x"}), "urunc", monitor=monitor)
    assert out["spec"]["template"]["metadata"]["annotations"] == {"com.urunc.unikernel.vAccel": "vsock",
                                                                  "com.urunc.unikernel.RPCAddress": address}
    assert out["spec"]["template"]["spec"]["runtimeClassName"] == "urunc"
    on_kata = choice.apply(out, "kata-qemu")
    assert "com.urunc.unikernel.vAccel" not in on_kata["spec"]["template"]["metadata"]["annotations"]
    assert on_kata["spec"]["template"]["spec"]["containers"][0]["image"] == choice.FUNCTION_IMAGE
    with pytest.raises(choice.RuntimeChoiceError, match="does not support vAccel"):
        choice.apply(_service("accel-x", {"mapemesh.dev/accel": "x"}), "urunc", monitor="hvt")


def test_the_runtime_classes_and_the_knative_flag(tmp_path):
    out = tmp_path / "mesh"
    r = subprocess.run([sys.executable, "-m", "mapemesh", "render", "mesh", "--manifests", str(REPO / "knative"),
                        "--out", str(out)], capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 0, r.stderr
    classes = {yaml.safe_load(p.read_text())["metadata"]["name"]: yaml.safe_load(p.read_text())
               for p in out.glob("runtimeclass-*.yaml")}
    assert set(classes) == {"runc", "urunc", "kata-fc", "kata-qemu"}
    assert classes["kata-fc"]["overhead"]["podFixed"] == {"memory": "130Mi", "cpu": "250m"}
    assert classes["kata-qemu"]["overhead"]["podFixed"] == {"memory": "160Mi", "cpu": "250m"}
    assert classes["kata-qemu"]["scheduling"]["nodeSelector"] == {"katacontainers.io/kata-runtime": "true"}
    assert all(c["handler"] == name for name, c in classes.items())
    [features] = [doc for doc in map(yaml.safe_load, (p.read_text() for p in out.glob("configmap-config-features*")))
                  if doc["metadata"]["namespace"] == "knative-serving"]  # Eventing's has the same name
    assert features["data"]["kubernetes.podspec-runtimeclassname"] == "enabled"
    policy = yaml.safe_load((out / "service-policy-cpu-frequency.yaml").read_text())
    assert policy["spec"]["template"]["spec"]["runtimeClassName"] == "urunc"
    fallback = tmp_path / "fallback"
    subprocess.run([sys.executable, "-m", "mapemesh", "render", "mesh", "--manifests", str(REPO / "knative"),
                    "--out", str(fallback), "--available", "runc,kata-fc"], check=True, capture_output=True,
                   cwd=REPO)
    policy = yaml.safe_load((fallback / "service-policy-cpu-frequency.yaml").read_text())
    assert policy["spec"]["template"]["spec"]["runtimeClassName"] == "kata-fc"
    assert not (fallback / "runtimeclass-urunc.yaml").exists()
    bad = subprocess.run([sys.executable, "-m", "mapemesh", "render", "mesh", "--out", str(tmp_path / "x"),
                          "--available", "gvisor"], capture_output=True, text=True, cwd=REPO)
    assert bad.returncode == 2 and "gvisor" in bad.stderr


def test_kustomize_sees_the_runtimes():
    knative = yaml.safe_load((REPO / "knative" / "base" / "kustomization.yaml").read_text())
    assert "../../runtimes" in knative["resources"]
    runtimes = yaml.safe_load((REPO / "runtimes" / "kustomization.yaml").read_text())
    assert sorted(runtimes["resources"]) == sorted(p.name for p in (REPO / "runtimes").glob("*.yaml")
                                                   if p.name != "kustomization.yaml")


# -- build contexts --

@pytest.mark.parametrize("monitor", [None, "firecracker"])
def test_render_writes_the_build_context_golden(tmp_path, monitor):
    out = tmp_path / "ctx"
    result = build.render(REPO, "policy-cpu-frequency", out, monitor)
    golden = GOLDEN / f"policy-cpu-frequency-{monitor or 'shipped'}"
    if os.environ.get("MAPEMESH_UPDATE_GOLDEN"):
        golden.mkdir(parents=True, exist_ok=True)
        for name in ("Containerfile", "bunnyfile", "annotations.json", "BUILD"):
            (golden / name).write_text((out / name).read_text())
    for name in ("Containerfile", "bunnyfile", "annotations.json", "BUILD"):
        assert (out / name).read_text() == (golden / name).read_text(), name
    assert result["monitor"] == (monitor or "qemu")
    annotations = json.loads((out / "annotations.json").read_text())
    assert annotations["com.urunc.unikernel.hypervisor"] == (monitor or "qemu")
    assert annotations["com.urunc.unikernel.mountRootfs"] == "true"
    assert (out / "context" / "functions" / "policies" / "cpu_frequency" / "policy.py").exists()
    assert (out / "context" / "pyproject.toml").exists() and not (out / "context" / "tests").exists()
    assert not list((out / "context").rglob("__pycache__"))


def test_render_refuses_unknown_functions_and_invalid_bunnyfiles(tmp_path):
    with pytest.raises(build.BuildError, match="no function"):
        build.render(REPO, "nope", tmp_path / "x")
    project = tmp_path / "project"
    (project / "knative").mkdir(parents=True)
    (project / "bunnyfiles").mkdir()
    (project / "knative" / "f.yaml").write_text(yaml.safe_dump(_service("f")))
    (project / "bunnyfiles" / "f.bunnyfile").write_text(edited(kernel__path=None))
    with pytest.raises(build.BuildError, match="The path field of kernel is necessary"):
        build.render(project, "f", tmp_path / "y")


def _fake_engine(tmp_path: Path, info_ok: bool) -> dict[str, str]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "docker.log"
    (bin_dir / "docker").write_text(f"#!/bin/sh\necho \"$PWD $*\" >> {log}\n"
                                    f"[ \"$1\" = info ] && exit {0 if info_ok else 1}\nexit 0\n")
    (bin_dir / "docker").chmod(0o755)
    return {**os.environ, "PATH": str(bin_dir)}


def test_build_cli_says_there_is_no_engine_and_does_not_pretend(tmp_path):
    env = _fake_engine(tmp_path, info_ok=False)
    out = tmp_path / "ctx"
    r = subprocess.run([sys.executable, "-m", "mapemesh", "build", "render", "policy-cpu-frequency", "--out",
                        str(out), "--build"], capture_output=True, text=True, cwd=REPO, env=env)
    assert r.returncode == 3
    assert "docker is installed but its engine does not answer" in r.stderr
    assert "docker build -f bunnyfile -t mapemesh/policy-cpu-frequency:0.1.0-urunc ." in r.stdout
    assert "build" not in (tmp_path / "docker.log").read_text().split()  # only `docker info` ran


def test_build_cli_builds_both_images_with_an_engine(tmp_path):
    env = _fake_engine(tmp_path, info_ok=True)
    out = tmp_path / "ctx"
    r = subprocess.run([sys.executable, "-m", "mapemesh", "build", "render", "analyze", "--out", str(out),
                        "--build"], capture_output=True, text=True, cwd=REPO, env=env)
    assert r.returncode == 0, r.stderr
    calls = (tmp_path / "docker.log").read_text().splitlines()
    assert calls[1:] == [f"{out} build -f Containerfile -t mapemesh/functions:0.1.0 context",
                         f"{out} build -f bunnyfile -t mapemesh/analyze:0.1.0-urunc ."]


def test_build_check_cli(tmp_path):
    r = subprocess.run([sys.executable, "-m", "mapemesh", "build", "check"], capture_output=True, text=True,
                       cwd=REPO)
    assert r.returncode == 0 and "valid" in r.stdout
    bad = tmp_path / "bad.bunnyfile"
    bad.write_text(edited(platforms__monitor="firecracker", platforms__framework="mirage"))
    r = subprocess.run([sys.executable, "-m", "mapemesh", "build", "check", str(bad), "-o", "json"],
                       capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 1
    [found] = json.loads(r.stdout)["problems"]
    assert found["field"] == "platforms.framework" and found["line"] > 0
    assert "unsupported guest monitor pair firecracker mirage" in found["message"]
