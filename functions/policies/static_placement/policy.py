"""Static component placement, in the MLSysOps policy format.

Places what the application description fixes: a component whose `node_placement.node` names a node goes
there, and the application's `cluster_placement.cluster_id` (a list) holds every component. Nothing is
guessed: a component without a fixed node is left to the node placement policy, and so is one whose fixed
node's reputation credit is under its `min_trust` (it is not placed there). One plan per change of the
description.
"""

from mapemesh.policy.placement import untrusted


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


def _wanted(application_description, system_description=None):
    app = (application_description or {}).get("MLSysOpsApp", application_description or {})
    trust = (system_description or {}).get("trust") or {}
    nodes, clusters = {}, {}
    fixed_clusters = (app.get("cluster_placement") or {}).get("cluster_id") or []
    for component in app.get("components") or []:
        name = (component.get("metadata") or {}).get("name")
        if not name:
            continue
        node = (component.get("node_placement") or {}).get("node")
        if node and untrusted(component, node, trust) is None:
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
    wanted = _wanted(application_description, system_description)
    return bool(wanted) and wanted != context.get("placed"), context


def plan(context, application_description, system_description, mechanisms, telemetry, ml_connector):
    wanted = _wanted(application_description, system_description)
    context["placed"] = wanted
    return wanted, context
