"""`make run`: the local mesh on this machine, with a demo event posted through the real ingress."""

from __future__ import annotations

import asyncio
import logging
import socket

import aiohttp

from mapemesh import events
from mapemesh.aio import run, until_stopped
from mapemesh.eventing import log as eventlog
from mapemesh.eventing.binding import to_binary
from mapemesh.settings import Settings
from mapemesh.up import start_mesh

log = logging.getLogger("mapemesh.demo")


async def main() -> None:
    """Start the mesh, post a telemetry event to the broker, show it in the durable log, serve until Ctrl-C."""
    settings = Settings.load()
    for port, var in ((settings.broker_port, "MAPEMESH_BROKER_PORT"), (settings.serving_port,
                                                                       "MAPEMESH_SERVING_PORT")):
        if port and not _port_free(settings.host, port):
            raise SystemExit(f"port {port} on {settings.host} is busy: set {var} (0 picks a free one)")
    mesh = await start_mesh(settings)
    broker = mesh.broker
    ingress = f"{broker.url}/default/default"
    try:
        sample = events.TelemetryReported(asset="node-1", asset_kind="node", metrics=[
            events.Metric(name="node_cpu_frequency_hz", value=2.4e9, unit="Hz", labels={"cpu": "0"})])
        event = events.make_event(sample, source="/demo/node-shim/node-1", subject="node-1")
        headers, body = to_binary(event)
        async with aiohttp.ClientSession() as http, http.post(ingress, headers=headers, data=body) as resp:
            status = resp.status
        stored = [e for e in await asyncio.to_thread(eventlog.read_all, settings.event_log_file)
                  if e.event.id == event.id]
        print(f"\nmapemesh broker ingress: {ingress}")
        print(f"function host: {mesh.serving_url} ({len(mesh.host.revisions)} function(s) from "
              f"{settings.manifests})")
        print(f"demo: posted {event.type} id={event.id} -> HTTP {status}; "
              f"in the durable log at seq {stored[0].seq if stored else '(missing!)'} "
              f"({settings.event_log_file})")
        reply = await _reply_to(settings, event.id)
        if reply is not None:
            print(f"demo: the monitor function answered with {reply.event.type} (seq {reply.seq}): "
                  f"{reply.event.data.decode() if reply.event.data else ''}")
        elif "default/monitor" in mesh.host.revisions:
            print("demo: no reply from the monitor function within 10 s; see `mapemesh status`")
        print("send your own:\n"
              f"  .venv/bin/mapemesh events send --broker {ingress} --type com.example.ping "
              f"--source /me --data '{{\"hello\": 1}}'\n"
              f"  curl -i {ingress} -H 'ce-specversion: 1.0' -H 'ce-id: 1' -H 'ce-source: /me' "
              f"-H 'ce-type: com.example.ping' -H 'content-type: application/json' -d '{{}}'\n"
              "Ctrl-C stops the mesh.", flush=True)
        await until_stopped()
    finally:
        await mesh.stop()


async def _reply_to(settings: Settings, event_id: str, timeout_s: float = 10.0) -> eventlog.LoggedEvent | None:
    """The state-changed event the monitor published for `event_id`, once it is in the log."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while loop.time() < deadline:
        for logged in await asyncio.to_thread(eventlog.read_all, settings.event_log_file):
            if logged.event.type == "io.mapemesh.state.changed.v1" and logged.event.data and \
                    event_id.encode() in logged.event.data:
                return logged
        await asyncio.sleep(0.1)
    return None


def _port_free(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    run(main())
