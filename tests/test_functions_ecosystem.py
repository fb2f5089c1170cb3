"""Functions written for the Python ecosystem run unchanged: behind Triggers in `mapemesh up`, and through the image
entry (functions-framework serving mapemesh's adapter), with the same replies both ways.

The three files in tests/fns/ecosystem are as their authors' samples have them: the function from issue 16
(sync, returns an SDK event), functions-framework's CloudEvent sample (decorated, returns no event) and an async
function in the style of Knative's Python samples.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import uuid

import httpx
import pytest

from .conftest import wait_for
from .subscriber import Subscriber
from .test_serving import free_port, start_mesh

FILES = {"pong": ("fns/ecosystem/pong.py", "handle"),
         "ff-sample": ("fns/ecosystem/ff_sample.py", "my_cloudevent_function"),
         "knative-sample": ("fns/ecosystem/knative_sample.py", "main")}
REPLY_TYPES = ("com.example.pong", "dev.knative.samples.hifromknative")


def _service(name: str, source: str, target: str) -> dict:
    return {"apiVersion": "serving.knative.dev/v1", "kind": "Service",
            "metadata": {"name": name, "namespace": "default"},
            "spec": {"template": {"spec": {"containers": [{"image": "example/fn", "env": [
                {"name": "FUNCTION_SOURCE", "value": source}, {"name": "FUNCTION_TARGET", "value": target}]}]}}}}


def _trigger(name: str, types: list[str], subscriber: dict) -> dict:
    return {"apiVersion": "eventing.knative.dev/v1", "kind": "Trigger",
            "metadata": {"name": name, "namespace": "default"},
            "spec": {"broker": "default", "filters": [{"any": [{"exact": {"type": t}} for t in types]}],
                     "subscriber": subscriber}}


def _ping() -> dict[str, str]:
    return {"ce-specversion": "1.0", "ce-id": str(uuid.uuid4()), "ce-source": "/test", "ce-type": "com.example.ping",
            "content-type": "application/json"}


def _reply(headers, body: bytes) -> dict:
    """What a reply says, without what is new in each (its id, its time)."""
    return {"type": headers["ce-type"], "source": headers["ce-source"], "subject": headers.get("ce-subject"),
            "datacontenttype": headers.get("content-type") or headers.get("ce-datacontenttype"),
            "data": json.loads(body)}


@pytest.fixture(scope="module")
def mesh_replies(tmp_path_factory):
    """Each function's reply to one ping, as it came back through the broker of `mapemesh up`."""
    root = tmp_path_factory.mktemp("ecosystem")
    sink = Subscriber()
    docs = [_service(name, source, target) for name, (source, target) in FILES.items()]
    docs += [_trigger(name, ["com.example.ping"], {"ref": {"apiVersion": "serving.knative.dev/v1", "kind": "Service",
                                                           "name": name}}) for name in FILES]
    docs.append(_trigger("replies", list(REPLY_TYPES), {"uri": sink.url + "/replies"}))
    mesh = start_mesh(root, *docs)
    try:
        headers = _ping()
        r = httpx.post(mesh.broker + "/default/default", headers=headers, content=b'{"n": 1}')
        assert r.status_code == 202
        got = wait_for(lambda: sink.at("/replies") if len(sink.at("/replies")) >= 2 else None, timeout=60,
                       what="both replies through the broker")

        def delivered() -> dict | None:
            stats = httpx.get(mesh.broker + "/stats").json()["triggers"]
            return stats if stats["default/ff-sample"]["delivered"] else None

        stats = wait_for(delivered, timeout=30, what="the ff sample delivered")
        yield headers["ce-id"], {r.event.type: r for r in got}, stats
    finally:
        mesh.proc.send_signal(signal.SIGTERM)
        mesh.proc.wait(20)
        sink.close()


def test_the_functions_run_behind_triggers_and_their_replies_are_routed(mesh_replies):
    ping_id, replies, stats = mesh_replies
    pong = replies["com.example.pong"].event
    assert pong.get("subject") == ping_id and json.loads(pong.data) == {"echo": {"n": 1}}
    knative = replies["dev.knative.samples.hifromknative"].event
    assert json.loads(knative.data) == {"msg": "Hi from Knative!", "received": {"n": 1}}
    for name in FILES:  # none failed, none was retried: each answered its event once
        assert (stats[f"default/{name}"]["delivered"], stats[f"default/{name}"]["retried"]) == (1, 0), name


@pytest.mark.parametrize("name", list(FILES))
def test_the_image_entry_gives_the_same_reply_for_the_same_file(mesh_replies, name, tmp_path):
    ping_id, replies, _ = mesh_replies
    source, target = FILES[name]
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("FUNCTION_SOURCE", "FUNCTION_TARGET")}
    proc = subprocess.Popen([sys.executable, "-m", "mapemesh.serving.entry", "--source",
                             str(os.path.join(os.path.dirname(__file__), source)), "--target", target, "--port",
                             str(port), "--host", "127.0.0.1"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    try:
        headers = {**_ping(), "ce-id": ping_id}

        def answer():
            try:
                return httpx.post(f"http://127.0.0.1:{port}/", headers=headers, content=b'{"n": 1}')
            except httpx.HTTPError:
                return None

        r = wait_for(answer, timeout=30, what="functions-framework to serve")
        if name == "ff-sample":
            assert r.status_code == 202 and r.content == b""  # no event: not functions-framework's bare "OK"
            return
        assert r.status_code == 200, r.text
        routed = next(rec for rec in replies.values() if rec.event.get("source") == r.headers["ce-source"])
        assert _reply(r.headers, r.content) == _reply({f"ce-{k}": str(v) for k, v in routed.event.attributes.items()},
                                                      routed.event.data)
    finally:
        proc.terminate()
        proc.wait(10)


ENTRY = os.path.join(os.path.dirname(sys.executable), "mapemesh-function")


def _serve(args: list[str], cwd, env: dict | None = None) -> tuple[subprocess.Popen, int]:
    port = free_port()
    env = {**{k: v for k, v in os.environ.items() if k not in ("FUNCTION_SOURCE", "FUNCTION_TARGET")}, **(env or {})}
    proc = subprocess.Popen([*args, "--port", str(port), "--host", "127.0.0.1"], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    return proc, port


def test_the_image_command_imports_the_installed_package_not_the_folder_it_runs_in(tmp_path):
    """The image runs in /app, which holds the sources it was installed from (without the mapped subpackages):
    the command must import the installed mapemesh."""
    from mapemesh.runtimes import build

    from .conftest import REPO

    assert 'CMD ["mapemesh-function"]' in (REPO / "Containerfile").read_text()  # what this test runs
    assert 'CMD ["mapemesh-function"]' in build.CONTAINERFILE
    assert build.function_command("f.py", "h")[1] == "/usr/local/bin/mapemesh-function"
    (tmp_path / "mapemesh").mkdir()
    (tmp_path / "mapemesh" / "__init__.py").write_text("raise ImportError('the source folder, not the package')\n")
    (tmp_path / "fn").mkdir()
    (tmp_path / "fn" / "helper.py").write_text("GREETING = 'hello'\n")  # a sibling module the function imports
    (tmp_path / "fn" / "main.py").write_text(
        "from cloudevents.http import CloudEvent\nimport helper\n\n"
        "def handle(event):\n"
        "    return CloudEvent({'type': 'com.example.greeting', 'source': '/fn'}, {'say': helper.GREETING})\n")
    proc, port = _serve([ENTRY, "--source=fn/main.py", "--target", "handle"], cwd=tmp_path)
    try:
        def answer():
            try:
                return httpx.post(f"http://127.0.0.1:{port}/", headers=_ping(), content=b"{}")
            except httpx.HTTPError:
                assert proc.poll() is None, proc.stdout.read()
                return None

        r = wait_for(answer, timeout=30, what="the image command to serve")
        assert r.status_code == 200, r.text
        assert r.headers["ce-type"] == "com.example.greeting" and r.json() == {"say": "hello"}
        assert r.headers["content-type"] == "application/json"  # JSON data is named so, never Flask's text/html
    finally:
        proc.terminate()
        proc.wait(10)


def test_the_function_is_imported_before_the_first_request_and_a_broken_one_stops_the_server(tmp_path):
    marker = tmp_path / "imported"
    (tmp_path / "eager.py").write_text(
        f"import pathlib\npathlib.Path({str(marker)!r}).write_text('yes')\n\ndef handle(event):\n    return None\n")
    proc, _ = _serve([ENTRY, "--source", "eager.py", "--target", "handle"], cwd=tmp_path)
    try:
        wait_for(marker.exists, timeout=30, what="the function's import, with no request sent")
    finally:
        proc.terminate()
        proc.wait(10)
    (tmp_path / "broken.py").write_text("import no_such_module_here\n\ndef handle(event):\n    return None\n")
    proc, _ = _serve([ENTRY, "--source", "broken.py", "--target", "handle"], cwd=tmp_path)
    try:
        out, _ = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode != 0 and "no_such_module_here" in out
