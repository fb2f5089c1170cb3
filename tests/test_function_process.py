"""A function process as the fork server starts it, talked to frame by frame as the host talks to it.

A sync `Function` with `containerConcurrency: 1` is served on the process's main thread (`zygote.serve_blocking`);
any other on an event loop with a worker thread (`zygote.serve`). Both must give the same answers, stop the same way
(end of stream or SIGTERM: a call under way is answered first; a signal the function handles itself does not stop it)
and give the function the same surroundings (its start hook when the process starts, no event loop in its thread)."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import uuid
from pathlib import Path
from types import SimpleNamespace

import pytest

from mapemesh.serving import wire
from mapemesh.serving.forkserver import Zygote

from .conftest import wait_for

SOURCE = '''
import asyncio, os, signal, threading, time
from pathlib import Path
from cloudevents.http import CloudEvent
import mapemesh

HERE = Path(__file__).parent
STARTED = []
USR1 = []
signal.signal(signal.SIGUSR1, lambda *_: USR1.append(1))  # a signal the function handles itself

async def hook():
    STARTED.append(asyncio.get_running_loop() is not None)
    (HERE / f"started-{os.getpid()}").touch()

@mapemesh.function(on_start=hook)
def fn(event):
    kind = event["type"]
    if kind == "slow":
        (HERE / f"slow-{os.getpid()}").touch()
        time.sleep(float(event.get("seconds", "1")))
    if kind == "boom":
        raise RuntimeError("boom")
    if kind == "refuse":
        raise mapemesh.PermanentError("never")
    if kind == "busy":
        raise mapemesh.TemporaryError("busy", delay=2.5)
    if kind == "quiet":
        return None
    try:
        asyncio.get_running_loop()
        loop = "running"
    except RuntimeError:
        loop = "none"
    return CloudEvent({"id": "re-" + event["id"], "source": "/fn", "type": "done", "loop": loop,
                       "started": str(STARTED), "pid": str(os.getpid()),
                       "main": str(threading.current_thread() is threading.main_thread()),
                       "usr1": str(len(USR1))}, event.data)
'''


@pytest.fixture
def zygote():
    z = Zygote()
    yield z
    z.stop()


def spawn(zygote: Zygote, base: Path, concurrency: int) -> tuple[int, socket.socket]:
    (base / "fn.py").write_text(SOURCE)
    spec = SimpleNamespace(source="fn.py", target="fn", capacity=concurrency)
    pid, sock = asyncio.run(zygote.spawn(spec, base, {}))  # type: ignore[arg-type]
    sock.settimeout(10)
    return pid, sock


def ask(sock: socket.socket, type_: str, data: bytes = b'{"x": 1}', **ext: str) -> dict:
    send(sock, type_, data, **ext)
    answer = wire.read_blocking(sock)
    assert answer is not None
    header, body = answer
    return {**header, "data": body}


def send(sock: socket.socket, type_: str, data: bytes = b"", **ext: str) -> None:
    attrs = {"specversion": "1.0", "id": str(uuid.uuid4()), "source": "/test", "type": type_,
             "datacontenttype": "application/json", **ext}
    sock.sendall(wire.encode({"id": 7, "attrs": attrs}, data))


def exited(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as f:  # the zygote reaps its children; until it does, a zombie
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except (FileNotFoundError, ProcessLookupError):  # reaped meanwhile (reading a reaped process's file: ESRCH)
        return True


PATHS = [pytest.param(1, id="main-thread"), pytest.param(2, id="event-loop")]


@pytest.mark.parametrize("concurrency", PATHS)
def test_both_paths_give_the_same_answers(zygote, tmp_path, concurrency):
    pid, sock = spawn(zygote, tmp_path, concurrency)
    # the start hook runs when the process starts, not with its first event (a warm process is ready when idle)
    wait_for(lambda: (tmp_path / f"started-{pid}").exists(), timeout=10, what="the start hook, before any event")
    ok = ask(sock, "t")
    assert ok["ok"] is True and ok["id"] == 7 and ok["data"] == b'{"x": 1}'
    assert ok["attrs"]["type"] == "done" and ok["attrs"]["pid"] == str(pid)
    assert ok["attrs"]["loop"] == "none"  # the function's thread runs no event loop (functions-framework's doesn't)
    assert ok["attrs"]["started"] == "[True]"  # the async on_start ran once, on an event loop, before the event
    assert ok["attrs"]["main"] == str(concurrency == 1)  # which path served it: no thread handoff with one at a time
    assert ask(sock, "quiet") == {"id": 7, "ok": True, "attrs": None, "data": b""}
    boom = ask(sock, "boom")
    assert boom["ok"] is False and boom["error"] == "RuntimeError: boom" and "permanent" not in boom
    refused = ask(sock, "refuse")
    assert refused["ok"] is False and refused["permanent"] is True
    busy = ask(sock, "busy")
    assert busy["ok"] is False and busy["retry_after"] == "3"  # 2.5 s rounded up, as Retry-After carries it
    assert ask(sock, "t")["attrs"]["started"] == "[True]"  # still once
    sock.close()  # the host closing the stream ends the process
    wait_for(lambda: exited(pid), timeout=10, what="the process to leave at the end of its stream")


@pytest.mark.parametrize("concurrency", PATHS)
def test_sigterm_lets_the_call_under_way_answer_then_the_process_leaves(zygote, tmp_path, concurrency):
    pid, sock = spawn(zygote, tmp_path, concurrency)
    assert ask(sock, "t")["ok"] is True
    send(sock, "slow", seconds="0.5")
    wait_for(lambda: (tmp_path / f"slow-{pid}").exists(), timeout=10, what="the slow call to start")
    os.kill(pid, signal.SIGTERM)
    answer = wire.read_blocking(sock)
    assert answer is not None and answer[0]["ok"] is True and answer[0]["attrs"]["type"] == "done"
    assert wire.read_blocking(sock) is None  # then the stream ends
    wait_for(lambda: exited(pid), timeout=10, what="the process to leave")


@pytest.mark.parametrize("concurrency", PATHS)
def test_sigterm_ends_an_idle_process(zygote, tmp_path, concurrency):
    pid, sock = spawn(zygote, tmp_path, concurrency)
    assert ask(sock, "t")["ok"] is True
    os.kill(pid, signal.SIGTERM)
    assert wire.read_blocking(sock) is None
    wait_for(lambda: exited(pid), timeout=10, what="the process to leave")


@pytest.mark.parametrize("concurrency", PATHS)
def test_a_signal_the_function_handles_does_not_stop_the_process(zygote, tmp_path, concurrency):
    pid, sock = spawn(zygote, tmp_path, concurrency)
    assert ask(sock, "t")["attrs"]["usr1"] == "0"
    os.kill(pid, signal.SIGUSR1)
    wait_for(lambda: ask(sock, "t")["attrs"]["usr1"] == "1", timeout=10, what="the handler to run")
    assert not exited(pid)


@pytest.mark.parametrize("concurrency", PATHS)
def test_a_host_that_leaves_mid_call_ends_the_process_quietly(capfd, zygote, tmp_path, concurrency):
    # capfd first: the fork server (and so the function process) writes to the stderr it captures
    pid, sock = spawn(zygote, tmp_path, concurrency)
    assert ask(sock, "t")["ok"] is True
    send(sock, "slow", seconds="0.3")
    wait_for(lambda: (tmp_path / f"slow-{pid}").exists(), timeout=10, what="the slow call to start")
    sock.close()  # the host stopped the process's revision: the answer has nowhere to go
    wait_for(lambda: exited(pid), timeout=10, what="the process to leave")
    assert "Traceback" not in capfd.readouterr().err


def test_a_broken_frame_ends_the_process_without_an_answer(zygote, tmp_path):
    pid, sock = spawn(zygote, tmp_path, 1)
    sock.sendall(b"\x00\x00\x00\x05\x00\x00\x00\x00{bad}")
    assert wire.read_blocking(sock) is None
    wait_for(lambda: exited(pid), timeout=10, what="the process to leave")
