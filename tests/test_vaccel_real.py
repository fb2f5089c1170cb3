"""The real vAccel path, through a faithful stand-in of vaccel-python v0.3.0 and libvaccel (tests/vaccel_standin):
plugins, arguments, errors, resources and enums behave as the real ones, and a missing plugin never takes the
process down.

| issue 25, point                                  | test                                                   |
|--------------------------------------------------|--------------------------------------------------------|
| 1. a missing plugin: exit(2) at libvaccel's load | test_a_missing_plugin_is_left_out_and_the_process_...  |
|    no plugin: ENOTSUP, no fallback               | test_without_a_usable_plugin_the_local_backend_serves  |
| 2. mapemesh's Arg refused by the real bindings   | test_a_typed_arg_reaches_vaccel_as_a_typed_vaccel_arg  |
| 3. arguments encoded differently                 | test_one_c_library_gives_the_same_results_on_both_...  |
| 4. errors not one type                           | test_every_failure_is_a_vaccel_error_with_vaccels_code |
| 5. resources, unregister, device, enums          | test_exec_with_resource_registers_..., test_what_...,  |
|                                                  | test_enums_are_the_real_bindings                       |
| 6. a faithful stand-in                           | test_the_stand_in_has_the_real_bindings_names_and_...  |
| the digits example's output check                | test_the_digits_example_refuses_an_output_that_is_...  |
"""

from __future__ import annotations

import inspect
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from mapemesh.runtimes import vaccel

from .conftest import REPO
from .test_vaccel import LIB_SOURCE as BASE_LIB_SOURCE

STAND_IN = Path(__file__).resolve().parent / "vaccel_standin"
API = json.loads((STAND_IN / "api.json").read_text())

PLUGIN_SOURCE = "unsigned int vaccel_standin_plugin_type = PLUGIN_TYPE;\n"
PLUGINS = {"exec": 0x8 | 0x80 | 0x1, "noop": 0x100, "torch": 0x20 | 0x1}
LIB_SOURCE = BASE_LIB_SOURCE + r"""
/* each read argument's (type, size) into write[0], an int32 array */
int describe(struct vaccel_arg *read, size_t nr_read, struct vaccel_arg *write, size_t nr_write)
{
    if (nr_write != 1 || write[0].size < 8 * nr_read)
        return 22;
    int32_t *out = write[0].buf;
    for (size_t i = 0; i < nr_read; i++) {
        out[2 * i] = (int32_t)read[i].type;
        out[2 * i + 1] = (int32_t)read[i].size;
    }
    return 0;
}

/* read: an int (4 bytes), a float (4 bytes), an int64_t, a double, a string; write: a double, a string */
int compute(struct vaccel_arg *read, size_t nr_read, struct vaccel_arg *write, size_t nr_write)
{
    if (nr_read != 5 || nr_write != 2 || read[0].size != 4 || read[1].size != 4 || read[2].size != 8
        || read[3].size != 8 || write[0].size != 8)
        return 22;
    int32_t a; float b; int64_t c; double d;
    memcpy(&a, read[0].buf, 4); memcpy(&b, read[1].buf, 4); memcpy(&c, read[2].buf, 8); memcpy(&d, read[3].buf, 8);
    double total = a + b + (double)c + d;
    memcpy(write[0].buf, &total, 8);
    size_t n = strlen(read[4].buf);
    for (size_t i = 0; i < n && i + 1 < write[1].size; i++)
        ((char *)write[1].buf)[i] = ((char *)read[4].buf)[n - 1 - i];
    return 0;
}

"""


def _cc(source: str, out: Path, *defines: str) -> Path:
    out.with_suffix(".c").write_text(source)
    subprocess.run(["gcc", "-shared", "-fPIC", "-O2", *defines, "-o", str(out), str(out.with_suffix(".c"))],
                   check=True)
    return out


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The test library, and the stand-in plugins in a folder of their own (`plugins`), torch's left out."""
    folder = tmp_path_factory.mktemp("vaccel")
    plugins = folder / "plugins"
    plugins.mkdir()
    out = {"lib": _cc(LIB_SOURCE, folder / "libmytest.so"), "plugins": plugins}
    for name in ("exec", "noop"):
        out[name] = _cc(PLUGIN_SOURCE, plugins / f"libvaccel-{name}.so", f"-DPLUGIN_TYPE={PLUGINS[name]}")
    torch = folder / "torch-plugin"  # not in `plugins`: a plugin list naming it by name does not find it
    torch.mkdir()
    out["torch"] = _cc(PLUGIN_SOURCE, torch / "libvaccel-torch.so", f"-DPLUGIN_TYPE={PLUGINS['torch']}")
    out["not-a-plugin"] = _cc("int nothing;\n", plugins / "libvaccel-bogus.so")
    return out


def run(code: str, env: dict[str, str], *, local: bool = False) -> subprocess.CompletedProcess[str]:
    """`code` in a fresh process (libvaccel loads once per process) with the stand-in importable as `vaccel`."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(("VACCEL_", "MAPEMESH_VACCEL"))}
    base["PYTHONPATH"] = os.pathsep.join([str(STAND_IN), str(REPO)])
    if local:
        base["MAPEMESH_VACCEL"] = "local"
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env={**base, **env}, capture_output=True,
                          text=True, timeout=60)


def answer(proc: subprocess.CompletedProcess[str]) -> dict:
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


EXEC = """
import json, sys
from mapemesh.runtimes import vaccel
session = vaccel.Session(vaccel.PluginType.CPU)
out = session.exec(sys.argv[0] if False else {lib!r}, "mytestfunc", [21], [0])
print(json.dumps({{"out": out, "backend": session.backend, "fallback": session.fallback, "last": session.last}}))
"""


def test_a_missing_plugin_is_left_out_and_the_process_lives_served_by_the_rest(built):
    env = {"VACCEL_PLUGINS": "libvaccel-torch.so:libvaccel-exec.so", "LD_LIBRARY_PATH": str(built["plugins"])}
    dies = run("import vaccel", env)  # libvaccel itself: the constructor exits
    assert dies.returncode == 2 and "Could not dlopen plugin libvaccel-torch.so" in dies.stderr
    got = answer(run(EXEC.format(lib=str(built["lib"])), env))
    assert got["out"] == [42] and got["backend"] == "vaccel" and got["fallback"] is None
    assert got["last"]["vaccel_plugin"] == "exec" and got["last"]["vaccel_plugins"] == "libvaccel-exec.so"
    assert got["last"]["vaccel_plugins_missing"] == ["libvaccel-torch.so"]
    bogus = run("import vaccel", {"VACCEL_PLUGINS": str(built["not-a-plugin"])})
    assert bogus.returncode == 80  # ELIBBAD: a library that is not a plugin


def test_without_a_usable_plugin_the_local_backend_serves(built):
    got = answer(run(EXEC.format(lib=str(built["lib"])), {"VACCEL_PLUGINS": "libvaccel-torch.so",
                                                          "LD_LIBRARY_PATH": str(built["plugins"])}))
    assert got["out"] == [42] and got["backend"] == "mapemesh-local"
    assert "no vAccel plugin of libvaccel-torch.so is installed" in got["fallback"]
    assert got["last"]["fallback"] == got["fallback"] and got["last"]["vaccel_plugins_missing"] == [
        "libvaccel-torch.so"]
    unset = answer(run(EXEC.format(lib=str(built["lib"])), {}))  # libvaccel loads, Session() is ENOTSUP
    assert unset["out"] == [42] and unset["backend"] == "mapemesh-local"
    assert "Session" in unset["fallback"] and "ENOTSUP (95)" in unset["fallback"]


CALLS = """
import json
from mapemesh.runtimes import vaccel
A, T = vaccel.Arg, vaccel.ArgType
session = vaccel.Session(vaccel.PluginType.CPU)
lib = {lib!r}
described = session.exec(lib, "describe", [b"raw", 1, 1.5, "text", A(7, T.INT64), A(2.5, T.FLOAT64),
                                            A("hi", T.STRING), A([1, 2, 3], T.INT32_ARRAY), A(True, T.BOOL),
                                            A(5, T.RAW), A(b"buf", T.BUFFER), A([1, 2], T.UINT8_ARRAY)], [[0] * 24])
total, reversed_ = session.exec(lib, "compute", [2, 0.25, A(2**40, T.INT64), A(0.125, T.FLOAT64), "abc"],
                                [A(0.0, T.FLOAT64), bytes(4)])
doubled = session.exec(lib, "mytestfunc", [A(-5, T.INT32)], [A(0, T.INT32)])
print(json.dumps({{"backend": session.backend, "described": described, "total": total,
                  "reversed": reversed_.decode(errors="replace"), "doubled": doubled}}))
"""


def test_one_c_library_gives_the_same_results_on_both_paths(built):
    real = answer(run(CALLS.format(lib=str(built["lib"])), {"VACCEL_PLUGINS": str(built["exec"])}))
    local = answer(run(CALLS.format(lib=str(built["lib"])), {}, local=True))
    assert (real["backend"], local["backend"]) == ("vaccel", "mapemesh-local")
    [described] = real["described"]
    pairs = [tuple(described[i:i + 2]) for i in range(0, 24, 2)]
    # vaccel-python's own encoding for untyped values: RAW, 3 bytes, a 4-byte C int, a 4-byte C float, "text\0";
    # numeric types in their C type; other types tag the value, encoded as untyped (BOOL True: a 4-byte int)
    assert pairs == [(0, 3), (0, 4), (0, 4), (0, 5), (7, 8), (19, 8), (27, 3), (6, 12), (21, 4), (0, 4), (28, 3),
                     (10, 2)]
    assert real["total"] == 2 + 0.25 + 2**40 + 0.125 and real["reversed"].startswith("cba")
    assert real["doubled"] == [-10]
    del real["backend"], local["backend"]
    assert local == real


def test_a_typed_arg_reaches_vaccel_as_a_typed_vaccel_arg(built):
    code = """
    import json, vaccel as real
    from mapemesh.runtimes import vaccel
    seen = []
    original = real.Session.exec
    def spy(self, library, symbol, arg_read=None, arg_write=None):
        seen.extend([type(a).__module__ + "." + type(a).__name__, getattr(a, "type", None) and a.type.name]
                    for a in arg_read)
        return original(self, library, symbol, arg_read, arg_write)
    real.Session.exec = spy
    out = vaccel.Session().exec({lib!r}, "mytestfunc", [vaccel.Arg(4, vaccel.ArgType.INT32)], [0])
    print(json.dumps({{"out": out, "seen": seen}}))
    """
    got = answer(run(code.format(lib=str(built["lib"])), {"VACCEL_PLUGINS": str(built["exec"])}))
    assert got == {"out": [8], "seen": [["vaccel.arg.Arg", "INT32"]]}


ERRORS = """
import json
from mapemesh.runtimes import vaccel
session = vaccel.Session(vaccel.PluginType.CPU)
found = []
for args in (({lib!r}, "fails", [1], [0]), ({lib!r}, "nope", [1], [0]), ("/nonexistent/lib.so", "f", None, None),
             ({lib!r}, "mytestfunc", [{{"a": 1}}], [0]), ({lib!r}, "mytestfunc", [], [0])):
    try:
        session.exec(*args)
    except vaccel.VaccelError as exc:
        found.append([exc.code, exc.backend, type(exc.__cause__).__name__ if exc.__cause__ else None, str(exc)])
print(json.dumps(found))
"""


def test_every_failure_is_a_vaccel_error_with_vaccels_code(built):
    real = answer(run(ERRORS.format(lib=str(built["lib"])), {"VACCEL_PLUGINS": str(built["exec"])}))
    local = answer(run(ERRORS.format(lib=str(built["lib"])), {}, local=True))
    # EPROTO: the function returned non-zero; ENOSYS: no such symbol; EINVAL: no library, an argument refused
    assert [r[0] for r in real] == [r[0] for r in local] == [71, 38, 22, 22, 22]
    assert {r[1] for r in real} == {"vaccel"} and {r[1] for r in local} == {"mapemesh-local"}
    assert [r[2] for r in real] == ["FFIError", "FFIError", "FFIError", "TypeError", "ValueError"]
    assert "No CType wrapper registered for <class 'dict'>" in real[3][3] and "CList cannot be empty" in local[4][3]
    assert "fails returned 7" in local[0][3] and "EPROTO (71)" in local[0][3]


def test_exec_with_resource_registers_with_the_real_session_and_unregister_passes_on(built):
    code = """
    import json
    from mapemesh.runtimes import vaccel
    session = vaccel.Session(vaccel.PluginType.CPU)
    lib = vaccel.Resource({lib!r}, vaccel.ResourceType.LIB)
    lib.register(session)
    out = session.exec_with_resource(lib, "mytestfunc", [-5], [0])
    real = session._real_resources[id(lib)]
    registered = [session._real.has_resource(real), real.is_registered(session._real)]
    lib.unregister(session)
    registered += [session._real.has_resource(real), real.is_registered(session._real)]
    try:
        session.exec_with_resource(lib, "mytestfunc", [1], [0])
    except vaccel.VaccelError as exc:
        code = exc.code
    print(json.dumps({{"out": out, "registered": registered, "after": code, "op": session.last["op"]}}))
    """
    got = answer(run(code.format(lib=str(built["lib"])), {"VACCEL_PLUGINS": str(built["exec"])}))
    assert got == {"out": [-10], "registered": [True, True, False, False], "after": 1, "op": "exec_with_resource"}


def test_what_served_a_call_is_reported(built):
    code = """
    import json
    from mapemesh.runtimes import vaccel
    rows = []
    for flags, op in ((vaccel.PluginType.DEBUG, "noop"), (vaccel.PluginType.CPU, "exec"), (0, "noop")):
        session = vaccel.Session(flags)
        session.noop() if op == "noop" else session.exec({lib!r}, "mytestfunc", [1], [0])
        rows.append([session.last["vaccel_plugin"], session.last["device"]])
    print(json.dumps(rows))
    """
    plugins = f"{built['noop']}:{built['exec']}"
    assert answer(run(code.format(lib=str(built["lib"])), {"VACCEL_PLUGINS": plugins})) == [
        ["noop", "none"], ["exec", "cpu"], ["noop", "none"]]


def test_the_digits_model_runs_through_vaccels_torch_plugin(built, tmp_path):
    pytest.importorskip("torch", reason="torch is not installed (pip install mapemesh[accel]); CI installs it")
    code = """
    import json
    from pathlib import Path
    from mapemesh.functions.accel.digits import model
    from mapemesh.runtimes import vaccel
    session = vaccel.Session(vaccel.PluginType.TORCH)
    resource = vaccel.Resource(model.build(Path({path!r})), vaccel.ResourceType.MODEL)
    resource.register(session)
    session.torch_model_load(resource)
    [out] = session.torch_model_run(resource, [vaccel.Tensor([1, 64], vaccel.TensorType.FLOAT, model.pixels("7"))])
    print(json.dumps({{"best": max(range(10), key=out.data.__getitem__), "last": session.last}}))
    """
    got = answer(run(code.format(path=str(tmp_path / "d.pt")), {"VACCEL_PLUGINS": f"{built['torch']}:{built['exec']}"}))
    assert got["best"] == 7
    assert (got["last"]["backend"], got["last"]["vaccel_plugin"], got["last"]["device"]) == (
        "vaccel", "torch", "vaccel-torch")


def test_enums_are_the_real_bindings():
    for name, cls in (("ArgType", vaccel.ArgType), ("PluginType", vaccel.PluginType),
                      ("ResourceType", vaccel.ResourceType), ("ops.torch.TensorType", vaccel.TensorType)):
        assert {m.name: int(m.value) for m in cls} == API["enums"][name], name
    assert not hasattr(vaccel.PluginType, "ALL") and vaccel.PluginType.MAX == 0x10000


def _signature(obj: object) -> str:
    sig = inspect.signature(obj)  # type: ignore[arg-type]
    parts = []
    for p in sig.parameters.values():
        if p.kind is inspect.Parameter.KEYWORD_ONLY and "*" not in parts:
            parts.append("*")
        default = p.default
        enum_member = hasattr(default, "name") and hasattr(default, "value")
        text = p.name if default is inspect.Parameter.empty else (
            f"{p.name}={type(default).__name__}.{default.name}" if enum_member else f"{p.name}={default!r}")
        parts.append(text)
    return f"({', '.join(parts)})"


def drift(module: object) -> list[str]:
    """Where the stand-in package `module` differs from the recorded real API."""
    import importlib

    out = []
    exported = sorted(n for n in getattr(module, "__all__", []))
    if exported != sorted(API["exports"]):
        out.append(f"exports {exported} != {sorted(API['exports'])}")
    if getattr(module, "__version__", None) != API["version"]:
        out.append(f"__version__ {getattr(module, '__version__', None)!r}")
    def resolve(dotted: str) -> object:
        """`module.a.b.C.m`: the deepest importable module, then attributes."""
        parts = dotted.split(".")
        for cut in range(len(parts), -1, -1):
            try:
                obj: object = importlib.import_module(".".join([module.__name__, *parts[:cut]]))
            except ImportError:
                continue
            for attr in parts[cut:]:
                obj = getattr(obj, attr)
            return obj
        raise LookupError(dotted)

    for dotted, expected in API["signatures"].items():
        got = _signature(resolve(dotted))
        if got != expected:
            out.append(f"{dotted}{got} != {expected}")
    for cls, names in API["properties"].items():
        for prop in names:
            if not isinstance(getattr(getattr(module, cls), prop, None), property):
                out.append(f"{cls}.{prop} is not a property")
    for dotted, members in API["enums"].items():
        got = {m.name: int(m.value) for m in resolve(dotted)}  # type: ignore[attr-defined]
        if got != members:
            out.append(f"{dotted} {got} != {members}")
    error = importlib.import_module(f"{module.__name__}.error").FFIError(22, "x")
    if [a for a in API["errors"]["error.FFIError"] if not hasattr(error, a)]:
        out.append("FFIError lacks code or message")
    return out


def test_the_stand_in_has_the_real_bindings_names_and_signatures(monkeypatch, built):
    monkeypatch.setenv("VACCEL_PLUGINS", str(built["exec"]))
    monkeypatch.syspath_prepend(str(STAND_IN))
    for name in [m for m in sys.modules if m == "vaccel" or m.startswith("vaccel.")]:
        monkeypatch.delitem(sys.modules, name)
    import vaccel as stand_in

    try:
        assert drift(stand_in) == []
        assert not hasattr(stand_in.Resource, "paths") and stand_in.Resource(str(built["lib"]), 0)._paths == [
            str(built["lib"])]
        with pytest.raises(TypeError, match="No CType wrapper registered for <class 'dict'>"):
            stand_in.Arg({"a": 1})
        # the check catches a planted drift
        monkeypatch.setattr(stand_in.Session, "exec", lambda self, library, symbol, arg_read: None)
        assert drift(stand_in) == ["Session.exec(self, library, symbol, arg_read) != "
                                   "(self, library, symbol, arg_read=None, arg_write=None)"]
    finally:
        for name in [m for m in sys.modules if m == "vaccel" or m.startswith("vaccel.")]:
            sys.modules.pop(name, None)


def test_the_digits_example_refuses_an_output_that_is_not_ten_scores(monkeypatch, tmp_path):
    pytest.importorskip("torch", reason="torch is not installed (pip install mapemesh[accel]); CI installs it")
    import importlib

    monkeypatch.setenv("MAPEMESH_VACCEL", "local")
    monkeypatch.setenv("MAPEMESH_DATA", str(tmp_path))
    digits = importlib.import_module("mapemesh.functions.accel.digits")
    monkeypatch.setattr(digits, "_session", None)
    assert len(digits.classify({"input": {"digit": "3"}})["scores"]) == 10
    nine = vaccel.Tensor([1, 9], vaccel.TensorType.FLOAT, [0.1] * 9)
    monkeypatch.setattr(vaccel.Session, "torch_model_run", lambda self, *a, **k: [nine])
    with pytest.raises(ValueError, match="9 scores, not 10"):
        digits.classify({"input": {"digit": "3"}})
