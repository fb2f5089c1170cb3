"""Adaptive telemetry collection (the seed's section 2.6), in the MLSysOps policy format.

Collecting telemetry costs the node and the network, so a node reports often only while it matters. This policy
watches a node's telemetry and sets its `TelemetryInterval` knob (how often the node shim reports):

| what it sees                                                              | the interval          |
|---------------------------------------------------------------------------|-----------------------|
| a watched metric moved fast (its two newest samples differ by more than   | SHORT (report more    |
| FAST_CHANGE of the older), or broke an application's QoS target (a fresh  | often)                |
| sample, newer than CALM_FOR_S)                                             |                       |
| neither, for CALM_FOR_S seconds since the last fast move or broken target | LONG (report less)    |
| neither, for less time than that                                          | unchanged (hysteresis)|

Watched: the metrics in WATCH, and every metric an application names as a QoS target (`application_metric_id`).
A plan is made only when the wanted interval differs from the one last planned, so a steady node makes none.
"""

import time

SHORT = "1s"
LONG = "30s"
FAST_CHANGE = 0.2
"""Relative change between a metric's two newest samples that counts as moving fast."""
CALM_FOR_S = 30.0
"""How long nothing moves fast and no target breaks before the interval lengthens again."""
WATCH = []
"""Metrics watched besides the applications' QoS metrics (node metrics, say: node_load1)."""

RELATIONS = {
    "lower_or_equal": lambda value, target: value <= target,
    "lower": lambda value, target: value < target,
    "greater_or_equal": lambda value, target: value >= target,
    "greater": lambda value, target: value > target,
    "equal": lambda value, target: value == target,
}


def initialize():
    return {
        "telemetry": {"metrics": [], "system_scraper_interval": "5s"},
        "mechanisms": ["TelemetryInterval"],
        "packages": [],
        # Every few seconds at most per node: collection need not react within a second, and the policy then
        # costs the loop a fifth of what a 1 s policy does under a stream of telemetry.
        "configuration": {"analyze_interval": "5s"},
        "scope": "global",
        "core": False,
        "machine_learning_usage": False,
    }


def _targets(application_description):
    apps = application_description if isinstance(application_description, list) else [application_description]
    for app in apps:
        app = (app or {}).get("MLSysOpsApp", app or {})
        for component in app.get("components") or []:
            for qos in component.get("qos_metrics") or []:
                if "application_metric_id" in qos and "target" in qos:
                    yield qos["application_metric_id"], float(qos["target"]), qos.get("relation", "lower_or_equal")


def _moving(application_description, telemetry, now):
    """Why the node's telemetry needs watching closely now (None when it does not)."""
    window = (telemetry or {}).get("window") or {}
    targets = list(_targets(application_description))
    for metric in set(WATCH) | {metric for metric, _, _ in targets}:
        samples = window.get(metric) or []
        if len(samples) >= 2:
            (_, older), (at, newer) = samples[-2], samples[-1]
            if now - float(at) <= CALM_FOR_S and abs(float(newer) - float(older)) > FAST_CHANGE * max(
                    abs(float(older)), 1e-9):
                return f"{metric} moved from {older} to {newer}"
    for metric, target, relation in targets:
        samples = window.get(metric) or []
        check = RELATIONS.get(relation)
        if samples and check is not None and now - float(samples[-1][0]) <= CALM_FOR_S \
                and not check(float(samples[-1][1]), target):
            return f"{metric} {samples[-1][1]} breaks its target ({relation} {target})"
    return None


def _seconds(duration):
    text = str(duration)
    for suffix, scale in (("ms", 0.001), ("s", 1.0), ("m", 60.0), ("h", 3600.0)):
        if text.endswith(suffix):
            return float(text[:-len(suffix)]) * scale
    return float(text)


def _wanted(context, application_description, telemetry):
    now = time.time()
    context.setdefault("last_moving", now)  # the calm clock starts when the policy first sees the node
    reason = _moving(application_description, telemetry, now)
    if reason is not None:
        context["last_moving"] = now
        context["reason"] = reason
        return SHORT
    if now - float(context.get("last_moving") or 0.0) >= CALM_FOR_S:
        context["reason"] = f"calm for {CALM_FOR_S:g}s"
        return LONG
    return context.get("planned_interval")  # in between: keep what was planned (None: nothing planned yet)


def analyze(context, application_description, system_description, mechanisms, telemetry, ml_connector):
    wanted = _wanted(context, application_description, telemetry)
    current = context.get("planned_interval")
    if current is None and wanted == LONG:
        # Nothing planned yet and calm: plan only if the node does not report at LONG already.
        state = ((mechanisms or {}).get("TelemetryInterval") or {}).get("state") or {}
        if state.get("interval_s") == _seconds(LONG):
            context["planned_interval"] = LONG
            return False, context
    return wanted is not None and wanted != current, context


def plan(context, application_description, system_description, mechanisms, telemetry, ml_connector):
    wanted = _wanted(context, application_description, telemetry) or LONG
    context["planned_interval"] = wanted
    return {"TelemetryInterval": {"command": "set", "interval": wanted}}, context
