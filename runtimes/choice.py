"""Which runtime each function runs on, and what that changes in its Knative Service.

- The core stage functions (monitor, analyze, plan, schedule, execute, deploy) are mapemesh's own trusted
  code: the default runtime (`runc`).
- Policies are user code, and accelerated functions run FaaS users' code: a urunc single-application kernel
  (built from the function's bunnyfile), else a kata sandbox (kata-fc, then kata-qemu) where urunc is not
  installed, and runc only where neither is.

The choice sets the Service's `runtimeClassName` and its image: the function image (`mapemesh/functions`) for
runc and kata, which run OCI images as they are; for urunc the image bunny builds from `bunnyfiles/NAME.bunnyfile`
(`mapemesh/NAME:VERSION-urunc`), which carries urunc's annotations. Accelerated functions on urunc also get
urunc's vAccel annotations (`com.urunc.unikernel.vAccel: vsock` and the RPC address the monitor needs).
"""

from __future__ import annotations

import copy
from typing import Any, Literal

from mapemesh import __version__

Kind = Literal["core", "policy", "accel", "function"]
DEFAULT = "runc"
RUNTIME_CLASSES = ("runc", "urunc", "kata-fc", "kata-qemu")
"""The RuntimeClasses mapemesh ships (runtimes/*.yaml)."""
CORE = ("monitor", "analyze", "plan", "schedule", "execute", "deploy")
PREFERENCE: dict[str, tuple[str, ...]] = {
    "core": ("runc",),
    "function": ("runc",),
    "policy": ("urunc", "kata-fc", "kata-qemu", "runc"),
    "accel": ("urunc", "kata-qemu", "kata-fc", "runc"),
}
FUNCTION_IMAGE = f"mapemesh/functions:{__version__}"
VACCEL_PORT = 2048
AGENT_PORTS = {"cpu": 2048, "gpu": 2049, "remote": 2050}
"""A urunc guest reaches vAccel over vsock, through a vAccel RPC agent on its host: a node runs one agent per
plugin choice on these ports (the CPU plugin's, the GPU plugin's, and one with the RPC plugin that forwards to
a remote agent), so a function's plugin choice is the agent its RPCAddress names."""
VACCEL_SOCKET_DIR = "/run/vaccel"
LABEL_POLICY = "mapemesh.dev/policy"
LABEL_ACCEL = "mapemesh.dev/accel"


class RuntimeChoiceError(ValueError):
    """A runtime that cannot be used for a function."""


def kind_of(service: dict[str, Any]) -> Kind:
    """The kind of function a Knative Service serves: from its labels and name."""
    meta = service.get("metadata") or {}
    labels = meta.get("labels") or {}
    if LABEL_ACCEL in labels:
        return "accel"
    if LABEL_POLICY in labels or str(meta.get("name", "")).startswith("policy-"):
        return "policy"
    if meta.get("name") in CORE:
        return "core"
    return "function"


def choose(kind: Kind, available: tuple[str, ...] | list[str] | set[str] | None = None) -> str:
    """The runtime for a kind of function: the first of its preferences that is available (all shipped ones by
    default)."""
    have = set(RUNTIME_CLASSES if available is None else available)
    unknown = have - set(RUNTIME_CLASSES)
    if unknown:
        raise RuntimeChoiceError(f"unknown runtime(s) {', '.join(sorted(unknown))} "
                                 f"(known: {', '.join(RUNTIME_CLASSES)})")
    for runtime in PREFERENCE[kind]:
        if runtime in have:
            return runtime
    raise RuntimeChoiceError(f"no runtime for {kind} functions among {', '.join(sorted(have)) or 'none'} "
                        f"(it takes {', '.join(PREFERENCE[kind])})")


def unikernel_image(name: str) -> str:
    """The image bunny builds for function `name` (from bunnyfiles/NAME.bunnyfile)."""
    return f"mapemesh/{name}:{__version__}-urunc"


def vaccel_rpc_address(monitor: str, port: int = VACCEL_PORT, socket_dir: str = VACCEL_SOCKET_DIR) -> str:
    """The vAccel RPC address urunc wants for `monitor`: vsock for qemu, the vsock's unix socket for firecracker
    (urunc turns it into vsock://2:PORT and mounts the socket's folder)."""
    if not 1 <= port <= 65535:
        raise RuntimeChoiceError(f"vAccel port {port} is not within 1..65535")
    if monitor == "qemu":
        return f"vsock://2:{port}"
    if monitor == "firecracker":
        return f"unix://{socket_dir.rstrip('/')}/vaccel.sock_{port}"
    raise RuntimeChoiceError(f"urunc does not support vAccel with {monitor} (qemu or firecracker)")


def vaccel_annotations(monitor: str, port: int = VACCEL_PORT) -> dict[str, str]:
    """urunc's vAccel annotations for a function on `monitor` (the agent on `port`: the CPU plugin's by
    default)."""
    return {"com.urunc.unikernel.vAccel": "vsock", "com.urunc.unikernel.RPCAddress": vaccel_rpc_address(monitor, port)}


def apply(service: dict[str, Any], runtime: str, *, monitor: str = "qemu") -> dict[str, Any]:
    """A copy of a Knative Service set to run on `runtime` (runtimeClassName, image, vAccel annotations)."""
    if runtime not in RUNTIME_CLASSES:
        raise RuntimeChoiceError(f"unknown runtime {runtime!r} (known: {', '.join(RUNTIME_CLASSES)})")
    out = copy.deepcopy(service)
    name = str(out["metadata"]["name"])
    template = out.setdefault("spec", {}).setdefault("template", {})
    pod = template.setdefault("spec", {})
    pod["runtimeClassName"] = runtime
    for container in pod.get("containers") or []:  # the function's container, not sidecars
        if any(e.get("name") == "FUNCTION_SOURCE" for e in container.get("env") or []):
            container["image"] = unikernel_image(name) if runtime == "urunc" else FUNCTION_IMAGE
    annotations = template.setdefault("metadata", {}).setdefault("annotations", {})
    for key in [k for k in annotations if k.startswith("com.urunc.unikernel.")]:
        del annotations[key]
    if runtime == "urunc" and kind_of(out) == "accel":
        annotations.update(vaccel_annotations(monitor))
    return out


def with_plugin(service: dict[str, Any], plugin: str, rpc_address: str | None = None, *,
                monitor: str = "qemu") -> dict[str, Any]:
    """A copy of an accelerated function's Service using vAccel `plugin` (the vAccelPlugin knob's choice on a
    cluster). On runc or kata: the function container's env (`mapemesh.runtimes.vaccel.plugin_env`). On urunc:
    the guest uses vAccel's RPC plugin, and the vAccel annotations name the host agent for the choice
    (`AGENT_PORTS`, over vsock for `monitor`)."""
    from mapemesh.runtimes import vaccel

    env = vaccel.plugin_env(plugin, rpc_address)
    out = copy.deepcopy(service)
    template = out.setdefault("spec", {}).setdefault("template", {})
    pod = template.setdefault("spec", {})
    urunc = pod.get("runtimeClassName") == "urunc"
    if urunc:
        # In the guest vAccel is always the RPC plugin; urunc sets VACCEL_RPC_ADDRESS from the annotation, which
        # names the host agent serving the choice (AGENT_PORTS). The agent forwards `remote` to rpc_address.
        env = {vaccel.PLUGIN_ENV: plugin, "VACCEL_PLUGINS": vaccel.VACCEL_PLUGIN_LIBRARIES["remote"]}
    for container in pod.get("containers") or []:
        if not any(e.get("name") == "FUNCTION_SOURCE" for e in container.get("env") or []):
            continue
        kept = [e for e in container.get("env") or [] if e.get("name") not in set(env) | {"VACCEL_RPC_ADDRESS"}]
        container["env"] = kept + [{"name": k, "value": v} for k, v in sorted(env.items())]
    if urunc:
        annotations = template.setdefault("metadata", {}).setdefault("annotations", {})
        annotations.update(vaccel_annotations(monitor, AGENT_PORTS[plugin]))
        if plugin == "remote":
            annotations["mapemesh.dev/vaccel-remote"] = str(rpc_address)  # where the host's remote agent forwards
        else:
            annotations.pop("mapemesh.dev/vaccel-remote", None)
    return out


def is_function(service: dict[str, Any]) -> bool:
    """Whether a Knative Service serves a mapemesh function (its container names FUNCTION_SOURCE)."""
    containers = (((service.get("spec") or {}).get("template") or {}).get("spec") or {}).get("containers") or []
    return any(e.get("name") == "FUNCTION_SOURCE" for c in containers for e in c.get("env") or [])


def for_cluster(service: dict[str, Any], available: tuple[str, ...] | list[str] | set[str] | None = None,
                *, monitor: str = "qemu") -> dict[str, Any]:
    """The Service as a cluster with these runtimes runs it (other Services than mapemesh's functions as they
    are)."""
    if not is_function(service):
        return service
    return apply(service, choose(kind_of(service), available), monitor=monitor)
