"""`mapemesh events send` and `mapemesh broker serve` as a user runs them."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

from mapemesh.eventing.log import read_all


def mapemesh(*args: str, data=None, stdin: bytes | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "MAPEMESH_DATA"}
    cmd = [sys.executable, "-m", "mapemesh"]
    if data is not None:
        cmd += ["--data", str(data)]
    return subprocess.run(cmd + list(args), env=env, capture_output=True, text=True, timeout=60,
                          input=None if stdin is None else stdin.decode())


def test_send_finds_the_broker_through_endpoints_json(broker):
    r = mapemesh("events", "send", "--type", "com.example.ping", "--source", "/cli", "--data", '{"n": 1}',
                 "--ext", "node=node-1", "--subject", "s1", "-o", "json", data=broker.data)
    assert r.returncode == 0, r.stderr
    answer = json.loads(r.stdout)
    assert answer["status"] == 202 and answer["url"] == broker.ingress
    (e,) = [e for e in read_all(broker.log_file) if e.event.id == answer["id"]]
    assert e.event.get("node") == "node-1" and e.event.get("subject") == "s1"
    assert e.event.json_data() == {"n": 1}


def test_send_structured_with_data_file_and_base_url(broker, tmp_path):
    f = tmp_path / "data.json"
    f.write_text('{"from": "file"}')
    r = mapemesh("events", "send", "--broker", broker.url, "--type", "t", "--source", "/cli",
                 "--data-file", str(f), "--structured", "--id", "file-1")
    assert r.returncode == 0, r.stderr
    assert "202 Accepted" in r.stdout and "id=file-1" in r.stdout
    (e,) = [e for e in read_all(broker.log_file) if e.event.id == "file-1"]
    assert e.event.json_data() == {"from": "file"}


def test_send_reports_rejection_with_exit_1(broker):
    r = mapemesh("events", "send", "--broker", broker.url + "/default/missing", "--type", "t",
                 "--source", "/cli")
    assert r.returncode == 1
    assert "404" in r.stderr


def test_send_rejects_bad_input_before_sending(broker):
    r = mapemesh("events", "send", "--broker", broker.ingress, "--type", "t", "--source", "/cli",
                 "--data", "{not json")
    assert r.returncode == 2 and "not valid JSON" in r.stderr
    r = mapemesh("events", "send", "--broker", broker.ingress, "--type", "t", "--source", "/cli",
                 "--ext", "Bad_Name=1")
    assert r.returncode == 2 and "Bad_Name" in r.stderr.replace("bad_name", "Bad_Name")


def test_send_without_a_broker_says_how_to_start_one(tmp_path):
    r = mapemesh("events", "send", "--type", "t", "--source", "/cli", data=tmp_path)
    assert r.returncode == 2 and "mapemesh broker serve" in r.stderr


def test_send_to_an_unreachable_broker_exits_3(tmp_path):
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    r = mapemesh("events", "send", "--broker", f"http://127.0.0.1:{port}", "--type", "t", "--source", "/x",
                 "--timeout", "2")
    assert r.returncode == 3 and "cannot reach" in r.stderr


def test_broker_records_and_removes_its_endpoint(broker):
    endpoints = broker.data / "endpoints.json"
    assert json.loads(endpoints.read_text())["broker"] == broker.url
    assert broker.stop(signal.SIGTERM) == 0
    assert "broker" not in json.loads(endpoints.read_text())


def test_broker_serve_refuses_a_missing_manifests_dir(tmp_path):
    r = mapemesh("broker", "serve", "--manifests", str(tmp_path / "nope"), "--port", "0", data=tmp_path)
    assert r.returncode == 2 and "does not exist" in r.stderr


def test_cesql_command(tmp_path):
    event = tmp_path / "e.json"
    event.write_text(json.dumps({"specversion": "1.0", "id": "1", "source": "/s", "type": "io.x.y",
                                 "subject": "node-1", "data": {"ignored": True}}))
    r = mapemesh("cesql", "type LIKE 'io.%' AND subject = 'node-1'", "--event", str(event))
    assert r.returncode == 0 and json.loads(r.stdout) == {"result": True, "error": None}
    r = mapemesh("cesql", "missing = 'x'", "--event", str(event))
    assert r.returncode == 1 and json.loads(r.stdout)["error"] == "missingAttribute"
    r = mapemesh("cesql", "1 / 0")
    assert json.loads(r.stdout)["error"] == "math"
    r = mapemesh("cesql", "INT('abc')")
    assert json.loads(r.stdout)["error"] == "cast"
    r = mapemesh("cesql", "NOPE(1)")
    assert json.loads(r.stdout)["error"] == "missingFunction"
    r = mapemesh("cesql", "type = ", "--event", "-", stdin=event.read_bytes())
    assert json.loads(r.stdout)["error"] == "parse"
    r = mapemesh("cesql", "true", "--event", str(tmp_path / "nope.json"))
    assert r.returncode == 2
