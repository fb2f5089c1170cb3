# An MLSysOps policy in the shape of the shipped code: initialize() without arguments, analyze and plan
# taking `mechanisms`. Kept as MLSysOps writes them (mapemesh runs such files unmodified).
import logging

logger = logging.getLogger(__name__)


def initialize():
    initialContext = {
        "telemetry": {"metrics": ["node_load1"], "system_scraper_interval": "5s"},
        "mechanisms": ["CPUFrequency"],
        "packages": [],
        "configuration": {"analyze_interval": "4s"},
        "latest_timestamp": None,
        "core": False,
        "scope": "global",
        "machine_learning_usage": False,
    }
    return initialContext


def analyze(context, application_description, system_description, mechanisms, telemetry, ml_connector):
    current = telemetry["data"].get("node_load1", 0)
    context["seen"] = context.get("seen", 0) + 1
    return current > 1.0, context


def plan(context, application_description, system_description, mechanisms, telemetry, ml_connector):
    options = mechanisms["CPUFrequency"]["options"]
    if telemetry["data"]["node_load1"] > 1.0:
        command = {"command": "set", "cpu": "all", "frequency": max(options["frequencies"])}
    else:
        command = {"command": "reset"}
    return {"CPUFrequency": command}, context
