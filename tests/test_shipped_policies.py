"""The policies mapemesh ships, run through the policy SDK as the loop runs them."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import yaml

from mapemesh.policy import load_policy

from .conftest import SHARED

REPO = Path(__file__).resolve().parent.parent
CPU = REPO / "functions" / "policies" / "cpu_frequency" / "policy.py"


def app(target: float = 20, relation: str = "lower_or_equal") -> dict:
    return {"MLSysOpsApp": {"name": "a", "components": [{"metadata": {"name": "c"}, "qos_metrics": [
        {"application_metric_id": "metric-1", "target": target, "relation": relation}]}]}}


def test_cpu_frequency_goes_to_max_when_a_target_is_missed_and_back_to_min():
    policy = load_policy(CPU)
    decl = asyncio.run(policy.initialize())
    assert decl.mechanisms == ("CPUFrequency",) and decl.scope == "global"
    context = dict(decl.context)

    def step(value: float) -> dict | None:
        nonlocal context
        inputs = {"context": context, "application_description": [app()], "telemetry": {"data": {"metric-1": value}},
                  "mechanisms": {}, "system_description": {}}
        verdict, context = asyncio.run(policy.analyze(inputs))
        if not verdict:
            return None
        plan, context = asyncio.run(policy.plan({**inputs, "context": context}))
        return plan["CPUFrequency"]

    assert step(25) == {"command": "set", "cpu": "all", "frequency": "max"}  # 25 > 20: missed
    assert step(30) is None  # still missed: already planned, no new plan
    assert step(10) == {"command": "set", "cpu": "all", "frequency": "min"}
    assert step(12) is None


def test_cpu_frequency_reads_the_upstream_application_description():
    upstream = SHARED / "reference" / "mlsysops" / "app-description.user_provided.yaml"
    if not upstream.exists():
        pytest.skip(f"{upstream} is not here (../shared is laid beside the checkout in CI)")
    description = yaml.safe_load(upstream.read_text())
    policy = load_policy(CPU)
    decl = asyncio.run(policy.initialize())
    inputs = {"context": dict(decl.context), "application_description": [description],
              "telemetry": {"data": {"metric-1": 21}}}
    verdict, context = asyncio.run(policy.analyze(inputs))
    plan, _ = asyncio.run(policy.plan({**inputs, "context": context}))
    assert verdict and plan["CPUFrequency"]["frequency"] == "max"  # metric-1 must stay <= 20
