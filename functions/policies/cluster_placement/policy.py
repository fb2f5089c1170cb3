"""Cluster placement, in the MLSysOps policy format.

Each component goes to the clusters the application fixes (`cluster_placement.cluster_id`), else to the
registered clusters holding a node that can run it (node placement criteria), the cluster with most such
nodes first (a node, or a cluster with a credit of its own, under the component's `min_trust` does not count);
only the first is used unless the component asks for more (`cluster_placement.replicas`, a
number of clusters). Components that fit nowhere are reported in the context (`unplaceable`).
"""

from mapemesh.policy.placement import app_of, candidates, clusters_of, components, name_of, untrusted


def initialize():
    return {
        "telemetry": {"metrics": [], "system_scraper_interval": "5s"},
        "mechanisms": ["ClusterPlacement"],
        "packages": [],
        "configuration": {"analyze_interval": "1s"},
        "scope": "application",
        "core": False,
        "machine_learning_usage": False,
    }


def _decide(application_description, system_description):
    app = app_of(application_description)
    fixed = (app.get("cluster_placement") or {}).get("cluster_id") or []
    nodes = (system_description or {}).get("nodes") or {}
    trust = (system_description or {}).get("trust") or {}
    placement, unplaceable = {}, {}
    for component in components(app):
        name = name_of(component)
        if fixed:
            placement[name] = list(fixed)
            continue
        fits, reasons = candidates(component, nodes, trust)
        ranked = clusters_of(nodes, fits)
        for cluster in [c for c in ranked if c in trust and untrusted(component, c, trust)]:
            ranked.remove(cluster)  # a cluster with a credit of its own (deploy results) under the minimum
            reasons[f"cluster {cluster}"] = [untrusted(component, cluster, trust)]
        counts = {c: sum(1 for n in fits if (nodes[n].get("MLSysOpsNode", nodes[n])).get("cluster_id") == c)
                  for c in ranked}
        ranked.sort(key=lambda c: (-counts[c], c))
        wanted = int((component.get("cluster_placement") or {}).get("replicas") or 1)
        if ranked:
            placement[name] = ranked[:max(1, wanted)]
        else:
            unplaceable[name] = reasons or {"*": ["no node is registered"]}
    return placement, unplaceable


def analyze(context, application_description, system_description, mechanisms, telemetry, ml_connector):
    placement, unplaceable = _decide(application_description, system_description)
    context["unplaceable"] = unplaceable
    return bool(placement) and placement != context.get("placed"), context


def plan(context, application_description, system_description, mechanisms, telemetry, ml_connector):
    placement, unplaceable = _decide(application_description, system_description)
    context["placed"], context["unplaceable"] = placement, unplaceable
    return {"ClusterPlacement": {"placement": placement}}, context
