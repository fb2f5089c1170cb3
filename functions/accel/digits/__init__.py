"""The example accelerated function: classify an 8x8 digit image with the project's TorchScript model,
through vAccel's torch operation (`Session.torch_model_run`).

Request: `io.mapemesh.accel.requested.v1` with extension `function: digits` and data `{"input": {"image":
[[8 rows of 8 numbers in 0..1]]}}` (or a flat list of 64), or `{"input": {"digit": "7", "noise": 0.2,
"seed": 1}}` to have the function draw one. Reply: `io.mapemesh.accel.replied.v1` with the label, the ten
scores, and the backend, plugin and device that served the call. The plugin comes from the function's
environment (`MAPEMESH_VACCEL_PLUGIN`, set by the `vAccelPlugin` knob); nothing in this code names it.
"""

from __future__ import annotations

import contextlib

from mapemesh.functions.accel import invocation
from mapemesh.functions.accel.digits import model
from mapemesh.runtimes import vaccel

NAME = "digits"
with contextlib.suppress(ImportError):  # loaded once in the fork server, so each new process starts warm
    import torch  # noqa: F401

    model.ensure()
_session: vaccel.Session | None = None
_resource: vaccel.Resource | None = None


def _ready() -> tuple[vaccel.Session, vaccel.Resource]:
    global _session, _resource
    if _session is None or _resource is None:
        _session = vaccel.Session(vaccel.PluginType.TORCH)
        _resource = vaccel.Resource(model.ensure(), vaccel.ResourceType.MODEL)
        _resource.register(_session)
        _session.torch_model_load(_resource)
    return _session, _resource


def classify(data: dict) -> dict:
    """The label and scores for one request's input (ValueError for input that is not an image)."""
    given = data.get("input", data)
    if not isinstance(given, dict):
        raise ValueError("input must be an object: {\"image\": [[...8x8...]]} or {\"digit\": \"7\"}")
    if "digit" in given:
        digit = str(given["digit"])
        if digit not in model.GLYPHS:
            raise ValueError(f"digit must be one of 0-9, not {digit!r}")
        image = model.render(digit, float(given.get("noise", 0.0)), int(given.get("seed", 0)))
    else:
        image = given.get("image")
    flat = [v for row in image for v in row] if image and isinstance(image[0], list) else image
    if not isinstance(flat, list) or len(flat) != 64 or not all(isinstance(v, int | float) for v in flat):
        raise ValueError("image must be 8x8 numbers (or a flat list of 64)")
    session, resource = _ready()
    outputs = session.torch_model_run(resource, [vaccel.Tensor([1, 64], vaccel.TensorType.FLOAT, flat)])
    scores = outputs[0].data if outputs else []
    if len(scores) != len(model.LABELS) or not all(isinstance(v, int | float) for v in scores):
        raise ValueError(f"the model gave {len(scores)} scores, not {len(model.LABELS)} (one per digit): is the "
                         "model file the digits model?")
    values = [round(float(v), 6) for v in scores]
    best = max(range(len(values)), key=values.__getitem__)
    return {"label": model.LABELS[best], "scores": values, **session.last}


digits = invocation.function(NAME, classify)
