"""Loading and running MLSysOps policy files unmodified: both shapes, sync and async, failures isolated."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from mapemesh.policy import Policy, PolicyError, PolicyFailure, load_policy

POLICIES = Path(__file__).resolve().parent / "policies"


def run(coro):
    return asyncio.run(coro)


def test_code_shape():
    policy = load_policy(POLICIES / "policy-cpu-code.py")
    assert policy.name == "cpu-code" and policy.shape == "code"
    decl = run(policy.initialize())
    assert decl.metrics == ("node_load1",) and decl.mechanisms == ("CPUFrequency",)
    assert decl.analyze_interval_s == 4 and decl.scope == "global" and not decl.machine_learning
    inputs = {"context": {}, "telemetry": {"data": {"node_load1": 2.5}},
              "mechanisms": {"CPUFrequency": {"state": {}, "options": {"frequencies": [800_000, 2_400_000]}}}}
    assert run(policy.analyze(inputs)) == (True, {"seen": 1})
    plan, _ = run(policy.plan(inputs))
    assert plan == {"CPUFrequency": {"command": "set", "cpu": "all", "frequency": 2_400_000}}


def test_documented_shape_async():
    policy = load_policy(POLICIES / "policy-cpu-documented.py")
    assert policy.shape == "documented"
    decl = run(policy.initialize())
    assert decl.analyze_interval_s == 90 and decl.scope == "application" and decl.machine_learning
    app = {"targets": {"application_metric": 20}}
    inputs = {"context": decl.context, "application_description": app, "current_plan": None,
              "telemetry": {"data": {"application_metric": 25}}, "available_assets": []}
    verdict, _ = run(policy.analyze(inputs))
    assert verdict is True
    plan, _ = run(policy.plan(inputs))
    assert plan == {"CPUFrequency": {"command": "set", "cpu": "all", "frequency": "max"}}
    inputs["telemetry"] = {"data": {"application_metric": 5}}
    assert run(policy.analyze(inputs))[0] is False


def write(tmp_path: Path, body: str, name: str = "policy-x.py") -> Path:
    path = tmp_path / name
    path.write_text(body)
    return path


BASE = '''
def initialize():
    return {"mechanisms": ["CPUFrequency"], "telemetry": {"metrics": []}}
'''


def test_failures_are_reported_not_raised(tmp_path):
    policy = load_policy(write(tmp_path, BASE + '''
def analyze(context, telemetry):
    return telemetry["data"]["missing"] > 1, context

def plan(context):
    return "not a dict", context
'''))
    failure = run(policy.analyze({"context": {}, "telemetry": {"data": {}}}))
    assert isinstance(failure, PolicyFailure) and failure.method == "analyze"
    assert "KeyError" in failure.error and "missing" in failure.traceback
    failure = run(policy.plan({"context": {}}))
    assert isinstance(failure, PolicyFailure) and "plan must answer" in failure.error


@pytest.mark.parametrize(("answer", "ok"), [("True, context", True), ("True", True), ("1, context", False),
                                            ("True, 'ctx'", False), ("(True, context, 3)", False)])
def test_analyze_answers_are_checked(tmp_path, answer, ok):
    policy = load_policy(write(tmp_path, BASE + f'''
def analyze(context):
    return {answer}

def plan(context):
    return {{}}, context
'''))
    result = run(policy.analyze({"context": {"a": 1}}))
    assert (not isinstance(result, PolicyFailure)) is ok


@pytest.mark.parametrize(("body", "message"), [
    (BASE + "def analyze(context): pass\n", "no plan()"),
    (BASE + "def analyze(context, weather): pass\ndef plan(context): pass\n", "'weather'"),
    ("def initialize(): return {}\ndef analyze(context): pass\ndef plan(context): pass\nimport nope_nope\n",
     "importing it failed"),
])
def test_unusable_policy_files(tmp_path, body, message):
    with pytest.raises(PolicyError, match=message):
        load_policy(write(tmp_path, body))


@pytest.mark.parametrize(("context", "message"), [
    ("[]", "must return the context dict"),
    ('{"mechanisms": "CPUFrequency"}', "mechanisms must be a list"),
    ('{"configuration": {"analyze_interval": "soon"}}', "analyze_interval"),
    ('{"scope": "node"}', "scope"),
])
def test_bad_declarations(tmp_path, context, message):
    policy = load_policy(write(tmp_path, f'''
def initialize():
    return {context}
def analyze(context): return False, context
def plan(context): return {{}}, context
'''))
    with pytest.raises(PolicyError, match=message):
        run(policy.initialize())


def test_a_policy_is_a_policy():
    assert isinstance(load_policy(POLICIES / "policy-cpu-code.py"), Policy)


def test_core_flag_hangs_and_failed_initialize(tmp_path):
    core = load_policy(write(tmp_path, '''
def initialize():
    return {"core": True}
def analyze(context, /, telemetry): return True, context
def plan(context): return {}, context
''', "policy-core.py"))
    assert run(core.initialize()).core is True
    assert run(core.analyze({"context": {}, "telemetry": {}}))[0] is True  # positional-only works too
    slow = load_policy(write(tmp_path, BASE + '''
import time
def analyze(context):
    time.sleep(0.4)  # hangs past the 0.1 s timeout set below
    return True, context
def plan(context): return {}, context
''', "policy-slow.py"))
    slow.timeout_s = 0.1
    failure = run(slow.analyze({"context": {}}))
    assert isinstance(failure, PolicyFailure) and "within 0.1s" in failure.error
    broken = load_policy(write(tmp_path, '''
def initialize(): raise RuntimeError("no config")
def analyze(context): return True, context
def plan(context): return {}, context
''', "policy-broken.py"))
    with pytest.raises(PolicyError, match="initialize failed: RuntimeError: no config"):
        run(broken.initialize())


def test_a_failing_policy_leaves_the_callers_context_alone(tmp_path):
    policy = load_policy(write(tmp_path, BASE + '''
def analyze(context):
    context["half"] = "done"
    raise ValueError("then fails")
def plan(context): return {}, context
'''))
    context = {"kept": 1}
    assert isinstance(run(policy.analyze({"context": context})), PolicyFailure)
    assert context == {"kept": 1}
