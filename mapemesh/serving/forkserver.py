"""The fork server's client: the host's end of the zygote (`mapemesh.serving.zygote`), started with the host.

| method | what it asks the zygote | answers |
|---|---|---|
| `prepare(spec, base, env)` | import the function's source now | nothing |
| `spawn(spec, base, env)` | fork a function process with `env`, its socket attached | `(pid, the host's end of it)` |
| `stop()` | stop (SIGTERM, SIGKILL after 5 s) with every process it forked | nothing |

| raises | when |
|---|---|
| `ImportFailed` | the source does not import, has no such target, or took longer than `ASK_TIMEOUT_S` to import |
| `FunctionFailed(503)` | the zygote failed (it is replaced) or could not fork |

One request at a time goes over the control socket. A zygote that exited, died mid-request or did not answer
within `ASK_TIMEOUT_S` is replaced by a fresh one before the next request, so one import that hangs does not
stop every Service.
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

from mapemesh.serving.failures import FunctionFailed, ImportFailed
from mapemesh.serving.spec import ServiceSpec

log = logging.getLogger(__name__)
ASK_TIMEOUT_S = 30.0


class Zygote:
    """The fork server process and the control socket to it; restarted when it dies or hangs."""

    def __init__(self) -> None:
        self._lock = asyncio.Lock()
        self._start()

    def _start(self) -> None:
        host_end, zygote_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        self.proc = _start_zygote(zygote_end)
        zygote_end.close()
        host_end.settimeout(ASK_TIMEOUT_S)  # an import that never returns must not block every Service
        self.control = host_end

    async def spawn(self, spec: ServiceSpec, base: Path, env: dict[str, str]) -> tuple[int, socket.socket]:
        """Fork a function process with `env`; return its pid and the host's end of its socket."""
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        request = {"source": spec.source, "target": spec.target, "base": str(base), "env": env,
                   "concurrency": spec.capacity}
        try:
            answer = await self._request(request, theirs.fileno())
        except BaseException:
            mine.close()
            raise
        finally:
            theirs.close()
        if "error" in answer:
            mine.close()
            if answer.get("kind") == "import":
                raise ImportFailed(answer["error"])
            raise FunctionFailed(503, f"cannot start a process: {answer['error']}")
        return int(answer["pid"]), mine

    async def prepare(self, spec: ServiceSpec, base: Path, env: dict[str, str]) -> None:
        """Have the zygote import the function's source now; ImportFailed if it does not import."""
        answer = await self._request({"prepare": True, "source": spec.source, "target": spec.target,
                                      "base": str(base), "env": env}, None)
        if "error" in answer:
            if answer.get("kind") == "import":
                raise ImportFailed(answer["error"])
            raise FunctionFailed(503, answer["error"])

    async def _request(self, request: dict[str, Any], fd: int | None) -> dict[str, Any]:
        async with self._lock:  # one request at a time on the control socket
            if self.proc.poll() is not None:
                log.warning("the fork server exited (%s); starting a new one", self.proc.returncode)
                self._replace()
            try:
                return await asyncio.to_thread(self._ask, request, fd)
            except (OSError, ValueError) as exc:  # died or hung (socket timeout): start afresh
                log.error("the fork server failed (%s); starting a new one", exc)
                self._replace()
                if isinstance(exc, TimeoutError) and request.get("prepare"):
                    raise ImportFailed(f"importing {request['source']} took longer than {ASK_TIMEOUT_S:g}s") \
                        from None
                raise FunctionFailed(503, f"the fork server failed: {exc}") from None

    def _ask(self, request: dict[str, Any], fd: int | None) -> dict[str, Any]:
        message = json.dumps(request).encode() + b"\n"
        if fd is None:
            self.control.sendall(message)
        else:
            socket.send_fds(self.control, [message], [fd])
        line = b""
        while not line.endswith(b"\n"):
            chunk = self.control.recv(65536)
            if not chunk:
                raise ConnectionError("the fork server exited")
            line += chunk
        return json.loads(line)

    def _replace(self) -> None:
        self.stop()
        self._start()

    def stop(self) -> None:
        """Stop the fork server and every function process it started."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=5)
            except Exception:
                self.proc.kill()
                self.proc.wait()
        self.control.close()


def _start_zygote(end: socket.socket) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "mapemesh.serving.zygote", str(end.fileno())],
                            pass_fds=[end.fileno()], start_new_session=False)
