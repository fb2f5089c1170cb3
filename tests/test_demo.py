"""`make run` as a new user sees it: the demo starts the mesh, registers the demo infrastructure and application
through the API, and its live view shows a policy's knob change on this machine's (simulated) node."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

import httpx

from .conftest import REPO, jsonl, wait_for


def test_the_demo_shows_a_knob_change_made_by_a_policy_then_stops_on_ctrl_c(tmp_path):
    sysfs = tmp_path / "sysfs"
    subprocess.run([sys.executable, "-m", "mapemesh", "node-shim", "simulate", "--profile", "intel_pstate",
                    str(sysfs)], check=True, capture_output=True)
    env = {**os.environ, "MAPEMESH_DATA": str(tmp_path / "data"), "MAPEMESH_BROKER_PORT": "0",
           "MAPEMESH_SERVING_PORT": "0", "MAPEMESH_NODE_SHIM_PORT": "0", "MAPEMESH_API_PORT": "0",
           "MAPEMESH_SYSFS_ROOT": str(sysfs), "MAPEMESH_NODE": "demo-node", "MAPEMESH_DEMO_PERIOD_S": "3"}
    proc = subprocess.Popen([sys.executable, "-m", "mapemesh.cli.demo"], cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(proc.stdout.readline, "")), daemon=True)
    reader.start()
    wanted = {
        "submitted": lambda line: "application demo-app submitted" in line,
        "missed": lambda line: "latency on demo-node is now 35 ms" in line,
        "to max": lambda line: "knob" in line and "demo-node CPUFrequency" in line and "-> " in line,
        "deployed": lambda line: "deploy" in line and "demo-app: Written demo-cluster" in line,
    }
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline and not all(any(f(li) for li in list(lines)) for f in wanted.values()):
            assert proc.poll() is None, "".join(lines)[-4000:]
            time.sleep(0.2)
        missing = [name for name, f in wanted.items() if not any(f(li) for li in list(lines))]
        assert missing == [], "".join(lines)[-4000:]
        # The node shim's journal: the policy moved the node to its maximum frequency after the missed target,
        # through intel_pstate's performance limits.
        journal = tmp_path / "data" / "node-shim" / "demo-node" / "journal.jsonl"

        def to_max() -> list[dict]:
            applied = jsonl(journal)
            return [a for a in applied if a["requested_by"] == "policy/cpu-frequency"
                    and a["command"].get("frequency") == "max" and not a.get("error")]

        found = wait_for(to_max, timeout=30, what="the policy's max-frequency command in the shim's journal")
        assert found[0]["after"]["intel_pstate"]["min_perf_pct"] == 100
        # `make run` is Knative's one-event contract end to end: the broker refused no batch.
        broker = json.loads((tmp_path / "data" / "endpoints.json").read_text())["broker"]
        health = httpx.get(broker + "/healthz", timeout=10).json()
        assert health["accept_batch"] is False and health["batches_refused"] == 0
    finally:
        proc.send_signal(signal.SIGINT)
        code = proc.wait(30)
        reader.join(5)
    assert code == 0, "".join(lines)[-3000:]
    assert "Traceback" not in "".join(lines)

    # Again, on the same data: the application is kept, and the view shows this run's events only.
    again = subprocess.Popen([sys.executable, "-m", "mapemesh.cli.demo"], cwd=REPO, env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
    second: list[str] = []
    reader = threading.Thread(target=lambda: second.extend(iter(again.stdout.readline, "")), daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not any("kept as it is" in li for li in list(second)):
            assert again.poll() is None, "".join(second)[-4000:]
            time.sleep(0.2)
        time.sleep(1)  # a while for the first run's events to show up, were they (wrongly) replayed
    finally:
        again.send_signal(signal.SIGINT)
        assert again.wait(30) == 0, "".join(second)[-3000:]
        reader.join(5)
    assert any("kept as it is" in li for li in second), "".join(second)[-3000:]
    assert not any("application demo-app submitted" in li for li in second)  # the first run's event
