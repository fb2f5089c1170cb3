"""CPU frequency policy, in the MLSysOps policy format (it runs unmodified in MLSysOps too).

When an application on the node misses a QoS target (an `application_metric_id` whose latest value breaks
its `target` under its `relation`), the node's CPUs go to their maximum frequency; when every target is met,
to their minimum, as in the MLSysOps example policy. A plan is made only when the wanted setting differs from
the last one planned, so a steady state makes no plans.
"""

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
        "mechanisms": ["CPUFrequency"],
        "packages": [],
        "configuration": {"analyze_interval": "1s"},
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


def _wanted(application_description, telemetry):
    data = (telemetry or {}).get("data") or {}
    for metric, target, relation in _targets(application_description):
        check = RELATIONS.get(relation)
        if metric in data and check is not None and not check(float(data[metric]), target):
            return "max"
    return "min"


def analyze(context, application_description, system_description, mechanisms, telemetry, ml_connector):
    wanted = _wanted(application_description, telemetry)
    return wanted != context.get("planned_frequency"), context


def plan(context, application_description, system_description, mechanisms, telemetry, ml_connector):
    wanted = _wanted(application_description, telemetry)
    context["planned_frequency"] = wanted
    return {"CPUFrequency": {"command": "set", "cpu": "all", "frequency": wanted}}, context
