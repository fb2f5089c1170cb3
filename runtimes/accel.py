"""Accelerated functions as Knative objects, and `mapemesh function new --accel NAME`.

An accelerated function NAME is a package `functions/accel/NAME/` whose function answers
`io.mapemesh.accel.requested.v1` events with extension `function: NAME`; its Service `accel-NAME` (label
`mapemesh.dev/accel: NAME`) runs on the runtime `choice` picks for accelerated functions (urunc with vAccel's
vsock annotations), and its Trigger brings it its requests.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from mapemesh.events.catalogue import AccelRequested
from mapemesh.runtimes import choice

NAME = re.compile(r"^[a-z]([-a-z0-9]{0,40}[a-z0-9])?$")

TEMPLATE = '''"""Accelerated function {name}: {title}.

It calls vAccel (`mapemesh.runtimes.vaccel`, the shape of vAccel's Python bindings) for its accelerated
operation; which vAccel plugin serves it (cpu, gpu, remote) is the vAccelPlugin knob's choice, not this code's.
Request: `io.mapemesh.accel.requested.v1` with extension `function: {name}` and data `{{"input": {{"values":
[1.0, 2.0]}}}}`; the reply carries the result and the backend, plugin and device used.
"""

from __future__ import annotations

from pathlib import Path

from mapemesh.functions.accel import invocation
from mapemesh.runtimes import vaccel
from mapemesh.settings import current

NAME = "{name}"
_session = None
_model = None


def _build_model() -> Path:
    """A TorchScript model this function builds itself (here: doubles its input; put yours here)."""
    import torch

    class Double(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x * 2.0

    folder = current().data / "models"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{{NAME}}.pt"
    if not path.exists():
        torch.jit.script(Double()).save(str(path))
    return path


def compute(data: dict) -> dict:
    """The result for one request's input (ValueError for input it cannot take)."""
    global _session, _model
    values = (data.get("input") or {{}}).get("values")
    if not isinstance(values, list) or not values or not all(isinstance(v, int | float) for v in values):
        raise ValueError("input.values must be a non-empty list of numbers")
    if _session is None:
        _session = vaccel.Session(vaccel.PluginType.TORCH)
        _model = vaccel.Resource(_build_model(), vaccel.ResourceType.MODEL)
        _model.register(_session)
    [out] = _session.torch_model_run(_model, [vaccel.Tensor([len(values)], vaccel.TensorType.FLOAT, values)])
    return {{"values": out.data, **_session.last}}


{target} = invocation.function(NAME, compute)
'''


class AccelError(ValueError):
    """A name or a scaffold that cannot be made."""


def check_name(name: str) -> str:
    if not NAME.fullmatch(name):
        raise AccelError(f"function name {name!r} must be lowercase letters, digits and '-', start with a letter "
                         "and end with a letter or digit, at most 42 characters")
    return name


def objects(name: str, source: str, target: str, *, priority: str = "normal",
            namespace: str = "default") -> list[dict[str, Any]]:
    """The Service and Trigger of accelerated function `name` (code `target` in file `source`)."""
    check_name(name)
    service_name = f"accel-{name}"
    service: dict[str, Any] = {
        "apiVersion": "serving.knative.dev/v1", "kind": "Service",
        "metadata": {"name": service_name, "namespace": namespace, "labels": {choice.LABEL_ACCEL: name},
                     "annotations": {"mapemesh.dev/priority": priority}},
        "spec": {"template": {
            "metadata": {"annotations": {"autoscaling.knative.dev/initial-scale": "0",
                                         "autoscaling.knative.dev/max-scale": "4"}},
            "spec": {"containerConcurrency": 8, "timeoutSeconds": 30, "containers": [{
                "image": choice.FUNCTION_IMAGE,
                "env": [{"name": "FUNCTION_SOURCE", "value": source},
                        {"name": "FUNCTION_TARGET", "value": target}]}]}}},
    }
    service = choice.for_cluster(service)
    trigger = {"apiVersion": "eventing.knative.dev/v1", "kind": "Trigger",
               "metadata": {"name": service_name, "namespace": namespace, "labels": {choice.LABEL_ACCEL: name}},
               "spec": {"broker": "default",
                        "filters": [{"all": [{"exact": {"type": AccelRequested.event_type}},
                                             {"exact": {"function": name}}]}],
                        "subscriber": {"ref": {"apiVersion": "serving.knative.dev/v1", "kind": "Service",
                                               "name": service_name}}}}
    return [service, trigger]


def render(name: str, source: str, target: str, **kw: Any) -> str:
    header = (f"# Accelerated function {name}: its Service (urunc with vAccel, or kata) and the Trigger for its "
              "requests.\n")
    return header + yaml.safe_dump_all(objects(name, source, target, **kw), sort_keys=False)


def new_function(name: str, root: Path, *, priority: str = "normal") -> list[Path]:
    """Scaffold accelerated function `name` in the project at `root`: its package, manifests and bunnyfile."""
    from mapemesh.files import write_atomically
    from mapemesh.manifests import project_folder
    from mapemesh.runtimes.build import bunnyfile_for
    from mapemesh.runtimes.scaffold import add_resource

    check_name(name)
    package = name.replace("-", "_")
    source = f"functions/accel/{package}/__init__.py"
    files = {
        root / "functions" / "accel" / package / "__init__.py":
            TEMPLATE.format(name=name, title=name.replace("-", " "), target=package),
        project_folder(root) / f"accel-{name}.yaml": render(name, source, package, priority=priority),
        root / "bunnyfiles" / f"accel-{name}.bunnyfile": bunnyfile_for(f"accel-{name}", source, package),
    }
    existing = [str(p) for p in files if p.exists()]
    if existing:
        raise AccelError(f"function {name} exists already: {', '.join(existing)}")
    for path, text in files.items():
        write_atomically(path, text)
    init = root / "functions" / "accel" / "__init__.py"
    if not init.exists():
        write_atomically(init, '"""Accelerated functions."""\n')
    add_resource(root, f"accel-{name}.yaml")
    return list(files)
