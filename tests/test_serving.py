"""The local function host through `mapemesh up`: scale from and to zero, scale out, crashes, timeouts,
functions behind triggers, and the functions-framework path for the same callable."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import yaml

from .conftest import add_resources, copy_knative_config, wait_for
from .subscriber import Subscriber

FNS = Path(__file__).resolve().parent / "fns"


def service(name: str, target: str = "echo", annotations: dict | None = None, cc: int = 1,
            timeout: int = 5, runtime: str | None = None) -> dict:
    notes = {"autoscaling.knative.dev/initial-scale": "0", "autoscaling.knative.dev/window": "1s",
             **(annotations or {})}
    spec: dict = {"containerConcurrency": cc, "timeoutSeconds": timeout, "containers": [{
        "image": "example/fn", "env": [{"name": "FUNCTION_SOURCE", "value": "fns/echo.py"},
                                       {"name": "FUNCTION_TARGET", "value": target}]}]}
    if runtime:
        spec["runtimeClassName"] = runtime
    return {"apiVersion": "serving.knative.dev/v1", "kind": "Service",
            "metadata": {"name": name, "namespace": "default"},
            "spec": {"template": {"metadata": {"annotations": notes}, "spec": spec}}}


@dataclass
class Mesh:
    proc: subprocess.Popen[bytes]
    root: Path
    data: Path
    broker: str
    serving: str

    def post(self, name: str, type_: str = "t", data: bytes = b"hi", timeout: float = 10, **ext: str) -> httpx.Response:
        headers = {"ce-specversion": "1.0", "ce-id": str(uuid.uuid4()), "ce-source": "/test", "ce-type": type_,
                   "content-type": "text/plain", **{f"ce-{k}": v for k, v in ext.items()}}
        return httpx.post(f"{self.serving}/default/{name}", headers=headers, content=data, timeout=timeout)

    def status(self) -> dict:
        return httpx.get(self.serving + "/status").json()["functions"]

    def pids(self, name: str) -> list[int]:
        return self.status()[f"default/{name}"]["pids"]

    def batches_refused(self) -> int:
        """Batch requests the broker refused (Knative's contract: a mapemesh component never sends one)."""
        return httpx.get(self.broker + "/healthz", timeout=10).json()["batches_refused"]


def start_mesh(root: Path, *docs: dict, env: dict | None = None, shim: list[str] | None = None,
               api: bool = False) -> Mesh:
    """`mapemesh up` in root; without `shim` (extra flags for this machine's node shim) no node shim runs, without
    `api` no northbound API."""
    manifests = root / "knative"
    manifests.mkdir(parents=True, exist_ok=True)
    copy_knative_config(manifests)
    (manifests / "app.yaml").write_text(yaml.safe_dump_all(docs))
    add_resources(manifests, "app.yaml")
    shutil.copytree(FNS, root / "fns", dirs_exist_ok=True)
    data = root / "data"
    proc = subprocess.Popen(
        [sys.executable, "-m", "mapemesh", "--log-level", "warning", "up", "--manifests", str(manifests),
         "--data", str(data), "--port", "0", "--serving-port", "0",
         *(["--node-shim-port", "0", *shim] if shim is not None else ["--node-shim-port", "-1"]),
         "--api-port", "0" if api else "-1"],
        cwd=root, env={**os.environ, **(env or {})})

    def ready():
        if proc.poll() is not None:
            raise AssertionError(f"mapemesh up exited with {proc.returncode}")
        try:
            found = json.loads((data / "endpoints.json").read_text())
            return found if {"broker", "serving", *(["api"] if api else [])} <= set(found) else None
        except (OSError, ValueError):
            return None

    found = wait_for(ready, what="the mesh to start")
    return Mesh(proc, root, data, found["broker"], found["serving"])


@pytest.fixture
def mesh_factory(tmp_path):
    started: list[Mesh] = []

    def factory(*docs: dict, env: dict | None = None) -> Mesh:
        m = start_mesh(tmp_path, *docs, env=env)
        started.append(m)
        return m

    yield factory
    for m in started:
        if m.proc.poll() is None:
            m.proc.send_signal(signal.SIGTERM)
            m.proc.wait(20)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_scale_from_zero_reply_and_back_to_zero(mesh_factory):
    mesh = mesh_factory(service("echo", runtime="kata-fc"))
    st = mesh.status()["default/echo"]
    assert st["scaled_to_zero"] and st["processes"] == 0 and st["runtime_class"] == "kata-fc"
    r = mesh.post("echo", data=b"payload")
    assert r.status_code == 200 and r.headers["ce-type"] == "echoed" and r.content == b"payload"
    (pid,) = mesh.pids("echo")
    assert int(r.headers["ce-pid"]) == pid and alive(pid)
    assert mesh.post("echo").headers["ce-pid"] == str(pid)  # warm: the same process
    wait_for(lambda: not mesh.status()["default/echo"]["processes"], timeout=10, what="scale to zero")
    wait_for(lambda: not alive(pid), timeout=5, what="the process to be gone")
    assert mesh.post("echo", type_="quiet").status_code == 202
    assert mesh.status()["default/echo"]["cold_starts"] == 2


def test_async_function(mesh_factory):
    mesh = mesh_factory(service("aecho", target="aecho"))
    r = mesh.post("aecho")
    assert r.status_code == 200 and r.headers["ce-id"].startswith("a-")


def test_burst_scales_out_to_max_scale_and_no_further(mesh_factory):
    mesh = mesh_factory(service("echo", annotations={"autoscaling.knative.dev/max-scale": "3"}))
    results: list[httpx.Response] = []
    threads = [threading.Thread(target=lambda: results.append(mesh.post("echo", type_="slow", seconds="0.5")))
               for _ in range(9)]
    for t in threads:
        t.start()
    peak = 0
    while any(t.is_alive() for t in threads):
        peak = max(peak, len(mesh.pids("echo")))
        time.sleep(0.02)
    for t in threads:
        t.join()
    assert all(r.status_code == 200 for r in results)
    assert peak == 3
    assert len({r.headers["ce-pid"] for r in results}) == 3


def test_min_scale_keeps_processes(mesh_factory):
    mesh = mesh_factory(service("echo", annotations={"autoscaling.knative.dev/min-scale": "2"}))
    wait_for(lambda: len(mesh.pids("echo")) == 2, what="min-scale processes")
    time.sleep(1.5)
    assert len(mesh.pids("echo")) == 2


def test_errors_timeouts_and_crashes(mesh_factory, tmp_path):
    bad = service("broken")
    bad["spec"]["template"]["spec"]["containers"][0]["env"][0]["value"] = "fns/missing.py"
    mesh = mesh_factory(service("echo", timeout=1), bad)
    r = mesh.post("echo", type_="boom")
    assert r.status_code == 500 and "boom" in r.json()["error"]
    r = mesh.post("echo", type_="slow", seconds="3")
    assert r.status_code == 504
    r = mesh.post("echo", type_="crash")
    assert r.status_code == 502
    assert mesh.post("echo").status_code == 200  # restarted on the next request
    r = mesh.post("broken")
    assert r.status_code == 503 and "missing.py" in r.json()["error"]
    assert httpx.post(f"{mesh.serving}/default/nope", content=b"").status_code == 404
    r = httpx.post(f"{mesh.serving}/default/echo", content=b"{}", headers={"content-type": "application/json"})
    assert r.status_code == 400


def test_full_activator_queue_answers_429(mesh_factory):
    mesh = mesh_factory(service("echo", annotations={"autoscaling.knative.dev/max-scale": "1"}),
                        env={"MAPEMESH_ACTIVATOR_QUEUE": "2"})
    results: list[httpx.Response] = []
    threads = [threading.Thread(target=lambda: results.append(mesh.post("echo", type_="slow", seconds="0.5")))
               for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    codes = sorted(r.status_code for r in results)
    assert set(codes) == {200, 429} and codes.count(200) >= 2  # the queue holds 2 while the process starts
    assert all(r.headers["Retry-After"] == "1" for r in results if r.status_code == 429)


def test_function_behind_triggers_and_crash_retried_by_the_broker(mesh_factory, tmp_path):
    sub = Subscriber()
    try:
        triggers = [
            {"apiVersion": "eventing.knative.dev/v1", "kind": "Trigger",
             "metadata": {"name": "to-echo", "namespace": "default"},
             "spec": {"broker": "default", "filters": [{"prefix": {"type": "io.test."}}],
                      "subscriber": {"ref": {"apiVersion": "serving.knative.dev/v1", "kind": "Service",
                                             "name": "echo"}},
                      "delivery": {"retry": 3, "backoffDelay": "PT0.1S"}}},
            {"apiVersion": "eventing.knative.dev/v1", "kind": "Trigger",
             "metadata": {"name": "replies", "namespace": "default"},
             "spec": {"broker": "default", "filter": {"attributes": {"type": "echoed"}},
                      "subscriber": {"uri": sub.url + "/replies"}}}]
        mesh = mesh_factory(service("echo"), *triggers)
        marker = tmp_path / "crashed-once"
        for type_, ext in (("io.test.hello", {}), ("io.test.crash-once", {"marker": str(marker)})):
            headers = {"ce-specversion": "1.0", "ce-id": type_, "ce-source": "/t", "ce-type": type_,
                       **{f"ce-{k}": v for k, v in ext.items()}}
            assert httpx.post(mesh.broker + "/default/default", headers=headers, content=b"x").status_code == 202
        wait_for(lambda: len(sub.at("/replies")) == 2, timeout=20, what="both replies")
        assert sorted(sub.ids("/replies")) == ["re-io.test.crash-once", "re-io.test.hello"]
        assert marker.exists()  # the first delivery crashed the process; the broker's retry got a new one
        stats = httpx.get(mesh.broker + "/stats").json()["triggers"]
        assert stats["default/to-echo"]["retried"] >= 1 and stats["default/to-echo"]["delivered"] == 2
    finally:
        sub.close()


def test_status_command_and_stop_leaves_no_process(mesh_factory):
    from .test_cli import mapemesh

    mesh = mesh_factory(service("echo", annotations={"autoscaling.knative.dev/min-scale": "1"}, runtime="urunc"))
    wait_for(lambda: mesh.pids("echo"), what="the min-scale process")
    r = mapemesh("status", "-o", "json", data=mesh.data)
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    fn = doc["functions"]["default/echo"]
    assert fn["processes"] == 1 and fn["runtime_class"] == "urunc" and "local process" in fn["runs_as"]
    human = mapemesh("status", data=mesh.data).stdout
    assert "default/echo: 1 process(es)" in human and "runtime class urunc" in human
    pids = mesh.pids("echo")
    # This mesh's fork server (a child of it; other meshes may run on the machine).
    zygotes = [int(p) for p in subprocess.run(["pgrep", "-P", str(mesh.proc.pid), "-f", "mapemesh.serving.zygote"],
                                              capture_output=True, text=True).stdout.split()]
    assert zygotes
    mesh.proc.send_signal(signal.SIGTERM)
    assert mesh.proc.wait(20) == 0
    wait_for(lambda: not any(alive(p) for p in pids), what="function processes to stop")
    assert not any(alive(p) for p in zygotes if not _zombie_or_gone(p))
    assert "serving" not in json.loads((mesh.data / "endpoints.json").read_text())


def _zombie_or_gone(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"
    except OSError:
        return True


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_functions_framework_serves_the_same_callable(tmp_path):
    pytest.importorskip("functions_framework")
    port = free_port()
    # The image's entry: functions-framework serving mapemesh's adapter, which runs FUNCTION_SOURCE's target.
    proc = subprocess.Popen([sys.executable, "-m", "mapemesh.serving.entry", "--port", str(port), "--host",
                             "127.0.0.1"],
                            env={**os.environ, "FUNCTION_SOURCE": str(FNS / "echo.py"), "FUNCTION_TARGET": "echo"},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}/"
        headers = {"ce-specversion": "1.0", "ce-id": "ff1", "ce-source": "/t", "ce-type": "t",
                   "content-type": "text/plain"}

        def up():
            try:
                return httpx.post(url, headers=headers, content=b"via ff")
            except httpx.HTTPError:
                return None

        r = wait_for(up, what="functions-framework to serve")
        assert r.status_code == 200 and r.headers["ce-id"] == "re-ff1" and r.content == b"via ff"
        r = httpx.post(url, headers={**headers, "ce-type": "quiet"})
        assert r.status_code == 202 and r.content == b""  # never a bare "OK"
        r = httpx.post(url, headers={**headers, "ce-type": "busy"})
        assert r.status_code == 503 and r.headers["retry-after"] == "3"  # TemporaryError(2.5 s), rounded up
        r = httpx.post(url, content=b"not an event")
        assert r.status_code == 400
    finally:
        proc.terminate()
        proc.wait(10)


def test_a_crash_fails_every_request_in_flight_at_once(mesh_factory):
    mesh = mesh_factory(service("echo", cc=0, timeout=20, annotations={"autoscaling.knative.dev/max-scale": "1"}))
    assert mesh.post("echo").status_code == 200
    results: list[httpx.Response] = []
    slow = [threading.Thread(target=lambda: results.append(mesh.post("echo", type_="slow", seconds="10")))
            for _ in range(3)]
    for t in slow:
        t.start()
    wait_for(lambda: mesh.status()["default/echo"]["in_flight"] == 3, what="three requests in flight")
    started = time.monotonic()
    assert mesh.post("echo", type_="crash").status_code == 502
    for t in slow:
        t.join()
    assert [r.status_code for r in results] == [502, 502, 502]
    assert time.monotonic() - started < 5  # not after the 20 s timeout
    assert mesh.post("echo").status_code == 200


def test_a_timeout_does_not_fail_the_other_requests_of_the_process(mesh_factory):
    mesh = mesh_factory(service("echo", cc=2, timeout=2, annotations={"autoscaling.knative.dev/max-scale": "1"}))
    assert mesh.post("echo").status_code == 200
    (pid,) = mesh.pids("echo")
    results: dict[str, int] = {}
    stuck = threading.Thread(target=lambda: results.update(stuck=mesh.post("echo", type_="slow",
                                                                            seconds="3").status_code))
    stuck.start()
    time.sleep(0.3)
    results["other"] = mesh.post("echo", type_="slow", seconds="0.5").status_code
    stuck.join()
    assert results == {"stuck": 504, "other": 200}
    wait_for(lambda: not alive(pid), what="the timed-out process to be replaced")
    assert mesh.post("echo").status_code == 200


def test_scale_never_exceeds_max_even_at_startup(mesh_factory):
    notes = {"autoscaling.knative.dev/min-scale": "1", "autoscaling.knative.dev/max-scale": "1",
             "autoscaling.knative.dev/initial-scale": "1"}
    mesh = mesh_factory(service("echo", annotations=notes))
    seen = set()
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline:
        pids = mesh.pids("echo")
        assert len(pids) <= 1
        seen.update(pids)
        time.sleep(0.02)
    assert len(seen) == 1


def test_a_changed_service_replaces_its_processes(mesh_factory):
    mesh = mesh_factory(service("echo", annotations={"autoscaling.knative.dev/min-scale": "1"}))
    (old,) = wait_for(lambda: mesh.pids("echo"), what="the first process")
    changed = service("echo", annotations={"autoscaling.knative.dev/min-scale": "1",
                                           "autoscaling.knative.dev/window": "2s"})
    (mesh.root / "knative" / "app.yaml").write_text(yaml.safe_dump_all([changed]))
    new = wait_for(lambda: [p for p in mesh.pids("echo") if p != old], what="a process of the new revision")
    wait_for(lambda: not alive(old), what="the old process to stop")
    assert mesh.status()["default/echo"]["window_s"] == 2.0 and len(new) == 1
    assert mesh.post("echo").headers["ce-pid"] == str(new[0])


def test_status_rows_have_the_same_keys(mesh_factory):
    bad = service("broken")
    del bad["spec"]["template"]["spec"]["containers"][0]["env"]
    mesh = mesh_factory(service("echo"), bad)
    rows = mesh.status()
    assert set(rows) == {"default/broken", "default/echo"}
    assert rows["default/broken"].keys() == rows["default/echo"].keys()
    assert not rows["default/broken"]["ready"] and "FUNCTION_SOURCE" in rows["default/broken"]["reason"]


def test_retention_period_keeps_the_last_process(mesh_factory):
    notes = {"autoscaling.knative.dev/window": "200ms",
             "autoscaling.knative.dev/scale-to-zero-pod-retention-period": "1500ms"}
    mesh = mesh_factory(service("echo", annotations=notes))
    assert mesh.post("echo").status_code == 200
    (pid,) = mesh.pids("echo")
    time.sleep(1.0)  # well past the window, within the retention period
    assert mesh.pids("echo") == [pid]
    wait_for(lambda: not mesh.pids("echo"), timeout=5, what="scale to zero after the retention period")
    wait_for(lambda: not alive(pid), what="the process to be gone")
