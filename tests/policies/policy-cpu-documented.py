# The documented MLSysOps shape (D3.3, figures 35-37): initialize(context), analyze with current_plan,
# plan with available_assets; async here, which mapemesh also accepts.


def initialize(context):
    context = {
        "telemetry": {"metrics": ["application_metric"], "system_scraper_interval": "1s"},
        "mechanisms": ["CPUFrequency"],
        "packages": [],
        "configuration": {"analyze_interval": "1m30s"},
        "machine_learning_usage": True,
        "scope": "application",
    }
    return context


async def analyze(context, application_description, system_description, current_plan, telemetry, ml_connector):
    if telemetry["data"]["application_metric"] > application_description["targets"]["application_metric"]:
        return True, context
    return False, context


async def plan(context, application_description, system_description, current_plan, telemetry, ml_connector,
               available_assets):
    if telemetry["data"]["application_metric"] > application_description["targets"]["application_metric"]:
        command = {"command": "set", "cpu": "all", "frequency": "max"}
    else:
        command = {"command": "set", "cpu": "all", "frequency": "min"}
    new_plan = {"CPUFrequency": command}
    if new_plan != current_plan:
        return new_plan, context
    return current_plan, context
