"""Node placement by description criteria, in the MLSysOps policy format.

For each component of the application, the registered nodes that satisfy its `node_placement` (continuum
layer, labels, a named node) and its containers' platform requirements (CPU architecture, GPU, memory) are
candidates, and the nodes whose reputation credit is under its `min_trust` are not; the one with the most CPU
cores wins. A node whose credit falls under the minimum of a component placed there makes a new plan: the
component moves (seed 6.1's relocation). A component no node can run is reported in the context
(`unplaceable`, with every node's reasons) and left out of the plan. Replans when the description or the
registered nodes change the answer.
"""

from mapemesh.policy.placement import app_of, candidates, components, name_of


def initialize():
    return {
        "telemetry": {"metrics": [], "system_scraper_interval": "5s"},
        "mechanisms": ["ComponentPlacement"],
        "packages": [],
        "configuration": {"analyze_interval": "1s"},
        "scope": "application",
        "core": False,
        "machine_learning_usage": False,
    }


def _decide(application_description, system_description):
    nodes = (system_description or {}).get("nodes") or {}
    trust = (system_description or {}).get("trust") or {}
    chosen, unplaceable = {}, {}
    for component in components(app_of(application_description)):
        fits, reasons = candidates(component, nodes, trust)
        if fits:
            chosen[name_of(component)] = fits[0]
        else:
            unplaceable[name_of(component)] = reasons
    return chosen, unplaceable


def analyze(context, application_description, system_description, mechanisms, telemetry, ml_connector):
    chosen, unplaceable = _decide(application_description, system_description)
    context["unplaceable"] = unplaceable
    return bool(chosen) and chosen != context.get("placed"), context


def plan(context, application_description, system_description, mechanisms, telemetry, ml_connector):
    chosen, unplaceable = _decide(application_description, system_description)
    context["placed"], context["unplaceable"] = chosen, unplaceable
    return {"ComponentPlacement": {"nodes": chosen}}, context
