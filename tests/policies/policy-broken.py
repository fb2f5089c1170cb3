# A policy that loads and declares itself but raises on every analysis.


def initialize():
    return {"telemetry": {"metrics": []}, "mechanisms": ["CPUFrequency"], "configuration": {"analyze_interval": "0s"},
            "scope": "global", "machine_learning_usage": False}


def analyze(context, application_description, system_description, mechanisms, telemetry, ml_connector):
    raise RuntimeError("this policy is broken on purpose")


def plan(context, application_description, system_description, mechanisms, telemetry, ml_connector):
    return {}, context
