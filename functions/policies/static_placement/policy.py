"""Static component placement, in the MLSysOps policy format.

Places what the application description fixes: a component whose `node_placement.node` names a node goes
there, and the application's `cluster_placement.cluster_id` (a list) holds every component. Nothing is
guessed: a component without a fixed node is left to the node placement policy. One plan per change of the
description.
"""


def initialize():
    return {
        "telemetry": {"metrics": [], "system_scraper_interval": "5s"},
        "mechanisms": ["ComponentPlacement", "ClusterPlacement"],
        "packages": [],
        "configuration": {"analyze_interval": "0s"},
        "scope": "application",
        "core": True,
        "machine_learning_usage": False,
    }


def _wanted(application_description):
    app = (application_description or {}).get("MLSysOpsApp", application_description or {})
    nodes, clusters = {}, {}
    fixed_clusters = (app.get("cluster_placement") or {}).get("cluster_id") or []
    for component in app.get("components") or []:
        name = (component.get("metadata") or {}).get("name")
        if not name:
            continue
        node = (component.get("node_placement") or {}).get("node")
        if node:
            nodes[name] = node
        if fixed_clusters:
            clusters[name] = list(fixed_clusters)
    plan = {}
    if nodes:
        plan["ComponentPlacement"] = {"nodes": nodes}
    if clusters:
        plan["ClusterPlacement"] = {"placement": clusters}
    return plan


def analyze(context, application_description, system_description, mechanisms, telemetry, ml_connector):
    wanted = _wanted(application_description)
    return bool(wanted) and wanted != context.get("placed"), context


def plan(context, application_description, system_description, mechanisms, telemetry, ml_connector):
    wanted = _wanted(application_description)
    context["placed"] = wanted
    return wanted, context
