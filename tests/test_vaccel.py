"""The vAccel client (local backends and the real-vAccel path), the example model, the vAccelPlugin knob, the
accelerator policy and the accelerated-function scaffold."""

from __future__ import annotations

import asyncio
import importlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from mapemesh.runtimes import vaccel

from .conftest import REPO

LIB_SOURCE = r"""
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

/* vAccel's struct vaccel_arg (vaccel/arg.h) */
struct vaccel_arg { void *buf; size_t size; uint32_t type; uint32_t custom_type_id; bool owned; };

/* vAccel's example: read an int32, write it doubled */
int mytestfunc(struct vaccel_arg *read, size_t nr_read, struct vaccel_arg *write, size_t nr_write)
{
    if (nr_read != 1 || nr_write != 1 || read[0].size != 4 || write[0].size != 4)
        return 22;
    int32_t in;
    memcpy(&in, read[0].buf, 4);
    int32_t out = 2 * in;
    memcpy(write[0].buf, &out, 4);
    return 0;
}

/* sum an int32 array into an int32; reverse a byte buffer into another */
int sum_and_reverse(struct vaccel_arg *read, size_t nr_read, struct vaccel_arg *write, size_t nr_write)
{
    if (nr_read != 2 || nr_write != 2)
        return 22;
    int32_t total = 0;
    for (size_t i = 0; i < read[0].size / 4; i++)
        total += ((int32_t *)read[0].buf)[i];
    memcpy(write[0].buf, &total, 4);
    for (size_t i = 0; i < read[1].size && i < write[1].size; i++)
        ((char *)write[1].buf)[i] = ((char *)read[1].buf)[read[1].size - 1 - i];
    return 0;
}

int fails(struct vaccel_arg *read, size_t nr_read, struct vaccel_arg *write, size_t nr_write) { return 7; }
"""


@pytest.fixture(scope="module")
def library(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("lib")
    (folder / "mytestlib.c").write_text(LIB_SOURCE)
    out = folder / "libmytestlib.so"
    subprocess.run(["gcc", "-shared", "-fPIC", "-O2", "-o", str(out), str(folder / "mytestlib.c")], check=True)
    return out


@pytest.fixture
def local(monkeypatch):
    monkeypatch.setenv("MAPEMESH_VACCEL", "local")
    monkeypatch.delenv(vaccel.PLUGIN_ENV, raising=False)


# -- exec --

def test_exec_calls_the_c_function_and_returns_its_output(local, library):
    session = vaccel.Session(vaccel.PluginType.CPU)
    assert session.backend == "mapemesh-local"
    assert session.exec(library, "mytestfunc", [21], [0]) == [42]
    assert session.last["op"] == "exec" and session.last["device"] == "cpu" and session.last["plugin"] == "cpu"
    total, reversed_ = session.exec(library, "sum_and_reverse", [[1, 2, 3, 4], b"abcdef"], [0, bytes(6)])
    assert (total, reversed_) == (10, b"fedcba")
    lib = vaccel.Resource(library, vaccel.ResourceType.LIB)
    lib.register(session)
    assert session.exec_with_resource(lib, "mytestfunc", [-5], [0]) == [-10]


def test_exec_failures_are_clear(local, library, tmp_path):
    session = vaccel.Session()
    with pytest.raises(vaccel.VaccelError, match="fails returned 7") as caught:
        session.exec(library, "fails", [1], [0])
    assert caught.value.code == 71 and caught.value.backend == "mapemesh-local"  # EPROTO, as vAccel's exec plugin
    with pytest.raises(vaccel.VaccelError, match="returned 22"):
        session.exec(library, "mytestfunc", [1, 2], [0])
    with pytest.raises(vaccel.VaccelError, match="no symbol"):
        session.exec(library, "nope", [1], [0])
    with pytest.raises(vaccel.VaccelError, match="cannot load"):
        session.exec(tmp_path / "missing.so", "f")
    with pytest.raises(vaccel.VaccelError, match="No CType wrapper registered"):
        session.exec(library, "mytestfunc", [{"a": 1}], [0])
    with pytest.raises(vaccel.VaccelError, match="does not exist"):
        vaccel.Resource(tmp_path / "missing.pt", vaccel.ResourceType.MODEL)


def test_the_remote_plugin_is_not_served_locally(monkeypatch, library):
    monkeypatch.setenv("MAPEMESH_VACCEL", "local")
    monkeypatch.setenv(vaccel.PLUGIN_ENV, "remote")
    monkeypatch.setenv("VACCEL_RPC_ADDRESS", "tcp://10.0.0.5:65500")
    with pytest.raises(vaccel.VaccelError, match=r"libvaccel-rpc\.so.*tcp://10\.0\.0\.5:65500"):
        vaccel.Session().exec(library, "mytestfunc", [1], [0])


def test_plugin_env():
    assert vaccel.plugin_env("cpu") == {"MAPEMESH_VACCEL_PLUGIN": "cpu", "CUDA_VISIBLE_DEVICES": "",
                                        "VACCEL_PLUGINS": "libvaccel-torch.so:libvaccel-exec.so"}
    assert vaccel.plugin_env("gpu")["MAPEMESH_VACCEL_PLUGIN"] == "gpu"
    assert "CUDA_VISIBLE_DEVICES" not in vaccel.plugin_env("gpu")
    remote = vaccel.plugin_env("remote", "vsock://2:2048")
    assert (remote["VACCEL_PLUGINS"], remote["VACCEL_RPC_ADDRESS"]) == ("libvaccel-rpc.so", "vsock://2:2048")
    with pytest.raises(vaccel.VaccelError, match="RPC address"):
        vaccel.plugin_env("remote")
    with pytest.raises(vaccel.VaccelError):
        vaccel.plugin_env("fpga")


# (the real vAccel path: tests/test_vaccel_real.py, through a faithful stand-in of vaccel-python)


# -- torch: the example model --

def test_the_torch_backend_runs_the_example_model_on_the_cpu(local, monkeypatch, tmp_path):
    pytest.importorskip("torch", reason="torch is not installed (pip install mapemesh[accel]); CI installs it")
    monkeypatch.setenv("MAPEMESH_DATA", str(tmp_path))
    digits = importlib.import_module("mapemesh.functions.accel.digits")
    monkeypatch.setattr(digits, "_session", None)
    model = digits.model
    wrong = [(d, s) for d in model.LABELS for s in range(10)
             if digits.classify({"input": {"digit": d, "noise": 0.4, "seed": s}})["label"] != d]
    assert wrong == []
    answer = digits.classify({"input": {"image": model.render("4")}})
    assert answer["label"] == "4" and answer["backend"] == "mapemesh-local" and answer["device"] == "cpu"
    assert len(answer["scores"]) == 10 and max(answer["scores"]) == answer["scores"][4]
    assert (tmp_path / "models" / f"digits-{model.VERSION}.pt").exists()
    with pytest.raises(ValueError, match="8x8"):
        digits.classify({"input": {"image": [[1, 2]]}})
    with pytest.raises(ValueError, match="0-9"):
        digits.classify({"input": {"digit": "x"}})


def test_the_gpu_plugin_without_a_gpu_runs_on_the_cpu_and_says_so(monkeypatch, tmp_path):
    torch = pytest.importorskip("torch", reason="torch is not installed (pip install mapemesh[accel]); CI installs it")
    monkeypatch.setenv("MAPEMESH_VACCEL", "local")
    monkeypatch.setenv(vaccel.PLUGIN_ENV, "gpu")
    from mapemesh.functions.accel.digits import model

    path = model.build(tmp_path / "d.pt")
    session = vaccel.Session()
    resource = vaccel.Resource(path, vaccel.ResourceType.MODEL)
    resource.register(session)
    [out] = session.torch_model_run(resource, [vaccel.Tensor([1, 64], vaccel.TensorType.FLOAT, model.pixels("8"))])
    assert session.last["plugin"] == "gpu"
    assert session.last["device"] == ("cuda" if torch.cuda.is_available() else "cpu")
    assert max(range(10), key=out.data.__getitem__) == 8
    tag, _ = session.classify(bytes(int(p * 255) for p in model.pixels("2")))  # labels beside the model
    assert tag == "2"


def test_a_model_must_be_registered(local, tmp_path):
    pytest.importorskip("torch", reason="torch is not installed (pip install mapemesh[accel]); CI installs it")
    from mapemesh.functions.accel.digits import model

    resource = vaccel.Resource(model.build(tmp_path / "d.pt"), vaccel.ResourceType.MODEL)
    with pytest.raises(vaccel.VaccelError, match="register"):
        vaccel.Session().torch_model_run(resource, [vaccel.Tensor([1, 64], vaccel.TensorType.FLOAT, [0.0] * 64)])


# -- the vAccelPlugin knob --

def _knob(tmp_path, functions=None):
    from mapemesh.node_shim.knobs.vaccel import VAccelPlugin

    changes = []
    knob = VAccelPlugin(tmp_path / "vaccel-plugins.json", functions=functions, on_change=lambda: changes.append(1))
    return knob, changes


def test_the_knob_records_choices_and_tells_the_host(tmp_path):
    knob, changes = _knob(tmp_path, lambda: {"digits": {"priority": "low"}, "other": {"priority": "normal"}})
    assert knob.get_state() == {"functions": {}}
    assert knob.apply({"function": "digits", "plugin": "gpu"}) == {"functions": {"digits": {"plugin": "gpu"}}}
    assert knob.changed and changes == [1]
    knob.apply({"function": "digits", "plugin": "gpu"})
    assert not knob.changed and changes == [1]  # nothing to do: no restart
    knob.apply({"functions": {"digits": {"plugin": "remote", "rpc_address": "tcp://10.0.0.5:65500"},
                              "other": {"plugin": "cpu"}}})
    assert vaccel.read_choices(tmp_path / "vaccel-plugins.json") == {
        "digits": {"plugin": "remote", "rpc_address": "tcp://10.0.0.5:65500"}, "other": {"plugin": "cpu"}}
    knob.apply({"command": "reset"})
    assert knob.get_state() == {"functions": {}} and changes == [1, 1, 1]


@pytest.mark.parametrize("command", [
    {"function": "nope", "plugin": "cpu"}, {"function": "digits", "plugin": "fpga"},
    {"function": "digits", "plugin": "remote"}, {"function": "digits", "plugin": "remote", "rpc_address": "http://x"},
    {"function": "digits", "plugin": "cpu", "rpc_address": "tcp://a:1"}, {"functions": {}},
    {"functions": {"digits": "cpu"}}, {"function": "digits", "plugin": "cpu", "color": "red"},
    {"command": "reset", "function": "digits"}, {"command": "restart"}, {"function": "Bad_Name", "plugin": "cpu"},
    {"functions": {"digits": {"plugin": "cpu"}}, "function": "digits"},
])
def test_the_knob_refuses_what_does_not_fit_and_changes_nothing(tmp_path, command):
    from mapemesh.node_shim.knobs.base import InvalidCommand

    knob, changes = _knob(tmp_path, lambda: {"digits": {"priority": "low"}})
    knob.apply({"function": "digits", "plugin": "gpu"})
    with pytest.raises(InvalidCommand) as caught:
        knob.apply(command)
    assert caught.value.options["plugins"] == ["cpu", "gpu", "remote"]
    assert knob.get_state() == {"functions": {"digits": {"plugin": "gpu"}}} and changes == [1]


# -- the accelerator policy --

def _policy():
    from mapemesh.policy.loader import load_policy

    return load_policy(REPO / "functions" / "policies" / "accel_plugin" / "policy.py")


def _inputs(load: dict, current: dict) -> dict:
    return {"context": {}, "application_description": [], "system_description": {}, "ml_connector": None,
            "telemetry": {"data": load},
            "mechanisms": {"vAccelPlugin": {
                "options": {"functions": {"digits": {"priority": "low"}, "vip": {"priority": "high"}}},
                "state": {"functions": current}}}}


def test_the_policy_moves_low_priority_functions_off_a_busy_gpu_and_back():
    module = importlib.import_module("mapemesh.functions.policies.accel_plugin.policy")
    on_gpu = {"digits": {"plugin": "gpu"}, "vip": {"plugin": "gpu"}}
    for load in ({"gpu0_utilization_pct": 95.0}, {"gpu1_power_w": 290.0, "gpu1_power_limit_w": 300.0}):
        args = _inputs(load, on_gpu)
        verdict, _context = module.analyze(**{k: args[k] for k in ("context", "application_description",
                                                                   "system_description", "mechanisms", "telemetry",
                                                                   "ml_connector")})
        assert verdict is True
        plan, _ = module.plan(**args)
        assert plan == {"vAccelPlugin": {"functions": {"digits": {"plugin": "cpu"}}}}  # vip stays on the GPU
    between = _inputs({"gpu0_utilization_pct": 65.0}, {"digits": {"plugin": "cpu"}})
    assert module.analyze(**between)[0] is False  # between the thresholds nothing moves
    calm = _inputs({"gpu0_utilization_pct": 20.0}, {"digits": {"plugin": "cpu"}})
    assert module.plan(**calm)[0] == {"vAccelPlugin": {"functions": {"digits": {"plugin": "gpu"}}}}
    assert module.analyze(**_inputs({}, {}))[0] is False  # no GPU figures: no opinion
    remote = _inputs({"gpu0_utilization_pct": 99.0}, {"digits": {"plugin": "remote", "rpc_address": "tcp://a:1"}})
    assert module.analyze(**remote)[0] is False
    # An operator put it back on the GPU while it is still busy (or the plan failed): it is moved again.
    busy = _inputs({"gpu0_utilization_pct": 95.0}, on_gpu)
    busy["context"] = {"planned": {"digits": {"plugin": "cpu"}}}
    assert module.analyze(**busy)[0] is True
    no_gpu = _inputs({"gpu0_utilization_pct": 10.0}, {"digits": {"plugin": "cpu"}})
    no_gpu["mechanisms"]["vAccelPlugin"]["options"]["gpu"] = False
    assert module.analyze(**no_gpu)[0] is False  # nothing goes back to a GPU the node does not have
    declaration = asyncio.run(_policy().initialize())
    assert declaration.mechanisms == ("vAccelPlugin",) and declaration.scope == "global"


# -- the scaffold --

def test_function_new_scaffolds_a_working_accelerated_function(tmp_path, monkeypatch):
    pytest.importorskip("torch", reason="torch is not installed (pip install mapemesh[accel]); CI installs it")
    from mapemesh.runtimes import accel, bunnyfile

    (tmp_path / "knative").mkdir()
    (tmp_path / "knative" / "kustomization.yaml").write_text("resources:\n  - broker.yaml\n")
    r = subprocess.run([sys.executable, "-m", "mapemesh", "function", "new", "--accel", "vec-double", "--root",
                        str(tmp_path), "--priority", "low"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "accel-vec-double.yaml" in (tmp_path / "knative" / "kustomization.yaml").read_text()
    assert bunnyfile.check_file(tmp_path / "bunnyfiles" / "accel-vec-double.bunnyfile") == []
    import yaml

    service, trigger = yaml.safe_load_all((tmp_path / "knative" / "accel-vec-double.yaml").read_text())
    assert service["spec"]["template"]["spec"]["runtimeClassName"] == "urunc"
    assert service["spec"]["template"]["metadata"]["annotations"]["com.urunc.unikernel.vAccel"] == "vsock"
    assert trigger["spec"]["filters"][0]["all"][1] == {"exact": {"function": "vec-double"}}
    monkeypatch.setenv("MAPEMESH_DATA", str(tmp_path))
    monkeypatch.setenv("MAPEMESH_VACCEL", "local")
    spec = importlib.util.spec_from_file_location("vec_double", tmp_path / "functions/accel/vec_double/__init__.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    result = module.compute({"input": {"values": [1.5, -2.0]}})
    assert result["values"] == [3.0, -4.0] and result["backend"] == "mapemesh-local"
    again = subprocess.run([sys.executable, "-m", "mapemesh", "function", "new", "--accel", "vec-double", "--root",
                            str(tmp_path)], capture_output=True, text=True)
    assert again.returncode == 2 and "exists already" in again.stderr
    with pytest.raises(accel.AccelError):
        accel.check_name("Bad_Name")


def test_the_shipped_example_is_what_the_scaffold_renders():
    import yaml

    from mapemesh.runtimes import accel

    shipped = list(yaml.safe_load_all((REPO / "knative" / "base" / "accel-digits.yaml").read_text()))
    assert shipped == accel.objects("digits", "functions/accel/digits/__init__.py", "digits", priority="low")


def test_on_a_cluster_the_choice_renders_the_service(tmp_path):
    import yaml

    from mapemesh.runtimes import choice

    def env_of(svc: dict) -> dict:
        return {e["name"]: e["value"] for e in svc["spec"]["template"]["spec"]["containers"][0]["env"]}

    def address(svc: dict) -> str:
        return svc["spec"]["template"]["metadata"]["annotations"]["com.urunc.unikernel.RPCAddress"]

    service, _ = yaml.safe_load_all((REPO / "knative" / "base" / "accel-digits.yaml").read_text())
    assert address(service) == "vsock://2:2048"  # the CPU plugin's agent, until a choice says otherwise
    gpu = choice.with_plugin(service, "gpu")  # on urunc: the guest speaks RPC to the host agent for the choice
    assert env_of(gpu)["MAPEMESH_VACCEL_PLUGIN"] == "gpu" and env_of(gpu)["FUNCTION_TARGET"] == "digits"
    assert env_of(gpu)["VACCEL_PLUGINS"] == "libvaccel-rpc.so" and address(gpu) == "vsock://2:2049"
    remote = choice.with_plugin(gpu, "remote", "tcp://10.0.0.5:65500")
    assert address(remote) == "vsock://2:2050"
    assert remote["spec"]["template"]["metadata"]["annotations"]["mapemesh.dev/vaccel-remote"] == \
        "tcp://10.0.0.5:65500"
    back = choice.with_plugin(remote, "cpu", monitor="firecracker")
    assert address(back) == "unix:///run/vaccel/vaccel.sock_2048"
    assert "mapemesh.dev/vaccel-remote" not in back["spec"]["template"]["metadata"]["annotations"]
    on_kata = choice.with_plugin(choice.apply(service, "kata-qemu"), "remote", "tcp://10.0.0.5:65500")
    assert (env_of(on_kata)["VACCEL_PLUGINS"], env_of(on_kata)["VACCEL_RPC_ADDRESS"]) == (
        "libvaccel-rpc.so", "tcp://10.0.0.5:65500")
    cpu = choice.with_plugin(on_kata, "cpu")
    assert "VACCEL_RPC_ADDRESS" not in env_of(cpu) and env_of(cpu)["CUDA_VISIBLE_DEVICES"] == ""
    data = tmp_path / "data"
    data.mkdir()
    (data / vaccel.CHOICES_FILE).write_text(json.dumps({"functions": {"digits": {"plugin": "gpu"}}}))
    out = tmp_path / "mesh"
    r = subprocess.run([sys.executable, "-m", "mapemesh", "--data", str(data), "render", "mesh", "--manifests",
                        str(REPO / "knative"), "--out", str(out)], capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 0, r.stderr
    rendered = yaml.safe_load((out / "service-accel-digits.yaml").read_text())
    assert env_of(rendered)["MAPEMESH_VACCEL_PLUGIN"] == "gpu" and address(rendered) == "vsock://2:2049"


def test_exec_passes_vaccel_arg_types(local, tmp_path):
    source = tmp_path / "types.c"
    source.write_text(LIB_SOURCE.split("/* vAccel's example")[0] + r"""
int types(struct vaccel_arg *read, size_t nr_read, struct vaccel_arg *write, size_t nr_write)
{
    for (size_t i = 0; i < nr_read; i++)
        ((int32_t *)write[0].buf)[i] = (int32_t)read[i].type;
    return 0;
}
""")
    lib = tmp_path / "libtypes.so"
    subprocess.run(["gcc", "-shared", "-fPIC", "-o", str(lib), str(source)], check=True)
    session = vaccel.Session()
    [seen] = session.exec(lib, "types", [b"raw", 1, [1, 2], 1.5, [1.5], "text"], [[0] * 6])
    assert seen == [0] * 6  # untyped: RAW, as vaccel-python sends them
    A, T = vaccel.Arg, vaccel.ArgType
    [seen] = session.exec(lib, "types", [A(b"raw", T.RAW), A(1, T.INT32), A([1, 2], T.INT32_ARRAY), A(1.5, T.FLOAT64),
                                         A([1.5], T.FLOAT64_ARRAY), A("text", T.STRING)], [[0] * 6])
    assert seen == [0, 5, 6, 19, 20, 27]  # typed: vAccel's RAW, INT32, INT32_ARRAY, FLOAT64, FLOAT64_ARRAY, STRING


def test_a_bad_choice_in_the_file_is_left_out():
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "choices.json"
        path.write_text(json.dumps({"functions": {"a": {"plugin": "remote"}, "b": {"plugin": "gpu"},
                                                  "c": {"plugin": "tpu"}, "d": "cpu"}}))
        assert vaccel.read_choices(path) == {"b": {"plugin": "gpu"}}
        path.write_text("{not json")
        assert vaccel.read_choices(path) == {}
