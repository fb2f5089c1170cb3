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
from mapemesh.node_shim.daemon import RunningShim
from mapemesh.settings import Settings
from mapemesh.up import start_mesh

log = logging.getLogger("mapemesh.demo")


async def main() -> None:
    """Start the mesh, post a telemetry event to the broker, show it in the durable log, serve until Ctrl-C."""
    settings = Settings.load()
    for port, var in ((settings.broker_port, "MAPEMESH_BROKER_PORT"), (settings.serving_port, "MAPEMESH_SERVING_PORT"),
                      (max(0, settings.node_shim_port), "MAPEMESH_NODE_SHIM_PORT")):
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
        if "default/policy-cpu-frequency" in mesh.host.revisions:
            await _loop_demo(settings, ingress, mesh.shim)
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


DEMO_APP = {"MLSysOpsApp": {"name": "demo-app", "components": [{
    "metadata": {"name": "web"},
    "qos_metrics": [{"application_metric_id": "latency_ms", "target": 20, "relation": "lower_or_equal"}]}]}}


async def _post(http: aiohttp.ClientSession, ingress: str, data: events.EventData) -> str:
    event = events.make_event(data, source="/demo")
    headers, body = to_binary(event)
    async with http.post(ingress, headers=headers, data=body) as resp:
        if resp.status != 202:
            raise RuntimeError(f"the broker refused the demo's {event.type}: {resp.status} {await resp.text()}")
    return event.id


async def _loop_demo(settings: Settings, ingress: str, shim: RunningShim | None) -> None:
    """Submit an app with a latency target, break it on this machine's node: show the plan and the knob."""
    from mapemesh.state import open_store

    node = shim.shim.node if shim is not None else "node-1"
    store = open_store(settings.state, data=settings.data)
    try:
        for _ in range(100):  # the policy registers when its first process starts; the shim registers its node
            if "cpu-frequency" in store.list("policies") and (shim is None or store.get("infrastructure", node)):
                break
            await asyncio.sleep(0.1)
        async with aiohttp.ClientSession() as http:
            if shim is None:
                await _post(http, ingress, events.InfraRegistered(infra_id=node, kind="node", description={
                    "MLSysOpsNode": {"name": node, "continuum_layer": "edge"}}))
            await _post(http, ingress, events.AppSubmitted(app_id="demo-app", description=DEMO_APP))
            await asyncio.sleep(1.5)  # the CPU frequency policy's analyze_interval is 1 s per node
            cause = await _post(http, ingress, events.TelemetryReported(
                asset=node, asset_kind="node", metrics=[events.Metric(name="latency_ms", value=35.0)]))
        print(f"demo: demo-app submitted (latency_ms <= 20), then latency_ms = 35 reported for node {node}")
        for _ in range(150):
            plans = [v.value for v in store.list("plans").values() if v.value["inputs"].get("cause") == cause]
            if plans and (plans[0]["status"] in ("Success", "Failed") or shim is None):
                plan = plans[0]
                why = f" ({plan['reason']})" if plan.get("reason") else ""
                print(f"demo: policy {plan['policy']} planned {plan['mechanisms']} for {plan['asset']} "
                      f"(plan {plan['plan_id'][:8]}): {plan['status']}{why}")
                if shim is not None:
                    cpu0 = shim.sysfs.path("sys/devices/system/cpu/cpu0/cpufreq")
                    print(f"demo: the node shim wrote {cpu0}/scaling_min_freq = "
                          f"{(cpu0 / 'scaling_min_freq').read_text().strip()} kHz (cpuinfo_max_freq "
                          f"{(cpu0 / 'cpuinfo_max_freq').read_text().strip()}); its journal: "
                          f"{shim.shim.journal.path}")
                return
            await asyncio.sleep(0.1)
        print("demo: no plan within 15 s; see `mapemesh policy list` and `mapemesh status`")
    finally:
        store.close()


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
