"""`mapemesh policy test`: recorded events replayed through a policy offline."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

from mapemesh import events as catalogue
from mapemesh.eventing.binding import to_structured

from .test_cli import mapemesh

POLICIES = Path(__file__).resolve().parent / "policies"


def recorded(tmp_path: Path, loads: list[float], step_s: float = 2.0) -> Path:
    start = datetime(2026, 1, 1, tzinfo=UTC).timestamp()
    lines = []
    infra = catalogue.make_event(catalogue.InfraRegistered(infra_id="node-1", kind="node", description={
        "name": "node-1"}), source="/test")
    lines.append(to_structured(infra)[1].decode())
    for i, load in enumerate(loads):
        ev = catalogue.make_event(catalogue.TelemetryReported(asset="node-1", asset_kind="node", metrics=[
            catalogue.Metric(name="node_load1", value=load)]), source="/test", id=f"t{i}")
        ev.attributes["time"] = datetime.fromtimestamp(start + i * step_s, UTC).isoformat().replace("+00:00", "Z")
        lines.append(to_structured(ev)[1].decode())
    path = tmp_path / "events.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_replay_prints_the_plans_a_policy_would_make(tmp_path):
    # analyze_interval is 4 s and events come every 2 s: every other event is analyzed.
    path = recorded(tmp_path, [0.5, 3.0, 2.5, 0.4, 2.0, 2.0, 0.1])
    r = mapemesh("policy", "test", str(POLICIES / "policy-cpu-code.py"), "--events", str(path), "-o", "json")
    assert r.returncode == 1, r.stderr  # the policy failed on some events: shown, and the exit status says so
    doc = json.loads(r.stdout)
    assert doc["events"] == 8 and doc["analyses"] == 4 and doc["spaced"] == 3
    assert [v["verdict"] for v in doc["verdicts"]] == [False, True, True, False]
    # the policy needs CPUFrequency options: without a registered mechanism it fails, and that is shown
    assert doc["failures"] and doc["failures"][0]["method"] == "plan" and "KeyError" in doc["failures"][0]["error"]
    r = mapemesh("policy", "test", str(POLICIES / "policy-cpu-code.py"), "--events", str(path))
    assert r.returncode == 1 and "FAILED plan on event t2" in r.stdout


def test_replay_with_a_clean_policy(tmp_path):
    policy = tmp_path / "policy-max.py"
    policy.write_text('''
def initialize():
    return {"telemetry": {"metrics": ["node_load1"]}, "mechanisms": ["CPUFrequency"],
            "configuration": {"analyze_interval": "0s"}}

def analyze(context, telemetry):
    return telemetry["data"]["node_load1"] > 1.0, context

def plan(context, telemetry):
    return {"CPUFrequency": {"command": "set", "cpu": "all", "frequency": "max"}}, context
''')
    path = recorded(tmp_path, [0.5, 3.0, 2.5, 0.4])
    r = mapemesh("policy", "test", str(policy), "--events", str(path))
    assert r.returncode == 0, r.stderr
    assert "5 events" in r.stdout and "1 plan(s)" in r.stdout  # the same plan twice is made once
    assert '"frequency": "max"' in r.stdout


def test_bad_events_file_is_a_usage_error(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"specversion": "1.0"}\n')
    r = mapemesh("policy", "test", str(POLICIES / "policy-cpu-code.py"), "--events", str(bad))
    assert r.returncode == 2 and "line 1" in r.stderr


def test_gather_builds_both_shapes_inputs(tmp_path):
    import asyncio
    import time

    from mapemesh.policy import load_policy
    from mapemesh.policy.inputs import gather
    from mapemesh.state.sqlite import SQLiteStore

    store = SQLiteStore(tmp_path / "s.db")
    store.put("infrastructure", "node-1", {"kind": "node", "description": {"name": "node-1"}})
    store.put("applications", "app-1", {"description": {"targets": {"application_metric": 20}}})
    store.put("mechanisms", "node-1/CPUFrequency", {"state": {"governor": "performance"},
                                                     "options": {"frequencies": [800, 2400]}})
    store.append_telemetry("node-1", [("node_load1", 2.0, time.time()), ("other", 1.0, time.time())])
    policy = load_policy(POLICIES / "policy-cpu-code.py")
    decl = asyncio.run(policy.initialize())
    inputs = gather(store, decl, "node-1", context={})
    assert inputs["telemetry"]["data"] == {"node_load1": 2.0}  # the declared metrics only
    assert inputs["mechanisms"]["CPUFrequency"]["options"] == {"frequencies": [800, 2400]}
    assert inputs["system_description"] == {"name": "node-1"}
    assert inputs["application_description"] == [{"targets": {"application_metric": 20}}]
    assert inputs["available_assets"] == ["node-1"]
    plan, _ = asyncio.run(policy.plan(inputs))
    assert plan == {"CPUFrequency": {"command": "set", "cpu": "all", "frequency": 2400}}
    store.close()
