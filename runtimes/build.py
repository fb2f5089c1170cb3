"""Build contexts: what it takes to build a function as a urunc single-application kernel with bunny.

Two images per function, both built by a container engine with BuildKit:

1. the function image (`mapemesh/functions:VERSION`, the same for every function): Python, mapemesh with its
   functions, functions-framework, and urunit (urunc's init for Linux guests) at `/urunit`;
2. the unikernel image (`mapemesh/NAME:VERSION-urunc`), from the function's bunnyfile: bunny (the BuildKit
   frontend named on the bunnyfile's `#syntax` line) takes the function image as a raw rootfs, adds urunc's
   Linux kernel for the monitor, and sets urunc's annotations, so urunc boots the function image as a Linux VM
   whose init runs functions-framework for this one function.

`render` writes both build files, the source tree, the annotations bunny will set, and the commands; building
needs a container engine with BuildKit (docker or nerdctl; podman's buildah does not take bunny's `#syntax`
frontend), which `engine()` looks for.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mapemesh import yamlload
from mapemesh.runtimes import bunnyfile
from mapemesh.runtimes.choice import FUNCTION_IMAGE, unikernel_image

KERNELS = {"qemu": "harbor.nbfc.io/nubificus/urunc/linux-kernel-qemu:v6.14",
           "firecracker": "harbor.nbfc.io/nubificus/urunc/linux-kernel-firecracker:v6.14"}
"""urunc's prebuilt Linux kernels (the kernel is at /kernel in each image)."""
URUNIT_IMAGE = "harbor.nbfc.io/nubificus/urunit:latest"
APP_DIR = "/app"
SOURCES = ("pyproject.toml", "constraints.txt", "README.md", "mapemesh", "events", "functions", "runtimes",
           "node-shim")
"""What of the project goes into the function image."""
ENGINES = ("docker", "nerdctl")
"""Engines whose BuildKit takes a `#syntax=` frontend (podman's buildah does not)."""

CONTAINERFILE = f"""# The function image: mapemesh and its functions, served by functions-framework; every function uses
# it. FUNCTION_SOURCE and FUNCTION_TARGET (the Knative Service's env, or the bunnyfile's cmd) choose the function.
FROM {URUNIT_IMAGE} AS init

FROM python:3.11-slim
COPY --from=init /urunit /urunit
WORKDIR {APP_DIR}
COPY . {APP_DIR}
RUN pip install --no-cache-dir -c constraints.txt '.[ff]'
# The installed package, never {APP_DIR}'s copy of the sources (which lacks the mapped subpackages)
ENV PORT=8080 PYTHONSAFEPATH=1
CMD ["mapemesh-function"]
"""

BUNNYFILE = """#syntax=harbor.nbfc.io/nubificus/bunny:latest
version: v0.1

# {name} as a Linux single-application kernel for urunc: the function image as the guest's root filesystem
# (raw: the container's own rootfs; urunc needs containerd's devmapper snapshotter for it), urunc's Linux
# kernel for {monitor}, and urunit as init running functions-framework for this one function.
platforms:
  framework: linux
  monitor: {monitor}
  architecture: x86

rootfs:
  from: {image}
  type: raw

kernel:
  from: {kernel}
  path: /kernel

cmd: {cmd}
"""


class BuildError(ValueError):
    """A function that cannot be rendered (no Service, no bunnyfile, an invalid bunnyfile)."""


def function_command(source: str, target: str) -> list[str]:
    """What the guest runs: urunit, then functions-framework serving `target` from `source` through mapemesh's
    adapter (`mapemesh-function`, `mapemesh.serving.entry`: the function's reply becomes the HTTP answer)."""
    return ["/urunit", "/usr/local/bin/mapemesh-function", "--source", f"{APP_DIR}/{source}", "--target", target]


def bunnyfile_for(name: str, source: str, target: str, monitor: str = "qemu") -> str:
    """The bunnyfile of function `name` (its Service's FUNCTION_SOURCE and FUNCTION_TARGET) for `monitor`."""
    if monitor not in KERNELS:
        raise BuildError(f"no urunc Linux kernel for {monitor} (qemu or firecracker)")
    return BUNNYFILE.format(name=name, monitor=monitor, image=FUNCTION_IMAGE, kernel=KERNELS[monitor],
                            cmd=json.dumps(function_command(source, target)))


@dataclass(frozen=True, slots=True)
class Function:
    """A function of the project: its Knative Service and where its code is."""

    name: str
    source: str
    target: str
    service: dict[str, Any]


def functions(root: Path) -> dict[str, Function]:
    """Every function the project's `knative/` runs (its base, in a bundle with overlays), by Service name."""
    from mapemesh.manifests import project_folder

    out: dict[str, Function] = {}
    for path in sorted(project_folder(root).glob("*.yaml")):
        for doc in yamlload.load_all(path.read_text(encoding="utf-8")):
            if not isinstance(doc, dict) or doc.get("kind") != "Service":
                continue
            env = {e.get("name"): e.get("value") for c in doc["spec"]["template"]["spec"].get("containers") or []
                   for e in c.get("env") or []}
            name = str(doc["metadata"]["name"])
            out[name] = Function(name, str(env.get("FUNCTION_SOURCE", "")), str(env.get("FUNCTION_TARGET", "")), doc)
    return out


def engine() -> tuple[str | None, str]:
    """The container engine on this machine that answers (`X info`), or None; and what was found."""
    import subprocess

    seen = []
    for name in ENGINES:
        if shutil.which(name) is None:
            continue
        try:
            answered = subprocess.run([name, "info"], capture_output=True, timeout=15).returncode == 0
        except (OSError, subprocess.TimeoutExpired):
            answered = False
        if answered:
            return name, f"{name} answers"
        seen.append(f"{name} is installed but its engine does not answer (`{name} info` fails)")
    return None, "; ".join(seen) or f"none of {', '.join(ENGINES)} is installed"


def commands(name: str, builder: str = "docker") -> list[list[str]]:
    """The build commands, run in the rendered folder, as `builder` (docker or nerdctl) takes them."""
    return [[builder, "build", "-f", "Containerfile", "-t", FUNCTION_IMAGE, "context"],
            [builder, "build", "-f", "bunnyfile", "-t", unikernel_image(name), "."]]


def render(root: Path, name: str, out: Path, monitor: str | None = None) -> dict[str, Any]:
    """Write function `name`'s build context to `out`: `context/` (the sources), `Containerfile`, `bunnyfile`
    (the project's, or made for `monitor`), `annotations.json` (what bunny sets) and `BUILD` (the commands)."""
    found = functions(root)
    if name not in found:
        raise BuildError(f"no function {name!r} in {root / 'knative'} (there are: {', '.join(sorted(found))})")
    fn = found[name]
    shipped = root / "bunnyfiles" / f"{name}.bunnyfile"
    if monitor is None:
        if not shipped.exists():
            raise BuildError(f"{shipped} does not exist (make it with `mapemesh build render {name} --monitor qemu`)")
        text = shipped.read_text(encoding="utf-8")
    else:
        text = bunnyfile_for(name, fn.source, fn.target, monitor)
    problems = bunnyfile.check_text(text, str(shipped) if monitor is None else f"(the bunnyfile made for {monitor})")
    if problems:
        raise BuildError("; ".join(str(p) for p in problems))
    doc = yamlload.load(text)
    out.mkdir(parents=True, exist_ok=True)
    context = out / "context"
    if context.exists():
        shutil.rmtree(context)
    context.mkdir()
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", ".*")
    for item in SOURCES:
        src = root / item
        if src.is_dir():
            shutil.copytree(src, context / item, ignore=ignore)
        elif src.exists():
            shutil.copy2(src, context / item)
    (out / "Containerfile").write_text(CONTAINERFILE, encoding="utf-8")
    (out / "bunnyfile").write_text(text, encoding="utf-8")
    annotations = bunnyfile.annotations(doc)
    (out / "annotations.json").write_text(json.dumps(annotations, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    steps = commands(name)
    (out / "BUILD").write_text(
        "# Run in this folder: the function image, then the unikernel image with bunny (BuildKit fetches bunny as\n"
        "# the frontend the bunnyfile's #syntax line names). nerdctl takes the same commands; podman cannot\n"
        "# (buildah does not take #syntax frontends).\n"
        + "".join(" ".join(step) + "\n" for step in steps), encoding="utf-8")
    return {"function": name, "out": str(out), "monitor": doc["platforms"]["monitor"], "image": unikernel_image(name),
            "annotations": annotations, "commands": [" ".join(s) for s in steps]}
