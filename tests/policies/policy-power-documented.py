# The documented MLSysOps shape (initialize(context); analyze with current_plan; plan with available_assets),
# sync, global: caps a node's package power when its power draw passes 100 W.


def initialize(context):
    context["telemetry"] = {"metrics": ["node_power_watts"], "system_scraper_interval": "1s"}
    context["mechanisms"] = ["RAPLPowerCap"]
    context["configuration"] = {"analyze_interval": "0s"}
    context["scope"] = "global"
    context["machine_learning_usage"] = False
    return context


def analyze(context, application_description, system_description, current_plan, telemetry, ml_connector):
    return telemetry["data"].get("node_power_watts", 0) > 100 and not current_plan, context


def plan(context, application_description, system_description, current_plan, telemetry, ml_connector,
         available_assets):
    assert telemetry["asset"] in available_assets
    return {"RAPLPowerCap": {"command": "set", "domain": "package", "limit_uw": 90_000_000}}, context
