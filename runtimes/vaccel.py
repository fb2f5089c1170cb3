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
Every call records what served it in `session.last` (backend, plugin, device).
"""

from __future__ import annotations

import ctypes
import importlib
import os
import struct
import time
import warnings
from collections.abc import Sequence
from enum import IntEnum, IntFlag
from pathlib import Path
from typing import Any

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
    """vAccel's plugin-type bits (`VACCEL_PLUGIN_*`)."""

    CPU = 0x0001
    GPU = 0x0002
    FPGA = 0x0004
    SOFTWARE = 0x0008
    TENSORFLOW = 0x0010
    TORCH = 0x0020
    JETSON = 0x0040
    GENERIC = 0x0080
    DEBUG = 0x0100
    REMOTE = 0x4000
    ALL = 0xFFFF


class ResourceType(IntEnum):
    LIB = 0
    DATA = 1
    MODEL = 2


class ArgType(IntEnum):
    """The subset of vAccel's `vaccel_arg_type` the local exec backend converts (values as in vAccel's enum:
    RAW, INT8, INT8_ARRAY, INT16, INT16_ARRAY, INT32, INT32_ARRAY, INT64, ..., UINT8, ..., FLOAT32, FLOAT32_ARRAY,
    FLOAT64, FLOAT64_ARRAY, BOOL, ..., STRING, BUFFER, CUSTOM, in that order)."""

    RAW = 0
    INT32 = 5
    INT32_ARRAY = 6
    FLOAT64 = 19
    FLOAT64_ARRAY = 20
    STRING = 27


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
    """A call that failed; `code` is the function's or libvaccel's return value where there is one."""

    def __init__(self, message: str, code: int | None = None):
        super().__init__(message)
        self.code = code


class Arg:
    """An argument of `exec`: bytes (RAW), an int (INT32), a float (FLOAT64), a str (STRING), or a list of ints
    or floats (arrays). A write argument's value gives the size of its buffer."""

    def __init__(self, data: Any, type_: ArgType | None = None):
        self.data = data
        self.type = type_ if type_ is not None else _arg_type(data)
        self.buf: Any = data

    def encode(self) -> bytes:
        d, t = self.data, self.type
        if t is ArgType.RAW:
            return bytes(d)
        if t is ArgType.INT32:
            return struct.pack("=i", int(d))
        if t is ArgType.FLOAT64:
            return struct.pack("=d", float(d))
        if t is ArgType.STRING:
            return str(d).encode() + b"\0"
        if t is ArgType.INT32_ARRAY:
            return struct.pack(f"={len(d)}i", *d)
        if t is ArgType.FLOAT64_ARRAY:
            return struct.pack(f"={len(d)}d", *d)
        raise VaccelError(f"argument type {t!r} is not supported by the local exec backend")

    def decode(self, raw: bytes) -> Any:
        t = self.type
        if t is ArgType.RAW:
            return raw
        if t is ArgType.INT32:
            return struct.unpack("=i", raw[:4])[0]
        if t is ArgType.FLOAT64:
            return struct.unpack("=d", raw[:8])[0]
        if t is ArgType.STRING:
            return raw.split(b"\0", 1)[0].decode(errors="replace")
        if t is ArgType.INT32_ARRAY:
            return list(struct.unpack(f"={len(raw) // 4}i", raw))
        return list(struct.unpack(f"={len(raw) // 8}d", raw))


def _arg_type(data: Any) -> ArgType:
    if isinstance(data, bytes | bytearray | memoryview):
        return ArgType.RAW
    if isinstance(data, bool):
        raise VaccelError("a bool argument is ambiguous: pass an int or bytes")
    if isinstance(data, int):
        return ArgType.INT32
    if isinstance(data, float):
        return ArgType.FLOAT64
    if isinstance(data, str):
        return ArgType.STRING
    if isinstance(data, list | tuple) and data and all(isinstance(x, int) and not isinstance(x, bool) for x in data):
        return ArgType.INT32_ARRAY
    if isinstance(data, list | tuple) and data and all(isinstance(x, int | float) for x in data):
        return ArgType.FLOAT64_ARRAY
    raise VaccelError(f"cannot pass {type(data).__name__} {data!r:.40} to exec (bytes, int, float, str, or a "
                      "non-empty list of numbers)")


class _CArg(ctypes.Structure):
    """vAccel's `struct vaccel_arg`."""

    _fields_ = [("buf", ctypes.c_void_p), ("size", ctypes.c_size_t), ("type", ctypes.c_uint32),
                ("custom_type_id", ctypes.c_uint32), ("owned", ctypes.c_bool)]


class Resource:
    """A model, library or data file a session uses (vAccel's `Resource(paths, type)`)."""

    def __init__(self, paths: str | Path | Sequence[str | Path], type_: ResourceType):
        self.paths = [Path(p) for p in ([paths] if isinstance(paths, str | Path) else paths)]
        self.type = ResourceType(type_)
        for path in self.paths:
            if not path.exists():
                raise VaccelError(f"resource {path} does not exist")
        self._sessions: set[int] = set()

    @property
    def path(self) -> Path:
        return self.paths[0]

    def register(self, session: Session) -> None:
        self._sessions.add(id(session))
        session._resources[id(self)] = self

    def unregister(self, session: Session) -> None:
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


def real_vaccel() -> Any | None:
    """vAccel's own Python package when it (and libvaccel) import, else None; `MAPEMESH_VACCEL=local` forces the
    local backends."""
    if os.environ.get("MAPEMESH_VACCEL") == "local":
        return None
    try:
        return importlib.import_module("vaccel")
    except Exception:  # not installed, or libvaccel missing: the local backends serve
        return None


class Session:
    """A vAccel session: calls go to vAccel when it is importable, else to mapemesh's local backends."""

    def __init__(self, flags: PluginType | int = 0):
        self.flags = PluginType(int(flags))
        self.plugin = os.environ.get(PLUGIN_ENV, "cpu")
        if self.plugin not in PLUGINS:
            raise VaccelError(f"{PLUGIN_ENV}={self.plugin!r}: must be one of {', '.join(PLUGINS)}")
        self._vaccel = real_vaccel()
        self._real = self._vaccel.Session(int(self.flags)) if self._vaccel is not None else None
        self.backend = "vaccel" if self._real is not None else LOCAL
        self._resources: dict[int, Resource] = {}
        self._real_resources: dict[int, Any] = {}
        self._models: dict[tuple[str, str], Any] = {}
        self.last: dict[str, Any] = {}

    # -- what served a call --

    def _served(self, op: str, device: str, started: float) -> None:
        self.last = {"op": op, "backend": self.backend, "plugin": self.plugin, "device": device,
                     "latency_ms": round((time.perf_counter() - started) * 1000, 3)}
        if self.backend == "vaccel":
            self.last["vaccel_plugins"] = os.environ.get("VACCEL_PLUGINS")
            if self.plugin == "remote":
                self.last["rpc_address"] = os.environ.get("VACCEL_RPC_ADDRESS")

    def _local_only(self, op: str) -> None:
        if self.plugin == "remote":
            address = os.environ.get("VACCEL_RPC_ADDRESS") or "(no VACCEL_RPC_ADDRESS)"
            raise VaccelError(f"{op}: the remote plugin needs vAccel's RPC plugin (libvaccel-rpc.so) and an agent "
                              f"at {address}; mapemesh's local backends cannot serve it")

    # -- operations --

    def noop(self) -> None:
        started = time.perf_counter()
        if self._real is not None:
            self._real.noop()
        else:
            self._local_only("noop")
        self._served("noop", "none", started)

    def exec(self, library: str | Path, symbol: str, arg_read: list[Any] | None = None,
             arg_write: list[Any] | None = None) -> list[Any] | None:
        """Call `symbol` in the shared library with the read arguments; the write arguments' new values."""
        started = time.perf_counter()
        if self._real is not None:
            out = self._real.exec(library, symbol, arg_read, arg_write)
            self._served("exec", "cpu", started)
            return out
        self._local_only("exec")
        out = _exec_local(Path(library), symbol, arg_read or [], arg_write or [])
        self._served("exec", "cpu", started)
        return out

    def exec_with_resource(self, resource: Resource, symbol: str, arg_read: list[Any] | None = None,
                           arg_write: list[Any] | None = None) -> list[Any] | None:
        if resource.type is not ResourceType.LIB:
            raise VaccelError(f"exec_with_resource needs a LIB resource, not {resource.type.name}")
        return self.exec(resource.path, symbol, arg_read, arg_write)

    def _real_resource(self, resource: Resource) -> Any:
        """vaccel-python's own Resource for `resource`, registered with the real session (made once)."""
        if not resource.is_registered(self):
            raise VaccelError("register the resource with this session first (resource.register(session))")
        made = self._real_resources.get(id(resource))
        if made is None:
            kind = getattr(self._vaccel.ResourceType, resource.type.name)
            made = self._vaccel.Resource([str(p) for p in resource.paths], kind)
            made.register(self._real)
            self._real_resources[id(resource)] = made
        return made

    def _real_tensors(self, tensors: list[Tensor]) -> list[Any]:
        torch_ops = importlib.import_module("vaccel.ops.torch")
        return [torch_ops.Tensor(t.dims, getattr(torch_ops.TensorType, t.data_type.name), t.data) for t in tensors]

    def torch_model_load(self, resource: Resource) -> None:
        """Load a TorchScript model resource (it must be registered with this session)."""
        if self._real is not None:
            self._real.torch_model_load(self._real_resource(resource))
            return
        self._model(resource)

    def torch_model_run(self, resource: Resource, in_tensors: list[Tensor],
                        nr_out_tensors: int = 1) -> list[Tensor]:
        """Run the model on the input tensors; its output tensors (at most `nr_out_tensors`)."""
        started = time.perf_counter()
        if self._real is not None:
            out = self._real.torch_model_run(self._real_resource(resource), self._real_tensors(in_tensors),
                                             nr_out_tensors)
            self._served("torch_model_run", "vaccel-torch", started)
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
            out = self._real.classify(image)
            self._served("classify", "vaccel", started)
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


def _exec_local(library: Path, symbol: str, arg_read: list[Any], arg_write: list[Any]) -> list[Any] | None:
    try:
        lib = ctypes.CDLL(str(library))
    except OSError as exc:
        raise VaccelError(f"exec: cannot load {library}: {exc}") from None
    try:
        fn = getattr(lib, symbol)
    except AttributeError:
        raise VaccelError(f"exec: {library} has no symbol {symbol!r}") from None
    fn.restype = ctypes.c_int
    fn.argtypes = [ctypes.POINTER(_CArg), ctypes.c_size_t, ctypes.POINTER(_CArg), ctypes.c_size_t]
    reads = [a if isinstance(a, Arg) else Arg(a) for a in arg_read]
    writes = [a if isinstance(a, Arg) else Arg(a) for a in arg_write]
    buffers = [ctypes.create_string_buffer(a.encode(), len(a.encode())) for a in (*reads, *writes)]
    c_read = (_CArg * max(1, len(reads)))()
    c_write = (_CArg * max(1, len(writes)))()
    for i, a in enumerate(reads):
        c_read[i] = _CArg(ctypes.cast(buffers[i], ctypes.c_void_p), len(buffers[i]), int(a.type), 0, False)
    for i, a in enumerate(writes):
        buf = buffers[len(reads) + i]
        c_write[i] = _CArg(ctypes.cast(buf, ctypes.c_void_p), len(buf), int(a.type), 0, False)
    code = fn(c_read, len(reads), c_write, len(writes))
    if code != 0:
        raise VaccelError(f"exec: {symbol} returned {code}", code)
    if not writes:
        return None
    return [a.decode(buffers[len(reads) + i].raw) for i, a in enumerate(writes)]
