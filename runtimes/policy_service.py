"""The Knative Service and Trigger that run one policy as a function.

One Service per policy (`policy-NAME`), labelled `mapemesh.dev/policy: NAME`, starting with one instance
(`initial-scale: 1`, so a new revision registers the policy's declaration at once) and scaling to zero;
its Trigger takes the analyze and plan requests whose extension `policy` is NAME. The Service runs on the
runtime `mapemesh.runtimes.choice` picks for policies (urunc, with the image bunny builds from
`bunnyfiles/policy-NAME.bunnyfile`).
"""

from __future__ import annotations

import re

import yaml

from mapemesh.events.catalogue import PolicyAnalyzeRequested, PolicyPlanRequested

NAME = re.compile(r"^[a-z]([-a-z0-9]{0,40}[a-z0-9])?$")


class InvalidPolicyName(ValueError):
    """A policy name that cannot name a Knative Service."""


def check_name(name: str) -> str:
    """`name` if it is a DNS label of at most 42 characters (the Service adds `policy-`); else an error."""
    if not NAME.match(name):
        raise InvalidPolicyName(f"policy name {name!r} must be lowercase letters, digits and '-', start with a "
                                f"letter, end with a letter or digit, at most 42 characters (e.g. cpu-frequency)")
    return name


def objects(name: str, source: str, target: str = "policy", namespace: str = "default") -> list[dict[str, object]]:
    """The Service and Trigger for policy `name`, whose function is `target` in the file `source`."""
    from mapemesh.runtimes import choice

    check_name(name)
    service = f"policy-{name}"
    runtime = choice.choose("policy")
    return [
        {"apiVersion": "serving.knative.dev/v1", "kind": "Service",
         "metadata": {"name": service, "namespace": namespace, "labels": {"mapemesh.dev/policy": name}},
         "spec": {"template": {
             "metadata": {"annotations": {"autoscaling.knative.dev/initial-scale": "1",
                                          "autoscaling.knative.dev/max-scale": "4"}},
             "spec": {"runtimeClassName": runtime, "containerConcurrency": 16, "timeoutSeconds": 75, "containers": [{
                 "image": choice.unikernel_image(service) if runtime == "urunc" else choice.FUNCTION_IMAGE,
                 "env": [{"name": "FUNCTION_SOURCE", "value": source},
                         {"name": "FUNCTION_TARGET", "value": target}]}]}}}},
        {"apiVersion": "eventing.knative.dev/v1", "kind": "Trigger",
         "metadata": {"name": service, "namespace": namespace, "labels": {"mapemesh.dev/policy": name}},
         "spec": {"broker": "default",
                  "filters": [{"all": [
                      {"exact": {"policy": name}},
                      {"any": [{"exact": {"type": PolicyAnalyzeRequested.event_type}},
                               {"exact": {"type": PolicyPlanRequested.event_type}}]}]}],
                  "subscriber": {"ref": {"apiVersion": "serving.knative.dev/v1", "kind": "Service",
                                         "name": service}},
                  # analyze, then plan, may take 30 s each (the policy SDK's limit): wait for both.
                  "delivery": {"timeout": "PT70S", "retry": 3, "backoffPolicy": "exponential",
                               "backoffDelay": "PT0.5S"}}},
    ]


def render(name: str, source: str, target: str = "policy", namespace: str = "default") -> str:
    """The manifests of `objects` as one YAML file."""
    header = f"# Policy {name} as a function: its Service and the Trigger for its requests.\n"
    return header + yaml.safe_dump_all(objects(name, source, target, namespace), sort_keys=False)
