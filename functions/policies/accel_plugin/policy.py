"""Accelerator policy, in the MLSysOps policy format: moves low-priority accelerated functions off a busy GPU.

Per node: when a GPU of the node is busy (its utilisation, or its power as a share of its power limit, at or
above `BUSY_PCT`), every low-priority accelerated function that uses the `gpu` vAccel plugin moves to `cpu`;
when every GPU is calm again (at or below `CALM_PCT`, lower, so a load near one threshold does not flip it back
and forth), they move back to `gpu`. Between the two nothing moves. The functions and their priorities are the
`vAccelPlugin` mechanism's options; the plugin each uses now, its state (a function not set yet uses `cpu`).
A plan is made only for the functions whose plugin has to change, and nothing goes back to the GPU on a node
whose shim reports no GPU.
"""

import re

BUSY_PCT = 80.0
CALM_PCT = 50.0
_UTIL = re.compile(r"^gpu(\d+)_utilization_pct$")
_POWER = re.compile(r"^gpu(\d+)_power_w$")
GPUS = 8
"""The GPUs of a node it watches (gpu0 ... gpu7): it is asked only when their figures change."""


def initialize():
    metrics = [f"gpu{i}_{m}" for i in range(GPUS) for m in ("utilization_pct", "power_w", "power_limit_w")]
    return {
        "telemetry": {"metrics": metrics, "system_scraper_interval": "5s"},
        "mechanisms": ["vAccelPlugin"],
        "packages": [],
        "configuration": {"analyze_interval": "2s"},
        "scope": "global",
        "core": False,
        "machine_learning_usage": False,
    }


def gpu_load(telemetry):
    """The busiest GPU's load in percent (utilisation, or power over its limit), or None without GPU figures."""
    data = (telemetry or {}).get("data") or {}
    loads = []
    for name, value in data.items():
        if _UTIL.match(name):
            loads.append(float(value))
        match = _POWER.match(name)
        if match:
            limit = data.get(f"gpu{match.group(1)}_power_limit_w")
            if limit:
                loads.append(100.0 * float(value) / float(limit))
    return max(loads) if loads else None


def _moves(mechanisms, telemetry):
    load = gpu_load(telemetry)
    if load is None:
        return {}
    if load >= BUSY_PCT:
        wanted = "cpu"
    elif load <= CALM_PCT:
        wanted = "gpu"
    else:
        return {}
    knob = (mechanisms or {}).get("vAccelPlugin") or {}
    if wanted == "gpu" and (knob.get("options") or {}).get("gpu") is False:
        return {}  # the node's shim says it has no GPU: nothing to move back to
    functions = ((knob.get("options") or {}).get("functions")) or {}
    current = ((knob.get("state") or {}).get("functions")) or {}
    moves = {}
    for name, about in sorted(functions.items()):
        if (about or {}).get("priority", "normal") != "low":
            continue
        plugin = (current.get(name) or {}).get("plugin", "cpu")
        if plugin == "remote" or plugin == wanted:
            continue  # a function an operator sent to a remote accelerator stays there
        moves[name] = {"plugin": wanted}
    return moves


def analyze(context, application_description, system_description, mechanisms, telemetry, ml_connector):
    # The moves come from the mechanism's state now, not from what was planned before: a plan that failed, or
    # an operator's change, is met with the move again.
    return bool(_moves(mechanisms, telemetry)), context


def plan(context, application_description, system_description, mechanisms, telemetry, ml_connector):
    moves = _moves(mechanisms, telemetry)
    context["planned"] = moves
    if not moves:
        return {}, context
    return {"vAccelPlugin": {"functions": moves}}, context
