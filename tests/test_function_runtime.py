"""A function outside the local host (functions-framework in a container): registration and the sink."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from mapemesh import events as catalogue
from mapemesh.eventing.log import read_all
from mapemesh.serving.function import load
from mapemesh.state import open_store

from .conftest import REPO, wait_for


def test_a_policy_registers_at_import_in_a_container(tmp_path):
    env = {**os.environ, "K_SERVICE": "policy-cpu-frequency", "MAPEMESH_DATA": str(tmp_path),
           "MAPEMESH_STATE": "sqlite:"}
    code = ("import time\nfrom pathlib import Path\nfrom mapemesh.serving.function import load\n"
            f"load('functions/policies/cpu_frequency/__init__.py', 'policy', Path({str(REPO)!r}))\n"
            "time.sleep(3)\n")
    proc = subprocess.Popen([sys.executable, "-c", code], env=env)
    store = open_store("sqlite:", data=tmp_path)
    try:
        wait_for(lambda: tmp_path.joinpath("state.db").exists() and store.get("policies", "cpu-frequency"),
                 timeout=20, what="the policy registered without any request")
        assert store.get("policies", "cpu-frequency").value["status"] == "active"
    finally:
        proc.wait(20)
        store.close()


def test_an_async_function_publishes_to_its_sink_on_every_request_outside_the_host(tmp_path, monkeypatch, broker):
    monkeypatch.setenv("K_SINK", broker.ingress)
    (tmp_path / "fan.py").write_text(
        "import mapemesh\nfrom mapemesh import events as catalogue\nfrom mapemesh.serving.sink import publish\n\n"
        "@mapemesh.function\nasync def fan(event):\n"
        "    out = [catalogue.make_event(catalogue.AppRemoved(app_id=f'a{i}'), '/t') for i in range(2)]\n"
        "    await publish(out)\n    return None\n")
    fn = load(str(tmp_path / "fan.py"), "fan")
    event = catalogue.make_event(catalogue.AppRemoved(app_id="x"), "/t")
    for _ in range(3):  # functions-framework calls invoke from a thread per request; the client must survive
        assert fn.invoke(event) is None
    stored = [json.loads(e.event.data)["app_id"] for e in read_all(broker.log_file)]
    assert sorted(stored) == ["a0", "a0", "a0", "a1", "a1", "a1"]
