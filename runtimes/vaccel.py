"""A vAccel client for mapemesh's accelerated functions, with the shape of vAccel's Python bindings.

`Session(flags)` takes vAccel's plugin-type bits (`PluginType`) and offers `noop`, `exec(library, symbol,
arg_read, arg_write)`, `exec_with_resource`, `classify(image)`, `torch_model_load(resource)` and
`torch_model_run(resource, in_tensors, nr_out_tensors)`, with `Resource(paths, ResourceType)`, `Arg` and the
torch `Tensor` as in vaccel-python.

Where the real `vaccel` package (and with it libvaccel) imports, every call goes to it: libvaccel reads
`VACCEL_PLUGINS` (the plugin libraries, `:`-separated) and `VACCEL_RPC_ADDRESS` (the RPC agent, for
`libvaccel-rpc.so`) itself. Otherwise mapemesh's own local backends serve the calls; they are named as such
(`backend == "mapemesh-local"`) and never presented as vAccel:

- `noop`;
- `exec`: loads the shared library with ctypes and calls `int symbol(struct vaccel_arg *read, size_t nr_read,
  struct vaccel_arg *write, size_t nr_write)` with vAccel's `struct vaccel_arg {void *buf; size_t size;
  uint32_t type; uint32_t custom_type_id; bool owned;}`, as vAccel's exec plugin does;
- `torch`: runs a TorchScript model on the CPU, or on CUDA when the function's plugin is `gpu` and a GPU is
  present (torch is the optional extra `mapemesh[accel]`).

Which plugin a function uses is mapemesh's choice (the `vAccelPlugin` knob): `MAPEMESH_VACCEL_PLUGIN` is `cpu`,
`gpu` or `remote` (with `VACCEL_RPC_ADDRESS`); `plugin_env` gives a function's process the environment for it.
Every call records what served it in `session.last` (backend, plugin, device; on the real path the vAccel plugin
libvaccel chose for the session, `vaccel_plugin`).

The real path behaves as vaccel-python v0.3.0 and libvaccel do, and never takes the process down:

| concern            | how                                                                                   |
|--------------------|---------------------------------------------------------------------------------------|
| plugins            | `VACCEL_PLUGINS` entries that `dlopen` would not find are left out before libvaccel   |
|                    | loads (its constructor would `exit(2)`), with a log line (`vaccel_plugins`); with none |
|                    | left, or when `Session()` fails (ENOTSUP without plugins), the local backends serve,  |
|                    | saying why in `session.fallback` and `session.last`                                   |
| arguments          | one model (`runtimes/vaccel_args.py`): plain values encoded as vaccel-python encodes  |
|                    | them (RAW, C int, 4-byte float, NUL-terminated string), typed `Arg`s keep their type  |
|                    | on both paths (`vaccel.Arg(data, vaccel.ArgType.X)` on the real one)                  |
| errors             | every failure is a `VaccelError` with an errno-style `code` and the `backend`, the    |
|                    | original exception chained; the local exec backend gives libvaccel's exec plugin's    |
|                    | codes: EPROTO (71) when the function returns non-zero, ENOSYS (38) for a missing      |
|                    | symbol, EINVAL (22) for a library that does not load or an argument refused           |
| resources          | `exec_with_resource` registers the LIB resource with the real session and calls       |
|                    | vAccel's own `exec_with_resource`; `unregister` is passed on                          |
| enums              | values as the real bindings define them (`MAX` guards included, no `PluginType.ALL`)  |
"""

from __future__ import annotations

import ctypes
import errno
import importlib
import logging
import os
import sys
import time
import warnings
from collections.abc import Sequence
from enum import IntEnum, IntFlag
from pathlib import Path
from typing import Any

from mapemesh.runtimes import vaccel_args, vaccel_plugins
from mapemesh.runtimes.vaccel_args import Arg, ArgType  # noqa: F401 (vAccel's names, from here)
from mapemesh.settings import current

log = logging.getLogger(__name__)

LOCAL = "mapemesh-local"
ACCEL_LABEL = "mapemesh.dev/accel"
"""The label that marks a Knative Service as accelerated function NAME."""
CHOICES_FILE = "vaccel-plugins.json"
"""DATA_DIR/vaccel-plugins.json: the vAccelPlugin knob's choices, {function: {plugin, rpc_address}}."""
PLUGINS = ("cpu", "gpu", "remote")
PLUGIN_ENV = "MAPEMESH_VACCEL_PLUGIN"
VACCEL_PLUGIN_LIBRARIES = {"cpu": "libvaccel-torch.so:libvaccel-exec.so",
                           "gpu": "libvaccel-torch.so:libvaccel-exec.so",
                           "remote": "libvaccel-rpc.so"}
"""What libvaccel loads for each choice (real vAccel): the torch and exec plugins locally, or the RPC plugin."""


class PluginType(IntFlag):
    """vAccel's plugin-type bits (`VACCEL_PLUGIN_*`, as vaccel-python v0.3.0 has them)."""

    CPU = 0x0001
    GPU = 0x0002
    FPGA = 0x0004
    SOFTWARE = 0x0008
    TENSORFLOW = 0x0010
    TORCH = 0x0020
    JETSON = 0x0040
    GENERIC = 0x0080
    DEBUG = 0x0100
    PROFILING = 0x0200
    REMOTE = 0x4000
    MAX = 0x10000


class ResourceType(IntEnum):
    """vAccel's resource types (`VACCEL_RESOURCE_*`)."""

    LIB = 0
    DATA = 1
    MODEL = 2
    MAX = 3


class TensorType(IntEnum):
    """vAccel's torch data types (`VACCEL_TORCH_*`)."""

    BYTE = 1
    CHAR = 2
    SHORT = 3
    INT = 4
    LONG = 5
    HALF = 6
    FLOAT = 7


class VaccelError(RuntimeError):
    """A call that failed, on either path: `code` is errno-style (vAccel's own codes: EINVAL 22, ENOSYS 38,
    EPROTO 71, ENOTSUP 95, ...), `backend` what raised it (`vaccel` or `mapemesh-local`)."""

    def __init__(self, message: str, code: int | None = None, backend: str = LOCAL):
        super().__init__(message)
        self.code = code
        self.backend = backend

    def __str__(self) -> str:
        name = errno.errorcode.get(self.code or 0)
        return f"{super().__str__()} [{self.backend}{f', {name} ({self.code})' if name else ''}]"


def _from_real(exc: BaseException, what: str) -> VaccelError:
    """A VaccelError for an exception of the real bindings (FFIError carries libvaccel's code; a TypeError or
    ValueError from their argument wrappers is EINVAL)."""
    code = getattr(exc, "code", None)
    message = getattr(exc, "message", None) or str(exc)
    return VaccelError(f"{what}: {message}", code if isinstance(code, int) else errno.EINVAL, "vaccel")


class _CArg(ctypes.Structure):
    """vAccel's `struct vaccel_arg`."""

    _fields_ = [("buf", ctypes.c_void_p), ("size", ctypes.c_size_t), ("type", ctypes.c_uint32),
                ("custom_type_id", ctypes.c_uint32), ("owned", ctypes.c_bool)]


class Resource:
    """A model, library or data file a session uses (vAccel's `Resource(paths, type)`)."""

    def __init__(self, paths: str | Path | Sequence[str | Path], type_: ResourceType):
        self.paths = [Path(p) for p in ([paths] if isinstance(paths, str | Path) else paths)]
        self.type = ResourceType(type_)
        if self.type is ResourceType.MAX:
            raise VaccelError("ResourceType.MAX is the enum's guard, not a resource type", errno.EINVAL)
        for path in self.paths:
            if not path.exists():  # libvaccel: "Invalid path", EINVAL
                raise VaccelError(f"resource {path} does not exist", errno.EINVAL)
        self._sessions: set[int] = set()

    @property
    def path(self) -> Path:
        return self.paths[0]

    def register(self, session: Session) -> None:
        self._sessions.add(id(session))
        session._resources[id(self)] = self

    def unregister(self, session: Session) -> None:
        """Forget the session, and the real resource made for it (unregistered from the real session)."""
        if not self.is_registered(session):  # libvaccel: unregistering what is not registered is EINVAL
            raise VaccelError("the resource is not registered with this session", errno.EINVAL, session.backend)
        real = session._real_resources.get(id(self))
        if real is not None:  # the real session first: if it refuses, both sides keep the registration
            try:
                real.unregister(session._real)
            except Exception as exc:
                raise _from_real(exc, "unregister") from exc
            del session._real_resources[id(self)]
        self._sessions.discard(id(session))
        session._resources.pop(id(self), None)

    def is_registered(self, session: Session) -> bool:
        return id(session) in self._sessions


class Tensor:
    """A torch tensor as vAccel passes it: dims, data type, flat data."""

    def __init__(self, dims: Sequence[int], data_type: TensorType, data: Sequence[Any]):
        self.dims = [int(d) for d in dims]
        self.data_type = TensorType(data_type)
        self.data = list(data)

    @property
    def shape(self) -> list[int]:
        return self.dims

    @classmethod
    def from_torch(cls, tensor: Any) -> Tensor:
        import torch

        types = {torch.float32: TensorType.FLOAT, torch.int64: TensorType.LONG, torch.int32: TensorType.INT,
                 torch.uint8: TensorType.BYTE, torch.int8: TensorType.CHAR, torch.int16: TensorType.SHORT,
                 torch.float16: TensorType.HALF}
        t = tensor.detach().cpu().contiguous()
        if t.dtype not in types:
            raise VaccelError(f"tensors of {t.dtype} cannot be passed (float32, int64, int32, ...)")
        return cls(list(t.shape), types[t.dtype], t.flatten().tolist())

    def as_torch(self) -> Any:
        import torch

        dtypes = {TensorType.FLOAT: torch.float32, TensorType.LONG: torch.int64, TensorType.INT: torch.int32,
                  TensorType.BYTE: torch.uint8, TensorType.CHAR: torch.int8, TensorType.SHORT: torch.int16,
                  TensorType.HALF: torch.float16}
        return torch.tensor(self.data, dtype=dtypes[self.data_type]).reshape(self.dims)


def plugin_env(plugin: str, rpc_address: str | None = None) -> dict[str, str]:
    """The environment a function's processes get for a plugin choice (local backends and libvaccel alike)."""
    if plugin not in PLUGINS:
        raise VaccelError(f"plugin must be one of {', '.join(PLUGINS)}, not {plugin!r}")
    env = {PLUGIN_ENV: plugin, "VACCEL_PLUGINS": VACCEL_PLUGIN_LIBRARIES[plugin]}
    if plugin == "remote":
        if not rpc_address:
            raise VaccelError("the remote plugin needs an RPC address (tcp://HOST:PORT, unix:///PATH, "
                              "vsock://CID:PORT)")
        env["VACCEL_RPC_ADDRESS"] = rpc_address
    elif plugin == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""  # vAccel's torch plugin takes CUDA where it sees a GPU: hide it
    return env


def read_choices(path: Path) -> dict[str, dict[str, Any]]:
    """The plugin choices in `path` (none when it does not exist or cannot be read: the Services' own env)."""
    import json

    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, ValueError):
        return {}
    functions = doc.get("functions") if isinstance(doc, dict) else None
    return {str(k): v for k, v in (functions or {}).items()
            if isinstance(v, dict) and v.get("plugin") in PLUGINS
            and (v["plugin"] != "remote" or (isinstance(v.get("rpc_address"), str) and v["rpc_address"]))}


PLUGIN_LOAD: dict[str, Any] = {}
"""What this process asked libvaccel to load (`requested`), kept (`loaded`) and left out (`missing`), set when the
real bindings are first looked for."""


def real_vaccel() -> Any | None:
    """vAccel's own Python package when it (and libvaccel) import, else None; `MAPEMESH_VACCEL=local` forces the
    local backends. Before the first import, `VACCEL_PLUGINS` loses the entries `dlopen` would not find (libvaccel's
    constructor would `exit()` on them); with none left, libvaccel is not loaded at all."""
    if current().vaccel == "local":
        return None
    if "vaccel" not in sys.modules and not _guard_plugins():
        return None
    try:
        return importlib.import_module("vaccel")
    except Exception as exc:  # not installed, or libvaccel missing: the local backends serve
        PLUGIN_LOAD.setdefault("fallback", f"the vaccel package does not import: {exc}")
        return None


def _guard_plugins() -> bool:
    """Keep the usable `VACCEL_PLUGINS` entries (False: some were named and none is usable)."""
    requested = os.environ.get("VACCEL_PLUGINS")
    if requested is None:
        PLUGIN_LOAD.update(requested=[], loaded=[], missing=[])
        return True
    loaded, missing = vaccel_plugins.usable(requested)
    PLUGIN_LOAD.update(requested=requested.split(":"), loaded=loaded, missing=missing)
    if missing:
        log.warning("vAccel plugins not found, left out: %s (libvaccel would exit at load); loading %s",
                    ", ".join(missing), ":".join(loaded) or "none")
    if not loaded:
        PLUGIN_LOAD["fallback"] = f"no vAccel plugin of {requested} is installed"
        return False
    os.environ["VACCEL_PLUGINS"] = ":".join(loaded)
    return True


class Session:
    """A vAccel session: calls go to vAccel when it is importable, else to mapemesh's local backends."""

    def __init__(self, flags: PluginType | int = 0):
        self.flags = PluginType(int(flags))
        self.plugin = current().vaccel_plugin
        if self.plugin not in PLUGINS:
            raise VaccelError(f"{PLUGIN_ENV}={self.plugin!r}: must be one of {', '.join(PLUGINS)}")
        self._vaccel = real_vaccel()
        self._real: Any = None
        self.fallback: str | None = PLUGIN_LOAD.get("fallback")
        """Why the local backends serve although the real path was not switched off (None: it was, or it serves)."""
        if self._vaccel is not None:
            try:
                self._real = self._vaccel.Session(int(self.flags))
            except Exception as exc:  # ENOTSUP without plugins, say: serve locally, and say so
                self.fallback = f"vAccel's Session() failed: {_from_real(exc, 'Session')}"
                log.warning("%s; mapemesh's local backends serve instead", self.fallback)
        self.backend = "vaccel" if self._real is not None else LOCAL
        self.vaccel_plugin = (vaccel_plugins.served_by(int(self.flags), PLUGIN_LOAD.get("loaded") or
                                                       _split(os.environ.get("VACCEL_PLUGINS")))
                              if self._real is not None else None)
        """The vAccel plugin serving this session (libvaccel's choice for the flags; None: the local backends)."""
        self._resources: dict[int, Resource] = {}
        self._real_resources: dict[int, Any] = {}
        self._models: dict[tuple[str, str], Any] = {}
        self.last: dict[str, Any] = {}

    # -- what served a call --

    def _served(self, op: str, device: str | None, started: float) -> None:
        """Record what served `op`: on the real path the plugin libvaccel chose and its device, else `device`."""
        if self.backend == "vaccel":
            device = vaccel_plugins.DEVICES.get(self.vaccel_plugin or "", "unknown")
        self.last = {"op": op, "backend": self.backend, "plugin": self.plugin, "device": device,
                     "latency_ms": round((time.perf_counter() - started) * 1000, 3)}
        if self.backend == "vaccel":
            self.last["vaccel_plugin"] = self.vaccel_plugin
            self.last["vaccel_plugins"] = os.environ.get("VACCEL_PLUGINS")
            if self.plugin == "remote":
                self.last["rpc_address"] = os.environ.get("VACCEL_RPC_ADDRESS")
        if PLUGIN_LOAD.get("missing"):
            self.last["vaccel_plugins_missing"] = list(PLUGIN_LOAD["missing"])
        if self.fallback:
            self.last["fallback"] = self.fallback

    def _local_only(self, op: str) -> None:
        if self.plugin == "remote":
            address = os.environ.get("VACCEL_RPC_ADDRESS") or "(no VACCEL_RPC_ADDRESS)"
            raise VaccelError(f"{op}: the remote plugin needs vAccel's RPC plugin (libvaccel-rpc.so) and an agent "
                              f"at {address}; mapemesh's local backends cannot serve it", errno.ENOTSUP)

    def _call_real(self, what: str, call: Any, *args: Any) -> Any:
        try:
            return call(*args)
        except Exception as exc:  # FFIError, or the bindings' TypeError/ValueError for an argument
            raise _from_real(exc, what) from exc

    # -- operations --

    def noop(self) -> None:
        started = time.perf_counter()
        if self._real is not None:
            self._call_real("noop", self._real.noop)
        else:
            self._local_only("noop")
        self._served("noop", "none", started)

    def exec(self, library: str | Path, symbol: str, arg_read: list[Any] | None = None,
             arg_write: list[Any] | None = None) -> list[Any] | None:
        """Call `symbol` in the shared library with the read arguments; the write arguments' new values (None
        without write arguments). Arguments: `runtimes/vaccel_args.py`."""
        started = time.perf_counter()
        if self._real is not None:
            out = self._call_real("exec", self._real.exec, library, symbol, *self._real_args(arg_read, arg_write))
            self._served("exec", None, started)
            return out
        self._local_only("exec")
        out = _exec_local(Path(library), symbol, arg_read, arg_write)
        self._served("exec", "cpu", started)
        return out

    def exec_with_resource(self, resource: Resource, symbol: str, arg_read: list[Any] | None = None,
                           arg_write: list[Any] | None = None) -> list[Any] | None:
        """`exec` of a LIB resource registered with this session (vAccel's `exec_with_resource`: the library is
        the resource's, wherever the plugin keeps it, the agent's side for the RPC plugin)."""
        if resource.type is not ResourceType.LIB:
            raise VaccelError(f"exec_with_resource needs a LIB resource, not {resource.type.name}", errno.EINVAL,
                              self.backend)
        if not resource.is_registered(self):
            raise VaccelError("exec_with_resource: register the resource with this session first", errno.EPERM,
                              self.backend)
        started = time.perf_counter()
        if self._real is not None:
            out = self._call_real("exec_with_resource", self._real.exec_with_resource, self._real_resource(resource),
                                  symbol, *self._real_args(arg_read, arg_write))
            self._served("exec_with_resource", None, started)
            return out
        self._local_only("exec_with_resource")
        out = _exec_local(resource.path, symbol, arg_read, arg_write)
        self._served("exec_with_resource", "cpu", started)
        return out

    def _real_args(self, *lists: list[Any] | None) -> list[list[Any] | None]:
        return [None if args is None else [vaccel_args.to_real(a, self._vaccel) for a in args] for args in lists]

    def _real_resource(self, resource: Resource) -> Any:
        """vaccel-python's own Resource for `resource`, registered with the real session (made once)."""
        if not resource.is_registered(self):
            raise VaccelError("register the resource with this session first (resource.register(session))",
                              errno.EPERM, self.backend)
        made = self._real_resources.get(id(resource))
        if made is None:
            kind = getattr(self._vaccel.ResourceType, resource.type.name)
            made = self._call_real("Resource", self._vaccel.Resource, [str(p) for p in resource.paths], kind)
            self._call_real("register", made.register, self._real)
            self._real_resources[id(resource)] = made
        return made

    def _real_tensors(self, tensors: list[Tensor]) -> list[Any]:
        torch_ops = importlib.import_module("vaccel.ops.torch")
        return [torch_ops.Tensor(t.dims, getattr(torch_ops.TensorType, t.data_type.name), t.data) for t in tensors]

    def torch_model_load(self, resource: Resource) -> None:
        """Load a TorchScript model resource (it must be registered with this session)."""
        if self._real is not None:
            self._call_real("torch_model_load", self._real.torch_model_load, self._real_resource(resource))
            return
        self._model(resource)

    def torch_model_run(self, resource: Resource, in_tensors: list[Tensor],
                        nr_out_tensors: int = 1) -> list[Tensor]:
        """Run the model on the input tensors; its output tensors (at most `nr_out_tensors`)."""
        started = time.perf_counter()
        if self._real is not None:
            out = self._call_real("torch_model_run", self._real.torch_model_run, self._real_resource(resource),
                                  self._real_tensors(in_tensors), nr_out_tensors)
            self._served("torch_model_run", None, started)
            return [Tensor(list(t.dims), TensorType[t.data_type.name], list(t.data)) for t in out]
        self._local_only("torch_model_run")
        import torch

        model, device = self._model(resource)
        with torch.inference_mode():
            result = model(*[t.as_torch().to(device) for t in in_tensors])
        outputs = list(result) if isinstance(result, tuple | list) else [result]
        self._served("torch_model_run", device, started)
        return [Tensor.from_torch(o) for o in outputs[:nr_out_tensors]]

    def classify(self, image: bytes) -> tuple[str, str]:
        """vAccel's image classification: (tag, name of the image the plugin wrote, if any). The local backend
        writes no image (the name is empty) and runs the model registered with
        the session that carries a `labels` file beside it (`<model>.labels`, one label per class)."""
        started = time.perf_counter()
        if self._real is not None:
            out = self._call_real("classify", self._real.classify, image)
            self._served("classify", None, started)
            return tuple(out)  # type: ignore[return-value]
        self._local_only("classify")
        import torch

        models = [r for r in self._resources.values() if r.type is ResourceType.MODEL
                  and r.path.with_suffix(".labels").exists()]
        if not models:
            raise VaccelError("classify: register a MODEL resource whose labels sit beside it (<model>.labels)")
        labels = models[0].path.with_suffix(".labels").read_text().split()
        model, device = self._model(models[0])
        pixels = torch.tensor(list(image), dtype=torch.float32) / 255.0
        with torch.inference_mode():
            scores = model(pixels.reshape(1, -1).to(device))
        tag = labels[int(scores.argmax())]
        self._served("classify", device, started)
        return tag, ""

    def _model(self, resource: Resource) -> tuple[Any, str]:
        if resource.type is not ResourceType.MODEL:
            raise VaccelError(f"a torch model must be a MODEL resource, not {resource.type.name}")
        if not resource.is_registered(self):
            raise VaccelError("register the model resource with this session first (resource.register(session))")
        device = self.device()
        key = (str(resource.path), device)
        if key not in self._models:
            try:
                import torch
            except ImportError as exc:
                raise VaccelError("the local torch backend needs torch: pip install mapemesh[accel]") from exc
            with warnings.catch_warnings():  # TorchScript: what vAccel's torch plugin loads too
                warnings.simplefilter("ignore", DeprecationWarning)
                self._models[key] = torch.jit.load(str(resource.path), map_location=device).eval()
        return self._models[key], device

    def device(self) -> str:
        """Where the local torch backend runs: CUDA for the gpu plugin when a GPU is present, else the CPU."""
        if self.plugin != "gpu":
            return "cpu"
        try:
            import torch
        except ImportError:
            return "cpu"
        return "cuda" if torch.cuda.is_available() else "cpu"


def _exec_local(library: Path, symbol: str, arg_read: list[Any] | None,
                arg_write: list[Any] | None) -> list[Any] | None:
    """vAccel's exec plugin, locally: `dlopen`, `dlsym`, one call; its error codes (EINVAL, ENOSYS, EPROTO)."""
    try:
        reads = [vaccel_args.as_arg(a) for a in _args(arg_read)]
        writes = [vaccel_args.as_arg(a) for a in _args(arg_write)]
        buffers = [vaccel_args.encode(a) for a in (*reads, *writes)]
    except (ValueError, TypeError) as exc:
        raise VaccelError(f"exec: {exc}", errno.EINVAL) from exc
    try:
        lib = ctypes.CDLL(str(library))
    except OSError as exc:
        raise VaccelError(f"exec: cannot load {library}: {exc}", errno.EINVAL) from exc
    try:
        fn = getattr(lib, symbol)
    except AttributeError as exc:
        raise VaccelError(f"exec: {library} has no symbol {symbol!r}", errno.ENOSYS) from exc
    fn.restype = ctypes.c_int
    fn.argtypes = [ctypes.POINTER(_CArg), ctypes.c_size_t, ctypes.POINTER(_CArg), ctypes.c_size_t]
    cbufs = [ctypes.create_string_buffer(b, len(b)) for b in buffers]
    c_read = (_CArg * max(1, len(reads)))()
    c_write = (_CArg * max(1, len(writes)))()
    for i, a in enumerate(reads):
        c_read[i] = _CArg(ctypes.cast(cbufs[i], ctypes.c_void_p), len(cbufs[i]), int(a.type), 0, False)
    for i, a in enumerate(writes):
        buf = cbufs[len(reads) + i]
        c_write[i] = _CArg(ctypes.cast(buf, ctypes.c_void_p), len(buf), int(a.type), 0, False)
    code = fn(c_read if reads else None, len(reads), c_write if writes else None, len(writes))
    if code != 0:  # the exec plugin answers VACCEL_EBACKEND (EPROTO) for any non-zero return
        raise VaccelError(f"exec: {symbol} returned {code}", errno.EPROTO)
    if arg_write is None:
        return None
    return [vaccel_args.decode(a, cbufs[len(reads) + i].raw) for i, a in enumerate(writes)]


def _args(given: list[Any] | None) -> list[Any]:
    """vaccel-python's argument list: None is no arguments; an empty list is refused (its `CList`)."""
    if given is None:
        return []
    if not given:
        raise ValueError("CList cannot be empty")
    return list(given)


def _split(plugins: str | None) -> list[str]:
    return [p for p in (plugins or "").split(":") if p]
